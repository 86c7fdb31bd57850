"""Full learner-state checkpoints (params, optimizer states, PRNG keys, counters) on orbax.

Layout: ``<directory>/<step>/`` is one orbax ``CheckpointManager`` step with two items,
``state`` (``StandardCheckpointHandler``: tensorstore/OCDBT arrays, bit-exact, including
bfloat16 and new-style typed PRNG keys) and ``extra`` (``JsonCheckpointHandler``: small
JSON such as config or counters), plus one file of ours, ``hilrl_manifest.json``.

Why the extra manifest, on top of orbax's own tmp-dir + rename finalisation:

- *Durability*: orbax renames ``<step>.orbax-checkpoint-tmp-*`` to ``<step>`` when a save
  completes, but does not fsync the JSON metadata it writes nor the rename. We fsync the
  whole step directory and only then write the manifest atomically (tmp + fsync +
  ``os.replace`` + dir fsync). A step directory without a manifest is therefore an
  interrupted save (process killed or power lost between orbax's rename and our commit)
  and is never picked by :meth:`Checkpointer.latest_step` / :meth:`Checkpointer.restore`.
- *Integrity*: the manifest holds the size and sha256 of every file, checked before
  restoring, so a flipped bit or a truncated file is reported as
  :class:`CheckpointCorruptError` naming the step and file (tensorstore's OCDBT has CRC-32C
  on its index nodes but not on every array chunk, and its errors are hard to read).
- *Strictness*: orbax silently casts on restore when the target's dtype differs from the
  stored one (float32 stored, bfloat16 target -> bfloat16 restored). We compare the
  target's key paths, shapes and dtypes with the stored metadata first and refuse
  mismatches with :class:`CheckpointMismatchError` naming the key.

Saving is synchronous (``enable_async_checkpointing=False``): a learner checkpoint every
few thousand updates costs well under a second, and a synchronous save is simple to reason
about - when ``save`` returns, the checkpoint is durable and complete; there is no
background thread that could die, outlive ``close()``, or race with the next update's
donation of the same buffers. No pickle is involved anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hilrl.storage.fsutil import atomic_write_bytes, fsync_dir, fsync_tree

log = logging.getLogger(__name__)

MANIFEST_NAME = "hilrl_manifest.json"
MANIFEST_FORMAT = "hilrl-checkpoint"
MANIFEST_VERSION = 1
QUARANTINE_DIR = "quarantine"
_CHUNK = 1 << 20
_ORBAX_TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's TMP_DIR_SUFFIX (atomicity_types)


class CheckpointError(ValueError):
    """Base class for checkpoint problems."""


class CheckpointNotFoundError(CheckpointError):
    """No (complete) checkpoint for the requested step, or none at all."""


class CheckpointIncompleteError(CheckpointError):
    """The step directory exists but its save never committed (interrupted save)."""


class CheckpointCorruptError(CheckpointError):
    """A committed checkpoint whose files no longer match their checksums, or unreadable."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fit the restore target (keys, shapes, dtypes, key impls)."""


# --------------------------------------------------------------------------- tree helpers


def _path_str(path: tuple[Any, ...]) -> str:
    """Key path -> 'a/0/count'. Dict keys, sequence indices and attribute names all map to
    plain strings, which is also how orbax names namedtuple/dataclass fields on disk."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts)


def _is_typed_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_spec(leaf: Any) -> tuple[tuple[int, ...], str | None]:
    """(shape, dtype name) as stored on disk; dtype None = Python scalar (any width)."""
    if _is_typed_key(leaf):
        data = jax.random.key_data(leaf)
        return tuple(data.shape), np.dtype(data.dtype).name
    if isinstance(leaf, bool | int | float | complex):
        return (), None
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), np.dtype(leaf.dtype).name
    arr = np.asarray(leaf)
    return tuple(arr.shape), arr.dtype.name


def _flat_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str | None]]:
    return {_path_str(p): _leaf_spec(x)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _key_impls(tree: Any) -> dict[str, str]:
    return {_path_str(p): str(jax.random.key_impl(x))
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if _is_typed_key(x)}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _list_files(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel != MANIFEST_NAME:
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


# --------------------------------------------------------------------------- checkpointer


class _NoReadOnlyNotice(logging.Filter):
    """orbax warns "Given directory is read only" for every read-only manager; a reader
    (evaluation, inspection) asked for exactly that."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Given directory is read only" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoReadOnlyNotice())


class Checkpointer:
    """Save/restore whole agent states under ``directory``, keeping the newest
    ``max_to_keep`` steps.

    One writer per directory. Use ``read_only=True`` for a second process that only reads
    (evaluation, inspection): it never deletes or moves anything, not even orbax's
    leftover tmp directories, which could belong to a save in progress.
    """

    def __init__(self, directory: str | os.PathLike[str], max_to_keep: int | None = 3,
                 *, read_only: bool = False) -> None:
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        self.max_to_keep = None if read_only else max_to_keep
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        elif not self.directory.is_dir():
            raise CheckpointNotFoundError(f"checkpoint directory {self.directory} does not exist")
        if not read_only:
            self._remove_orbax_tmp_dirs()
        options = ocp.CheckpointManagerOptions(
            # Old steps are deleted here (_prune), not by orbax, whose file-by-file delete
            # killed half-way left a committed step with files missing.
            max_to_keep=None,
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=False,
            # orbax's own tmp cleanup runs in a background future at construction; we do
            # it synchronously (_remove_orbax_tmp_dirs, above) so it is done when __init__ returns.
            cleanup_tmp_directories=False,
            read_only=read_only,
            create=not read_only,
        )
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "extra": ocp.JsonCheckpointHandler()},
        )
        self._closed = False

    def _remove_orbax_tmp_dirs(self) -> None:
        """Delete ``<step>.orbax-checkpoint-tmp*`` leftovers of saves killed mid-write."""
        removed = False
        for p in self.directory.iterdir():
            if _ORBAX_TMP_MARK in p.name and p.is_dir():
                log.warning("removing unfinished orbax save %s", p)
                shutil.rmtree(p)
                removed = True
        if removed:
            fsync_dir(self.directory)

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release orbax resources. Saves are synchronous, so nothing is pending."""
        if not self._closed:
            self._mngr.wait_until_finished()
            self._mngr.close()
            self._closed = True

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- listing

    def step_dir(self, step: int) -> Path:
        """Directory of one step (whether or not it is complete)."""
        return self.directory / str(int(step))

    def _step_dirs(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir()
                      if p.name.isdigit() and p.is_dir())

    def all_steps(self) -> list[int]:
        """Committed steps, oldest first (interrupted saves excluded; not checksummed)."""
        return [s for s in self._step_dirs() if (self.step_dir(s) / MANIFEST_NAME).is_file()]

    def incomplete_steps(self) -> list[int]:
        """Step directories orbax finalised but whose save never committed."""
        return [s for s in self._step_dirs() if not (self.step_dir(s) / MANIFEST_NAME).is_file()]

    def latest_step(self) -> int | None:
        """Newest committed step, or None. Does not read the data; see
        :meth:`restore_latest_valid` for a fallback past corrupt checkpoints."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ---------------------------------------------------------------- save

    def save(self, step: int, state: Any, extra_json: Mapping[str, Any] | None = None) -> Path:
        """Write ``state`` (any pytree of arrays / typed keys / Python scalars) and a small
        JSON dict at ``step``; returns the step directory once it is durable and committed.

        Steps must increase. Raises instead of silently skipping (orbax's own ``save``
        returns False for a step at or below the newest one on disk).
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory}: checkpointer is read-only")
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        extra = dict(extra_json or {})
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"extra_json must be JSON-serialisable: {e}") from e
        final = self.step_dir(step)
        if final.exists():
            if (final / MANIFEST_NAME).is_file():
                raise CheckpointError(f"{final}: a checkpoint for step {step} already exists")
            log.warning("removing interrupted save %s before saving step %d again", final, step)
            shutil.rmtree(final)
            fsync_dir(self.directory)
        self._mngr.reload()
        newest = self._mngr.latest_step()
        if newest is not None and step <= newest:
            state_of = "committed" if (self.step_dir(newest) / MANIFEST_NAME).is_file() else \
                "incomplete/corrupt; restore_latest_valid() moves such steps aside"
            raise CheckpointError(
                f"{self.directory}: cannot save step {step}: step {newest} ({state_of}) is newer "
                "and steps must increase")
        saved = self._mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)))
        self._mngr.wait_until_finished()
        if not saved or not final.is_dir():
            raise CheckpointError(f"{self.directory}: orbax did not save step {step}")
        self._commit(step, state)
        self._prune()
        return final

    def _prune(self) -> None:
        """Delete committed steps beyond the newest ``max_to_keep``."""
        if self.max_to_keep is None:
            return
        for step in self.all_steps()[:-self.max_to_keep]:
            self.delete(step)

    def _commit(self, step: int, state: Any) -> None:
        """fsync everything orbax wrote, then atomically write the checksum manifest."""
        root = self.step_dir(step)
        fsync_tree(root)
        files = {}
        for rel in _list_files(root):
            p = root / rel
            files[rel] = {"size": p.stat().st_size, "sha256": _sha256_file(p)}
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "step": step,
            "created_unix": time.time(),
            "files": files,
            "key_impls": _key_impls(state),
        }
        atomic_write_bytes(root / MANIFEST_NAME,
                           json.dumps(manifest, indent=1, sort_keys=True).encode())

    # ---------------------------------------------------------------- verify

    def _manifest(self, step: int) -> dict[str, Any]:
        root = self.step_dir(step)
        if not root.is_dir():
            raise CheckpointNotFoundError(
                f"{self.directory}: no checkpoint for step {step} (committed steps: "
                f"{self.all_steps()})")
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise CheckpointIncompleteError(
                f"{root}: step {step} was never committed (interrupted save); committed "
                f"steps: {self.all_steps()}")
        try:
            manifest = json.loads(path.read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointCorruptError(f"{path}: unreadable manifest: {e}") from e
        if (not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT
                or not isinstance(manifest.get("files"), dict)):
            raise CheckpointCorruptError(f"{path}: not a {MANIFEST_FORMAT} manifest")
        if manifest.get("version") != MANIFEST_VERSION:
            raise CheckpointCorruptError(
                f"{path}: manifest version {manifest.get('version')!r} not supported")
        return manifest

    def verify(self, step: int) -> None:
        """Check every file of ``step`` against its recorded size and sha256."""
        root = self.step_dir(step)
        for rel, rec in sorted(self._manifest(step)["files"].items()):
            p = root / rel
            if not p.is_file():
                raise CheckpointCorruptError(f"{root}: step {step}: file {rel} is missing")
            size = p.stat().st_size
            if size != rec.get("size"):
                raise CheckpointCorruptError(
                    f"{root}: step {step}: file {rel} is {size} bytes, expected {rec.get('size')}")
            if _sha256_file(p) != rec.get("sha256"):
                raise CheckpointCorruptError(
                    f"{root}: step {step}: file {rel} fails its sha256 check (corrupt)")

    def _check_target(self, step: int, target: Any, manifest: Mapping[str, Any]) -> None:
        try:
            meta = self._mngr.item_metadata(step)["state"]
        except Exception as e:  # anything orbax raises here means unreadable
            raise CheckpointCorruptError(
                f"{self.step_dir(step)}: cannot read state metadata: {e}") from e
        tree = getattr(meta, "tree", meta)
        saved = {}
        for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]:
            dtype = getattr(m, "dtype", None)
            saved[_path_str(p)] = (tuple(getattr(m, "shape", ())),
                                   None if dtype is None else np.dtype(dtype).name)
        want = _flat_specs(target)
        where = f"{self.step_dir(step)}"
        missing = sorted(set(want) - set(saved))
        extra = sorted(set(saved) - set(want))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"target keys not in checkpoint: {missing[:8]}")
            if extra:
                parts.append(f"checkpoint keys not in target: {extra[:8]}")
            raise CheckpointMismatchError(f"{where}: state tree does not match the target; "
                                          + "; ".join(parts))
        for key in sorted(want):
            (wshape, wdtype), (sshape, sdtype) = want[key], saved[key]
            if wshape != sshape:
                raise CheckpointMismatchError(
                    f"{where}: key {key!r}: checkpoint shape {sshape}, target shape {wshape}")
            if wdtype is not None and sdtype is not None and wdtype != sdtype:
                raise CheckpointMismatchError(
                    f"{where}: key {key!r}: checkpoint dtype {sdtype}, target dtype {wdtype} "
                    "(refusing orbax's silent cast)")
        saved_impls = manifest.get("key_impls", {})
        for key, impl in _key_impls(target).items():
            if saved_impls.get(key, impl) != impl:
                raise CheckpointMismatchError(
                    f"{where}: key {key!r}: checkpoint PRNG impl {saved_impls[key]}, target {impl}")
        for key in saved_impls:
            if key not in _key_impls(target):
                raise CheckpointMismatchError(
                    f"{where}: key {key!r} is a typed PRNG key ({saved_impls[key]}) in the "
                    "checkpoint but not in the target")

    # ---------------------------------------------------------------- restore

    def restore(self, target: Any, step: int | None = None, *,
                verify: bool = True) -> tuple[Any, dict[str, Any]]:
        """Restore ``step`` (default: newest committed) into the structure of ``target``
        (e.g. a freshly initialised state); returns ``(state, extra_json)``.

        Raises :class:`CheckpointNotFoundError`, :class:`CheckpointIncompleteError`,
        :class:`CheckpointCorruptError` or :class:`CheckpointMismatchError`; for the
        corrupt case pass an older ``step`` or use :meth:`restore_latest_valid`.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointNotFoundError(f"{self.directory}: no committed checkpoint")
        step = int(step)
        manifest = self._manifest(step)
        if verify:
            self.verify(step)
        self._check_target(step, target, manifest)
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()))
        except Exception as e:  # re-raised with the step named
            raise CheckpointCorruptError(
                f"{self.step_dir(step)}: orbax failed to restore step {step}: {e}") from e
        return out["state"], dict(out["extra"] or {})

    def read_extra(self, step: int) -> dict[str, Any]:
        """The JSON dict saved with ``step`` (no arrays are read)."""
        self._manifest(step)  # committed steps only
        try:
            out = self._mngr.restore(int(step), args=ocp.args.Composite(
                extra=ocp.args.JsonRestore()))
        except Exception as e:  # re-raised with the step named
            raise CheckpointCorruptError(
                f"{self.step_dir(step)}: cannot read the extra data of step {step}: {e}") from e
        return dict(out["extra"] or {})

    def restore_latest_valid(self, target: Any) -> tuple[int, Any, dict[str, Any]]:
        """Restore the newest checkpoint that is committed, intact and fits ``target``'s
        storage; returns ``(step, state, extra)``.

        Steps newer than the one restored that are incomplete or corrupt are logged and,
        unless read-only, moved to ``<directory>/quarantine/`` (kept for inspection, not
        deleted) so that training can save those step numbers again. A target mismatch
        is not skipped over: it is a code/config problem and raises at once.
        """
        for step in reversed(self._step_dirs()):
            try:
                state, extra = self.restore(target, step)
            except (CheckpointIncompleteError, CheckpointCorruptError) as e:
                log.warning("skipping checkpoint step %d: %s", step, e)
                self._quarantine(step)
                continue
            return step, state, extra
        raise CheckpointNotFoundError(f"{self.directory}: no valid checkpoint")

    def _quarantine(self, step: int) -> None:
        if self.read_only:
            return
        qdir = self.directory / QUARANTINE_DIR
        qdir.mkdir(exist_ok=True)
        dest = qdir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        os.replace(self.step_dir(step), dest)
        fsync_dir(self.directory)
        log.warning("moved checkpoint step %d to %s", step, dest)

    def delete(self, step: int) -> None:
        """Delete one step (committed or not)."""
        if self.read_only:
            raise CheckpointError(f"{self.directory}: checkpointer is read-only")
        root = self.step_dir(step)
        if not root.exists():
            raise CheckpointNotFoundError(f"{root}: no such step")
        # One atomic rename first: a kill during the delete leaves a tmp directory (removed
        # at the next start), never a step whose manifest lists files already gone.
        trash = root.with_name(f"{step}{_ORBAX_TMP_MARK}-deleting-{os.getpid()}")
        os.replace(root, trash)
        fsync_dir(self.directory)
        shutil.rmtree(trash)
        self._mngr.reload()
