"""Pickle-free wire format of the actor <-> learner messages (protocol version 2).

This module turns messages into lists of frames and back; it never touches a socket, so the
format can be tested, fuzzed and reimplemented without ZeroMQ. The socket layer sends
``encode(...)``'s frames with ``send_multipart(frames, copy=False)`` and hands what
``recv_multipart`` returns (ROUTER identity frames already stripped) to ``decode``. Nothing
is ever unpickled: the parsers that see untrusted bytes are msgpack with strict limits and,
for compressed images only, libpng/libjpeg through OpenCV after the image's own header has
been checked against the spec; raw arrays are buffers reinterpreted by ``np.frombuffer``
after their size is checked.

Frames
------
A message is a multipart message of ``1 + n`` frames::

    frame 0        the header: one msgpack map (below), at most MAX_HEADER_BYTES (1 MiB)
    frame 1 .. n   the bytes of array 1 .. n, in the order of header["arrays"]

Array bytes are C order (row-major), little-endian, without padding: frame ``i`` holds exactly
``prod(shape) * itemsize`` bytes (0 for a zero-size array, one item for a 0-d array). A bool
is one byte, 0 or 1; any other byte value is rejected. A compressed array's frame holds its
compressed images instead ("Compressed images" below).

Header
------
A msgpack map with exactly these eight keys, in any order::

    key               msgpack type   meaning
    "type"            str            message type, one of the table below
    "v"               int            protocol version: 2 (only this one is accepted)
    "actor"           str            actor id, matching [A-Za-z0-9_.:@-]{0,128}
    "session"         str            session id, same alphabet; a restarted actor starts a new one
    "seq"             int            0 <= seq < 2**63, meaning per type (below), 0 where unused
    "policy_version"  int            -1 <= version < 2**63, -1 meaning "none"
    "arrays"          array          one array spec (map) per array frame, at most 4096
    "meta"            map            small JSON-like map of type-specific fields (below)

"int" means a msgpack integer: true/false are booleans, not ints, and are rejected where an int
is expected. An array spec is a map with these keys (no others)::

    "name"      str    slash-separated path such as "obs/images/front": 1..256 characters,
                       segments of [A-Za-z0-9_.-]+ other than "." and "..". Names are unique
                       in a message and none is a path prefix of another ("obs" and
                       "obs/state" cannot both appear), so the names always form a tree.
    "dtype"     str    one of uint8, int32, int64, float16, float32, float64, bool
    "shape"     array  0..32 ints >= 0; the product of its nonzero entries times the item
                       size stays below 2**62
    "encoding"  str    optional: "raw" (the default; the frame is the array's bytes), "png"
                       (lossless) or "jpeg" (lossy); see "Compressed images". "dtype" and
                       "shape" always describe the decoded array.
    "lengths"   array  compressed arrays only (required there, refused on raw ones): the
                       byte length of each compressed image, ints >= 0, one per image

``meta`` values are JSON-like: str, int, finite float, bool, nil, arrays, and maps with str
keys, nested at most 8 levels deep; no bin or ext values. Receivers ignore meta keys they
do not know, so a sender may add informational ones (e.g. ``ref_seq`` in an error).

Compressed images
-----------------
Only a uint8 array of shape ``[..., H, W, C]`` with C = 3 (RGB) or 1 (greyscale) and
H, W >= 1 may have encoding "png" or "jpeg"; it holds ``K = prod(shape[:-3])`` images (1 for
a plain [H, W, C]), at most 4096 (the header's list-length limit). Each image (each leading
index, in C order) is compressed on its own as one complete PNG or JPEG file (OpenCV's
``imencode``), and the frame is the K files concatenated, in order, without padding or
separators. ``lengths[k]`` is the size of
file k, so file k is ``frame[sum(lengths[:k]) : sum(lengths[:k + 1])]`` and the frame holds
exactly ``sum(lengths)`` bytes. The files store the usual colour order: array channel 0 is
red, 1 green, 2 blue (the encoder converts to OpenCV's BGR before ``imencode`` and the
decoder back after ``imdecode``), so a PNG round trip is bit-exact and any image viewer
shows the files right. PNG files are 8-bit greyscale (IHDR colour type 0) or truecolour
(type 2), zlib level 0..9 chosen by the sender (default 1); JPEG files are baseline
(SOF0; SOF1 and progressive SOF2 are accepted too) with 1 or 3 components, 8-bit, at a
quality 1..100 chosen by the sender (default 90; lossy: the learner sees an approximation).
The quality or level is not sent: a receiver does not need it.

A receiver checks, before decoding anything: the encoding is known; the array is uint8
[..., H, W, 3 or 1]; "lengths" has exactly K non-negative ints; the *decoded* size
(``prod(shape)`` bytes) counts toward ``max_bytes`` (the array counts as the larger of its
decoded size and its frame length); the frame holds ``sum(lengths)`` bytes. Then, image by
image, before calling ``imdecode``: the file's own header is parsed -- PNG: signature and a
first chunk IHDR of 13 bytes with width, height, bit depth 8 and colour type 0 or 2; JPEG:
SOI, then the marker segments up to the first frame header (SOF0/1/2, within the first
64 KiB; any other SOF, or SOS/EOI before it, is refused) with precision 8, height, width and
components -- and its (height, width, channels) must equal the spec's (H, W, C). So a file
claiming 30000 x 30000 pixels under a small spec (a decompression bomb: OpenCV would
allocate what the file claims) is refused without allocating; the output is bounded by the
spec, which ``max_bytes`` bounds. ``imdecode`` (``IMREAD_UNCHANGED``) then decodes into a
temporary, its result is checked again (uint8, [H, W, 3] or [H, W]) and copied into the
preallocated output array. Any failure (an OpenCV error or a None result: corrupt or
truncated data) raises WireError (code "value"; header and length problems: "arrays" and
"frames"). JPEG decoders tolerate some damage, so a corrupted JPEG may decode to a wrong
picture of the right size; the transport (TCP, CURVE's MAC) is what guarantees integrity.

Compressed arrays are not zero-copy: ``encode`` builds a new frame for them (the caller's
array may be reused as soon as it returns) and ``decode`` returns a new array (read-only
like the others). Compression costs CPU on both ends (128x128x3, one core: JPEG ~0.1 ms
to encode and ~0.2 ms to decode; PNG level 1 ~0.5 ms and ~0.4 ms for a smooth image, ~3 ms
to encode a noisy one, which PNG cannot shrink); ``ActorClient`` compresses in its
background thread. OpenCV is imported on the first compressed array only.

Message types
-------------
"A" is an actor, "L" the learner. "ids" says whether actor and session must be non-empty.
Types not listed with arrays carry none (header["arrays"] is empty, one frame in total).

===============  =======  ========  ==========================================================
type             from     ids       fields
===============  =======  ========  ==========================================================
hello            A -> L   required  seq: oldest unacked seq the actor holds (the next it sends);
                                    policy_version: the actor's; meta["schema"]: its Schema
hello_ok         L -> A   required  seq: next seq the learner expects from this session
                                    (every lower one is durable)
transitions      A -> L   required  arrays: a transition batch of N >= 1 (below); seq: the seq
                                    of its first transition (the batch is seq .. seq+N-1, so
                                    seq + N <= 2**63); policy_version: the actor's
ack              L -> A   required  seq: every transition of this session with a lower seq is
                                    durable (0 acknowledges nothing)
weights          L -> A   optional  arrays: >= 1 parameter leaves named by their path in the
                                    parameter tree; policy_version: the version, >= 0;
                                    meta["full"]: bool, True for the whole parameter set,
                                    False when only the trainable parameters travel
weights_request  A -> L   required  policy_version: the version the actor has (-1: none)
heartbeat        both     optional  policy_version: the sender's current version
stats            A -> L   required  meta["stats"]: map of str -> finite int or float (episode
                                    return, length, interventions, steps/s, loop overruns...)
error            both     optional  meta["reason"]: non-empty str saying what was wrong
===============  =======  ========  ==========================================================

Transition batch
----------------
A batch holds N >= 1 consecutive steps of ONE episode (1 <= N <= the schema's max_batch).
Each observation travels once: the observation arrays have N + 1 rows, every other array N::

    obs/<path>        (N + 1, ...)  rows 0 .. N-1: the observation of step 0 .. N-1; row N:
                                    the last step's next observation. So step i's obs is
                                    obs[i] and its next_obs is obs[i + 1] (0 <= i < N).
                                    E.g. obs/state (N + 1, S) float32 and
                                    obs/images/<camera> (N + 1, H, W, 3) uint8
    action            (N, A)        the action executed (the human's when intervened)
    reward            (N,)          float32
    terminated        (N,)          bool, task success/failure (no bootstrapping)
    truncated         (N,)          bool, time limit (bootstrap through it)
    intervened        (N,)          bool, the human replaced the policy's action
    extras/<name>     (N, ...)      agreed per-transition extras, e.g. extras/grasp_penalty
                                    (N,) float32

Every obs/<path> has the same N + 1 rows and every other array the same N rows (N is
defined by the non-obs arrays; a message with obs arrays only has N = rows - 1). There are
no ``next_obs/...`` arrays (protocol version 1 sent them, N rows each, duplicating every
frame); a message carrying one is rejected. Within a batch, a step's next observation IS
the following step's observation: a sender must only put steps i and i + 1 in one batch when
step i did not end the episode (terminated or truncated) and step i + 1's obs equals step
i's next_obs. ``ActorClient`` closes a batch at an episode end and whenever a step's obs
differs from the previous next_obs (see its docstring); only the last step of a batch may be
terminated or truncated.

``transitions_view(message)`` gives the per-step form, mirroring
``ReplayBuffer.add(obs, action, reward, terminated, truncated, next_obs, intervened,
**extras)``: ``{"obs": {...}, "next_obs": {...}, "action", "reward", "terminated",
"truncated", "intervened", "extras": {...}}``, each with N rows, where obs is ``obs[:-1]``
and next_obs ``obs[1:]`` -- numpy views of the received frames, no copy.
``Message.tree()`` nests the arrays as sent (obs with N + 1 rows, no next_obs): what the
learner adds with ``ReplayBuffer.add_batch``.
``hilrl.envs.spec.EnvSpec.wire_schema()`` is exactly what the learner's replay buffers
(``EnvSpec.replay_kwargs()``) accept.

Schema
------
The per-transition specs (without the batch dimension) agreed at hello, sent as
``meta["schema"]``::

    {"obs": {<path>: {"dtype": str, "shape": [int, ...]}, ...},   at least one path
     "action": {"dtype": str, "shape": [int, ...]},
     "extras": {<name>: {"dtype": str, "shape": [int, ...]}, ...},  may be empty
     "max_batch": int}                                             1 .. 1048576

Paths and names follow the array-name rules. A transitions message matches a schema when its
array names are exactly obs/<path>, action, reward, terminated, truncated, intervened and
extras/<name>, each with the agreed dtype and shape: (N + 1, *agreed shape) for obs/<path>,
(N, *agreed shape) for the others, with reward float32 () and the three flags bool ().

Validation
----------
``decode`` checks, in this order: the frame list (a list of at most 4097 contiguous
bytes-like frames); the header frame's size and its msgpack encoding; the version; the header
fields and their types; the array specs (including encoding and lengths); meta; the rules
of the message type (including a transitions batch's N: N + 1 rows for every obs/ array, N
for every other one, N >= 1, no next_obs/ arrays); the total size (header bytes + all
array bytes <= max_bytes, decoded sizes for compressed arrays, computed from the header
alone, before any array frame is touched); the schema (transitions only, when one is given);
the frame count; then, array by array, the frame's length, bool bytes being 0 or 1, float
values being finite, and for a compressed array each image's embedded header, then its
decoding ("Compressed images"); last, for transitions, that no step but
the last is terminated or truncated. The first failure raises ``WireError`` (a
ValueError) whose message names the field or array and what was expected, and whose ``code``
is a short category for counting rejects: frames, header, version, type, arrays, size, batch,
schema, meta, value. ``encode`` runs the same header checks on what it builds and also checks
the array values, so whatever it returns ``decode`` accepts (size cap and schema aside).

Decoded raw arrays are read-only views of the received frames (no copy); they keep the
frames alive. Encoded raw frames are views of the caller's arrays (copied only for a
big-endian or non-contiguous input): do not modify those arrays until ZeroMQ has sent them.
Compressed arrays are copies both ways (above).
"""

from __future__ import annotations

import math
import operator
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import numpy as np
from msgpack.exceptions import StackError, UnpackException

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BYTES",
    "DTYPES",
    "ENCODINGS",
    "MAX_ARRAYS",
    "MAX_HEADER_BYTES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "ArraySpec",
    "Compression",
    "Message",
    "Schema",
    "WireError",
    "compression",
    "decode",
    "encode",
    "flatten",
    "transitions_view",
    "unflatten",
]

PROTOCOL_VERSION = 2
MESSAGE_TYPES = ("hello", "hello_ok", "transitions", "ack", "weights", "weights_request",
                 "heartbeat", "stats", "error")
DTYPES = ("uint8", "int32", "int64", "float16", "float32", "float64", "bool")
ENCODINGS = ("raw", "png", "jpeg")  # see "Compressed images" in the module docstring
DEFAULT_PNG_LEVEL = 1  # zlib level 0..9: 1 is much faster than 9 and nearly as small
DEFAULT_JPEG_QUALITY = 90

# 256 MiB: a 50 MB parameter set or a batch of a few hundred 2x128x128x3 transitions fits.
# Callers pass their own cap (the socket layer sets ZMQ_MAXMSGSIZE to the same value).
DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_MAX_BATCH = 1024
MAX_BATCH_LIMIT = 1 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 4096  # a large network has a few hundred parameter leaves
MAX_NDIM = 32  # numpy 1.x's limit
MAX_NAME_LEN = 256
MAX_ID_LEN = 128
MAX_META_DEPTH = 8
MAX_STR_LEN = 64 << 10

_INT_MAX = (1 << 63) - 1
_SHAPE_LIMIT = 1 << 62  # numpy refuses to create arrays whose nominal byte size overflows
_HEADER_FIELDS = ("type", "v", "actor", "session", "seq", "policy_version", "arrays", "meta")
_SPEC_KEYS = frozenset(("name", "dtype", "shape", "encoding", "lengths"))
_SCHEMA_KEYS = frozenset(("obs", "action", "extras", "max_batch"))
_FLAGS = ("terminated", "truncated", "intervened")
_ENDS = ("terminated", "truncated")  # flags that end an episode: only a batch's last step
# Types sent by an actor, or addressed to one actor's session: they must say whose they are.
_NEEDS_IDS = frozenset(("hello", "hello_ok", "transitions", "ack", "weights_request", "stats"))
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.-]+")
_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]*")
_FINITE_CHUNK = 1 << 20  # elements per np.isfinite call, so the temporary stays ~1 MB


class WireError(ValueError):
    """A message breaks the wire format; the message says what and where.

    ``code`` is a short category for counting rejects (see the module docstring).
    """

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class ArraySpec(NamedTuple):
    """dtype name (one of DTYPES) and shape of an array."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Spec:
    # One array of a message as its header describes it. nbytes is the decoded size.
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    encoding: str = "raw"
    lengths: tuple[int, ...] = ()  # compressed only: the byte length of each image

    @property
    def frame_bytes(self) -> int:
        """The length the array's frame must have."""
        return self.nbytes if self.encoding == "raw" else sum(self.lengths)


# ---------------------------------------------------------------------------- small checks


def _kind(value: object) -> str:
    """msgpack-ish name of a decoded value's type, for error messages."""
    names = {dict: "map", list: "array", tuple: "array", str: "str", bytes: "bin",
             bool: "bool", int: "int", float: "float", type(None): "nil"}
    return names.get(type(value), type(value).__name__)


def _is_int(value: object) -> bool:
    # bool is a subclass of int in Python; on the wire true/false are not integers.
    return isinstance(value, int) and not isinstance(value, bool)


def _clip(text: str, limit: int = 120) -> str:
    # Hostile input ends up in error messages; keep them one readable line.
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.replace("\n", " ")


def _check_name(name: object, what: str = "array") -> str:
    ok = (isinstance(name, str) and 0 < len(name) <= MAX_NAME_LEN
          and all(_SEGMENT_RE.fullmatch(s) and s not in (".", "..") for s in name.split("/")))
    if not ok:
        shown = _clip(repr(name)) if isinstance(name, str) else f"of type {_kind(name)}"
        raise WireError(f"{what} name {shown} is invalid: expected 1..{MAX_NAME_LEN} characters "
                        "of '/'-separated segments made of letters, digits, '_', '.', '-' "
                        "(not '.' or '..')", code="arrays")
    return name


def _check_names(names: Sequence[str], what: str = "array") -> None:
    """Names must be valid, unique, and form a tree (no name is a prefix path of another)."""
    seen: set[str] = set()
    for name in names:
        _check_name(name, what)
        if name in seen:
            raise WireError(f"{what} name {name!r} appears twice", code="arrays")
        seen.add(name)
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in seen:
                raise WireError(f"{what} names {parent!r} and {name!r} conflict: one is a "
                                "path prefix of the other, so they do not form a tree",
                                code="arrays")


def _check_spec(where: str, dtype: object, shape: object, code: str = "arrays") -> ArraySpec:
    if not isinstance(dtype, str):
        raise WireError(f"{where}: dtype must be a str, got {_kind(dtype)}", code=code)
    if dtype not in DTYPES:
        raise WireError(f"{where}: dtype {_clip(repr(dtype))} is not one of {DTYPES}",
                        code=code)
    if not isinstance(shape, list | tuple):
        raise WireError(f"{where}: shape must be an array of ints, got {_kind(shape)}",
                        code=code)
    if len(shape) > MAX_NDIM:
        raise WireError(f"{where}: shape has {len(shape)} dimensions, more than {MAX_NDIM}",
                        code=code)
    for dim in shape:
        if not _is_int(dim):
            raise WireError(f"{where}: shape {_clip(repr(list(shape)))} holds a {_kind(dim)}, "
                            "expected ints", code=code)
        if dim < 0:
            raise WireError(f"{where}: shape {list(shape)} has a negative dimension",
                            code=code)
    # Zero-size arrays need a sane nominal size too: numpy will not create (0, 2**40, 2**40).
    if math.prod(max(d, 1) for d in shape) * np.dtype(dtype).itemsize >= _SHAPE_LIMIT:
        raise WireError(f"{where}: shape {list(shape)} is too large", code="size")
    return ArraySpec(dtype, tuple(shape))


def _check_json_like(value: object, where: str = "meta", depth: int = 0) -> None:
    """Require a JSON-like value: what both msgpack and JSON loggers can hold unchanged."""
    if depth > MAX_META_DEPTH:
        raise WireError(f"{where}: nested deeper than {MAX_META_DEPTH} levels", code="meta")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise WireError(f"{where}: key {_clip(repr(key))} is a {_kind(key)}, "
                                "expected str", code="meta")
            _check_json_like(item, f"{where}[{_clip(repr(key), 40)}]", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_like(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise WireError(f"{where}: {value} is not a finite number", code="meta")
    elif not (value is None or isinstance(value, str | int)):  # int covers bool
        raise WireError(f"{where}: a {_kind(value)} is not a JSON-like value (str, int, "
                        "float, bool, nil, array, map)", code="meta")


# ---------------------------------------------------------------------------- trees


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``{"obs": {"images": {"front": a}}}`` -> ``{"obs/images/front": a}``.

    Every value that is not a Mapping is a leaf. Keys may already contain '/' (a flat dict
    flattens to itself). Empty sub-dicts vanish. Raises WireError for invalid or conflicting
    names.
    """
    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if not isinstance(key, str):
                raise WireError(f"key {key!r} under {prefix or 'the top level'!r} is a "
                                f"{type(key).__name__}, expected str", code="arrays")
            path = f"{prefix}/{key}" if prefix else key
            if isinstance(value, Mapping):
                walk(value, path)
            elif path in out:
                raise WireError(f"name {path!r} appears twice", code="arrays")
            else:
                out[path] = value

    walk(tree, "")
    _check_names(list(out))
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"obs/images/front": a}`` -> ``{"obs": {"images": {"front": a}}}`` (inverse of flatten)."""
    _check_names(list(flat))
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


# ---------------------------------------------------------------------------- schema


def _schema_specs(where: str, value: Mapping[str, Any]) -> dict[str, ArraySpec]:
    # Schema constructor input: {path: (dtype, shape)}, flat or nested.
    if not isinstance(value, Mapping):
        raise WireError(f"schema {where}: expected a dict of path -> (dtype, shape), got "
                        f"{type(value).__name__}", code="schema")
    specs = {}
    for path, spec in flatten(value).items():
        if not isinstance(spec, Sequence) or isinstance(spec, str) or len(spec) != 2:
            raise WireError(f"schema {where} {path!r}: expected (dtype, shape), got "
                            f"{_clip(repr(spec))}", code="schema")
        specs[path] = _check_spec(f"schema {where} {path!r}", spec[0], spec[1], code="schema")
    return specs


def _spec_meta(spec: ArraySpec) -> dict[str, Any]:
    return {"dtype": spec.dtype, "shape": list(spec.shape)}


def _spec_from_meta(where: str, value: object) -> ArraySpec:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape"}:
        raise WireError(f"{where}: expected a map with exactly 'dtype' and 'shape', got "
                        f"{_clip(repr(value))}", code="schema")
    return _check_spec(where, value["dtype"], value["shape"], code="schema")


@dataclass(frozen=True)
class Schema:
    """The agreed layout of one transition (without the batch dimension).

    Args:
        obs: ``{path: (dtype, shape)}`` of the observation, flat ("images/front") or nested
            (``{"images": {"front": ...}}``); at least one entry. next_obs is the same
            (on the wire it is the next row of obs, see "Transition batch").
        action: ``(dtype, shape)`` of the action, e.g. ``("float32", (7,))``.
        extras: ``{name: (dtype, shape)}`` of per-transition extras.
        max_batch: the most transitions one message may carry.

    reward (float32) and terminated/truncated/intervened (bool) are fixed, not configurable.
    Raises WireError when something is malformed.
    """

    obs: Mapping[str, ArraySpec]
    action: ArraySpec
    extras: Mapping[str, ArraySpec] = field(default_factory=dict)
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        obs = _schema_specs("obs", self.obs)
        if not obs:
            raise WireError("schema obs: needs at least one observation array", code="schema")
        if not isinstance(self.action, Sequence) or len(self.action) != 2:
            raise WireError(f"schema action: expected (dtype, shape), got "
                            f"{_clip(repr(self.action))}", code="schema")
        action = _check_spec("schema action", self.action[0], self.action[1], code="schema")
        extras = _schema_specs("extras", self.extras)
        if not _is_int(self.max_batch) or not 1 <= self.max_batch <= MAX_BATCH_LIMIT:
            raise WireError(f"schema max_batch must be an int in 1..{MAX_BATCH_LIMIT}, got "
                            f"{_clip(repr(self.max_batch))}", code="schema")
        # Frozen dataclass: normalise in place once, so equal schemas compare equal.
        object.__setattr__(self, "obs", obs)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "extras", extras)

    def fields(self) -> dict[str, ArraySpec]:
        """Array name -> per-row spec of the arrays a transitions message holds: obs/<path>
        (N + 1 rows on the wire), action, reward, the flags and extras/<name> (N rows)."""
        out = {f"obs/{p}": s for p, s in self.obs.items()}
        out["action"] = self.action
        out["reward"] = ArraySpec("float32", ())
        out.update({name: ArraySpec("bool", ()) for name in _FLAGS})
        out.update({f"extras/{name}": s for name, s in self.extras.items()})
        return out

    def step_fields(self) -> dict[str, ArraySpec]:
        """Array name -> spec of one step as ``ActorClient.send_transition`` takes it and
        ``transitions_view`` gives it: ``fields()`` plus next_obs/<path> (flat names)."""
        out = self.fields()
        out.update({f"next_obs/{p}": s for p, s in self.obs.items()})
        return out

    def to_meta(self) -> dict[str, Any]:
        """The msgpack/JSON form sent as a hello's ``meta["schema"]``."""
        return {
            "obs": {p: _spec_meta(s) for p, s in self.obs.items()},
            "action": _spec_meta(self.action),
            "extras": {name: _spec_meta(s) for name, s in self.extras.items()},
            "max_batch": self.max_batch,
        }

    @classmethod
    def from_meta(cls, value: object) -> Schema:
        """Parse ``to_meta()``'s form as received from a peer (raises WireError)."""
        if not isinstance(value, dict):
            raise WireError(f"schema must be a map, got {_kind(value)}", code="schema")
        missing = sorted(_SCHEMA_KEYS - {"extras"} - set(value))
        unknown = sorted(_clip(repr(k)) for k in value if k not in _SCHEMA_KEYS)
        if missing or unknown:
            raise WireError(f"schema must have keys 'obs', 'action', 'max_batch' and "
                            f"optionally 'extras'; missing {missing}, unknown {unknown}",
                            code="schema")
        groups = {}
        for group in ("obs", "extras"):
            specs = value.get(group, {})
            if not isinstance(specs, dict):
                raise WireError(f"schema {group} must be a map, got {_kind(specs)}",
                                code="schema")
            _check_names(list(specs), what=f"schema {group}")
            groups[group] = {k: _spec_from_meta(f"schema {group} {k!r}", v)
                             for k, v in specs.items()}
        action = _spec_from_meta("schema action", value["action"])
        return cls(groups["obs"], action, groups["extras"], value["max_batch"])

    def check(self, arrays: Mapping[str, Any]) -> int:
        """Check a batch in the wire layout (flat or nested dict of arrays: obs/<path> with
        N + 1 rows, no next_obs, the rest N rows) against the schema; returns N."""
        specs = []
        for name, value in flatten(arrays).items():
            arr = np.asarray(value)
            spec = _check_spec(f"array {name!r}", arr.dtype.name, list(arr.shape))
            specs.append(_Spec(name, spec.dtype, spec.shape, arr.nbytes))
        return self._check_specs(specs)

    def _check_specs(self, specs: Sequence[_Spec]) -> int:
        n = _batch_size(specs)
        want = self.fields()
        got = {s.name: s for s in specs}
        if missing := sorted(set(want) - set(got)):
            raise WireError(f"arrays {missing} of the agreed schema are missing",
                            code="schema")
        if unexpected := sorted(set(got) - set(want)):
            raise WireError(f"arrays {unexpected} are not in the agreed schema",
                            code="schema")
        for name, agreed in want.items():
            spec = got[name]
            if spec.dtype != agreed.dtype:
                raise WireError(f"array {name!r}: dtype {spec.dtype} is not the agreed "
                                f"{agreed.dtype}", code="schema")
            if spec.shape[1:] != agreed.shape:
                lead = "N + 1" if _is_obs(name) else "N"
                batched = ", ".join([lead, *map(str, agreed.shape)])
                raise WireError(f"array {name!r}: shape {list(spec.shape)} is not the agreed "
                                f"[{batched}] with N={n}", code="schema")
        if n > self.max_batch:
            raise WireError(f"batch of {n} transitions exceeds the agreed max_batch "
                            f"{self.max_batch}", code="batch")
        return n

    def mismatch(self, other: Schema) -> str | None:
        """None when equal, else a sentence naming the first difference (for hello replies)."""
        mine, theirs = self.fields(), other.fields()
        for name in sorted(set(mine) | set(theirs)):
            if name not in theirs:
                return f"{name!r} is missing from the other schema"
            if name not in mine:
                return f"{name!r} is not in this schema"
            if mine[name] != theirs[name]:
                a, b = mine[name], theirs[name]
                return (f"{name!r} is {a.dtype} {list(a.shape)} here but {b.dtype} "
                        f"{list(b.shape)} in the other schema")
        if self.max_batch != other.max_batch:
            return f"max_batch is {self.max_batch} here but {other.max_batch} in the other"
        return None


def _is_obs(name: str) -> bool:
    return name.startswith("obs/")


def _batch_size(specs: Sequence[_Spec]) -> int:
    """N >= 1 of a transitions message: every obs/ array has N + 1 rows (the N observations,
    then the last step's next observation), every other array N; no next_obs/ arrays."""
    if not specs:
        raise WireError("a transitions message carries no arrays; it needs a batch of at "
                        "least one transition", code="batch")
    for spec in specs:
        if not spec.shape:
            raise WireError(f"array {spec.name!r}: shape [] has no leading batch dimension; "
                            "every array of a transitions message is [N, ...] (obs/ arrays "
                            "[N + 1, ...])", code="batch")
        if spec.name.startswith("next_obs/"):
            raise WireError(f"array {spec.name!r}: a transitions message of protocol version "
                            f"{PROTOCOL_VERSION} carries no next_obs/ arrays; step i's next "
                            "observation is row i + 1 of obs/ (N + 1 rows)", code="batch")
    obs = [s for s in specs if _is_obs(s.name)]
    rest = [s for s in specs if not _is_obs(s.name)]
    if not obs:
        raise WireError("a transitions message carries no obs/ array; it needs the N + 1 "
                        "observations of its N steps", code="batch")
    if rest:
        first = rest[0]
        n = first.shape[0]
        for spec in rest[1:]:
            if spec.shape[0] != n:
                raise WireError(f"inconsistent batch sizes: array {first.name!r} has {n} rows "
                                f"but {spec.name!r} has {spec.shape[0]}; every array of a "
                                "transitions message other than obs/ has the leading "
                                "dimension N", code="batch")
        where = f"N = {n} as in {first.name!r}"
    else:
        first = obs[0]
        n = first.shape[0] - 1
        where = f"N = {n} from {first.name!r}"
    for spec in obs:
        if spec.shape[0] != n + 1:
            raise WireError(f"array {spec.name!r} has {spec.shape[0]} rows, expected N + 1 = "
                            f"{n + 1} ({where}): obs/ arrays hold the N observations of the "
                            "batch's steps followed by the last step's next observation",
                            code="batch")
    if n < 1:
        raise WireError("batch size N is 0; a transitions message carries at least one "
                        "transition (obs/ arrays: at least 2 rows)", code="batch")
    return n


def _check_episode(arrays: Mapping[str, np.ndarray]) -> None:
    """Only a batch's last step may end the episode: step i's next_obs is step i + 1's obs."""
    for name in _ENDS:
        flags = arrays.get(name)
        if flags is None or flags.dtype != np.bool_ or flags.ndim != 1 or flags.size < 2:
            continue
        if flags[:-1].any():
            i = int(np.argmax(flags[:-1]))
            raise WireError(f"array {name!r}: step {i} of {flags.size} is {name} but not the "
                            "last; a transitions batch holds steps of one episode, so only its "
                            "last step may end it", code="value")


# ---------------------------------------------------------------------------- header


@dataclass(frozen=True)
class _Header:
    type: str
    actor: str
    session: str
    seq: int
    policy_version: int
    specs: list[_Spec]
    meta: dict[str, Any]


def _refuse_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _unpack_header(view: memoryview) -> object:
    if view.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"header frame is {view.nbytes} bytes, more than the "
                        f"{MAX_HEADER_BYTES} byte limit", code="header")
    try:
        # Limits: no element count beyond what a real header needs, so a few hostile bytes
        # cannot claim a huge list; no bin or ext values (max lengths 0, hook refuses).
        return msgpack.unpackb(
            view, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_STR_LEN, max_bin_len=0, max_array_len=MAX_ARRAYS,
            max_map_len=MAX_ARRAYS, max_ext_len=0, ext_hook=_refuse_ext,
        )
    except (ValueError, TypeError, OverflowError, UnpackException) as e:
        detail = str(e) or ("nested too deeply" if isinstance(e, StackError) else "")
        raise WireError(f"frame 0 is not a valid msgpack header ({type(e).__name__}: "
                        f"{_clip(detail)})", code="header") from None


def _check_int(name: str, value: object, low: int) -> int:
    if not _is_int(value):
        raise WireError(f"header field {name!r} must be an int, got {_kind(value)}",
                        code="header")
    if not low <= value <= _INT_MAX:
        raise WireError(f"header field {name!r} must be in {low}..2**63-1, got {value}",
                        code="header")
    return value


def _check_id(name: str, value: object, required: bool, msg_type: str) -> str:
    if not isinstance(value, str):
        raise WireError(f"header field {name!r} must be a str, got {_kind(value)}",
                        code="header")
    if len(value) > MAX_ID_LEN or not _ID_RE.fullmatch(value):
        raise WireError(f"header field {name!r} {_clip(repr(value))} is invalid: expected at "
                        f"most {MAX_ID_LEN} of letters, digits, '_', '.', ':', '@', '-'",
                        code="header")
    if required and not value:
        raise WireError(f"header field {name!r} is empty; a {msg_type!r} message must name "
                        f"its {name}", code="header")
    return value


def _check_specs(value: object) -> list[_Spec]:
    if not isinstance(value, list):
        raise WireError(f"header field 'arrays' must be an array of array specs, got "
                        f"{_kind(value)}", code="header")
    specs = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise WireError(f"array spec {i} must be a map, got {_kind(item)}", code="arrays")
        keys = set(item)
        if not {"name", "dtype", "shape"} <= keys or not keys <= _SPEC_KEYS:
            raise WireError(f"array spec {i} has keys {sorted(map(repr, keys))}; expected "
                            "'name', 'dtype', 'shape' and optionally 'encoding'",
                            code="arrays")
        name = _check_name(item["name"])
        encoding = item.get("encoding", "raw")
        if not isinstance(encoding, str) or encoding not in ENCODINGS:
            raise WireError(f"array {name!r}: encoding {_clip(repr(encoding))} is not "
                            f"supported; version {PROTOCOL_VERSION} knows {ENCODINGS}",
                            code="arrays")
        spec = _check_spec(f"array {name!r}", item["dtype"], item["shape"])
        nbytes = math.prod(spec.shape) * np.dtype(spec.dtype).itemsize
        lengths: tuple[int, ...] = ()
        if encoding == "raw":
            if "lengths" in item:
                raise WireError(f"array {name!r}: 'lengths' belongs to compressed arrays "
                                "only; a raw array's frame is the array itself",
                                code="arrays")
        else:
            _check_image_shape(f"array {name!r}", encoding, spec.dtype, spec.shape)
            lengths = _check_lengths(name, item.get("lengths"), spec.shape)
        specs.append(_Spec(name, spec.dtype, spec.shape, nbytes, encoding, lengths))
    _check_names([s.name for s in specs])
    return specs


def _check_header(header: object) -> _Header:
    if not isinstance(header, dict):
        raise WireError(f"header is a msgpack {_kind(header)}, expected a map with the fields "
                        f"{list(_HEADER_FIELDS)}", code="header")
    # The version first: another version may well have other fields.
    if "v" in header:
        version = _check_int("v", header["v"], 0)
        if version != PROTOCOL_VERSION:
            raise WireError(f"protocol version {version} is not supported (this hilrl speaks "
                            f"version {PROTOCOL_VERSION}); run the same hilrl release on actor "
                            "and learner", code="version")
    if missing := [f for f in _HEADER_FIELDS if f not in header]:
        raise WireError(f"header lacks field(s) {missing}", code="header")
    if unknown := sorted(_clip(repr(k), 40) for k in header if k not in _HEADER_FIELDS):
        raise WireError(f"header has unknown field(s) {unknown}", code="header")
    msg_type = header["type"]
    if not isinstance(msg_type, str):
        raise WireError(f"header field 'type' must be a str, got {_kind(msg_type)}",
                        code="header")
    if msg_type not in MESSAGE_TYPES:
        raise WireError(f"unknown message type {_clip(repr(msg_type))}; expected one of "
                        f"{MESSAGE_TYPES}", code="type")
    ids = msg_type in _NEEDS_IDS
    head = _Header(
        type=msg_type,
        actor=_check_id("actor", header["actor"], ids, msg_type),
        session=_check_id("session", header["session"], ids, msg_type),
        seq=_check_int("seq", header["seq"], 0),
        policy_version=_check_int("policy_version", header["policy_version"], -1),
        specs=_check_specs(header["arrays"]),
        meta=header["meta"],
    )
    if not isinstance(head.meta, dict):
        raise WireError(f"header field 'meta' must be a map, got {_kind(head.meta)}",
                        code="header")
    _check_json_like(head.meta)
    _check_type_rules(head)
    return head


def _check_type_rules(head: _Header) -> None:
    """What each message type requires beyond the common header (table in the docstring)."""
    t, meta = head.type, head.meta
    if t in ("transitions", "weights"):
        if not head.specs:
            raise WireError(f"a {t!r} message must carry at least one array", code="arrays")
    elif head.specs:
        raise WireError(f"a {t!r} message carries no arrays, got {len(head.specs)}",
                        code="arrays")
    if t == "transitions":
        n = _batch_size(head.specs)
        if head.seq + n - 1 > _INT_MAX:
            raise WireError(f"seq {head.seq} + batch size {n} passes 2**63", code="header")
    elif t == "hello":
        if "schema" not in meta:
            raise WireError("a 'hello' message needs meta['schema'] (the actor's Schema)",
                            code="meta")
        try:
            Schema.from_meta(meta["schema"])
        except WireError as e:
            raise WireError(f"hello meta['schema']: {e}", code="meta") from None
    elif t == "weights":
        if not isinstance(meta.get("full"), bool):
            raise WireError(f"a 'weights' message needs meta['full'] as a bool (whole set or "
                            f"trainable part), got {_kind(meta.get('full'))}", code="meta")
        if head.policy_version < 0:
            raise WireError("a 'weights' message must carry its version in policy_version "
                            f"(>= 0), got {head.policy_version}", code="header")
    elif t == "stats":
        stats = meta.get("stats")
        if not isinstance(stats, dict):
            raise WireError(f"a 'stats' message needs meta['stats'] as a map of numbers, got "
                            f"{_kind(stats)}", code="meta")
        for key, value in stats.items():
            if not (_is_int(value) or isinstance(value, float)):
                raise WireError(f"meta['stats'][{_clip(repr(key), 40)}] must be a number, got "
                                f"{_kind(value)}", code="meta")
    elif t == "error":
        if not isinstance(meta.get("reason"), str) or not meta["reason"]:
            raise WireError("an 'error' message needs meta['reason'] as a non-empty str",
                            code="meta")


# ---------------------------------------------------------------------------- arrays


def _frame_views(frames: object) -> list[memoryview]:
    if not isinstance(frames, list | tuple):
        raise WireError(f"a message is a list of frames, got {type(frames).__name__}",
                        code="frames")
    if not frames:
        raise WireError("message has no frames; frame 0 must be the msgpack header",
                        code="frames")
    if len(frames) > MAX_ARRAYS + 1:
        raise WireError(f"message has {len(frames)} frames, more than the limit of "
                        f"{MAX_ARRAYS + 1}", code="frames")
    views = []
    for i, frame in enumerate(frames):
        try:
            view = memoryview(frame)  # type: ignore[arg-type]
            if not view.c_contiguous:
                raise ValueError("not contiguous")
            if view.ndim != 1 or view.format != "B":
                view = view.cast("B")
        except (TypeError, ValueError):
            raise WireError(f"frame {i} is a {type(frame).__name__}, not a contiguous "
                            "bytes-like buffer", code="frames") from None
        views.append(view)
    return views


def _check_values(name: str, arr: np.ndarray) -> None:
    """Floats must be finite, bools 0 or 1 (arr is C-contiguous)."""
    if arr.size == 0 or arr.dtype.kind not in "fb":
        return
    flat = arr.reshape(-1)
    if arr.dtype.kind == "b":
        raw = flat.view(np.uint8)
        if (raw > 1).any():
            i = int(np.argmax(raw > 1))
            index = [int(x) for x in np.unravel_index(i, arr.shape)]
            raise WireError(f"array {name!r}: bool byte {int(raw[i])} at index {index}; a "
                            "bool is sent as 0 or 1", code="value")
        return
    # In chunks, so a 50 MB parameter array needs ~1 MB of temporary, not 12.5 MB.
    for start in range(0, flat.size, _FINITE_CHUNK):
        ok = np.isfinite(flat[start:start + _FINITE_CHUNK])
        if not ok.all():
            i = start + int(np.argmin(ok))
            value = flat[i]
            what = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
            index = [int(x) for x in np.unravel_index(i, arr.shape)]
            raise WireError(f"array {name!r}: {what} at index {index}; float arrays must be "
                            "finite", code="value")


def _view_array(view: memoryview, spec: _Spec) -> np.ndarray:
    dtype = np.dtype(spec.dtype).newbyteorder("<")  # the wire is little-endian
    if spec.nbytes == 0:
        arr = np.zeros(spec.shape, dtype)
    else:
        arr = np.frombuffer(view, dtype=dtype).reshape(spec.shape)
    arr.flags.writeable = False  # the same whether the frame was bytes or a bytearray
    return arr


def _prepare(name: str, value: Any) -> np.ndarray:
    """A C-contiguous little-endian array of an allowed dtype; copies only when it must."""
    arr = np.asarray(value)
    if arr.dtype.name not in DTYPES:
        raise WireError(f"array {name!r}: dtype {arr.dtype.name} is not one of {DTYPES}",
                        code="arrays")
    return np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")


def _frame(arr: np.ndarray) -> memoryview:
    # A flat byte view of the array's memory: no copy, and a plain 'B' buffer for ZeroMQ.
    return memoryview(arr.reshape(-1).view(np.uint8))


# ---------------------------------------------------------------------------- images

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {0: 1, 2: 3}  # IHDR colour type -> channels: greyscale, truecolour
_JPEG_SOF = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
# Other start-of-frame markers (lossless, hierarchical, arithmetic coding) are refused.
_JPEG_OTHER_SOF = frozenset((0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_NO_LENGTH = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM, RST0..7: no length field
_JPEG_HEADER_SCAN = 1 << 16  # the frame header must start within this many bytes


class Compression(NamedTuple):
    """How one array travels: ``encoding`` one of ENCODINGS; ``level`` the PNG zlib level
    (0..9) or the JPEG quality (1..100); None for raw."""

    encoding: str
    level: int | None = None


def compression(value: Any) -> Compression:
    """Normalise a compression setting: ``"raw"``, ``"png"`` (level DEFAULT_PNG_LEVEL),
    ``("png", level 0..9)``, ``"jpeg"`` (quality DEFAULT_JPEG_QUALITY), ``("jpeg", quality
    1..100)`` or a Compression. Raises WireError for anything else."""
    given = (value,) if isinstance(value, str) else value
    if (isinstance(given, tuple | list) and 1 <= len(given) <= 2
            and isinstance(given[0], str) and given[0] in ENCODINGS):
        encoding = given[0]
        level = given[1] if len(given) == 2 else None
        if encoding == "raw":
            if level is None:
                return Compression("raw")
        else:
            low, high, default = ((0, 9, DEFAULT_PNG_LEVEL) if encoding == "png"
                                  else (1, 100, DEFAULT_JPEG_QUALITY))
            level = default if level is None else level
            if (_is_int(level) or isinstance(level, np.integer)) and low <= level <= high:
                return Compression(encoding, int(level))
    raise WireError(f"compression {_clip(repr(value))} is invalid: expected 'raw', 'png', "
                    "('png', zlib level 0..9), 'jpeg' or ('jpeg', quality 1..100)",
                    code="arrays")


def _check_image_shape(where: str, encoding: str, dtype: str, shape: tuple[int, ...]) -> None:
    if dtype != "uint8" or len(shape) < 3 or shape[-1] not in (1, 3) or 0 in shape[-3:]:
        raise WireError(f"{where}: encoding {encoding!r} is only for uint8 images of shape "
                        f"[..., H, W, 3] or [..., H, W, 1] with H, W >= 1, got {dtype} "
                        f"{list(shape)}", code="arrays")


def _check_lengths(name: str, lengths: object, shape: tuple[int, ...]) -> tuple[int, ...]:
    count = math.prod(shape[:-3])
    if not isinstance(lengths, list):
        raise WireError(f"array {name!r}: a compressed array needs 'lengths', an array of "
                        f"{count} byte lengths (one per image), got {_kind(lengths)}",
                        code="arrays")
    if len(lengths) != count:
        raise WireError(f"array {name!r}: 'lengths' has {len(lengths)} entries, expected one "
                        f"per image: {count} (shape {list(shape)})", code="arrays")
    for i, length in enumerate(lengths):
        if not _is_int(length) or length < 0:
            raise WireError(f"array {name!r}: lengths[{i}] is {_clip(repr(length))}, expected "
                            "an int >= 0", code="arrays")
    return tuple(lengths)


def _cv2() -> Any:
    # Imported on first use: raw-only peers never pay for loading OpenCV.
    import cv2

    return cv2


def _png_size(data: memoryview) -> tuple[int, int, int]:
    """(height, width, channels) from a PNG's IHDR (the first chunk), without decoding."""
    if data.nbytes < 33 or bytes(data[:8]) != _PNG_SIGNATURE:
        raise ValueError("not a PNG file (no PNG signature)")
    length, kind = struct.unpack(">I4s", data[8:16])
    if length != 13 or kind != b"IHDR":
        raise ValueError("PNG does not start with a 13-byte IHDR chunk")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if depth != 8 or colour not in _PNG_COLOUR_TYPES:
        raise ValueError(f"PNG has bit depth {depth} and colour type {colour}; expected 8-bit "
                         "greyscale (0) or truecolour (2)")
    _check_png_chunks(data)
    return height, width, _PNG_COLOUR_TYPES[colour]


def _check_png_chunks(data: memoryview) -> None:
    """Every chunk must lie inside the file and the file must end with IEND: OpenCV's PNG
    reader reserves a chunk's claimed length before reading it, so one forged length field
    (found by bench/fuzz_wire.py) made a 69-byte image cost seconds and gigabytes."""
    n, pos = data.nbytes, 8
    while pos + 12 <= n:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > n:
            raise ValueError(f"PNG chunk {kind!r} at byte {pos} claims {length} bytes, past "
                             f"the end of the {n}-byte file")
        if kind == b"IEND":
            if end != n:
                raise ValueError(f"PNG has {n - end} bytes after its IEND chunk")
            return
        pos = end
    raise ValueError("PNG ends without an IEND chunk (truncated)")


def _jpeg_size(data: memoryview) -> tuple[int, int, int]:
    """(height, width, components) from a JPEG's frame header (SOF0/1/2), without decoding:
    the marker segments from SOI are walked until the SOF; anything else first is refused."""
    buf = bytes(data[:_JPEG_HEADER_SCAN])
    if buf[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file (no SOI marker)")
    i = 2
    while i < len(buf):
        if buf[i] != 0xFF:
            raise ValueError(f"JPEG byte {i} is {buf[i]:#04x} where a marker was expected")
        while i < len(buf) and buf[i] == 0xFF:  # fill bytes
            i += 1
        if i >= len(buf):
            break
        marker = buf[i]
        i += 1
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker in (0xD8, 0xD9, 0xDA):
            raise ValueError(f"JPEG marker {marker:#04x} before the frame header (SOF)")
        if marker in _JPEG_OTHER_SOF:
            raise ValueError(f"JPEG frame type {marker:#04x} is not supported (baseline, "
                             "extended sequential or progressive only)")
        if i + 2 > len(buf):
            break
        (length,) = struct.unpack(">H", buf[i:i + 2])
        if length < 2:
            raise ValueError(f"JPEG marker {marker:#04x} has segment length {length}")
        if marker in _JPEG_SOF:
            if length < 8 or i + 8 > len(buf):
                raise ValueError("JPEG frame header is truncated")
            precision, height, width, components = struct.unpack(">BHHB", buf[i + 2:i + 8])
            if precision != 8:
                raise ValueError(f"JPEG sample precision is {precision} bits, expected 8")
            return height, width, components
        i += length
    raise ValueError(f"no JPEG frame header (SOF) within the first {_JPEG_HEADER_SCAN} bytes")


def _encode_images(name: str, arr: np.ndarray, how: Compression) -> tuple[np.ndarray, list[int]]:
    """Compress each image of a uint8 [..., H, W, C] array separately (RGB order in the
    files); returns the concatenated bytes and the per-image lengths."""
    _check_image_shape(f"array {name!r}", how.encoding, arr.dtype.name, arr.shape)
    count = math.prod(arr.shape[:-3])
    if count > MAX_ARRAYS:
        raise WireError(f"array {name!r}: {count} images; a compressed array holds at most "
                        f"{MAX_ARRAYS}", code="arrays")
    cv2 = _cv2()
    h, w, c = arr.shape[-3:]
    if how.encoding == "png":
        ext, params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, how.level]
    else:
        ext, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, how.level]
    parts = []
    for image in arr.reshape(count, h, w, c):
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if c == 3 else image[:, :, 0]
        try:
            ok, buf = cv2.imencode(ext, image, params)
        except cv2.error as e:
            raise WireError(f"array {name!r}: OpenCV cannot encode {how.encoding} "
                            f"({_clip(str(e).strip())})", code="arrays") from None
        if not ok:
            raise WireError(f"array {name!r}: OpenCV failed to encode a {h}x{w}x{c} image as "
                            f"{how.encoding}", code="arrays")
        parts.append(buf.reshape(-1))
    data = np.concatenate(parts) if parts else np.empty(0, np.uint8)
    return data, [p.size for p in parts]


def _decode_images(view: memoryview, spec: _Spec) -> np.ndarray:
    """Decode a compressed frame into a new read-only array of spec's shape. Each image's
    embedded size is checked against the spec before OpenCV allocates anything."""
    cv2 = _cv2()
    h, w, c = spec.shape[-3:]
    out = np.empty(spec.shape, np.uint8)
    images = out.reshape(-1, h, w, c)
    read_size = _png_size if spec.encoding == "png" else _jpeg_size
    offset = 0
    for i, length in enumerate(spec.lengths):
        data = view[offset:offset + length]
        offset += length
        where = f"array {spec.name!r}: image {i} ({spec.encoding}, {length} bytes)"
        try:
            size = read_size(data)
        except ValueError as e:  # struct.error is a ValueError too
            raise WireError(f"{where}: {e}", code="value") from None
        if size != (h, w, c):
            raise WireError(f"{where}: its header says {size[0]}x{size[1]}x{size[2]} "
                            f"(HxWxC), the array spec {h}x{w}x{c}; refused before "
                            "decoding", code="value")
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as e:
            raise WireError(f"{where}: OpenCV cannot decode it ({_clip(str(e).strip())})",
                            code="value") from None
        if image is None:
            raise WireError(f"{where}: OpenCV cannot decode it (corrupt or truncated)",
                            code="value")
        want = (h, w, c) if c == 3 else (h, w)
        if image.dtype != np.uint8 or image.shape != want:
            raise WireError(f"{where}: decoded to {image.dtype} {list(image.shape)}, "
                            f"expected uint8 {list(want)}", code="value")
        images[i] = image[:, :, ::-1] if c == 3 else image[:, :, None]  # BGR -> RGB
    out.flags.writeable = False
    return out


# ---------------------------------------------------------------------------- public API


@dataclass(frozen=True, eq=False)  # eq over ndarray dicts would be ambiguous
class Message:
    """A decoded, validated message.

    ``arrays`` maps slash-separated names to read-only arrays that view the received frames;
    ``tree()`` nests them. ``nbytes`` is the header plus array bytes (what max_bytes bounds;
    a compressed array counts as the larger of its decoded size and its frame). Compressed
    arrays are new read-only arrays, not views.
    """

    type: str
    actor: str
    session: str
    seq: int
    policy_version: int
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    nbytes: int

    @property
    def batch_size(self) -> int:
        """N of a transitions message (0 for every other type); its obs/ arrays have N + 1
        rows."""
        if self.type != "transitions":
            return 0
        for name, arr in self.arrays.items():
            if not _is_obs(name):
                return int(arr.shape[0])
        return int(next(iter(self.arrays.values())).shape[0]) - 1

    def tree(self) -> dict[str, Any]:
        """The arrays as sent, nested, e.g. ``{"obs": {"state": ..., "images": {...}}}``
        (for transitions: obs with N + 1 rows; ``transitions_view`` gives per-step rows)."""
        return unflatten(self.arrays)


def transitions_view(message: Message | Mapping[str, Any], flat: bool = False
                     ) -> dict[str, Any]:
    """The per-step form of a transitions batch: ``{"obs", "next_obs", "action", "reward",
    "terminated", "truncated", "intervened", "extras"}``, every array with N rows.

    ``obs/<path>`` is ``obs[:-1]`` and ``next_obs/<path>`` is ``obs[1:]`` of the wire's N + 1
    rows: numpy views (no copy; read-only for a decoded message). The other arrays are the
    message's own. ``message`` is a decoded transitions ``Message`` or a batch in the wire
    layout (flat or nested dict of arrays, checked for N + 1 / N rows). Nested unless
    ``flat`` (then slash-separated names, as ``Schema.step_fields()``). Raises WireError
    for another message type or a malformed batch.
    """
    if isinstance(message, Message):
        if message.type != "transitions":
            raise WireError(f"transitions_view needs a 'transitions' message, got "
                            f"{message.type!r}", code="type")
        arrays: Mapping[str, Any] = message.arrays
    else:
        arrays = {name: np.asarray(value) for name, value in flatten(message).items()}
        _batch_size([_Spec(name, arr.dtype.name, arr.shape, arr.nbytes)
                     for name, arr in arrays.items()])
    out: dict[str, Any] = {}
    nexts: dict[str, Any] = {}
    for name, arr in arrays.items():
        if _is_obs(name):
            out[name] = arr[:-1]
            nexts["next_" + name] = arr[1:]
        else:
            out[name] = arr
    out.update(nexts)
    return out if flat else unflatten(out)


def encode(
    msg_type: str,
    *,
    actor: str = "",
    session: str = "",
    seq: int = 0,
    policy_version: int = -1,
    arrays: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    compress: Mapping[str, Any] | None = None,
) -> list[bytes | memoryview]:
    """Build the frames of a message: ``[header, array bytes, ...]``.

    ``arrays`` is a flat (slash-separated names) or nested dict of numpy arrays (anything
    ``np.asarray`` takes without an object dtype). Array frames are views of the arrays, not
    copies. ``compress`` maps array names (flat or nested like ``arrays``) to a compression
    setting (see ``compression``: "raw", "png", ("png", level), "jpeg", ("jpeg", quality)),
    e.g. ``{"obs/images/front": ("jpeg", 90), "obs/images/wrist": "png"}``; arrays not named
    travel raw. Only uint8 [..., H, W, 3 or 1] arrays can be compressed; their frames are
    new buffers (see "Compressed images" in the module docstring). Raises WireError for
    anything ``decode`` would reject apart from the size cap and the schema (check a batch
    with ``Schema.check``), and for a compress entry that names no array.
    """
    prepared = {name: _prepare(name, value) for name, value in flatten(arrays or {}).items()}
    how = {name: compression(value) for name, value in flatten(compress or {}).items()}
    if unknown := sorted(set(how) - set(prepared)):
        raise WireError(f"compress names {unknown}, which are not arrays of this message",
                        code="arrays")
    specs: list[dict[str, Any]] = []
    frames: list[Any] = []
    for name, arr in prepared.items():
        spec: dict[str, Any] = {"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)}
        setting = how.get(name)
        if setting is None or setting.encoding == "raw":
            frames.append(_frame(arr))
        else:
            data, lengths = _encode_images(name, arr, setting)
            spec.update(encoding=setting.encoding, lengths=lengths)
            frames.append(_frame(data))
        specs.append(spec)
    header = {
        "type": msg_type,
        "v": PROTOCOL_VERSION,
        "actor": actor,
        "session": session,
        "seq": _index(seq),
        "policy_version": _index(policy_version),
        "arrays": specs,
        "meta": dict(meta or {}),
    }
    try:
        packed = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"header cannot be encoded as msgpack ({_clip(str(e))}); meta values "
                        "must be plain str/int/float/bool/None/list/dict", code="meta") from None
    # Check what a receiver will see, so encode never builds a message decode refuses.
    _check_header(_unpack_header(memoryview(packed)))
    for name, arr in prepared.items():
        _check_values(name, arr)
    if msg_type == "transitions":
        _check_episode(prepared)
    return [packed, *frames]


def _index(value: Any) -> Any:
    # np.int64 and friends become ints (msgpack cannot pack them); bools and non-integers
    # are left alone for _check_header to reject with a clear message.
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return value
    return operator.index(value)


def decode(
    frames: Sequence[Any],
    max_bytes: int = DEFAULT_MAX_BYTES,
    schema: Schema | None = None,
) -> Message:
    """Validate and decode a received message (order of checks in the module docstring).

    ``frames`` are bytes-like objects (bytes, memoryview, zmq.Frame, ...). ``schema``, when
    given, is checked against transitions messages and ignored for other types. Raises
    WireError, and nothing else, for any malformed input.
    """
    views = _frame_views(frames)
    head = _check_header(_unpack_header(views[0]))
    # A compressed array counts as the larger of its decoded size and its frame's length.
    total = views[0].nbytes + sum(max(s.nbytes, s.frame_bytes) for s in head.specs)
    if total > max_bytes:
        raise WireError(f"message of {total} bytes (from its header) exceeds the limit of "
                        f"{max_bytes} bytes", code="size")
    if schema is not None and head.type == "transitions":
        schema._check_specs(head.specs)
    if len(views) != 1 + len(head.specs):
        raise WireError(f"message has {len(views)} frames, expected {1 + len(head.specs)} "
                        f"(the header and {len(head.specs)} array(s))", code="frames")
    arrays = {}
    for i, (spec, view) in enumerate(zip(head.specs, views[1:], strict=True), start=1):
        if spec.encoding != "raw":
            if view.nbytes != spec.frame_bytes:
                raise WireError(f"array {spec.name!r}: frame {i} has {view.nbytes} bytes, but "
                                f"its {len(spec.lengths)} {spec.encoding} image lengths sum to "
                                f"{spec.frame_bytes}", code="frames")
            arrays[spec.name] = _decode_images(view, spec)
            continue
        if view.nbytes != spec.nbytes:
            raise WireError(f"array {spec.name!r}: frame {i} has {view.nbytes} bytes, expected "
                            f"{spec.nbytes} (shape {list(spec.shape)} of {spec.dtype})",
                            code="frames")
        arr = _view_array(view, spec)
        _check_values(spec.name, arr)
        arrays[spec.name] = arr
    if head.type == "transitions":
        _check_episode(arrays)
    return Message(type=head.type, actor=head.actor, session=head.session, seq=head.seq,
                   policy_version=head.policy_version, meta=head.meta, arrays=arrays,
                   nbytes=total)

