"""A small, pickle-free file format for parameter trees (pretrained encoders, classifier and
policy weights).

Why not pickle / ``np.load(allow_pickle=True)``: weights files are downloaded, copied between
machines and shared between people; unpickling one runs arbitrary code. Why not ``.npz``:
numpy has no ``bfloat16``; ``np.save`` writes ml_dtypes' bfloat16 as anonymous void ``|V2``
and the dtype is lost. And a zip of loose arrays has no tree structure and no checksum
over the whole.
So the payload is flax's msgpack serialisation (``flax.serialization.msgpack_serialize``:
shape, dtype name and raw C-order bytes per array, nested string-keyed maps for the tree;
the DESIGN's choice for parameters), wrapped in a small self-describing header::

    b"HILRL-WEIGHTS\\n"            14-byte magic (a pickle or zip or anything else fails here)
    uint64 little-endian           length of the header
    32 bytes                       sha256 of the header
    header (UTF-8 JSON)            {"format", "version", "payload_sha256", "payload_len",
                                    "manifest": {"a/b/kernel": {"shape", "dtype"}, ...},
                                    "meta": {...user JSON...}}
    payload                        msgpack bytes of the nested dict of arrays

Every check that can fail raises a subclass of :class:`WeightsError` (a ``ValueError``)
whose message names the file and, for structure problems, the offending key path.
Loaded leaves are read-only ``numpy`` arrays with exactly the stored dtype.

Converting weights you already have. Get them into a ``.npz`` whose keys are the flat
parameter paths (``"conv_init/kernel"``, ``"ResNetBlock_1/conv_proj/kernel"``, ...; with or
without a leading ``"params/"``), then::

    python -m hilrl.storage.weights convert-npz resnet10.npz resnet10.weights --meta model=resnet10
    python -m hilrl.storage.weights info resnet10.weights

``convert-npz`` reads with ``allow_pickle=False`` and verifies the file it wrote. Weights
that only exist as a pickle (serl publishes ``resnet10_params.pkl``) must be turned into an
``.npz`` by you, once, in a throwaway environment and only if you trust their source -
hilrl itself never unpickles. For example (flax's ``flatten_dict`` gives the flat keys)::

    params = <load the nested dict of arrays>
    np.savez("resnet10.npz", **{k: np.asarray(v) for k, v in
                                flax.traverse_util.flatten_dict(params, sep="/").items()})

From Python: ``save_weights("out.weights", nested_dict_of_arrays, {"model": "resnet10"})``,
and ``load_pretrained_resnet10("out.weights")`` checks every key and shape against the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from hilrl.learning.resnet import ResNet10
from hilrl.storage.fsutil import atomic_write_bytes

MAGIC = b"HILRL-WEIGHTS\n"
FORMAT_NAME = "hilrl-weights"
FORMAT_VERSION = 1
_HLEN = struct.Struct("<Q")
_PREFIX_LEN = len(MAGIC) + _HLEN.size + 32
_MAX_HEADER = 64 * 1024 * 1024
# Only plain numeric dtypes travel; anything else (object, structured, void) is refused.
ALLOWED_DTYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
})
_EMPTY = "__empty_node__"


class WeightsError(ValueError):
    """Base class: anything wrong with a weights file."""


class WeightsFormatError(WeightsError):
    """Not a hilrl weights file (wrong magic, e.g. a pickle or an npz), or unknown version."""


class WeightsCorruptError(WeightsError):
    """Truncated, extended or bit-flipped file: lengths or checksums do not match."""


class WeightsMismatchError(WeightsError):
    """A valid file whose tree, shapes, dtypes or metadata do not match what was expected."""


# --------------------------------------------------------------------------- helpers


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def _flatten(tree: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Nested str-keyed dict -> {"a/b/c": leaf}; empty sub-dicts kept as _EMPTY markers."""
    flat = traverse_util.flatten_dict(tree, keep_empty_nodes=True)
    out: dict[str, Any] = {}
    for path, leaf in flat.items():
        for k in path:
            if not isinstance(k, str) or "/" in k or not k:
                raise WeightsMismatchError(
                    f"{what}: key {k!r} in path {path!r} must be a non-empty str without '/'")
        key = "/".join(path)
        out[key] = _EMPTY if leaf is traverse_util.empty_node else leaf
    return out


def _to_state_dict(params: Any) -> dict[str, Any]:
    """Any flax-serialisable pytree (dict, FrozenDict, struct dataclass) -> nested dict."""
    sd = serialization.to_state_dict(params)
    if not isinstance(sd, dict):
        raise TypeError(f"params must be a (nested) mapping of arrays, got {type(params)}")
    return sd


def _manifest_entry(leaf: Any) -> dict[str, Any] | str:
    if leaf is _EMPTY:
        return leaf
    shape = leaf.shape if hasattr(leaf, "shape") else np.shape(leaf)
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    return {"shape": [int(d) for d in shape], "dtype": _dtype_name(dtype)}


# --------------------------------------------------------------------------- save


def save_weights(path: str | os.PathLike[str], params: Any,
                 meta: Mapping[str, Any] | None = None) -> None:
    """Write ``params`` (nested mapping of arrays) and JSON ``meta`` to ``path`` atomically.

    ``meta`` should say what the weights are for (e.g. ``{"model": "resnet10",
    "num_groups": 4}``) so that :func:`load_weights` can check it with ``expect``.
    """
    sd = _to_state_dict(params)
    flat = _flatten(sd, str(path))
    arrays: dict[str, Any] = {}
    for key, leaf in flat.items():
        if leaf is _EMPTY:
            arrays[key] = leaf
            continue
        arr = np.asarray(jax.device_get(leaf))
        if _dtype_name(arr.dtype) not in ALLOWED_DTYPES:
            raise TypeError(f"{path}: leaf {key!r} has unsupported dtype {arr.dtype}")
        arrays[key] = arr  # 0-d stays 0-d (np.ascontiguousarray would make it 1-d)
    nested = traverse_util.unflatten_dict(
        {tuple(k.split("/")): ({} if v is _EMPTY else v) for k, v in arrays.items()})
    payload = serialization.msgpack_serialize(nested, in_place=True)
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "payload_len": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "manifest": {k: _manifest_entry(v) for k, v in sorted(arrays.items())},
        "meta": dict(meta or {}),
    }
    try:
        hbytes = json.dumps(header, allow_nan=False, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(f"{path}: meta must be JSON-serialisable: {e}") from e
    blob = b"".join([MAGIC, _HLEN.pack(len(hbytes)), hashlib.sha256(hbytes).digest(),
                     hbytes, payload])
    atomic_write_bytes(path, blob)


# --------------------------------------------------------------------------- load


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify only the header (format, version, manifest, meta); cheap ``info``."""
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX_LEN)
        header, _ = _parse_prefix_and_header(path, prefix, f.read)
    return header


def _parse_prefix_and_header(path: Any, prefix: bytes, read) -> tuple[dict[str, Any], int]:
    if not prefix:
        raise WeightsCorruptError(f"{path}: file is empty")
    if not prefix.startswith(MAGIC):
        if len(prefix) < len(MAGIC) and MAGIC.startswith(prefix):
            raise WeightsCorruptError(f"{path}: file truncated inside the magic bytes")
        raise WeightsFormatError(
            f"{path}: not a hilrl weights file (starts with {prefix[:16]!r}, expected "
            f"{MAGIC!r}); pickles, .npz and other formats are never loaded - convert them "
            "with `python -m hilrl.storage.weights convert-npz`")
    if len(prefix) < _PREFIX_LEN:
        raise WeightsCorruptError(f"{path}: file truncated inside the header prefix")
    (hlen,) = _HLEN.unpack_from(prefix, len(MAGIC))
    if hlen > _MAX_HEADER:
        raise WeightsCorruptError(f"{path}: implausible header length {hlen}")
    hbytes = read(hlen)
    if len(hbytes) != hlen:
        raise WeightsCorruptError(f"{path}: file truncated inside the header "
                                  f"({len(hbytes)} of {hlen} bytes)")
    if hashlib.sha256(hbytes).digest() != prefix[len(MAGIC) + _HLEN.size:]:
        raise WeightsCorruptError(f"{path}: header checksum mismatch (file is corrupt)")
    try:
        header = json.loads(hbytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsCorruptError(f"{path}: header is not valid JSON: {e}") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise WeightsFormatError(f"{path}: header format is not {FORMAT_NAME!r}")
    if header.get("version") != FORMAT_VERSION:
        raise WeightsFormatError(f"{path}: format version {header.get('version')!r} is not "
                                 f"supported (this hilrl reads version {FORMAT_VERSION})")
    for field in ("payload_len", "payload_sha256", "manifest", "meta"):
        if field not in header:
            raise WeightsFormatError(f"{path}: header lacks {field!r}")
    return header, _PREFIX_LEN + hlen


def _check_manifest(path: Any, manifest: Any) -> None:
    if not isinstance(manifest, dict):
        raise WeightsFormatError(f"{path}: manifest is not a mapping")
    for key, entry in manifest.items():
        if entry == _EMPTY:
            continue
        if (not isinstance(entry, dict) or not isinstance(entry.get("shape"), list)
                or not all(isinstance(d, int) and d >= 0 for d in entry["shape"])):
            raise WeightsFormatError(f"{path}: bad manifest entry for key {key!r}: {entry!r}")
        if entry.get("dtype") not in ALLOWED_DTYPES:
            raise WeightsFormatError(f"{path}: key {key!r} has disallowed dtype "
                                     f"{entry.get('dtype')!r}")


def _check_expected_meta(path: Any, meta: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    for k, want in expect.items():
        if k not in meta:
            raise WeightsMismatchError(f"{path}: metadata lacks {k!r} (expected {want!r})")
        if meta[k] != want:
            raise WeightsMismatchError(
                f"{path}: metadata {k!r} is {meta[k]!r}, expected {want!r}")


def _compare_structure(path: Any, got: Mapping[str, Any], want: Mapping[str, Any],
                       against: str) -> None:
    """``got``/``want``: flat key -> manifest entry. Raise naming the first offending key."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        raise WeightsMismatchError(f"{path}: parameter tree does not match {against}: "
                                   + "; ".join(parts))
    for key in sorted(want):
        g, w = got[key], want[key]
        if isinstance(g, str) or isinstance(w, str):
            if g != w:
                raise WeightsMismatchError(f"{path}: key {key!r}: {g!r} vs {w!r} in {against}")
            continue
        if list(g["shape"]) != list(w["shape"]):
            raise WeightsMismatchError(
                f"{path}: key {key!r} has shape {tuple(g['shape'])}, {against} expects "
                f"{tuple(w['shape'])}")
        if g["dtype"] != w["dtype"]:
            raise WeightsMismatchError(
                f"{path}: key {key!r} has dtype {g['dtype']}, {against} expects {w['dtype']}")


def load_weights(path: str | os.PathLike[str], target: Any = None,
                 expect: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Read and fully verify a weights file; returns ``(params, meta)``.

    ``target``: a params tree (arrays or ``jax.ShapeDtypeStruct``, e.g. from
    ``jax.eval_shape(model.init, ...)``) whose keys, shapes and dtypes the file must match
    exactly; the result then has the target's container types. ``expect``: metadata items
    the file must carry with equal values. Never unpickles anything.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX_LEN)
        header, offset = _parse_prefix_and_header(path, prefix, f.read)
        payload = f.read()
    if len(payload) != header["payload_len"]:
        raise WeightsCorruptError(
            f"{path}: payload is {len(payload)} bytes, header says {header['payload_len']} "
            f"({'truncated' if len(payload) < header['payload_len'] else 'trailing data'})")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise WeightsCorruptError(f"{path}: payload checksum mismatch (file is corrupt)")
    manifest = header["manifest"]
    _check_manifest(path, manifest)
    meta = header["meta"]
    if expect:
        _check_expected_meta(path, meta, expect)
    if target is not None:
        want = {k: _manifest_entry(v) for k, v in
                _flatten(_to_state_dict(target), f"{path} (target)").items()}
        _compare_structure(path, manifest, want, "the target")
    try:
        restored = serialization.msgpack_restore(payload)
    except Exception as e:  # checksum passed, so this is a writer bug or a crafted file
        raise WeightsCorruptError(f"{path}: payload does not decode: {e}") from e
    if not isinstance(restored, dict):
        raise WeightsCorruptError(f"{path}: payload is not a parameter tree")
    got_flat = _flatten(restored, path)
    got = {}
    for k, v in got_flat.items():
        if not (v is _EMPTY or isinstance(v, np.ndarray)):
            raise WeightsCorruptError(f"{path}: key {k!r} holds a {type(v).__name__}, "
                                      "not an array")
        got[k] = _manifest_entry(v)
    _compare_structure(path, got, manifest, "the file's own manifest")
    if target is not None:
        try:
            restored = serialization.from_state_dict(target, restored)
        except (ValueError, KeyError) as e:
            raise WeightsMismatchError(f"{path}: cannot restore into target: {e}") from e
    return restored, meta


# --------------------------------------------------------------------------- ResNet-10


def resnet10_target(num_groups: int = 4, image_size: int = 128) -> Any:
    """Abstract (shape/dtype only, no compute) variables tree of :class:`ResNet10`."""
    model = ResNet10(num_groups=num_groups)
    return jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, image_size, image_size, 3), jnp.float32))


def load_pretrained_resnet10(path: str | os.PathLike[str],
                             num_groups: int = 4) -> dict[str, Any]:
    """Load ResNet-10 weights from a local hilrl weights file as ``{"params": ...}`` of
    jax arrays, ready for ``ResNet10(num_groups=...).apply(variables, x)``.

    The file may hold the variables dict (``{"params": {...}}``) or just the params tree
    (``{"conv_init": ..., ...}``, serl's layout). Keys, shapes and dtypes are checked
    against the model, so a wrong or partial file fails here with the offending key, not
    later inside a jitted function. If the file's meta names a ``model`` it must be
    ``"resnet10"``.
    """
    header = read_header(path)
    _check_manifest(path, header["manifest"])
    meta = header["meta"]
    if "model" in meta and meta["model"] != "resnet10":
        raise WeightsMismatchError(f"{path}: metadata model is {meta['model']!r}, "
                                   "expected 'resnet10'")
    if "num_groups" in meta and meta["num_groups"] != num_groups:
        raise WeightsMismatchError(f"{path}: weights were made for num_groups="
                                   f"{meta['num_groups']}, model has {num_groups}")
    target = resnet10_target(num_groups)
    top = {k.split("/")[0] for k in header["manifest"]}
    if top == {"params"}:
        variables, _ = load_weights(path, target=target)
    else:
        params, _ = load_weights(path, target=target["params"])
        variables = {"params": params}
    return jax.tree_util.tree_map(jnp.asarray, variables)


# --------------------------------------------------------------------------- CLI


def npz_to_tree(npz_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an ``.npz`` with flat ``"a/b/c"`` keys (``allow_pickle=False``) into a nested dict."""
    flat: dict[tuple[str, ...], np.ndarray] = {}
    with np.load(npz_path, allow_pickle=False) as z:
        for name in z.files:
            parts = tuple(name.split("/"))
            if any(not p for p in parts):
                raise WeightsMismatchError(f"{npz_path}: bad key {name!r}")
            flat[parts] = z[name]
    try:
        return traverse_util.unflatten_dict(flat)
    except (TypeError, ValueError, KeyError) as e:  # "a" and "a/b" both present
        raise WeightsMismatchError(f"{npz_path}: keys do not form a tree: {e}") from e


def _parse_meta(items: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SystemExit(f"--meta expects KEY=VALUE, got {item!r}")
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return meta


def main(argv: list[str] | None = None) -> int:
    """``python -m hilrl.storage.weights {convert-npz,info}``."""
    p = argparse.ArgumentParser(prog="python -m hilrl.storage.weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert-npz", help="flat-key .npz -> hilrl weights file")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata item (VALUE parsed as JSON when possible); repeatable")
    i = sub.add_parser("info", help="print format, meta and manifest of a weights file")
    i.add_argument("path")
    args = p.parse_args(argv)
    try:
        if args.cmd == "convert-npz":
            tree = npz_to_tree(args.input)
            meta = {"source": os.path.basename(args.input), **_parse_meta(args.meta)}
            save_weights(args.output, tree, meta)
            load_weights(args.output)  # read back: verify what we wrote
            n = len(read_header(args.output)["manifest"])
            print(f"wrote {args.output} ({n} arrays)")
        else:
            h = read_header(args.path)
            print(json.dumps({k: h[k] for k in ("format", "version", "meta")}, indent=2))
            for key, e in h["manifest"].items():
                print(f"  {key}: " + ("{}" if isinstance(e, str) else
                                      f"{e['dtype']}{tuple(e['shape'])}"))
    except (WeightsError, OSError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
