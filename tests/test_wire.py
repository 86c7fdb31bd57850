"""Tests for the actor <-> learner wire format (hilrl.transport.wire), without sockets.

Malformed messages are built by decoding a good header with plain msgpack, changing one thing
and packing it again, so each rejection test breaks exactly one rule.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

import cv2
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hilrl.learning.replay import ReplayBuffer
from hilrl.transport.wire import (
    DTYPES,
    PROTOCOL_VERSION,
    Message,
    Schema,
    WireError,
    decode,
    encode,
    flatten,
    transitions_view,
    unflatten,
)

STATE, ACTION, HW = 7, 4, (12, 16, 3)
CAMS = ("front", "wrist")
SCHEMA = Schema(
    obs={"state": ("float32", (STATE,)), "images": {cam: ("uint8", HW) for cam in CAMS}},
    action=("float32", (ACTION,)),
    extras={"grasp_penalty": ("float32", ())},
    max_batch=64,
)
DELETE = object()


def make_obs(rng: np.random.Generator, n: int, hw: tuple[int, ...] = HW) -> dict[str, Any]:
    return {"state": rng.standard_normal((n, STATE)).astype(np.float32),
            "images": {cam: rng.integers(0, 256, (n, *hw), dtype=np.uint8) for cam in CAMS}}


def make_batch(n: int = 5, seed: int = 0) -> dict[str, Any]:
    """A batch in the wire layout: N steps of one episode, obs with N + 1 rows."""
    rng = np.random.default_rng(seed)
    ends = np.zeros(n, bool)
    ends[-1:] = rng.random() < 0.5  # only the last step may end the episode
    return {
        "obs": make_obs(rng, n + 1),
        "action": rng.uniform(-1, 1, (n, ACTION)).astype(np.float32),
        "reward": rng.standard_normal(n).astype(np.float32),
        "terminated": ends.copy(),
        "truncated": np.zeros(n, bool),
        "intervened": rng.random(n) < 0.5,
        "extras": {"grasp_penalty": rng.standard_normal(n).astype(np.float32)},
    }


def transitions(batch: dict[str, Any] | None = None, **kw: Any) -> list:
    fields = {"actor": "actor-0", "session": "s1", "seq": 10, "policy_version": 3, **kw}
    return encode("transitions", arrays=make_batch() if batch is None else batch, **fields)


def weights(arrays: dict[str, Any], **kw: Any) -> list:
    return encode("weights", policy_version=7, arrays=arrays, meta={"full": True}, **kw)


def header_of(frames: list) -> dict[str, Any]:
    return msgpack.unpackb(frames[0], raw=False)


def reheader(frames: list, **changes: Any) -> list:
    """`frames` with header fields replaced (or removed with DELETE)."""
    header = header_of(frames)
    for key, value in changes.items():
        if value is DELETE:
            del header[key]
        else:
            header[key] = value
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def respec(frames: list, index: int, **changes: Any) -> list:
    """`frames` with array spec `index` changed (or keys removed with DELETE)."""
    header = header_of(frames)
    spec = header["arrays"][index]
    for key, value in changes.items():
        if value is DELETE:
            del spec[key]
        else:
            spec[key] = value
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def as_transitions(arrays: dict[str, Any]) -> list:
    """A transitions message of `arrays` as given, past the batch checks encode makes."""
    return reheader(weights(arrays), type="transitions", actor="actor-0", session="s1", meta={})


def frame_index(frames: list, name: str) -> int:
    names = [spec["name"] for spec in header_of(frames)["arrays"]]
    return 1 + names.index(name)


def rejects(frames: Any, match: str, code: str | None = None, **kw: Any) -> WireError:
    with pytest.raises(WireError, match=match) as info:
        decode(frames, **kw)
    if code is not None:
        assert info.value.code == code, str(info.value)
    return info.value


# ---------------------------------------------------------------------------- round trips


def test_transitions_round_trip_nested_two_cameras_and_state() -> None:
    batch = make_batch(5)
    frames = transitions(batch, meta={"episode": 3, "tags": ["a", None, 1.5]})
    assert len(frames) == 1 + 9  # header + obs (3) + 5 core + 1 extra; no next_obs
    assert header_of(frames)["v"] == PROTOCOL_VERSION == 2
    for msg in (decode(frames, schema=SCHEMA), decode([bytes(f) for f in frames], schema=SCHEMA)):
        assert isinstance(msg, Message)
        assert (msg.type, msg.actor, msg.session) == ("transitions", "actor-0", "s1")
        assert (msg.seq, msg.policy_version, msg.batch_size) == (10, 3, 5)
        assert msg.meta == {"episode": 3, "tags": ["a", None, 1.5]}
        assert msg.nbytes == sum(memoryview(f).nbytes for f in frames)
        tree = msg.tree()
        assert set(tree) == {"obs", "action", "reward", "terminated", "truncated",
                             "intervened", "extras"}
        assert set(tree["obs"]) == {"state", "images"}
        assert tree["obs"]["images"]["front"].shape == (6, *HW)  # N + 1 rows
        for name, value in flatten(batch).items():
            assert msg.arrays[name].dtype == value.dtype, name
            np.testing.assert_array_equal(msg.arrays[name], value, err_msg=name)


def test_transitions_view_gives_per_step_obs_and_next_obs_as_views() -> None:
    """Send N steps whose next_obs chain (step i's next_obs is step i + 1's obs); the
    learner's per-step view equals what each step had, without copying a frame."""
    rng = np.random.default_rng(7)
    n = 4
    frames_seen = make_obs(rng, n + 1)  # the episode's observations o_0 .. o_n
    steps = [{"obs": {"state": frames_seen["state"][i],
                      "images": {c: frames_seen["images"][c][i] for c in CAMS}},
              "next_obs": {"state": frames_seen["state"][i + 1],
                           "images": {c: frames_seen["images"][c][i + 1] for c in CAMS}}}
             for i in range(n)]
    batch = make_batch(n)
    batch["obs"] = frames_seen
    msg = decode([bytes(f) for f in transitions(batch)], schema=SCHEMA)
    assert msg.batch_size == n
    for flat in (False, True):
        view = transitions_view(msg, flat=flat)
        tree = unflatten(view) if flat else view
        if flat:
            assert set(view) == set(SCHEMA.step_fields())
        assert set(tree) == {"obs", "next_obs", "action", "reward", "terminated", "truncated",
                             "intervened", "extras"}
        for key in ("obs", "next_obs"):
            for name, arr in flatten(tree[key]).items():
                assert arr.shape[0] == n, (key, name)
                assert not arr.flags.writeable
                # A view of the received frame: no copy.
                assert np.shares_memory(arr, msg.arrays[f"obs/{name}"]), (key, name)
        for i, step in enumerate(steps):
            for key in ("obs", "next_obs"):
                for name, value in flatten(step[key]).items():
                    np.testing.assert_array_equal(flatten(tree[key])[name][i], value,
                                                  err_msg=f"step {i} {key}/{name}")
        assert tree["action"] is msg.arrays["action"]
        assert tree["extras"]["grasp_penalty"] is msg.arrays["extras/grasp_penalty"]
    # The same from a plain batch (the wire layout), checked on the way.
    view = transitions_view(batch, flat=True)
    np.testing.assert_array_equal(view["next_obs/state"], frames_seen["state"][1:])
    assert np.shares_memory(view["next_obs/state"], frames_seen["state"])
    with pytest.raises(WireError, match=r"'obs/state' has 4 rows, expected N \+ 1 = 5"):
        transitions_view({**batch, "obs": make_obs(rng, n)})
    with pytest.raises(WireError, match="needs a 'transitions' message, got 'heartbeat'"):
        transitions_view(decode(encode("heartbeat")))


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips_including_scalars_and_zero_size(dtype: str) -> None:
    rng = np.random.default_rng(1)

    def make(shape: tuple) -> np.ndarray:
        if dtype == "bool":
            return np.asarray(rng.random(shape) < 0.5)
        if dtype.startswith("float"):
            return np.asarray(rng.standard_normal(shape)).astype(dtype)
        info = np.iinfo(dtype)
        return np.asarray(rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True))

    arrays = {"params/dense/kernel": make((3, 2)), "params/dense/bias": make((2,)),
              "scalar": make(()), "empty": make((0, 4)), "deep": make((2, 3, 1, 2))}
    msg = decode(weights(arrays))
    assert (msg.type, msg.policy_version, msg.meta) == ("weights", 7, {"full": True})
    assert msg.tree()["params"]["dense"]["kernel"].shape == (3, 2)
    for name, value in arrays.items():
        got = msg.arrays[name]
        assert got.dtype == np.dtype(dtype) and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value, err_msg=name)


def test_zero_size_arrays_round_trip() -> None:
    schema = Schema({"state": ("float32", (0,))}, ("float32", (2,)), max_batch=8)
    n = 3
    batch = {"obs": {"state": np.zeros((n + 1, 0), np.float32)},
             "action": np.ones((n, 2), np.float32), "reward": np.zeros(n, np.float32),
             "terminated": np.zeros(n, bool), "truncated": np.zeros(n, bool),
             "intervened": np.zeros(n, bool)}
    msg = decode(transitions(batch), schema=schema)
    assert msg.arrays["obs/state"].shape == (n + 1, 0)
    assert transitions_view(msg)["next_obs"]["state"].shape == (n, 0)
    msg = decode(weights({"a": np.zeros((0,), np.float32), "b": np.zeros((3, 0, 2), np.int64),
                          "c": np.zeros((0, 5), bool)}))
    assert {k: v.shape for k, v in msg.arrays.items()} == {"a": (0,), "b": (3, 0, 2),
                                                          "c": (0, 5)}


def test_zero_copy_on_encode_and_decode() -> None:
    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    frames = weights({"kernel": kernel})
    # Encoding hands ZeroMQ a view of the caller's array...
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), kernel)
    # ...and decoding views the received frame, whatever buffer type it is.
    for received in ([bytes(f) for f in frames], [bytearray(f) for f in frames], frames):
        arr = decode(received).arrays["kernel"]
        assert np.shares_memory(arr, np.frombuffer(received[1], np.uint8))
        assert not arr.flags.writeable
        np.testing.assert_array_equal(arr, kernel)


def test_big_endian_and_strided_inputs_are_sent_little_endian_c_order() -> None:
    big = np.arange(6, dtype=">f4").reshape(2, 3)
    strided = np.arange(20, dtype=np.int64).reshape(4, 5)[:, ::2]
    frames = weights({"big": big, "strided": strided})
    assert bytes(frames[1]) == big.astype("<f4").tobytes()
    msg = decode(frames)
    np.testing.assert_array_equal(msg.arrays["big"], big)
    np.testing.assert_array_equal(msg.arrays["strided"], strided)
    assert msg.arrays["big"].dtype == np.dtype("<f4")


def test_other_message_types_round_trip() -> None:
    ids = {"actor": "robot-1", "session": "0f3a"}
    msg = decode(encode("hello", seq=4, meta={"schema": SCHEMA.to_meta()}, **ids))
    assert Schema.from_meta(msg.meta["schema"]) == SCHEMA
    assert decode(encode("hello_ok", seq=4, **ids)).seq == 4
    assert decode(encode("ack", seq=np.int64(15), **ids)).seq == 15
    assert decode(encode("weights_request", **ids)).policy_version == -1
    assert decode(encode("heartbeat", policy_version=9)).policy_version == 9
    stats = {"return": 1.5, "length": 200, "interventions": 3, "overruns": 0}
    assert decode(encode("stats", meta={"stats": stats}, **ids)).meta["stats"] == stats
    msg = decode(encode("error", meta={"reason": "array 'obs/state': NaN", "ref_seq": 3}))
    assert (msg.type, msg.batch_size, msg.arrays) == ("error", 0, {})


def test_flatten_and_unflatten() -> None:
    tree = {"obs": {"state": 1, "images": {"front": 2, "wrist": 3}}, "action": 4, "e": {}}
    flat = flatten(tree)
    assert flat == {"obs/state": 1, "obs/images/front": 2, "obs/images/wrist": 3, "action": 4}
    assert flatten(flat) == flat
    del tree["e"]  # empty sub-dicts vanish
    assert unflatten(flat) == tree
    with pytest.raises(WireError, match="conflict"):
        unflatten({"obs": 1, "obs/state": 2})
    with pytest.raises(WireError, match="appears twice"):
        flatten({"obs/state": 1, "obs": {"state": 2}})
    with pytest.raises(WireError, match="invalid"):
        flatten({"obs": {"a b": 1}})


# ---------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("junk", [b"\xc1garbage", b"", b"\x81\xa4type", b"\xdd\xff\xff\xff\xff",
                                  bytes(range(256))])
def test_rejects_random_bytes_as_header(junk: bytes) -> None:
    rejects([junk], "frame 0 is not a valid msgpack header", code="header")


def test_rejects_trailing_bytes_after_the_header() -> None:
    frames = transitions()
    rejects([frames[0] + b"\x00", *frames[1:]], "not a valid msgpack header", code="header")


def test_rejects_truncated_header_frame() -> None:
    frames = transitions()
    rejects([frames[0][:-7], *frames[1:]], "not a valid msgpack header", code="header")


def test_rejects_truncated_array_frame() -> None:
    frames = transitions()
    i = frame_index(frames, "obs/state")
    frames[i] = bytes(frames[i])[:-1]
    rejects(frames, r"array 'obs/state': frame \d+ has 167 bytes, expected 168 \(shape \[6, 7\]",
            code="frames")


def test_rejects_missing_and_extra_frames() -> None:
    frames = transitions()
    rejects(frames[:-1], r"message has 9 frames, expected 10 \(the header and 9 array",
            code="frames")
    rejects([*frames, b""], "message has 11 frames, expected 10", code="frames")
    rejects(frames[:1], "message has 1 frames, expected 10", code="frames")


def test_rejects_frames_that_are_not_buffers() -> None:
    rejects(b"abc", "a message is a list of frames, got bytes", code="frames")
    rejects([], "message has no frames", code="frames")
    frames = weights({"w": np.zeros(3, np.float32)})
    rejects([frames[0], "twelve chars"], "frame 1 is a str, not a contiguous bytes-like",
            code="frames")
    strided = memoryview(bytes(24))[::2]
    rejects([frames[0], strided], "frame 1 is a memoryview, not a contiguous", code="frames")


@pytest.mark.parametrize("header, kind", [([1, 2, 3], "array"), ("hello", "str"), (7, "int"),
                                          (None, "nil")])
def test_rejects_header_that_is_not_a_map(header: Any, kind: str) -> None:
    rejects([msgpack.packb(header)], f"header is a msgpack {kind}, expected a map",
            code="header")


@pytest.mark.parametrize("field, value, match", [
    ("seq", True, "'seq' must be an int, got bool"),
    ("seq", "3", "'seq' must be an int, got str"),
    ("seq", 1.0, "'seq' must be an int, got float"),
    ("seq", -1, r"'seq' must be in 0..2\*\*63-1, got -1"),
    ("policy_version", False, "'policy_version' must be an int, got bool"),
    ("policy_version", -2, "'policy_version' must be in -1..2"),
    ("v", True, "'v' must be an int, got bool"),
    ("type", 3, "'type' must be a str, got int"),
    ("actor", 5, "'actor' must be a str, got int"),
    ("actor", "", "'actor' is empty; a 'transitions' message must name its actor"),
    ("session", "a b", "'session' 'a b' is invalid"),
    ("arrays", {}, "'arrays' must be an array of array specs, got map"),
    ("meta", [], "'meta' must be a map, got array"),
    ("seq", DELETE, r"header lacks field\(s\) \['seq'\]"),
    ("extra", 1, r"header has unknown field\(s\) \[\"'extra'\"\]"),
])
def test_rejects_wrong_header_field_types(field: str, value: Any, match: str) -> None:
    rejects(reheader(transitions(), **{field: value}), match, code="header")


def test_rejects_unknown_message_type() -> None:
    rejects(reheader(transitions(), type="gimme_weights"),
            "unknown message type 'gimme_weights'; expected one of", code="type")


@pytest.mark.parametrize("version", [0, 1, 3, 1000])
def test_rejects_unsupported_protocol_version(version: int) -> None:
    assert version != PROTOCOL_VERSION
    # Checked before the other fields: another version may have different ones.
    rejects(reheader(transitions(), v=version, seq=DELETE),
            f"protocol version {version} is not supported", code="version")


@pytest.mark.parametrize("dtype", ["complex64", "object", "<f4", "float32 ", "U8", ""])
def test_rejects_bad_dtype_string(dtype: str) -> None:
    frames = weights({"w": np.zeros(3, np.float32)})
    rejects(respec(frames, 0, dtype=dtype), f"array 'w': dtype {dtype!r} is not one of",
            code="arrays")
    rejects(respec(frames, 0, dtype=4), "array 'w': dtype must be a str, got int")


@pytest.mark.parametrize("shape, match", [
    ([-1, 3], r"shape \[-1, 3\] has a negative dimension"),
    ([3, -2], r"shape \[3, -2\] has a negative dimension"),
    ([3.0], r"shape \[3\.0\] holds a float, expected ints"),
    ([True], r"shape \[True\] holds a bool, expected ints"),
    ("3", "shape must be an array of ints, got str"),
    ([1] * 33, "shape has 33 dimensions, more than 32"),
])
def test_rejects_bad_shape(shape: Any, match: str) -> None:
    rejects(respec(weights({"w": np.zeros(3, np.float32)}), 0, shape=shape), "array 'w': " + match)


def test_rejects_bad_array_specs() -> None:
    frames = weights({"w": np.zeros(3, np.float32)})
    rejects(respec(frames, 0, encoding="zstd"), "array 'w': encoding 'zstd' is not supported",
            code="arrays")
    rejects(respec(frames, 0, encoding="png", lengths=[12]), "array 'w': encoding 'png' is "
            r"only for uint8 images of shape \[..., H, W, 3\]", code="arrays")
    assert decode(respec(frames, 0, encoding="raw")).arrays["w"].shape == (3,)
    rejects(respec(frames, 0, dtype=DELETE), "array spec 0 has keys", code="arrays")
    rejects(respec(frames, 0, extra=1), "array spec 0 has keys", code="arrays")
    rejects(reheader(frames, arrays=[5]), "array spec 0 must be a map, got int")


@pytest.mark.parametrize("name", ["", "obs//state", "/obs", "obs/", "../etc", "obs/./x",
                                  "a b", "é", "x" * 257, 5])
def test_rejects_malformed_array_names(name: Any) -> None:
    rejects(respec(weights({"w": np.zeros(3, np.float32)}), 0, name=name), "name .* is invalid",
            code="arrays")


def test_rejects_duplicate_and_conflicting_array_names() -> None:
    frames = weights({"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)})
    rejects(respec(frames, 1, name="a"), "array name 'a' appears twice", code="arrays")
    rejects(respec(frames, 1, name="a/x"), "array names 'a' and 'a/x' conflict", code="arrays")


def test_rejects_oversized_message_before_touching_frames() -> None:
    frames = weights({"w": np.zeros(3, np.uint8)})
    # A 1 TiB claim with a 1-byte frame: refused from the header, no allocation.
    huge = respec(frames, 0, shape=[1 << 40])
    huge[1] = b"x"
    err = rejects(huge, r"message of \d+ bytes \(from its header\) exceeds the limit of "
                        r"268435456 bytes", code="size")
    assert "frame" not in str(err)
    rejects(transitions(), "exceeds the limit of 1000 bytes", code="size", max_bytes=1000)
    ok = transitions()
    assert decode(ok, max_bytes=sum(memoryview(f).nbytes for f in ok)).batch_size == 5
    # Zero-size but absurd shapes are refused too (numpy could not even create them).
    rejects(respec(frames, 0, shape=[0, 1 << 40, 1 << 40]), r"shape \[0, .*\] is too large",
            code="size")
    rejects([b"\x80" * ((1 << 20) + 1)], "header frame is 1048577 bytes, more than",
            code="header")


@pytest.mark.parametrize("value, what", [(np.nan, "NaN"), (np.inf, r"\+inf"),
                                         (-np.inf, "-inf")])
def test_rejects_nan_and_inf(value: float, what: str) -> None:
    batch = make_batch(5)
    frames = transitions(batch)
    bad = batch["obs"]["state"].copy()
    bad[1, 2] = value
    i = frame_index(frames, "obs/state")
    frames[i] = bad.tobytes()
    rejects(frames, rf"array 'obs/state': {what} at index \[1, 2\]; float arrays must be finite",
            code="value")
    half = np.zeros((2, 3), np.float16)
    half[1, 0] = value
    frames = weights({"h": np.zeros((2, 3), np.float16)})
    rejects([frames[0], half.tobytes()], rf"array 'h': {what} at index \[1, 0\]", code="value")
    # The sender refuses them too, naming the array.
    with pytest.raises(WireError, match=rf"array 'obs/state': {what} at index \[1, 2\]"):
        transitions({**batch, "obs": {**batch["obs"], "state": bad}})


def test_rejects_bool_bytes_other_than_0_and_1() -> None:
    frames = transitions()
    i = frame_index(frames, "terminated")
    frames[i] = bytes([0, 1, 2, 0, 0])
    rejects(frames, r"array 'terminated': bool byte 2 at index \[2\]", code="value")


def test_rejects_schema_mismatch_on_shape() -> None:
    batch = make_batch(5)
    batch["obs"]["images"]["front"] = np.zeros((6, 12, 15, 3), np.uint8)
    rejects(transitions(batch), r"array 'obs/images/front': shape \[6, 12, 15, 3\] is not the "
                                r"agreed \[N \+ 1, 12, 16, 3\] with N=5", code="schema",
            schema=SCHEMA)
    batch = make_batch(5)
    batch["reward"] = batch["reward"][:, None]
    rejects(transitions(batch), r"array 'reward': shape \[5, 1\] is not the agreed \[N\]",
            code="schema", schema=SCHEMA)


def test_rejects_schema_mismatch_on_dtype() -> None:
    batch = make_batch(5)
    batch["obs"]["state"] = batch["obs"]["state"].astype(np.float64)
    rejects(transitions(batch), "array 'obs/state': dtype float64 is not the agreed float32",
            code="schema", schema=SCHEMA)
    batch = make_batch(5)
    batch["obs"]["images"]["wrist"] = batch["obs"]["images"]["wrist"].astype(np.int32)
    rejects(transitions(batch), "array 'obs/images/wrist': dtype int32 is not the agreed "
                                "uint8", schema=SCHEMA)
    # Without a schema the same message is well-formed.
    assert decode(transitions(batch)).batch_size == 5


def test_rejects_schema_mismatch_on_names_and_batch_limit() -> None:
    batch = make_batch(5)
    del batch["extras"]
    rejects(transitions(batch), r"arrays \['extras/grasp_penalty'\] of the agreed schema are "
                                "missing", code="schema", schema=SCHEMA)
    batch = make_batch(5)
    batch["extras"]["success"] = np.zeros(5, bool)
    rejects(transitions(batch), r"arrays \['extras/success'\] are not in the agreed schema",
            code="schema", schema=SCHEMA)
    rejects(transitions(make_batch(65)), "batch of 65 transitions exceeds the agreed max_batch 64",
            code="batch", schema=SCHEMA)
    assert decode(transitions(make_batch(64)), schema=SCHEMA).batch_size == 64


def test_rejects_inconsistent_batch_dimensions() -> None:
    batch = make_batch(5)
    batch["reward"] = batch["reward"][:4]
    match = "inconsistent batch sizes: array 'action' has 5 rows but 'reward' has 4"
    rejects(as_transitions(batch), match, code="batch")
    with pytest.raises(WireError, match=match):  # the sender refuses it as well
        transitions(batch)
    batch = make_batch(5)
    batch["reward"] = np.float32(1.0)
    rejects(as_transitions(batch), r"array 'reward': shape \[\] has no leading batch dimension",
            code="batch")
    rejects(as_transitions(make_batch(0)), "batch size N is 0", code="batch")
    only_obs = make_batch(1)["obs"]
    assert decode(as_transitions({"obs": only_obs})).batch_size == 1  # N = rows - 1
    rejects(as_transitions({"obs": {"state": only_obs["state"][:1]}}), "batch size N is 0",
            code="batch")
    rejects(reheader(transitions(), arrays=[]), "must carry at least one array", code="arrays")
    rejects(reheader(transitions(), seq=(1 << 63) - 3), "passes 2", code="header")


def test_rejects_obs_rows_other_than_n_plus_1_and_next_obs_arrays() -> None:
    rng = np.random.default_rng(3)
    # obs with N rows (the version 1 layout without next_obs): refused with the reason.
    batch = make_batch(5)
    batch["obs"] = make_obs(rng, 5)
    match = (r"array 'obs/state' has 5 rows, expected N \+ 1 = 6 \(N = 5 as in 'action'\): "
             "obs/ arrays hold the N observations")
    rejects(as_transitions(batch), match, code="batch")
    rejects(as_transitions(batch), match, code="batch", schema=SCHEMA)
    with pytest.raises(WireError, match=match):  # the sender refuses it as well
        transitions(batch)
    with pytest.raises(WireError, match=match):
        SCHEMA.check(batch)
    # N + 2 rows, and one camera with N + 1 while another has N.
    batch["obs"] = make_obs(rng, 7)
    rejects(as_transitions(batch), r"'obs/state' has 7 rows, expected N \+ 1 = 6", code="batch")
    batch["obs"] = make_obs(rng, 6)
    batch["obs"]["images"]["wrist"] = batch["obs"]["images"]["wrist"][:5]
    rejects(as_transitions(batch), r"'obs/images/wrist' has 5 rows, expected N \+ 1 = 6",
            code="batch")
    # next_obs arrays (version 1) are refused by name, with or without a schema.
    batch = make_batch(5)
    batch["next_obs"] = make_obs(rng, 5)
    match = ("array 'next_obs/state': a transitions message of protocol version 2 carries no "
             r"next_obs/ arrays; step i's next observation is row i \+ 1 of obs/")
    rejects(as_transitions(batch), match, code="batch")
    with pytest.raises(WireError, match=match):
        transitions(batch)
    # A transitions message needs observations.
    batch = make_batch(5)
    del batch["obs"]
    rejects(as_transitions(batch), "carries no obs/ array", code="batch")


def test_rejects_an_episode_end_before_the_last_step() -> None:
    batch = make_batch(5)
    batch["truncated"] = np.array([False, True, False, False, False])
    match = ("array 'truncated': step 1 of 5 is truncated but not the last; a transitions "
             "batch holds steps of one episode")
    rejects(as_transitions(batch), match, code="value")
    with pytest.raises(WireError, match=match):
        transitions(batch)
    batch["truncated"] = np.array([False, False, False, False, True])
    assert decode(transitions(batch), schema=SCHEMA).batch_size == 5


def test_rejects_type_rule_violations() -> None:
    ids = {"actor": "a", "session": "s"}
    hello = encode("hello", meta={"schema": SCHEMA.to_meta()}, **ids)
    rejects(reheader(hello, meta={}), r"'hello' message needs meta\['schema'\]", code="meta")
    rejects(reheader(hello, meta={"schema": {"obs": {}}}), r"hello meta\['schema'\]: schema "
                                                            "must have keys", code="meta")
    bad = SCHEMA.to_meta()
    bad["obs"]["state"]["shape"] = [-7]
    rejects(reheader(hello, meta={"schema": bad}), "schema obs 'state': shape .* negative")
    heartbeat = encode("heartbeat")
    w = weights({"w": np.zeros(2, np.float32)})
    rejects([*reheader(heartbeat, arrays=header_of(w)["arrays"]), w[1]],
            "a 'heartbeat' message carries no arrays, got 1", code="arrays")
    rejects(reheader(w, meta={}), r"'weights' message needs meta\['full'\] as a bool",
            code="meta")
    rejects(reheader(w, policy_version=-1), "must carry its version in policy_version")
    stats = encode("stats", meta={"stats": {"return": 1.0}}, **ids)
    rejects(reheader(stats, meta={"stats": {"return": "high"}}),
            r"meta\['stats'\]\['return'\] must be a number, got str", code="meta")
    rejects(reheader(stats, meta={"stats": [1]}), r"meta\['stats'\] as a map")
    rejects(reheader(encode("error", meta={"reason": "x"}), meta={"reason": ""}),
            r"meta\['reason'\] as a non-empty str", code="meta")


def test_rejects_bad_meta_values() -> None:
    frames = encode("heartbeat")
    rejects(reheader(frames, meta={"x": math.nan}), r"meta\['x'\]: nan is not a finite",
            code="meta")
    rejects(reheader(frames, meta={"x": {"y": [math.inf]}}), r"meta\['x'\]\['y'\]\[0\]: inf",
            code="meta")
    deep: Any = 1
    for _ in range(10):
        deep = {"d": deep}
    rejects(reheader(frames, meta=deep), "nested deeper than 8 levels", code="meta")
    # bin, ext and non-str keys never get past msgpack's strict limits.
    rejects(reheader(frames, meta={"x": b"bytes"}), "not a valid msgpack header", code="header")
    rejects(reheader(frames, meta={"x": msgpack.ExtType(5, b"")}), "ext type 5 is not allowed")
    rejects(reheader(frames, meta={"x": msgpack.ExtType(5, b"abc")}), "exceeds max_ext_len")
    rejects(reheader(frames, meta={1: 2}), "not allowed for map key")
    rejects([msgpack.packb([[[[1]]]] * 3)], "header is a msgpack array")
    rejects([b"\x91" * 5000 + b"\xc0"], "not a valid msgpack header", code="header")


def test_encode_refuses_what_decode_would_refuse() -> None:
    with pytest.raises(WireError, match="unknown message type 'nope'"):
        encode("nope")
    with pytest.raises(WireError, match="'actor' is empty"):
        encode("transitions", session="s", arrays=make_batch(2))
    with pytest.raises(WireError, match="array 'x': dtype complex64 is not one of"):
        weights({"x": np.zeros(2, np.complex64)})
    with pytest.raises(WireError, match="array 'x': dtype object is not one of"):
        weights({"x": np.array([None, 1], dtype=object)})
    with pytest.raises(WireError, match="name 'a b' is invalid"):
        weights({"a b": np.zeros(2, np.float32)})
    with pytest.raises(WireError, match="header cannot be encoded as msgpack"):
        encode("heartbeat", meta={"x": np.float32(1.0)})
    with pytest.raises(WireError, match="'seq' must be an int, got bool"):
        encode("ack", actor="a", session="s", seq=True)


# ---------------------------------------------------------------------------- compression


def smooth_images(n: int, h: int = 64, w: int = 64) -> np.ndarray:
    """Gradients plus a moving square: what a camera sees, roughly (noise does not compress)."""
    y, x = np.mgrid[:h, :w]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i] = np.stack([x * 255 // w, y * 255 // h, (x + y + 8 * i) % 256], -1)
        out[i, 10 + i:26 + i, 20 + 2 * i:36 + 2 * i] = (250, 30, 40)
    return out


def image_message(images: np.ndarray, how: Any) -> list:
    return weights({"img": images}, compress={"img": how})


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def as_image_spec(data: bytes, shape: list[int], encoding: str = "png") -> list:
    """A weights message whose one array claims `shape` and whose frame is `data`."""
    frames = respec(weights({"img": np.zeros(shape, np.uint8)}), 0, encoding=encoding,
                    lengths=[len(data)])
    return [frames[0], data]


@pytest.mark.parametrize("shape", [(12, 16, 3), (1, 1, 3), (6, 12, 16, 3), (2, 3, 5, 7, 1),
                                   (4, 9, 11, 1)])
def test_png_round_trip_is_exact(shape: tuple[int, ...]) -> None:
    images = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    frames = image_message(images, "png")
    spec = header_of(frames)["arrays"][0]
    count = math.prod(shape[:-3])
    assert spec["encoding"] == "png" and len(spec["lengths"]) == count
    assert sum(spec["lengths"]) == memoryview(frames[1]).nbytes
    got = decode([bytes(f) for f in frames]).arrays["img"]
    assert got.dtype == np.uint8 and got.shape == shape and not got.flags.writeable
    np.testing.assert_array_equal(got, images)
    # The files hold the usual RGB order: OpenCV (BGR) reads channel 0 as red.
    if shape[-1] == 3:
        first = cv2.imdecode(np.frombuffer(frames[1], np.uint8)[:spec["lengths"][0]],
                             cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(first[..., ::-1], images.reshape(-1, *shape[-3:])[0])
    # Level 9 is as exact (and not bigger).
    nine = image_message(images, ("png", 9))
    np.testing.assert_array_equal(decode(nine).arrays["img"], images)


def test_png_transitions_batch_with_n_plus_1_obs_rows_round_trips_with_the_schema() -> None:
    batch = make_batch(5, seed=3)
    frames = transitions(batch, compress={"obs/images/front": "png",
                                          "obs": {"images": {"wrist": ("png", 6)}}})
    specs = {s["name"]: s for s in header_of(frames)["arrays"]}
    assert specs["obs/images/front"]["shape"] == [6, *HW]
    assert len(specs["obs/images/wrist"]["lengths"]) == 6  # N + 1 images
    assert "encoding" not in specs["obs/state"]  # raw arrays keep the plain spec
    msg = decode([bytes(f) for f in frames], schema=SCHEMA)
    assert msg.batch_size == 5
    for cam in CAMS:
        np.testing.assert_array_equal(msg.arrays[f"obs/images/{cam}"], batch["obs"]["images"][cam])
    view = transitions_view(msg)
    np.testing.assert_array_equal(view["next_obs"]["images"]["front"],
                                  batch["obs"]["images"]["front"][1:])
    np.testing.assert_array_equal(msg.arrays["obs/state"], batch["obs"]["state"])
    # A compressed array counts as the larger of its decoded size and its frame (random
    # images: PNG is a little bigger than raw).
    names = [s["name"] for s in header_of(frames)["arrays"]]
    assert msg.nbytes == len(frames[0]) + sum(
        max(msg.arrays[name].nbytes, memoryview(f).nbytes)
        for name, f in zip(names, frames[1:], strict=True))


def test_jpeg_round_trip_is_close_and_smaller_than_raw() -> None:
    images = smooth_images(4)
    for quality in (90, 50):
        frames = image_message(images, ("jpeg", quality))
        assert header_of(frames)["arrays"][0]["encoding"] == "jpeg"
        got = decode(frames).arrays["img"]
        assert got.shape == images.shape and got.dtype == np.uint8
        error = np.abs(got.astype(int) - images).mean()
        assert error < (3 if quality == 90 else 6), error
        assert memoryview(frames[1]).nbytes < images.nbytes / 5
    grey = smooth_images(2)[..., :1]
    got = decode(image_message(grey, "jpeg")).arrays["img"]
    assert got.shape == grey.shape and np.abs(got.astype(int) - grey).mean() < 3
    png = image_message(images, "png")
    assert memoryview(png[1]).nbytes < images.nbytes / 2  # smooth: PNG shrinks it too


def test_encode_refuses_bad_compression_settings() -> None:
    img = np.zeros((2, 8, 8, 3), np.uint8)
    for bad in ["zstd", ("jpeg", 0), ("jpeg", 101), ("png", 10), ("png", True), ("raw", 3),
                ("jpeg", 9.5), 5, None]:
        with pytest.raises(WireError, match="compression .* is invalid"):
            image_message(img, bad)
    with pytest.raises(WireError, match="encoding 'png' is only for uint8 images"):
        weights({"img": np.zeros((2, 8, 8, 3), np.float32)}, compress={"img": "png"})
    with pytest.raises(WireError, match="encoding 'jpeg' is only for uint8 images"):
        weights({"img": np.zeros((8, 8, 4), np.uint8)}, compress={"img": "jpeg"})
    with pytest.raises(WireError, match="encoding 'png' is only for uint8 images"):
        weights({"img": np.zeros((8, 8), np.uint8)}, compress={"img": "png"})
    with pytest.raises(WireError, match=r"compress names \['nope'\]"):
        weights({"img": img}, compress={"nope": "png"})
    # "raw" is a valid choice and changes nothing.
    assert bytes(image_message(img, "raw")[0]) == bytes(weights({"img": img})[0])


def test_rejects_malformed_compressed_specs() -> None:
    images = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    frames = image_message(images, "png")
    lengths = header_of(frames)["arrays"][0]["lengths"]
    rejects(respec(frames, 0, encoding="gif"), "array 'img': encoding 'gif' is not supported",
            code="arrays")
    rejects(respec(frames, 0, encoding=["png"]), "encoding \\['png'\\] is not supported",
            code="arrays")
    rejects(respec(frames, 0, dtype="float32", shape=[3, 8, 8, 3]),
            "encoding 'png' is only for uint8 images .* got float32", code="arrays")
    rejects(respec(frames, 0, shape=[3, 8, 8, 2]), "only for uint8 images", code="arrays")
    rejects(respec(frames, 0, shape=[3, 0, 8, 3]), "only for uint8 images", code="arrays")
    rejects(respec(frames, 0, lengths=DELETE), "a compressed array needs 'lengths'",
            code="arrays")
    rejects(respec(frames, 0, lengths=lengths[:2]),
            "'lengths' has 2 entries, expected one per image: 3", code="arrays")
    rejects(respec(frames, 0, lengths=[*lengths, 0]), "'lengths' has 4 entries",
            code="arrays")
    rejects(respec(frames, 0, lengths=[lengths[0], -1, lengths[2]]),
            r"lengths\[1\] is -1, expected an int >= 0", code="arrays")
    rejects(respec(frames, 0, lengths=[lengths[0], True, lengths[2]]),
            r"lengths\[1\] is True", code="arrays")
    rejects(respec(frames, 0, lengths=[lengths[0] + 1, lengths[1], lengths[2] - 1]),
            "image 0 .*(cannot decode|after its IEND)|image 1 .*not a PNG", code="value")
    rejects(respec(frames, 0, lengths=[lengths[0] + 1, *lengths[1:]]),
            f"frame 1 has {sum(lengths)} bytes, but its 3 png image lengths sum to "
            f"{sum(lengths) + 1}", code="frames")
    rejects([frames[0], bytes(frames[1])[:-1]], "lengths sum to", code="frames")
    raw = weights({"img": images})
    rejects(respec(raw, 0, lengths=[1, 2, 3]), "'lengths' belongs to compressed arrays only",
            code="arrays")
    rejects(respec(frames, 0, encoding="jpeg"), "image 0 .*not a JPEG file", code="value")


@pytest.fixture
def no_imdecode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything reaches cv2.imdecode (the header checks must refuse first)."""
    def refuse(*args: Any) -> None:
        raise AssertionError("cv2.imdecode was called")
    monkeypatch.setattr(cv2, "imdecode", refuse)


def test_rejects_an_image_bigger_than_its_spec_before_decoding(no_imdecode: None) -> None:
    """Decompression bombs: an image whose header claims more than the spec never reaches
    OpenCV's decoder (which would allocate what the file claims)."""
    big = png_bytes(np.zeros((64, 64, 3), np.uint8))  # a valid 64x64 PNG, ~100 bytes
    rejects(as_image_spec(big, [1, 8, 8, 3]), r"image 0 \(png, \d+ bytes\): its header says "
            r"64x64x3 \(HxWxC\), the array spec 8x8x3; refused before decoding", code="value")
    # A valid small PNG whose IHDR (CRC fixed) claims 30000 x 30000 (2.7 GB decoded).
    small = bytearray(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    small[16:24] = struct.pack(">II", 30000, 30000)
    small[29:33] = struct.pack(">I", zlib.crc32(bytes(small[12:29])))
    rejects(as_image_spec(bytes(small), [8, 8, 3]), "header says 30000x30000x3", code="value")
    # Same spec, same size, other channel count: refused too.
    grey = png_bytes(np.zeros((8, 8), np.uint8))
    rejects(as_image_spec(grey, [8, 8, 3]), "header says 8x8x1", code="value")
    # A JPEG whose frame header claims 30000 x 30000.
    ok, jpg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    jpg = bytearray(jpg.tobytes())
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
    rejects(as_image_spec(bytes(jpg), [8, 8, 3], "jpeg"), "header says 30000x30000x3",
            code="value")
    # Formats the encoder never writes: 16-bit and RGBA PNGs, non-baseline JPEGs.
    ok, deep = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint16))
    rejects(as_image_spec(deep.tobytes(), [8, 8, 3]), "bit depth 16", code="value")
    ok, rgba = cv2.imencode(".png", np.zeros((8, 8, 4), np.uint8))
    rejects(as_image_spec(rgba.tobytes(), [8, 8, 3]), "colour type 6", code="value")
    lossless = bytes(jpg[:sof + 1]) + b"\xc3" + bytes(jpg[sof + 2:])
    rejects(as_image_spec(lossless, [8, 8, 3], "jpeg"), "frame type 0xc3 is not supported",
            code="value")


def test_rejects_garbage_as_png_and_jpeg() -> None:
    junk = bytes(range(256)) * 2
    rejects(as_image_spec(junk, [8, 8, 3]), "image 0 .*not a PNG file", code="value")
    rejects(as_image_spec(junk, [8, 8, 3], "jpeg"), "image 0 .*not a JPEG file", code="value")
    rejects(as_image_spec(b"", [8, 8, 3]), "not a PNG file", code="value")
    rejects(as_image_spec(b"\xff\xd8", [8, 8, 3], "jpeg"), "no JPEG frame header",
            code="value")
    rejects(as_image_spec(b"\xff\xd8\xff\xda\x00\x02", [8, 8, 3], "jpeg"),
            "marker 0xda before the frame header", code="value")
    # A correct header followed by garbage: a chunk length runs past the end of the file.
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    head = png_bytes(image)[:33]
    rejects(as_image_spec(head + b"x" * 40, [8, 8, 3]), "image 0 .*past the end",
            code="value")
    # Well-formed chunks around damaged pixel data reach OpenCV, which fails: a WireError.
    png = bytearray(png_bytes(image))
    png[41:51] = b"x" * 10  # inside the IDAT data, after its length and type
    rejects(as_image_spec(bytes(png), [8, 8, 3]), "image 0 .*OpenCV cannot decode it",
            code="value")
    ok, jpg = cv2.imencode(".jpg", image)
    jpg = jpg.tobytes()
    rejects(as_image_spec(jpg[:200] + b"\x00" * 40, [8, 8, 3], "jpeg"),
            "OpenCV cannot decode it", code="value")


def test_decoded_size_counts_against_max_bytes_before_decoding(no_imdecode: None) -> None:
    images = smooth_images(8)  # 98 kB decoded, a few kB as JPEG
    frames = image_message(images, ("jpeg", 80))
    wire = sum(memoryview(f).nbytes for f in frames)
    assert wire < images.nbytes / 5
    rejects(frames, r"message of \d+ bytes \(from its header\) exceeds the limit",
            code="size", max_bytes=images.nbytes)
    # A bomb-sized spec over a tiny frame is refused from the header alone.
    huge = respec(frames, 0, shape=[8, 30000, 30000, 3])
    rejects(huge, "exceeds the limit of 268435456 bytes", code="size")


def test_decoded_size_fits_max_bytes() -> None:
    images = smooth_images(8)
    frames = image_message(images, ("jpeg", 80))
    limit = len(frames[0]) + images.nbytes
    assert decode(frames, max_bytes=limit).arrays["img"].shape == images.shape
    rejects(frames, "exceeds the limit", code="size", max_bytes=limit - 1)


# ---------------------------------------------------------------------------- schema


def test_schema_meta_round_trip_and_mismatch() -> None:
    assert Schema.from_meta(SCHEMA.to_meta()) == SCHEMA
    flat = Schema({"state": ("float32", [STATE]), "images/front": ("uint8", HW),
                   "images/wrist": ("uint8", HW)}, ("float32", (ACTION,)),
                  {"grasp_penalty": ("float32", ())}, max_batch=64)
    assert flat == SCHEMA and SCHEMA.mismatch(flat) is None
    other = Schema({"state": ("float32", (STATE + 1,))}, ("float32", (ACTION,)), max_batch=64)
    assert SCHEMA.mismatch(other) == ("'extras/grasp_penalty' is missing from the other schema")
    other = Schema(dict(SCHEMA.obs, state=("float64", (STATE,))), SCHEMA.action, SCHEMA.extras,
                   max_batch=64)
    assert SCHEMA.mismatch(other) == ("'obs/state' is float32 [7] here but float64 [7] in "
                                      "the other schema")
    assert SCHEMA.check(make_batch(3)) == 3
    with pytest.raises(WireError, match=r"'obs/state' has 3 rows, expected N \+ 1 = 4"):
        SCHEMA.check({**make_batch(3), "obs": make_obs(np.random.default_rng(0), 3)})
    with pytest.raises(WireError, match="dtype float64 is not the agreed float32"):
        SCHEMA.check({**make_batch(3), "reward": np.zeros(3)})


@pytest.mark.parametrize("change, match", [
    ({"max_batch": 0}, "max_batch must be an int in 1..1048576"),
    ({"max_batch": True}, "max_batch must be an int"),
    ({"obs": {}}, "needs at least one observation array"),
    ({"obs": {"state": ("float32",)}}, r"schema obs 'state': expected \(dtype, shape\)"),
    ({"action": ("float32", (-1,))}, "schema action: shape .* negative"),
    ({"extras": {"p": ("complex64", ())}}, "dtype 'complex64' is not one of"),
])
def test_schema_rejects_malformed_specs(change: dict, match: str) -> None:
    args = {"obs": {"state": ("float32", (3,))}, "action": ("float32", (2,)), **change}
    with pytest.raises(WireError, match=match):
        Schema(**args)


def test_schema_from_meta_rejects_malformed_maps() -> None:
    good = SCHEMA.to_meta()
    for bad, match in [([], "schema must be a map, got array"),
                       ({**good, "x": 1}, r"unknown \[\"'x'\"\]"),
                       ({k: v for k, v in good.items() if k != "action"}, "missing"),
                       ({**good, "obs": []}, "schema obs must be a map"),
                       ({**good, "action": {"dtype": "float32"}}, "exactly 'dtype' and 'shape'"),
                       ({**good, "obs": {"a//b": good["action"]}}, "name 'a//b' is invalid")]:
        with pytest.raises(WireError, match=match):
            Schema.from_meta(bad)


def test_decoded_batch_feeds_the_replay_buffer_directly() -> None:
    from hilrl.envs.spec import EnvSpec

    # The env spec is the one source of both the learner's buffers and the agreed schema.
    spec = EnvSpec(STATE, {cam: HW for cam in CAMS}, ACTION)
    buf = ReplayBuffer(32, **spec.replay_kwargs())
    schema = spec.wire_schema(max_batch=64)
    assert schema == SCHEMA
    msg = decode([bytes(f) for f in transitions(make_batch(6))], schema=schema)
    tree = transitions_view(msg)

    def row(node: Any, i: int) -> Any:
        return {k: row(v, i) for k, v in node.items()} if isinstance(node, dict) else node[i]

    for i in range(msg.batch_size):
        t = row(tree, i)
        buf.add(t["obs"], t["action"], t["reward"], t["terminated"], t["truncated"],
                t["next_obs"], intervened=t["intervened"], **t["extras"])
    assert len(buf) == 6
    sample = buf.sample(4, np.random.default_rng(0))
    assert sample["obs"]["images"]["front"].shape == (4, *HW)


# ---------------------------------------------------------------------------- fuzzing

_BASE = transitions(make_batch(2))
_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def _decode_or_wire_error(frames: Any, **kw: Any) -> None:
    try:
        decode(frames, **kw)
    except WireError as e:
        assert str(e)  # every rejection says why


@_FUZZ
@given(st.lists(st.binary(max_size=80) | st.integers() | st.none() | st.text(max_size=5),
                min_size=0, max_size=5))
def test_fuzz_random_frames_only_raise_wire_error(frames: list) -> None:
    _decode_or_wire_error(frames)
    _decode_or_wire_error(frames, schema=SCHEMA)


@_FUZZ
@given(field=st.sampled_from(["type", "v", "actor", "session", "seq", "policy_version",
                              "arrays", "meta", "other"]),
       spec_key=st.sampled_from(["name", "dtype", "shape", "encoding", "lengths", "junk"]),
       value=_json_like, in_spec=st.booleans())
def test_fuzz_header_values_only_raise_wire_error(field: str, spec_key: str, value: Any,
                                                  in_spec: bool) -> None:
    frames = respec(_BASE, 0, **{spec_key: value}) if in_spec else reheader(_BASE,
                                                                            **{field: value})
    _decode_or_wire_error(frames, schema=SCHEMA)


_COMPRESSED = {how: [bytes(f) for f in transitions(
    {**make_batch(2), "obs": {**make_obs(np.random.default_rng(4), 3),
                              "images": {c: smooth_images(3, *HW[:2]) for c in CAMS}}},
    compress={"obs/images/front": how, "obs/images/wrist": how})]
    for how in ("png", "jpeg")}


@_FUZZ
@given(st.data())
def test_fuzz_mutated_messages_only_raise_wire_error(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([_BASE, _COMPRESSED["png"], _COMPRESSED["jpeg"]]))
    frames = [bytearray(f) for f in base]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frames) - 1))
        frame = frames[i]
        op = data.draw(st.sampled_from(["flip", "cut", "grow", "drop", "dup"]))
        if op == "flip" and frame:
            pos = data.draw(st.integers(0, len(frame) - 1))
            frame[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del frame[data.draw(st.integers(0, len(frame))):]
        elif op == "grow":
            frame.extend(data.draw(st.binary(min_size=1, max_size=8)))
        elif op == "drop" and len(frames) > 1:
            del frames[i]
        elif op == "dup":
            frames.insert(i, bytearray(frame))
    _decode_or_wire_error([bytes(f) for f in frames], schema=SCHEMA)
