"""Property-based fuzzing of the wire decoder and the schema validator (CI variant).

bench/fuzz_wire.py is the long, coverage-guided variant (atheris, >= 100k inputs); this file
keeps each property to a few hundred examples so the whole module stays well under 30 s.

The contract under test (hilrl/transport/wire.py): ``decode`` raises WireError, and nothing
else, for any malformed input; what it accepts is a message that satisfies every documented
rule (finite floats, 0/1 bools, the schema's layout) and that ``encode`` reproduces. Each
decode must also finish quickly: a slow input would be a denial of service on the learner,
so every call is timed against HANG_S.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import cv2
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from hilrl.transport.wire import (
    DEFAULT_MAX_BYTES,
    DTYPES,
    MESSAGE_TYPES,
    Message,
    Schema,
    WireError,
    decode,
    encode,
)

# Generous: a decode of these few-kB messages takes well under 10 ms even on a loaded
# 2-core machine, so only a genuine hang or blow-up (not noise) trips it.
HANG_S = 1.0
# The categories the module docstring promises ("Validation"); anything else is a finding.
CODES = frozenset(("frames", "header", "version", "type", "arrays", "size", "batch", "schema",
                   "meta", "value"))

STATE, ACTION, HW = 5, 3, (6, 8, 3)
CAMS = ("front", "wrist")
SCHEMA = Schema(
    obs={"state": ("float32", (STATE,)), "images": {cam: ("uint8", HW) for cam in CAMS}},
    action=("float32", (ACTION,)),
    extras={"grasp_penalty": ("float32", ())},
    max_batch=8,
)
FIELDS = SCHEMA.fields()

# Few examples per property (CI budget); hypothesis' database replays past failures first.
CI = settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])


def make_batch(n: int, seed: int) -> dict[str, Any]:
    """A valid transitions batch for SCHEMA in the wire layout (obs with N + 1 rows)."""
    rng = np.random.default_rng(seed)
    ends = np.zeros(n, bool)
    ends[-1] = seed % 2 == 1  # only the last step may end the episode
    return {
        "obs": {"state": rng.standard_normal((n + 1, STATE)).astype(np.float32),
                "images": {cam: rng.integers(0, 256, (n + 1, *HW), dtype=np.uint8)
                           for cam in CAMS}},
        "action": rng.uniform(-1, 1, (n, ACTION)).astype(np.float32),
        "reward": rng.standard_normal(n).astype(np.float32),
        "terminated": ends,
        "truncated": np.zeros(n, bool),
        "intervened": rng.random(n) < 0.5,
        "extras": {"grasp_penalty": rng.standard_normal(n).astype(np.float32)},
    }


def encoded(n: int, seed: int, compress: str | None = None) -> list[bytes]:
    cams = {f"obs/images/{cam}": compress for cam in CAMS} if compress else None
    frames = encode("transitions", actor="actor-0", session="s1", seq=100 + seed,
                    policy_version=seed, arrays=make_batch(n, seed), compress=cams)
    return [bytes(f) for f in frames]  # own copies: the mutations below edit them


# Real messages made by the project's own encoder: raw batches of 1..3 steps, and compressed
# cameras so the PNG/JPEG header parsers in front of OpenCV are fuzzed too.
BASES = [encoded(1, 0), encoded(2, 1), encoded(3, 2), encoded(2, 3, "png"),
         encoded(2, 4, "jpeg")]
RAW_BASES = BASES[:3]
FLOAT_FRAMES = [i + 1 for i, name in enumerate(FIELDS) if FIELDS[name].dtype == "float32"]


# ---------------------------------------------------------------------------- checks


def timed_decode(frames: Any, **kw: Any) -> Message | None:
    """decode(frames), None for a WireError; any other exception propagates (= a bug)."""
    start = time.perf_counter()
    try:
        msg: Message | None = decode(frames, **kw)
    except WireError as e:
        assert str(e), "every rejection must say why"
        assert e.code in CODES, f"undocumented WireError code {e.code!r}: {e}"
        event(f"rejected: {e.code}")  # --hypothesis-show-statistics: which checks fire
        msg = None
    else:
        event(f"accepted: {msg.type}")
    elapsed = time.perf_counter() - start
    assert elapsed < HANG_S, f"decode took {elapsed:.2f} s (hang guard {HANG_S} s)"
    return msg


def check_accepted(msg: Message, schema: Schema | None, max_bytes: int = DEFAULT_MAX_BYTES
                   ) -> None:
    """What decode promises about a message it accepts, then the encode round trip."""
    assert msg.type in MESSAGE_TYPES
    assert msg.nbytes <= max_bytes
    for name, arr in msg.arrays.items():
        assert not arr.flags.writeable, name  # decoded arrays are read-only
        assert arr.dtype.name in DTYPES, name
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all(), name
        elif arr.dtype.kind == "b":
            assert (arr.view(np.uint8) <= 1).all(), name
    if msg.type == "transitions":
        n = msg.batch_size
        assert n >= 1
        if schema is not None:
            assert schema.check(msg.arrays) == n <= schema.max_batch
            want = schema.fields()
            assert set(msg.arrays) == set(want)
            for name, spec in want.items():
                rows = n + 1 if name.startswith("obs/") else n
                assert msg.arrays[name].shape == (rows, *spec.shape), name
        ends = [msg.arrays[k] for k in ("terminated", "truncated") if k in msg.arrays]
        for flags in ends:
            if flags.dtype == np.bool_ and flags.ndim == 1:
                assert not flags[:-1].any()
    # Whatever decode accepted, encode must reproduce: same header, same array bytes.
    again = encode(msg.type, actor=msg.actor, session=msg.session, seq=msg.seq,
                   policy_version=msg.policy_version, arrays=msg.arrays, meta=msg.meta)
    back = timed_decode(again, schema=schema)
    assert back is not None, "a re-encoded accepted message was rejected"
    assert (back.type, back.actor, back.session, back.seq, back.policy_version) == (
        msg.type, msg.actor, msg.session, msg.seq, msg.policy_version)
    assert back.meta == msg.meta
    assert list(back.arrays) == list(msg.arrays)
    for name, arr in msg.arrays.items():
        other = back.arrays[name]
        assert (other.dtype, other.shape) == (arr.dtype, arr.shape), name
        assert other.tobytes() == arr.tobytes(), name


def decode_and_check(frames: Any, schema: Schema | None = SCHEMA,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> Message | None:
    msg = timed_decode(frames, schema=schema, max_bytes=max_bytes)
    if msg is not None:
        check_accepted(msg, schema, max_bytes)
    return msg


# ---------------------------------------------------------------------------- (a) random frames

_frame = st.one_of(
    st.binary(max_size=96),
    st.binary(max_size=96).map(bytearray),
    st.binary(max_size=96).map(memoryview),
    # Bytes that start like a msgpack map of 8 entries, so the header walker gets further.
    st.binary(max_size=96).map(lambda b: b"\x88" + b),
)
_frames = st.one_of(
    st.lists(_frame, max_size=12),
    # A real header followed by a random number of random array frames.
    st.tuples(st.sampled_from(BASES), st.lists(_frame, max_size=12)).map(
        lambda t: [t[0][0], *t[1]]),
)


@CI
@given(frames=_frames)
def test_random_frame_lists_only_raise_wire_error(frames: list) -> None:
    decode_and_check(frames, schema=None)
    decode_and_check(frames, schema=SCHEMA)


@CI
@given(st.one_of(st.none(), st.integers(), st.text(max_size=4), st.binary(max_size=8),
                 st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=3)),
                          max_size=3)))
def test_non_frame_inputs_only_raise_wire_error(frames: Any) -> None:
    assert timed_decode(frames, schema=SCHEMA) is None


# ---------------------------------------------------------------------------- (b) mutations

# Values that break a header field's type or range: wrong msgpack types, the int edges,
# non-finite floats, nested containers.
_INT_EDGES = [-(1 << 63), -2, -1, 0, 1, 2, 3, 1 << 31, (1 << 32) + 1, (1 << 62),
              (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
_weird = st.one_of(
    st.none(), st.booleans(), st.sampled_from(_INT_EDGES),
    st.integers(-(1 << 63), (1 << 64) - 1), st.floats(), st.text(max_size=10),
    st.binary(max_size=8), st.lists(st.integers(-3, 1 << 40), max_size=5),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 2), max_size=2),
)
_dims = st.one_of(st.sampled_from(_INT_EDGES), st.integers(-2, 20), st.floats(), st.none(),
                  st.booleans(), st.text(max_size=2))
_shape = st.one_of(
    st.lists(st.integers(0, 9), max_size=5),  # plausible: frame or batch-size mismatches
    st.lists(_dims, max_size=6),
    st.lists(st.integers(0, 1 << 20), max_size=40),  # too many dimensions or too large
    _weird,
)
# Plausible values too, so some edited headers stay valid and reach the later checks.
_header_values = st.one_of(_weird, st.sampled_from(MESSAGE_TYPES), st.integers(-1, 9),
                           st.sampled_from(["", "actor-1", "a b", "x" * 129]),
                           st.just({}), st.just({"full": True}))
# "type" and "v" twice: the version and type checks come first and are otherwise rare.
_HEADER_KEYS = ["type", "type", "v", "v", "actor", "session", "seq", "policy_version", "arrays",
                "meta", "extra"]
_SPEC_KEYS = ["name", "dtype", "shape", "encoding", "lengths", "extra"]
_spec_values = {
    "name": st.one_of(st.sampled_from(["obs", "obs/state/x", "next_obs/state", "a//b", "..",
                                       "action", "obs/images/front", "reward"]), _weird),
    "dtype": st.one_of(st.sampled_from([*DTYPES, "complex64", "object", "<f4", "V8"]), _weird),
    "shape": _shape,
    "encoding": st.one_of(st.sampled_from(["raw", "png", "jpeg", "gif", ""]), _weird),
    "lengths": st.one_of(st.lists(st.sampled_from(_INT_EDGES), max_size=4), _weird),
    "extra": _weird,
}
_DELETE = object()


def _edit_header(data: st.DataObject, frames: list[bytearray]) -> None:
    """Decode the (possibly already damaged) header, change one field, pack it again."""
    try:
        header = msgpack.unpackb(bytes(frames[0]), raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - an earlier byte-level op broke it: nothing to edit
        return
    if not isinstance(header, dict):
        return
    specs = header.get("arrays")
    if isinstance(specs, list) and specs and data.draw(st.booleans()):
        spec = specs[data.draw(st.integers(0, len(specs) - 1))]
        if not isinstance(spec, dict):
            return
        key = data.draw(st.sampled_from(_SPEC_KEYS))
        target, value = spec, data.draw(st.one_of(_spec_values[key], st.just(_DELETE)))
    else:
        key = data.draw(st.sampled_from(_HEADER_KEYS))
        target, value = header, data.draw(st.one_of(_header_values, st.just(_DELETE)))
    if value is _DELETE:
        target.pop(key, None)
    else:
        target[key] = value
    try:
        frames[0] = bytearray(msgpack.packb(header, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):
        return


def _permute(data: st.DataObject, frames: list[bytearray]) -> None:
    """Reorder the header's keys, and the array specs together with their frames: a valid
    message stays valid (order carries no meaning beyond spec i <-> frame i)."""
    try:
        header = msgpack.unpackb(bytes(frames[0]), raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - already broken by an earlier op
        return
    if not isinstance(header, dict):
        return
    keys = data.draw(st.permutations(list(header)))
    specs = header.get("arrays")
    if isinstance(specs, list) and len(specs) == len(frames) - 1:
        order = data.draw(st.permutations(range(len(specs))))
        header["arrays"] = [specs[i] for i in order]
        frames[1:] = [frames[1 + i] for i in order]
    frames[0] = bytearray(msgpack.packb({k: header[k] for k in keys}, use_bin_type=True))


def _mutate(data: st.DataObject, frames: list[bytearray]) -> None:
    op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "extend", "swap",
                                    "drop", "dup", "field", "field", "nan", "permute"]))
    if op == "permute":
        _permute(data, frames)
    elif op in ("flip", "insert", "delete"):  # header bytes
        head = frames[0]
        pos = data.draw(st.integers(0, len(head)))
        if op == "flip" and pos < len(head):
            head[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            head[pos:pos] = data.draw(st.binary(min_size=1, max_size=9))
        else:
            del head[pos:pos + data.draw(st.integers(1, 8))]
    elif op in ("truncate", "extend") and len(frames) > 1:  # array frames
        frame = frames[data.draw(st.integers(1, len(frames) - 1))]
        if op == "truncate":
            del frame[data.draw(st.integers(0, len(frame))):]
        else:
            frame.extend(data.draw(st.binary(min_size=1, max_size=16)))
    elif op == "swap" and len(frames) > 1:
        i, j = (data.draw(st.integers(0, len(frames) - 1)) for _ in range(2))
        frames[i], frames[j] = frames[j], frames[i]
    elif op == "drop" and len(frames) > 1:
        del frames[data.draw(st.integers(0, len(frames) - 1))]
    elif op == "dup":
        i = data.draw(st.integers(0, len(frames) - 1))
        frames.insert(i, bytearray(frames[i]))
    elif op == "field":
        _edit_header(data, frames)
    elif op == "nan":  # a non-finite float32 somewhere in a float frame (raw layout only)
        i = data.draw(st.sampled_from(FLOAT_FRAMES))
        if i < len(frames) and len(frames[i]) >= 4:
            k = 4 * data.draw(st.integers(0, len(frames[i]) // 4 - 1))
            value = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
            frames[i][k:k + 4] = np.float32(value).tobytes()


@settings(CI, max_examples=1000)
@given(st.data())
def test_mutated_valid_messages_are_rejected_or_round_trip(data: st.DataObject) -> None:
    frames = [bytearray(f) for f in data.draw(st.sampled_from(BASES))]
    # Mostly a single mutation: each one alone usually breaks the message, and the accept
    # path (checks + re-encode) needs inputs that survive.
    for _ in range(data.draw(st.sampled_from([1, 1, 1, 2, 3, 4]))):
        _mutate(data, frames)
    as_bytes = [bytes(f) for f in frames]
    # Sometimes a cap below these ~1 kB messages, so the size check is fuzzed as well.
    max_bytes = data.draw(st.sampled_from([DEFAULT_MAX_BYTES, DEFAULT_MAX_BYTES, 1500, 600]))
    decode_and_check(as_bytes, schema=SCHEMA, max_bytes=max_bytes)
    decode_and_check(as_bytes, schema=None)


@CI
@given(base=st.sampled_from(RAW_BASES), data=st.data())
def test_bad_values_are_always_rejected(base: list[bytes], data: st.DataObject) -> None:
    # A single poisoned element anywhere must be found: NaN/inf in a float array, a bool
    # byte other than 0/1 in a flag array.
    frames = [bytearray(f) for f in base]
    names = list(FIELDS)
    name = data.draw(st.sampled_from([n for n in names if FIELDS[n].dtype in ("float32",
                                                                             "bool")]))
    frame = frames[1 + names.index(name)]
    if FIELDS[name].dtype == "bool":
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(2, 255))
    else:
        k = 4 * data.draw(st.integers(0, len(frame) // 4 - 1))
        frame[k:k + 4] = np.float32(data.draw(st.sampled_from([math.nan, math.inf,
                                                                -math.inf]))).tobytes()
    start = time.perf_counter()
    try:
        decode([bytes(f) for f in frames], schema=SCHEMA)
    except WireError as e:
        assert e.code == "value", str(e)
    else:
        raise AssertionError(f"a poisoned {name!r} was accepted")
    assert time.perf_counter() - start < HANG_S


# ---------------------------------------------------------------------------- (c) schema


@st.composite
def _batches(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A transitions batch that mostly follows SCHEMA and sometimes breaks it: wrong dtype,
    wrong per-row shape, one row too many or few, a missing or an unknown array."""
    n = draw(st.integers(1, 3))
    out = {}
    for name, spec in FIELDS.items():
        if draw(st.integers(0, 15)) == 0:
            continue  # missing array
        dtype, shape = spec.dtype, spec.shape
        if draw(st.integers(0, 7)) == 0:
            dtype = draw(st.sampled_from(DTYPES))
        if draw(st.integers(0, 7)) == 0:
            shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        rows = n + 1 if name.startswith("obs/") else n
        if draw(st.integers(0, 15)) == 0:
            rows += draw(st.sampled_from([-1, 1]))
        # Zeros: valid values of every dtype (finite floats, False flags).
        out[name] = np.zeros((max(rows, 0), *shape), dtype)
    if draw(st.integers(0, 7)) == 0:
        out[draw(st.sampled_from(["obs/depth", "extras/other", "info", "next_obs/state"]))] = (
            np.zeros((n + 1, 2), np.float32))
    return out


@CI
@given(arrays=_batches(), png=st.booleans())
def test_schema_validation_agrees_with_decode(arrays: dict[str, np.ndarray], png: bool) -> None:
    compress = {name: "png" for name, arr in arrays.items()
                if png and name.startswith("obs/images/") and arr.dtype == np.uint8
                and arr.ndim == 4 and arr.shape[-1] in (1, 3) and 0 not in arr.shape[1:]}
    try:
        frames = encode("transitions", actor="a", session="s", arrays=arrays,
                        compress=compress)
    except WireError:
        # encode refuses a broken batch (e.g. inconsistent rows); a hostile peer would send
        # it anyway: build it as weights and relabel it, and decode must refuse it too.
        try:
            frames = encode("weights", policy_version=0, arrays=arrays, meta={"full": True},
                            compress=compress)
        except WireError:
            assume(False)  # not even a valid weights message (no arrays at all)
            return
        header = msgpack.unpackb(frames[0], raw=False)
        header.update(type="transitions", actor="a", session="s", meta={})
        frames = [msgpack.packb(header, use_bin_type=True), *frames[1:]]
        assert timed_decode(frames) is None, "decode accepted a batch that encode refuses"
        assert timed_decode(frames, schema=SCHEMA) is None
        return
    msg = timed_decode(frames)  # no schema: the message itself is well-formed
    assert msg is not None, "encode built a message that decode refuses"
    check_accepted(msg, None)
    # The schema validator on the decoded arrays accepts or raises WireError, nothing else,
    # and decode with the schema comes to the same verdict.
    try:
        n: int | None = SCHEMA.check(msg.arrays)
    except WireError as e:
        assert e.code in CODES, str(e)
        n = None
    with_schema = timed_decode(frames, schema=SCHEMA)
    assert (with_schema is not None) == (n is not None)
    if with_schema is not None:
        assert with_schema.batch_size == n
        check_accepted(with_schema, SCHEMA)


def _mutated_schema_meta(data: st.DataObject) -> Any:
    meta = SCHEMA.to_meta()
    for _ in range(data.draw(st.integers(1, 3))):
        group = data.draw(st.sampled_from(["obs", "action", "extras", "max_batch", "top"]))
        if group == "top":
            meta[data.draw(st.sampled_from(["obs", "action", "extras", "max_batch", "x"]))] = (
                data.draw(_weird))
        elif group == "max_batch":
            meta["max_batch"] = data.draw(st.one_of(st.sampled_from([0, 1, 1 << 20,
                                                                     (1 << 20) + 1]), _weird))
        elif group == "action":
            meta["action"] = {"dtype": data.draw(_spec_values["dtype"]),
                              "shape": data.draw(_shape)}
        elif isinstance(meta.get(group), dict):
            key = data.draw(st.one_of(st.sampled_from([*meta[group], "a//b", "", "new"]),
                                      st.text(max_size=5)))
            meta[group][key] = data.draw(st.one_of(
                st.fixed_dictionaries({"dtype": _spec_values["dtype"], "shape": _shape}),
                _weird))
    return meta


@CI
@given(st.data())
def test_hello_schema_validation_only_raises_wire_error(data: st.DataObject) -> None:
    meta = _mutated_schema_meta(data)
    start = time.perf_counter()
    try:
        schema: Schema | None = Schema.from_meta(meta)
    except WireError as e:
        assert e.code in CODES, str(e)
        schema = None
    assert time.perf_counter() - start < HANG_S
    if schema is not None:
        assert Schema.from_meta(schema.to_meta()) == schema
    # The learner sees the schema inside a hello's header: same verdict through decode.
    try:
        frames = [msgpack.packb({"type": "hello", "v": 2, "actor": "a", "session": "s",
                                 "seq": 0, "policy_version": -1, "arrays": [],
                                 "meta": {"schema": meta}}, use_bin_type=True)]
    except (TypeError, ValueError, OverflowError):
        return  # not representable in msgpack (an int beyond 64 bits): cannot be sent
    msg = decode_and_check(frames)
    if schema is not None and meta == schema.to_meta():
        assert msg is not None
    if msg is not None:
        assert Schema.from_meta(msg.meta["schema"]) is not None


# ---------------------------------------------------------------------------- findings


def test_png_chunk_longer_than_its_file_is_refused_before_opencv(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by bench/fuzz_wire.py (libFuzzer out-of-memory): one changed byte in the IDAT
    # length of a valid image. Any chunk claiming more than the rest of its file is corrupt,
    # so the header walk in front of imdecode can refuse it; imdecode is stubbed here so the
    # test itself never allocates.
    def refuse(*args: Any) -> None:
        raise AssertionError("cv2.imdecode was called on a PNG whose IDAT runs past its end")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    image = np.zeros((1, *HW), np.uint8)
    frames = [bytes(f) for f in encode("weights", policy_version=0, arrays={"img": image},
                                       meta={"full": True}, compress={"img": "png"})]
    png = bytearray(frames[1])
    assert png[37:41] == b"IDAT"  # after the signature (8) and IHDR (4 + 4 + 13 + 4)
    png[33:37] = struct.pack(">I", 0xFF0000A1)  # the fuzzer's value: ~4 GiB
    with pytest.raises(WireError, match="past the end") as e:
        decode([frames[0], bytes(png)])
    assert e.value.code == "value"
