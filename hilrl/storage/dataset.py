"""Pickle-free on-disk format for recorded episodes.

Teleoperated demos are written in this format today; labelled classifier frames and replay
snapshots reuse it. Everything is plain numpy ``.npz`` + JSON, so a dataset can be read
without hilrl, and nothing is ever unpickled: files are always opened with
``np.load(..., allow_pickle=False)`` and a file holding object arrays is refused.

Layout (format "hilrl-episodes", version 1)
-------------------------------------------
A dataset is a directory::

    DIR/meta.json              {"format": "hilrl-episodes", "version": 1, "info": {...}}
    DIR/episode_000000.npz     first episode
    DIR/episode_000001.npz     second episode, ...

``meta.json`` is UTF-8 JSON. ``info`` is a free-form JSON object given by whoever created
the dataset (task name, env spec, hilrl version, creation time, ...). It is written when the
dataset is created and left untouched when more episodes are appended.

Episodes are named ``episode_`` + the episode index as a decimal number zero-padded to six
digits + ``.npz`` (an index past 999999 simply gets more digits); episode order is the
numeric order of the index. Gaps in the numbering are tolerated when reading. Other files
in the directory are ignored; in particular ``.episode_*.tmp`` files are leftovers of a
write that was interrupted by a crash and can be deleted.

Episode file
------------
An ``.npz`` archive (a zip of ``.npy`` files, written with ``numpy.savez_compressed`` or,
with ``compress=False``, ``numpy.savez``). For an episode of ``T >= 1`` steps it holds:

===================  =================  =======  ==========================================
array name           shape              dtype    meaning
===================  =================  =======  ==========================================
``state``            (T+1, S)           float32  proprioceptive observation; ``state[t]`` is
                                                 the observation before step t and
                                                 ``state[t+1]`` the one after it
``images/<camera>``  (T+1, H, W, 3)     uint8    one array per camera (zero or more),
                                                 same indexing as ``state``
``action``           (T, A)             float32  action executed at step t (the human's if
                                                 ``intervened[t]``)
``reward``           (T,)               float32
``terminated``       (T,)               bool     task ended (success/failure)
``truncated``        (T,)               bool     cut by a time limit; bootstrap through it
``intervened``       (T,)               bool     the human overrode the policy at step t
``<extra>``          (T, ...)           any      optional per-step arrays given by the
                                                 caller, e.g. ``success`` (T,) bool or
                                                 ``grasp_penalty`` (T,) float32; dtype is
                                                 bool, integer or floating point
``__meta__``         (N,)               uint8    UTF-8 JSON document, see below
===================  =================  =======  ==========================================

Observations are stored once: the transition at step t is ``(obs[t], action[t],
reward[t], obs[t+1])``. Consequently ``terminated``/``truncated`` may only be true at the
last step. Float arrays contain no NaN or infinity. Camera and extra names match
``[A-Za-z0-9_.-]+`` and do not start with ``__``; extras cannot reuse a name above.

``__meta__`` decodes (``json.loads(bytes(arr))``) to::

    {"format": "hilrl-episode", "version": 1, "length": T,
     "cameras": [camera names], "extras": [extra names],
     "arrays": {array name: {"shape": [...], "dtype": numpy dtype.str e.g. "<f4", "|b1"}},
     "meta": {per-episode metadata given by the caller}}

``arrays`` lists every array in the file except ``__meta__`` itself; readers check the file
against it.

Reading without hilrl::

    import json, numpy as np
    info = json.load(open(f"{DIR}/meta.json"))
    with np.load(f"{DIR}/episode_000000.npz", allow_pickle=False) as f:
        meta = json.loads(bytes(f["__meta__"]))
        state, action = f["state"], f["action"]
        front = f["images/front"]          # if meta["cameras"] has "front"

Writes are atomic: a file is written under a temporary name in the same directory, flushed
and fsync'ed, then renamed with ``os.replace``. A crash therefore never leaves a partial
file under a final name. One writer per dataset directory at a time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.storage.fsutil import NPZ_READ_ERRORS, atomic_write

__all__ = [
    "FORMAT",
    "VERSION",
    "DatasetError",
    "DatasetWriter",
    "Episode",
    "EpisodeRecorder",
    "iter_dataset",
    "list_episodes",
    "read_dataset",
    "read_dataset_info",
    "read_episode",
]

FORMAT = "hilrl-episodes"
EPISODE_FORMAT = "hilrl-episode"
VERSION = 1
META_FILE = "meta.json"
META_ARRAY = "__meta__"
IMAGE_PREFIX = "images/"

_CORE_STEP_FIELDS = ("action", "reward", "terminated", "truncated", "intervened")
_RESERVED = frozenset(("state", *_CORE_STEP_FIELDS, META_ARRAY))
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_EPISODE_RE = re.compile(r"episode_(\d{6,})\.npz")


class DatasetError(ValueError):
    """A dataset or episode is invalid, unreadable or cannot be written."""


def _episode_name(index: int) -> str:
    return f"episode_{index:06d}.npz"


def _check_name(kind: str, name: object) -> None:
    # Names become zip member names and dict keys; keep them portable and unambiguous.
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.startswith("__"):
        raise DatasetError(
            f"{kind} name {name!r} is invalid: expected a non-empty string of letters, digits, "
            "'_', '.', '-' not starting with '__'"
        )


def _check_json(what: str, value: object) -> None:
    """Require `value` to survive a JSON round trip unchanged (so reading gives it back)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{what} must be JSON-serializable (no NaN/inf): {e}") from None
    if json.loads(text) != value:
        raise DatasetError(
            f"{what} does not survive a JSON round trip unchanged (tuples, non-str keys?): "
            "use lists and str keys"
        )


def _describe(arr: object) -> str:
    if isinstance(arr, np.ndarray):
        return f"shape {tuple(arr.shape)} dtype {arr.dtype}"
    return f"{type(arr).__name__} (not a numpy array)"


def _clip(text: str, limit: int = 200) -> str:
    # zipfile puts raw header bytes into some messages; keep errors one readable line.
    return text if len(text) <= limit else text[:limit] + "..."


def _is_numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf"


@dataclass(eq=False)  # eq on ndarray fields would be ambiguous, so no generated __eq__
class Episode:
    """One recorded episode of T steps; see the module docstring for shapes and dtypes."""

    state: np.ndarray
    images: dict[str, np.ndarray]
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    intervened: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Number of steps T (there are T+1 observations)."""
        return int(np.shape(self.action)[0])

    def validate(self) -> None:
        """Raise DatasetError naming the first field that breaks the format."""

        def bad(name: str, expected: str, arr: object) -> DatasetError:
            return DatasetError(f"episode field {name!r}: expected {expected}, found "
                                f"{_describe(arr)}")

        def check(name: str, arr: object, shape: tuple, dtype: type | None) -> None:
            # In `shape`, None means any size. dtype None (extras) means any bool/int/float
            # dtype and any trailing dimensions after `shape`.
            dims = ", ".join("*" if s is None else str(s) for s in shape)
            if dtype is None:
                want = f"shape ({dims}, ...) with a bool/int/float dtype"
            else:
                want = f"shape ({dims}) dtype {np.dtype(dtype)}"
            if not isinstance(arr, np.ndarray):
                raise bad(name, want, arr)
            ndim_ok = arr.ndim >= len(shape) if dtype is None else arr.ndim == len(shape)
            sizes_ok = all(s is None or s == n for s, n in zip(shape, arr.shape, strict=False))
            dtype_ok = _is_numeric(arr.dtype) if dtype is None else arr.dtype == dtype
            if not (ndim_ok and sizes_ok and dtype_ok):
                raise bad(name, want, arr)
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                where = np.argwhere(~np.isfinite(arr))[0].tolist()
                raise DatasetError(
                    f"episode field {name!r}: expected finite values, found "
                    f"{arr[tuple(where)]} at index {where}"
                )

        if not isinstance(self.action, np.ndarray) or self.action.ndim != 2:
            raise bad("action", "shape (T, A) dtype float32", self.action)
        t = self.length
        if t < 1:
            raise DatasetError("episode field 'action': expected at least one step, found T=0")
        check("action", self.action, (t, None), np.float32)
        check("state", self.state, (t + 1, None), np.float32)
        check("reward", self.reward, (t,), np.float32)
        for name in ("terminated", "truncated", "intervened"):
            check(name, getattr(self, name), (t,), np.bool_)
        # obs[t+1] is both the next_obs of step t and the obs of step t+1, which is only
        # true inside one trajectory: an episode can only end at its last step.
        for name in ("terminated", "truncated"):
            if getattr(self, name)[:-1].any():
                step = int(np.flatnonzero(getattr(self, name)[:-1])[0])
                raise DatasetError(
                    f"episode field {name!r}: expected True only at the last step "
                    f"(T-1={t - 1}), found True at step {step}; split the episode there"
                )
        if not isinstance(self.images, Mapping):
            raise DatasetError(f"episode field 'images': expected a dict of camera arrays, "
                               f"found {type(self.images).__name__}")
        for cam, img in self.images.items():
            _check_name("camera", cam)
            check(f"images/{cam}", img, (t + 1, None, None, 3), np.uint8)
        if not isinstance(self.extras, Mapping):
            raise DatasetError(f"episode field 'extras': expected a dict of arrays, "
                               f"found {type(self.extras).__name__}")
        for name, arr in self.extras.items():
            _check_name("extra", name)
            if name in _RESERVED:
                raise DatasetError(f"extra name {name!r} is reserved for a core array")
            check(name, arr, (t,), None)
        if not isinstance(self.meta, dict):
            raise DatasetError(f"episode field 'meta': expected a dict, found "
                               f"{type(self.meta).__name__}")
        _check_json("episode field 'meta'", self.meta)

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"state": self.state}
        arrays.update({IMAGE_PREFIX + cam: img for cam, img in self.images.items()})
        arrays.update({name: getattr(self, name) for name in _CORE_STEP_FIELDS})
        arrays.update(self.extras)
        return arrays


class EpisodeRecorder:
    """Accumulates a live episode step by step, then stacks it into an Episode.

    obs is ``{"state": (S,) array, "images": {camera: (H, W, 3) uint8}}`` ("images" may be
    omitted when there are no cameras). State, action and reward are cast to float32 and
    flags to bool; images and extras keep their dtype (pass np.float32(x) for a float32
    extra). Inputs are copied, because drivers often reuse one buffer for every frame.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._states: list[np.ndarray] = []
        self._images: dict[str, list[np.ndarray]] = {}
        self._steps: dict[str, list[Any]] = {name: [] for name in _CORE_STEP_FIELDS}
        self._extras: dict[str, list[np.ndarray]] | None = None
        self._started = False

    @property
    def length(self) -> int:
        """Steps recorded so far."""
        return len(self._steps["action"])

    def start(self, obs: Mapping[str, Any]) -> None:
        """Begin a new episode with its first observation (drops any unfinished one)."""
        self._reset()
        images = obs.get("images", {}) or {}
        for cam in images:
            _check_name("camera", cam)
        self._images = {cam: [] for cam in images}
        self._append_obs(obs)
        self._started = True

    def add(
        self,
        action: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        intervened: bool,
        next_obs: Mapping[str, Any],
        **extras: Any,
    ) -> None:
        """Record one step: the action taken, its outcome and the observation after it."""
        if not self._started:
            raise DatasetError("EpisodeRecorder.add() called before start(obs)")
        step = self.length
        if self._extras is None:
            for name in extras:
                _check_name("extra", name)
                if name in _RESERVED:
                    raise DatasetError(f"extra name {name!r} is reserved for a core array")
            self._extras = {name: [] for name in extras}
        elif set(extras) != set(self._extras):
            raise DatasetError(
                f"step {step}: extras {sorted(extras)} differ from the first step's "
                f"{sorted(self._extras)}; every step must give the same extras"
            )
        self._append_obs(next_obs, step=step)
        self._append(self._steps["action"], "action", np.array(action, np.float32), step)
        self._steps["reward"].append(np.float32(reward))
        for name, flag in (("terminated", terminated), ("truncated", truncated),
                           ("intervened", intervened)):
            self._steps[name].append(bool(flag))
        for name, value in extras.items():
            self._append(self._extras[name], name, np.array(value), step)

    def finish(self, meta: Mapping[str, Any] | None = None) -> Episode:
        """Stack the recorded steps into a validated Episode and reset the recorder."""
        if not self._started:
            raise DatasetError("EpisodeRecorder.finish() called before start(obs)")
        if self.length == 0:
            raise DatasetError("EpisodeRecorder.finish(): no steps recorded since start(obs)")
        episode = Episode(
            state=np.stack(self._states),
            images={cam: np.stack(frames) for cam, frames in self._images.items()},
            action=np.stack(self._steps["action"]),
            reward=np.asarray(self._steps["reward"], dtype=np.float32),
            terminated=np.asarray(self._steps["terminated"], dtype=bool),
            truncated=np.asarray(self._steps["truncated"], dtype=bool),
            intervened=np.asarray(self._steps["intervened"], dtype=bool),
            extras={name: np.stack(values) for name, values in (self._extras or {}).items()},
            meta=dict(meta or {}),
        )
        episode.validate()
        self._reset()
        return episode

    def _append_obs(self, obs: Mapping[str, Any], step: int | None = None) -> None:
        where = "start obs" if step is None else f"step {step} next_obs"
        if "state" not in obs:
            raise DatasetError(f"{where}: missing 'state'")
        images = obs.get("images", {}) or {}
        if set(images) != set(self._images):
            raise DatasetError(
                f"{where}: cameras {sorted(images)} differ from the episode's "
                f"{sorted(self._images)}"
            )
        self._append(self._states, "state", np.array(obs["state"], np.float32), step)
        for cam, img in images.items():
            self._append(self._images[cam], f"images/{cam}", np.array(img), step)

    @staticmethod
    def _append(values: list, name: str, value: np.ndarray, step: int | None) -> None:
        # Callers pass a fresh np.array(...) copy (drivers reuse buffers). A shape change
        # is reported at the step it happens instead of as a vague np.stack error later.
        if values and value.shape != values[0].shape:
            where = "start" if step is None else f"step {step}"
            raise DatasetError(
                f"{where}: {name!r} has shape {value.shape}, earlier steps had "
                f"{values[0].shape}"
            )
        values.append(value)


def _read_meta_json(path: Path) -> dict[str, Any]:
    meta_file = path / META_FILE
    if not path.exists():
        raise DatasetError(f"{path}: dataset directory does not exist; check the path")
    if not path.is_dir():
        raise DatasetError(f"{path}: not a directory; a dataset is a directory with meta.json")
    if not meta_file.is_file():
        raise DatasetError(
            f"{meta_file}: missing; {path} is not a hilrl dataset (or meta.json was deleted; "
            "recreate it with a DatasetWriter)"
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{meta_file}: unreadable or not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DatasetError(f"{meta_file}: format is {found!r}, expected {FORMAT!r}; "
                           "this directory is not a hilrl episode dataset")
    if meta.get("version") != VERSION:
        raise DatasetError(
            f"{meta_file}: version {meta.get('version')!r} is not supported (this hilrl "
            f"reads version {VERSION}); use the hilrl release that wrote it"
        )
    if not isinstance(meta.get("info"), dict):
        raise DatasetError(f"{meta_file}: 'info' must be a JSON object")
    return meta


def _episode_index(file: Path) -> int:
    match = _EPISODE_RE.fullmatch(file.name)
    assert match is not None
    return int(match.group(1))


def _episode_files(path: Path) -> list[Path]:
    files = [p for p in path.iterdir() if _EPISODE_RE.fullmatch(p.name) and p.is_file()]
    return sorted(files, key=_episode_index)


def read_dataset_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The caller-given "info" dict of the dataset at `path`."""
    return _read_meta_json(Path(path))["info"]


def list_episodes(path: str | os.PathLike[str]) -> list[Path]:
    """Episode files of the dataset at `path`, in episode order."""
    path = Path(path)
    _read_meta_json(path)
    return _episode_files(path)


def read_episode(file: str | os.PathLike[str]) -> Episode:
    """Load and validate one episode file (never unpickles)."""
    file = Path(file)
    if not file.is_file():
        raise DatasetError(f"{file}: episode file does not exist")
    _check_zip_signature(file)
    arrays: dict[str, object] = {}
    try:
        npz = np.load(file, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):  # cannot happen after the check above
            raise DatasetError(f"{file}: not an .npz archive")
        with npz:
            # Load every member, known or not, so a pickled array anywhere is refused.
            for name in npz.files:
                arrays[name] = npz[name]
    except DatasetError:
        raise
    except NPZ_READ_ERRORS as e:
        if isinstance(e, ValueError) and "pickle" in str(e).lower():
            raise DatasetError(
                f"{file}: contains pickled objects, refused (hilrl never unpickles data; "
                "re-export it with plain numeric arrays)"
            ) from None
        raise DatasetError(
            f"{file}: not a readable .npz episode (truncated, corrupted or not an .npz: "
            f"{type(e).__name__}: {_clip(str(e))}); delete or re-record this episode"
        ) from None

    meta = _parse_episode_meta(file, arrays)
    _check_against_meta(file, arrays, meta)
    episode = Episode(
        state=arrays["state"],
        images={cam: arrays[IMAGE_PREFIX + cam] for cam in meta["cameras"]},
        action=arrays["action"],
        reward=arrays["reward"],
        terminated=arrays["terminated"],
        truncated=arrays["truncated"],
        intervened=arrays["intervened"],
        extras={name: arrays[name] for name in meta["extras"]},
        meta=meta["meta"],
    )
    try:
        episode.validate()
    except DatasetError as e:
        raise DatasetError(f"{file}: invalid episode: {e}") from None
    return episode


def _check_zip_signature(file: Path) -> None:
    # np.load treats any file that is neither zip nor .npy as a pickle and reports
    # "pickled data", which would mislabel plain garbage; sort files out by their magic.
    try:
        with open(file, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DatasetError(f"{file}: cannot be opened ({e})") from None
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return
    if head.startswith(b"\x93NUMPY"):
        raise DatasetError(f"{file}: holds a single .npy array, not an .npz episode")
    if head.startswith(b"\x80"):  # pickle protocol >= 2 opcode
        raise DatasetError(f"{file}: contains pickled objects, refused (hilrl never "
                           "unpickles data)")
    raise DatasetError(f"{file}: not an .npz archive (no zip signature; empty, truncated "
                       "or some other file); delete or re-record this episode")


def _parse_episode_meta(file: Path, arrays: dict[str, object]) -> dict[str, Any]:
    raw = arrays.get(META_ARRAY)
    if raw is None:
        raise DatasetError(f"{file}: missing the {META_ARRAY!r} array; not a hilrl episode file")
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 1:
        raise DatasetError(f"{file}: {META_ARRAY!r} must be a 1-D uint8 array, found "
                           f"{_describe(raw)}")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{file}: {META_ARRAY!r} is not valid UTF-8 JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != EPISODE_FORMAT:
        raise DatasetError(f"{file}: {META_ARRAY!r} does not describe a {EPISODE_FORMAT!r}")
    if meta.get("version") != VERSION:
        raise DatasetError(
            f"{file}: episode version {meta.get('version')!r} is not supported (this hilrl "
            f"reads version {VERSION}); use the hilrl release that wrote it"
        )
    ok = (
        isinstance(meta.get("arrays"), dict)
        and isinstance(meta.get("cameras"), list)
        and isinstance(meta.get("extras"), list)
        and isinstance(meta.get("meta"), dict)
        and all(isinstance(spec, dict) for spec in meta["arrays"].values())
    )
    if not ok:
        raise DatasetError(f"{file}: {META_ARRAY!r} lacks 'arrays', 'cameras', 'extras' or "
                           "'meta' in the expected form")
    return meta


def _check_against_meta(file: Path, arrays: dict[str, object], meta: dict[str, Any]) -> None:
    listed = set(meta["arrays"])
    expected = {"state", *_CORE_STEP_FIELDS, *meta["extras"]}
    expected |= {IMAGE_PREFIX + str(cam) for cam in meta["cameras"]}
    present = set(arrays) - {META_ARRAY}
    if listed != expected:
        raise DatasetError(f"{file}: {META_ARRAY!r} lists arrays {sorted(listed)} but its "
                           f"cameras/extras imply {sorted(expected)}")
    if missing := sorted(expected - present):
        raise DatasetError(f"{file}: missing arrays {missing}; the file is incomplete")
    if unexpected := sorted(present - expected):
        raise DatasetError(f"{file}: unexpected arrays {unexpected} not listed in "
                           f"{META_ARRAY!r}")
    for name in sorted(expected):
        arr, spec = arrays[name], meta["arrays"][name]
        if not isinstance(arr, np.ndarray):
            raise DatasetError(f"{file}: member {name!r} is not a .npy array")
        if list(arr.shape) != spec.get("shape") or arr.dtype.str != spec.get("dtype"):
            raise DatasetError(
                f"{file}: array {name!r} is {_describe(arr)} ({arr.dtype.str}) but "
                f"{META_ARRAY!r} says shape {spec.get('shape')} dtype {spec.get('dtype')}"
            )
    if meta.get("length") != np.shape(arrays["action"])[0]:
        raise DatasetError(f"{file}: {META_ARRAY!r} says length {meta.get('length')} but "
                           f"'action' has {np.shape(arrays['action'])[0]} steps")


def iter_dataset(path: str | os.PathLike[str]) -> Iterator[Episode]:
    """Yield the episodes of the dataset at `path` in order, one file at a time."""
    for file in list_episodes(path):
        yield read_episode(file)


def read_dataset(path: str | os.PathLike[str]) -> list[Episode]:
    """All episodes of the dataset at `path`, in order."""
    return list(iter_dataset(path))


class DatasetWriter:
    """Creates (or appends to) a dataset directory and writes episodes into it atomically.

    A new or empty directory gets a fresh meta.json holding `info`. An existing dataset is
    appended to: numbering continues after its last episode and its meta.json (with its
    original info) is kept. `overwrite=True` deletes the existing episodes and meta.json
    first. A directory whose meta.json is not this format, or that has episode files but no
    meta.json, is refused.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        info: Mapping[str, Any],
        overwrite: bool = False,
        compress: bool = True,
    ) -> None:
        self.path = Path(path)
        self.compress = compress
        info = dict(info)
        _check_json("dataset info", info)
        if self.path.exists() and not self.path.is_dir():
            raise DatasetError(f"{self.path}: exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        meta_file = self.path / META_FILE
        existing = _episode_files(self.path)

        if overwrite:
            if meta_file.exists():
                # Refuse to wipe a directory that belongs to something else.
                _read_meta_json(self.path)
            for file in existing:
                file.unlink()
            meta_file.unlink(missing_ok=True)
            existing = []
        if meta_file.exists():
            self.info = _read_meta_json(self.path)["info"]
        elif existing:
            raise DatasetError(
                f"{self.path}: holds episode files but no meta.json; not writing into it "
                "(restore meta.json, or pass overwrite=True to start over)"
            )
        else:
            self.info = info
            document = {"format": FORMAT, "version": VERSION, "info": info}
            payload = (json.dumps(document, indent=2, allow_nan=False) + "\n").encode("utf-8")
            atomic_write(meta_file, lambda f: f.write(payload))
        self._next_index = _episode_index(existing[-1]) + 1 if existing else 0

    @property
    def next_index(self) -> int:
        """Index the next written episode will get."""
        return self._next_index

    def write(self, episode: Episode) -> Path:
        """Validate `episode` and write it as the next episode file; returns its path."""
        episode.validate()
        arrays = episode._arrays()
        header = {
            "format": EPISODE_FORMAT,
            "version": VERSION,
            "length": episode.length,
            "cameras": list(episode.images),
            "extras": list(episode.extras),
            "arrays": {
                name: {"shape": list(arr.shape), "dtype": arr.dtype.str}
                for name, arr in arrays.items()
            },
            "meta": episode.meta,
        }
        encoded = json.dumps(header, allow_nan=False).encode("utf-8")
        arrays[META_ARRAY] = np.frombuffer(encoded, dtype=np.uint8)
        final = self.path / _episode_name(self._next_index)
        if final.exists():
            raise DatasetError(f"{final}: already exists; is another writer using "
                               f"{self.path}?")
        save = np.savez_compressed if self.compress else np.savez
        # No allow_pickle=False here: numpy < 2.1 would store it as an array. validate()
        # already guarantees every array is numeric, so nothing can be pickled.
        atomic_write(final, lambda f: save(f, **arrays))
        self._next_index += 1
        return final
