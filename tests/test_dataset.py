"""Tests for the on-disk episode format (hilrl.storage.dataset), on real files in tmp_path."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from hilrl.storage.dataset import (
    DatasetError,
    DatasetWriter,
    Episode,
    EpisodeRecorder,
    list_episodes,
    read_dataset,
    read_dataset_info,
    read_episode,
)

INFO = {"task": "pick_cube", "env": {"hz": 10, "cameras": ["front", "wrist"]}, "hilrl": "0.1.0"}


def make_episode(
    rng: np.random.Generator,
    length: int = 5,
    cameras: tuple[str, ...] = ("front",),
    state_dim: int = 7,
    action_dim: int = 4,
    image_size: int = 8,
    extras: bool = True,
) -> Episode:
    terminated = np.zeros(length, bool)
    terminated[-1] = True
    return Episode(
        state=rng.standard_normal((length + 1, state_dim)).astype(np.float32),
        images={
            cam: rng.integers(0, 256, (length + 1, image_size, image_size, 3), dtype=np.uint8)
            for cam in cameras
        },
        action=rng.uniform(-1, 1, (length, action_dim)).astype(np.float32),
        reward=rng.standard_normal(length).astype(np.float32),
        terminated=terminated,
        truncated=np.zeros(length, bool),
        intervened=rng.random(length) < 0.5,
        extras=(
            {
                "success": terminated.copy(),
                "grasp_penalty": rng.standard_normal(length).astype(np.float32),
                "gripper_action": rng.integers(0, 3, (length, 1), dtype=np.int64),
            }
            if extras
            else {}
        ),
        meta={"operator": "ana", "seed": int(rng.integers(1 << 30)), "tags": ["demo", "v1"],
              "success": True, "score": 0.5, "notes": None},
    )


def assert_same_episode(got: Episode, want: Episode) -> None:
    def same(a: np.ndarray, b: np.ndarray) -> None:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, strict=True)

    for name in ("state", "action", "reward", "terminated", "truncated", "intervened"):
        same(getattr(got, name), getattr(want, name))
    assert list(got.images) == list(want.images)
    for cam in want.images:
        same(got.images[cam], want.images[cam])
    assert list(got.extras) == list(want.extras)
    for name in want.extras:
        same(got.extras[name], want.extras[name])
    assert got.meta == want.meta
    assert got.length == want.length


def write_one(tmp_path: Path, compress: bool = True, **kwargs) -> Path:
    writer = DatasetWriter(tmp_path / "ds", INFO, compress=compress)
    return writer.write(make_episode(np.random.default_rng(0), **kwargs))


def npz_members(file: Path) -> dict[str, np.ndarray]:
    with np.load(file, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


# --- round trip ------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_several_episodes(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(42)
    episodes = [
        make_episode(rng, length=1, cameras=()),
        make_episode(rng, length=6, cameras=("front",), extras=False),
        make_episode(rng, length=9, cameras=("front", "wrist")),
        make_episode(rng, length=3, cameras=("wrist", "front"), state_dim=1, action_dim=7),
    ]
    episodes[1].meta = {}
    writer = DatasetWriter(tmp_path / "ds", INFO, compress=compress)
    paths = [writer.write(ep) for ep in episodes]

    assert [p.name for p in paths] == [f"episode_{i:06d}.npz" for i in range(4)]
    assert list_episodes(tmp_path / "ds") == paths
    assert read_dataset_info(tmp_path / "ds") == INFO
    loaded = read_dataset(tmp_path / "ds")
    assert len(loaded) == len(episodes)
    for got, want in zip(loaded, episodes, strict=True):
        assert_same_episode(got, want)


def test_compress_option_changes_file_size(tmp_path: Path) -> None:
    # Zeros compress well: a savez_compressed file must be much smaller than a savez one.
    ep = make_episode(np.random.default_rng(1), length=20, image_size=32)
    ep.images = {"front": np.zeros_like(ep.images["front"])}
    small = DatasetWriter(tmp_path / "c", INFO, compress=True).write(ep)
    big = DatasetWriter(tmp_path / "u", INFO, compress=False).write(ep)
    assert small.stat().st_size * 5 < big.stat().st_size
    assert_same_episode(read_episode(small), ep)
    assert_same_episode(read_episode(big), ep)


def test_files_readable_with_plain_numpy_and_json(tmp_path: Path) -> None:
    # The module docstring promises hilrl is not needed to read a dataset.
    file = write_one(tmp_path, cameras=("front", "wrist"))
    ep = make_episode(np.random.default_rng(0), cameras=("front", "wrist"))  # as write_one
    meta_json = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta_json == {"format": "hilrl-episodes", "version": 1, "info": INFO}

    members = npz_members(file)
    header = json.loads(bytes(members["__meta__"]))
    assert header["format"] == "hilrl-episode" and header["version"] == 1
    assert header["length"] == ep.length
    assert header["cameras"] == ["front", "wrist"]
    assert header["meta"] == ep.meta
    assert set(header["arrays"]) == set(members) - {"__meta__"}
    assert members["state"].shape == (ep.length + 1, 7)
    assert members["images/wrist"].shape == (ep.length + 1, 8, 8, 3)
    for name, spec in header["arrays"].items():
        assert list(members[name].shape) == spec["shape"]
        assert members[name].dtype == np.dtype(spec["dtype"])


# --- recorder --------------------------------------------------------------------------


def record(ep: Episode) -> Episode:
    """Feed `ep` through an EpisodeRecorder the way an env loop would."""
    rec = EpisodeRecorder()

    def obs(t: int) -> dict:
        return {"state": ep.state[t], "images": {c: img[t] for c, img in ep.images.items()}}

    rec.start(obs(0))
    for t in range(ep.length):
        rec.add(
            ep.action[t], float(ep.reward[t]), bool(ep.terminated[t]), bool(ep.truncated[t]),
            bool(ep.intervened[t]), obs(t + 1), **{k: v[t] for k, v in ep.extras.items()},
        )
    assert rec.length == ep.length
    return rec.finish(ep.meta)


@pytest.mark.parametrize("cameras", [(), ("front",), ("front", "wrist")])
def test_recorder_matches_direct_construction(tmp_path: Path, cameras: tuple) -> None:
    ep = make_episode(np.random.default_rng(3), length=7, cameras=cameras)
    recorded = record(ep)
    assert_same_episode(recorded, ep)
    written = DatasetWriter(tmp_path / "ds", INFO).write(recorded)
    assert_same_episode(read_episode(written), ep)


def test_recorder_copies_reused_buffers_and_casts() -> None:
    # Drivers often hand back the same buffer every frame; frames must not alias it.
    frame = np.zeros((4, 4, 3), np.uint8)
    state = np.zeros(3)  # float64 on purpose: stored as float32
    rec = EpisodeRecorder()
    rec.start({"state": state, "images": {"cam": frame}})
    for t in range(1, 4):
        frame[:] = t
        state[:] = t
        rec.add([0.5, -0.5], 1, 0, t == 3, 1, {"state": state, "images": {"cam": frame}})
    ep = rec.finish({"k": 1})
    assert ep.images["cam"][:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert ep.state.dtype == np.float32 and ep.state[:, 0].tolist() == [0, 1, 2, 3]
    assert ep.action.dtype == np.float32 and ep.reward.dtype == np.float32
    assert ep.truncated.tolist() == [False, False, True]
    assert ep.intervened.dtype == bool and ep.meta == {"k": 1}
    assert rec.length == 0  # reset after finish


def test_recorder_rejects_inconsistent_steps() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    rec = EpisodeRecorder()
    with pytest.raises(DatasetError, match="before start"):
        rec.add([0.0], 0.0, False, False, False, {"state": [0.0]})
    rec.start({"state": [0.0], "images": {"cam": img}})
    with pytest.raises(DatasetError, match="no steps recorded"):
        rec.finish()
    with pytest.raises(DatasetError, match=r"step 0 next_obs: cameras \[\] differ"):
        rec.add([0.0], 0.0, False, False, False, {"state": [0.0]})

    rec.start({"state": [0.0], "images": {"cam": img}})
    rec.add([0.0], 0.0, False, False, False, {"state": [0.0], "images": {"cam": img}}, x=1)
    with pytest.raises(DatasetError, match="step 1: extras"):
        rec.add([0.0], 0.0, False, False, False, {"state": [0.0], "images": {"cam": img}})
    with pytest.raises(DatasetError, match=r"step 1: 'action' has shape \(2,\)"):
        rec.add([0.0, 1.0], 0.0, False, False, False,
                {"state": [0.0], "images": {"cam": img}}, x=1)


# --- validation ------------------------------------------------------------------------


def test_validation_failures_name_the_field(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    writer = DatasetWriter(tmp_path / "ds", INFO)

    def expect(match: str, **changes) -> None:
        ep = make_episode(rng, length=5, cameras=("front",))
        for name, value in changes.items():
            setattr(ep, name, value)
        with pytest.raises(DatasetError, match=match):
            ep.validate()
        with pytest.raises(DatasetError, match=match):
            writer.write(ep)

    expect(r"'reward': expected shape \(5\) dtype float32, found shape \(4,\)",
           reward=np.zeros(4, np.float32))
    expect(r"'state': expected shape \(6, \*\) dtype float32, found shape \(5, 7\)",
           state=np.zeros((5, 7), np.float32))
    nan_action = np.zeros((5, 4), np.float32)
    nan_action[2, 1] = np.nan
    expect(r"'action': expected finite values, found nan at index \[2, 1\]", action=nan_action)
    expect(r"'images/front': expected shape \(6, \*, \*, 3\) dtype uint8, found .* float32",
           images={"front": np.zeros((6, 8, 8, 3), np.float32)})
    expect(r"'action': expected shape \(5, \*\) dtype float32, found .*float64",
           action=np.zeros((5, 4)))
    expect(r"'intervened': expected .*bool", intervened=np.zeros(5, np.int8))
    expect(r"'success': expected shape \(5, \.\.\.\)",
           extras={"success": np.zeros(4, bool)})
    expect(r"'obj': expected .*bool/int/float.*dtype object",
           extras={"obj": np.array([{}] * 5, dtype=object)})
    expect("extra name 'reward' is reserved", extras={"reward": np.zeros(5, np.float32)})
    expect("camera name 'a/b' is invalid",
           images={"a/b": np.zeros((6, 8, 8, 3), np.uint8)})
    early_end = np.array([False, True, False, False, True])
    expect("'terminated': expected True only at the last step .* found True at step 1",
           terminated=early_end)
    expect("at least one step", action=np.zeros((0, 4), np.float32))
    expect("'meta' must be JSON-serializable", meta={"bad": object()})
    expect("'meta' does not survive a JSON round trip", meta={"t": (1, 2)})
    # None of the refused episodes reached the disk.
    assert list_episodes(tmp_path / "ds") == []


# --- damaged / hostile files -----------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_file(tmp_path: Path, compress: bool) -> None:
    file = write_one(tmp_path, compress=compress)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=re.escape(file.name) + ".*truncated, corrupted"):
        read_episode(file)
    with pytest.raises(DatasetError, match=re.escape(file.name)):
        read_dataset(tmp_path / "ds")


@pytest.mark.parametrize("compress", [True, False])
def test_corrupted_bytes_in_the_middle(tmp_path: Path, compress: bool) -> None:
    # Big random images so the middle of the file is array payload, caught by CRC/zlib.
    file = write_one(tmp_path, compress=compress, length=10, image_size=48)
    data = bytearray(file.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    file.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=re.escape(file.name) + ".*truncated, corrupted"):
        read_episode(file)


def test_any_flipped_byte_gives_dataset_error_or_the_original_data(tmp_path: Path) -> None:
    # Compressible images so flips also hit the deflate stream (zlib.error, not only CRC).
    ep = make_episode(np.random.default_rng(9), length=4, image_size=16)
    shape = ep.images["front"].shape
    ep.images = {"front": (np.arange(np.prod(shape)) % 7).astype(np.uint8).reshape(shape)}
    file = DatasetWriter(tmp_path / "ds", INFO).write(ep)
    data = file.read_bytes()
    refused = 0
    for offset in range(0, len(data), 5):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        file.write_bytes(bytes(damaged))
        try:
            got = read_episode(file)
        except DatasetError as e:
            assert file.name in str(e) and len(str(e)) < 600
            refused += 1
        else:
            # Zip metadata nobody checks (timestamps, attributes) may change; data may not.
            assert_same_episode(got, ep)
        # Any other exception type escaping fails the test.
    assert refused > 0.5 * len(range(0, len(data), 5))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", None])
def test_not_an_npz(tmp_path: Path, content: bytes | None) -> None:
    file = tmp_path / "episode_000000.npz"
    file.write_bytes(np.random.default_rng(5).bytes(4096) if content is None else content)
    with pytest.raises(DatasetError, match=re.escape(file.name) + ".*not an .npz"):
        read_episode(file)


def test_plain_npy_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "episode_000000.npz"
    with open(file, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DatasetError, match="single .npy array"):
        read_episode(file)


def test_pickled_object_array_is_refused(tmp_path: Path) -> None:
    file = write_one(tmp_path)
    members = npz_members(file)
    # A crafted file: the real episode with its reward swapped for a pickled object array.
    members["reward"] = np.array([{"evil": i} for i in range(5)], dtype=object)
    np.savez(file, **members)  # allow_pickle defaults to True in savez: test-only
    with pytest.raises(DatasetError, match=re.escape(file.name) + ".*pickled objects, refused"):
        read_episode(file)


def test_whole_file_pickle_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "episode_000000.npz"
    np.array([{"x": 1}], dtype=object).dump(file)  # ndarray.dump writes a pickle
    with pytest.raises(DatasetError, match="pickled objects, refused"):
        read_episode(file)


def test_arrays_inconsistent_with_meta(tmp_path: Path) -> None:
    file = write_one(tmp_path)
    good = npz_members(file)

    def rewrite(**changes) -> None:
        members = dict(good)
        for name, value in changes.items():
            if value is None:
                del members[name]
            else:
                members[name] = value
        np.savez(file, **members)

    rewrite(action=None)
    with pytest.raises(DatasetError, match=re.escape(file.name) + r".*missing arrays \['action'\]"):
        read_episode(file)
    rewrite(__meta__=None)
    with pytest.raises(DatasetError, match="missing the '__meta__' array"):
        read_episode(file)
    rewrite(reward=good["reward"].astype(np.float64))
    with pytest.raises(DatasetError, match="array 'reward' is .*float64.* says .*<f4"):
        read_episode(file)
    rewrite(reward=good["reward"][:-1])
    with pytest.raises(DatasetError, match=r"array 'reward' is shape \(4,\)"):
        read_episode(file)
    rewrite(stowaway=np.zeros(5))
    with pytest.raises(DatasetError, match=r"unexpected arrays \['stowaway'\]"):
        read_episode(file)
    rewrite(__meta__=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(DatasetError, match="'__meta__' is not valid UTF-8 JSON"):
        read_episode(file)
    header = json.loads(bytes(good["__meta__"]))
    header["version"] = 99
    rewrite(__meta__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(DatasetError, match="episode version 99 is not supported"):
        read_episode(file)


def test_contents_consistent_with_meta_but_invalid(tmp_path: Path) -> None:
    # A hand-made file whose header matches but whose data breaks the format.
    file = write_one(tmp_path)
    members = npz_members(file)
    members["action"] = members["action"].copy()
    members["action"][0, 0] = np.inf
    np.savez(file, **members)
    with pytest.raises(DatasetError, match=re.escape(file.name) + ".*'action': expected finite"):
        read_episode(file)


def test_missing_episode_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="episode_000123.npz: episode file does not exist"):
        read_episode(tmp_path / "episode_000123.npz")


# --- dataset directory / meta.json -----------------------------------------------------


def test_missing_dir_and_missing_meta_json(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope: dataset directory does not exist"):
        read_dataset(tmp_path / "nope")
    write_one(tmp_path)
    (tmp_path / "ds" / "meta.json").unlink()
    for fn in (read_dataset, list_episodes, read_dataset_info):
        with pytest.raises(DatasetError, match="meta.json: missing"):
            fn(tmp_path / "ds")
    # Episodes without meta.json: the writer refuses to guess.
    with pytest.raises(DatasetError, match="episode files but no meta.json"):
        DatasetWriter(tmp_path / "ds", INFO)


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ({"format": "hilrl-episodes", "version": 2, "info": {}}, "version 2 is not supported"),
        ({"format": "lerobot", "version": 1, "info": {}}, "format is 'lerobot'"),
        ([1, 2], "format is 'list'"),
        ("{broken", "not valid JSON"),
    ],
)
def test_bad_meta_json(tmp_path: Path, document: object, match: str) -> None:
    write_one(tmp_path)
    meta_file = tmp_path / "ds" / "meta.json"
    meta_file.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(DatasetError, match="meta.json: .*" + match):
        read_dataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match=match):
        DatasetWriter(tmp_path / "ds", INFO)
    with pytest.raises(DatasetError, match=match):
        DatasetWriter(tmp_path / "ds", INFO, overwrite=True)  # never wipe a foreign dir


def test_info_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset info must be JSON-serializable"):
        DatasetWriter(tmp_path / "ds", {"when": object()})


# --- appending / overwriting / atomicity -----------------------------------------------


def test_append_continues_numbering(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    eps = [make_episode(rng, length=n) for n in (2, 3, 4, 5, 6)]
    first = DatasetWriter(tmp_path / "ds", INFO)
    first.write(eps[0])
    first.write(eps[1])

    second = DatasetWriter(tmp_path / "ds", {"task": "other"})
    assert second.next_index == 2
    assert second.info == INFO  # appending keeps the dataset's original info
    assert second.write(eps[2]).name == "episode_000002.npz"
    # A gap (an episode deleted by hand) is tolerated; numbering goes on after the last.
    (tmp_path / "ds" / "episode_000002.npz").rename(tmp_path / "ds" / "episode_000007.npz")
    assert DatasetWriter(tmp_path / "ds", INFO).write(eps[3]).name == "episode_000008.npz"

    assert [p.name for p in list_episodes(tmp_path / "ds")] == [
        "episode_000000.npz", "episode_000001.npz", "episode_000007.npz", "episode_000008.npz"
    ]
    assert [ep.length for ep in read_dataset(tmp_path / "ds")] == [2, 3, 4, 5]
    assert read_dataset_info(tmp_path / "ds") == INFO


def test_episode_order_is_numeric_past_six_digits(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    writer = DatasetWriter(tmp_path / "ds", INFO)
    lengths = {"episode_999999.npz": 2, "episode_1000000.npz": 3}
    for name, length in lengths.items():
        writer.write(make_episode(rng, length=length)).rename(tmp_path / "ds" / name)
    assert [p.name for p in list_episodes(tmp_path / "ds")] == list(lengths)
    assert [ep.length for ep in read_dataset(tmp_path / "ds")] == [2, 3]
    appended = DatasetWriter(tmp_path / "ds", INFO).write(make_episode(rng))
    assert appended.name == "episode_1000001.npz"


def test_overwrite_starts_over(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    writer = DatasetWriter(tmp_path / "ds", INFO)
    writer.write(make_episode(rng))
    writer.write(make_episode(rng))
    (tmp_path / "ds" / "notes.txt").write_text("keep me")
    fresh = DatasetWriter(tmp_path / "ds", {"task": "new"}, overwrite=True)
    assert fresh.next_index == 0
    assert list_episodes(tmp_path / "ds") == []
    assert read_dataset_info(tmp_path / "ds") == {"task": "new"}
    assert (tmp_path / "ds" / "notes.txt").read_text() == "keep me"


def test_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "ds").write_text("")
    with pytest.raises(DatasetError, match="not a directory"):
        DatasetWriter(tmp_path / "ds", INFO)
    with pytest.raises(DatasetError, match="not a directory"):
        read_dataset(tmp_path / "ds")


def test_interrupted_write_leaves_no_episode(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(8)
    writer = DatasetWriter(tmp_path / "ds", INFO)
    writer.write(make_episode(rng))
    before = sorted(p.name for p in (tmp_path / "ds").iterdir())

    fsynced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    def crash(src, dst):
        # At rename time the data is complete and synced, but only under a temp name.
        assert Path(src).parent == Path(dst).parent and Path(src).name.startswith(".")
        assert not Path(dst).exists()
        assert fsynced, "rename before fsync"
        assert_same_episode(read_episode(src), attempt)
        raise OSError("simulated crash before rename")

    attempt = make_episode(rng)
    monkeypatch.setattr(os, "fsync", fsync)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        writer.write(attempt)
    # Neither a final-named file nor a temp file is left behind.
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == before
    assert not (tmp_path / "ds" / "episode_000001.npz").exists()

    monkeypatch.undo()
    ep = make_episode(rng)
    assert writer.write(ep).name == "episode_000001.npz"
    assert_same_episode(read_dataset(tmp_path / "ds")[1], ep)


def test_crash_leftover_temp_files_are_ignored(tmp_path: Path) -> None:
    file = write_one(tmp_path)
    # What a hard crash (power loss) between write and rename would leave behind.
    (tmp_path / "ds" / ".episode_000001.npz.abc123.tmp").write_bytes(file.read_bytes()[:100])
    assert list_episodes(tmp_path / "ds") == [file]
    assert len(read_dataset(tmp_path / "ds")) == 1
    assert DatasetWriter(tmp_path / "ds", INFO).next_index == 1
