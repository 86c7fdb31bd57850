"""Tests for the image replay buffer (hilrl.learning.replay).

Every observation encodes its (episode, step) in its state and in every pixel, and every
transition field is a function of (episode, step), so a transition read from a wrong slot
or across an episode boundary is caught by `check_batch`.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hilrl.learning.replay import MixedSampler, Prefetcher, ReplayBuffer, ReplayFileError
from hilrl.storage.dataset import Episode

CAMS = {"front": (4, 5, 3), "wrist": (4, 5, 3)}
STATE, ACTION = 3, 2
END = ("terminated", "truncated", "open")


def make_buffer(capacity: int, cams: dict = CAMS, extras: tuple = ("grasp_penalty",)
                ) -> ReplayBuffer:
    return ReplayBuffer(capacity, STATE, cams, ACTION, extras=extras)


def obs(ep: int, step: int, cams: dict = CAMS, tag: float = 0.0) -> dict:
    images = {}
    for i, (cam, shape) in enumerate(cams.items()):
        img = np.empty(shape, np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = ep % 251, step % 251, i + 1
        images[cam] = img
    return {"state": np.array([ep, step, tag], np.float32), "images": images}


def fields(ep: int, step: int) -> dict:
    return {"action": np.array([ep, -step], np.float32), "reward": np.float32(ep * 1000 + step),
            "intervened": (ep + step) % 3 == 0, "grasp_penalty": np.float32(-ep - step / 100)}


def flags(step: int, length: int, end: str) -> tuple[bool, bool]:
    last = step == length - 1
    return last and end == "terminated", last and end == "truncated"


def add_steps(buf: ReplayBuffer, ep: int, length: int, end: str, start: int = 0,
              first: bool | None = None) -> None:
    """Steps start..start+length-1 of episode `ep`, one add() each."""
    for step in range(start, start + length):
        term, trunc = flags(step - start, length, end)
        buf.add(obs(ep, step), terminated=term, truncated=trunc, next_obs=obs(ep, step + 1),
                first=first if step == start else None, **fields(ep, step))


def make_episode(ep: int, length: int, end: str, cams: dict = CAMS) -> Episode:
    per_step = [fields(ep, s) for s in range(length)]
    all_obs = [obs(ep, s, cams) for s in range(length + 1)]
    ends = [flags(s, length, end) for s in range(length)]
    return Episode(
        state=np.stack([o["state"] for o in all_obs]),
        images={cam: np.stack([o["images"][cam] for o in all_obs]) for cam in cams},
        action=np.stack([f["action"] for f in per_step]),
        reward=np.array([f["reward"] for f in per_step], np.float32),
        terminated=np.array([e[0] for e in ends]),
        truncated=np.array([e[1] for e in ends]),
        intervened=np.array([f["intervened"] for f in per_step]),
        extras={"grasp_penalty": np.array([f["grasp_penalty"] for f in per_step], np.float32),
                "success": np.array([e[0] for e in ends])},  # not configured: ignored
    )


def decode(batch: dict) -> list[tuple[int, int]]:
    return [(int(e), int(s)) for e, s in batch["obs"]["state"][:, :2]]


def check_batch(batch: dict, ends: dict[tuple[int, int], tuple[bool, bool]],
                cams: dict = CAMS) -> list[tuple[int, int]]:
    """Assert every row is exactly the transition its obs names; return the (ep, step)s.

    `ends[(ep, step)]` is (terminated, truncated) as added.
    """
    keys = decode(batch)
    for row, (ep, step) in enumerate(keys):
        want_obs, want_next, want = obs(ep, step, cams), obs(ep, step + 1, cams), fields(ep, step)
        assert (ep, step) in ends, f"row {row}: {(ep, step)} was never added"
        np.testing.assert_array_equal(batch["next_obs"]["state"][row, :2], [ep, step + 1])
        for cam in cams:
            np.testing.assert_array_equal(batch["obs"]["images"][cam][row],
                                          want_obs["images"][cam])
            np.testing.assert_array_equal(batch["next_obs"]["images"][cam][row],
                                          want_next["images"][cam])
        np.testing.assert_array_equal(batch["action"][row], want["action"])
        assert batch["reward"][row] == want["reward"]
        assert batch["intervened"][row] == want["intervened"]
        assert batch["grasp_penalty"][row] == want["grasp_penalty"]
        term, trunc = ends[(ep, step)]
        assert (batch["terminated"][row], batch["truncated"][row]) == (term, trunc)
        assert batch["mask"][row] == (0.0 if term else 1.0)
    return keys


def all_transitions(buf: ReplayBuffer) -> dict:
    return buf.gather(buf.valid_indices())


def ends_of(episodes: list[tuple[int, int, str]], start: int = 0) -> dict:
    return {(ep, s): flags(s - start, length, end)
            for ep, length, end in episodes for s in range(start, start + length)}


# ------------------------------------------------------------------------ storage


def test_next_obs_and_fields_match_what_was_added():
    buf = make_buffer(100)
    episodes = [(1, 5, "terminated"), (2, 3, "truncated"), (3, 4, "open"), (4, 2, "terminated")]
    for ep, length, end in episodes:
        add_steps(buf, ep, length, end)
    batch = all_transitions(buf)
    keys = check_batch(batch, ends_of(episodes))
    assert sorted(keys) == sorted(ends_of(episodes))
    assert len(buf) == 14
    # One slot per observation: T + 1 per episode, in order, final observations unsampled.
    np.testing.assert_array_equal(buf.valid_indices(),
                                  [0, 1, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13, 15, 16])
    assert batch["obs"]["state"].dtype == np.float32 and batch["mask"].dtype == np.float32
    assert batch["terminated"].dtype == bool and batch["grasp_penalty"].dtype == np.float32


def test_sampled_batches_never_cross_an_episode_boundary():
    buf = make_buffer(64)
    episodes = [(ep, 1 + ep % 4, END[ep % 3]) for ep in range(1, 12)]
    for ep, length, end in episodes:
        add_steps(buf, ep, length, end)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        seen.update(check_batch(buf.sample(64, rng), ends_of(episodes)))
    assert seen == set(ends_of(episodes))  # uniform over all of them, boundaries excluded


def test_wraparound_drops_overwritten_transitions_and_never_reads_a_stale_next_obs():
    buf = make_buffer(6)
    add_steps(buf, 1, 4, "terminated")  # slots 0..4: obs 0..4; transitions at 0..3
    add_steps(buf, 2, 2, "truncated")  # slots 5, 0, 1: transitions at 5 (next in 0) and 0
    np.testing.assert_array_equal(buf.valid_indices(), [0, 2, 3, 5])
    keys = check_batch(all_transitions(buf), ends_of([(1, 4, "terminated"), (2, 2, "truncated")]))
    assert sorted(keys) == [(1, 2), (1, 3), (2, 0), (2, 1)]
    # Episode 3's final obs lands in slot 5; slot 0 still holds episode 2's data, so slot 5
    # must not be sampled (its "next" would be stale).
    add_steps(buf, 3, 3, "terminated")  # slots 2, 3, 4, 5
    np.testing.assert_array_equal(buf.valid_indices(), [0, 2, 3, 4])
    keys = check_batch(all_transitions(buf), ends_of([(2, 2, "truncated"),
                                                      (3, 3, "terminated")]))
    assert sorted(keys) == [(2, 1), (3, 0), (3, 1), (3, 2)]
    assert len(buf) == 4


def test_an_episode_longer_than_the_buffer_keeps_its_latest_transitions():
    buf = make_buffer(5)
    add_steps(buf, 7, 12, "open")
    keys = check_batch(all_transitions(buf), ends_of([(7, 12, "open")]))
    assert sorted(keys) == [(7, 8), (7, 9), (7, 10), (7, 11)]


def test_mask_is_zero_only_for_terminated_transitions():
    buf = make_buffer(20)
    add_steps(buf, 1, 2, "terminated")
    add_steps(buf, 2, 2, "truncated")
    add_steps(buf, 3, 1, "open")
    batch = all_transitions(buf)
    by_key = dict(zip(decode(batch), batch["mask"], strict=True))
    assert by_key == {(1, 0): 1.0, (1, 1): 0.0, (2, 0): 1.0, (2, 1): 1.0, (3, 0): 1.0}
    truncated = dict(zip(decode(batch), batch["truncated"], strict=True))
    assert truncated[(2, 1)] and not truncated[(1, 1)]


# ------------------------------------------------------------------------ add() contract


def test_continuing_an_episode_writes_one_slot_per_step():
    buf = make_buffer(4)  # exactly one 3-step episode: 4 observations
    add_steps(buf, 1, 3, "open")
    assert len(buf) == 3
    # The next step continues it (obs == previous next_obs): one more slot, oldest dropped.
    add_steps(buf, 1, 1, "open", start=3)
    assert sorted(decode(all_transitions(buf))) == [(1, 1), (1, 2), (1, 3)]


def test_a_new_slot_starts_after_an_end_or_a_different_obs_or_first_true():
    ends = ends_of([(1, 1, "terminated"), (2, 1, "truncated"), (3, 1, "open")])
    # After terminated/truncated, an equal obs still starts a new slot.
    for ep, end in ((1, "terminated"), (2, "truncated")):
        buf = make_buffer(10)
        add_steps(buf, ep, 1, end)
        buf.add(obs(ep, 1), terminated=False, truncated=False, next_obs=obs(ep, 2),
                **fields(ep, 1))
        np.testing.assert_array_equal(buf.valid_indices(), [0, 2])
    # first=True starts a new slot even though obs equals the previous next_obs.
    buf = make_buffer(10)
    add_steps(buf, 3, 1, "open")
    add_steps(buf, 3, 1, "open", start=1, first=True)
    np.testing.assert_array_equal(buf.valid_indices(), [0, 2])
    check_batch(all_transitions(buf), {**ends, (3, 1): (False, False)})
    # An open episode followed by an unrelated obs (missed reset): new slot, no mix-up.
    buf = make_buffer(10)
    add_steps(buf, 3, 1, "open")
    add_steps(buf, 4, 2, "open")
    np.testing.assert_array_equal(buf.valid_indices(), [0, 2, 3])
    check_batch(all_transitions(buf), {**ends, **ends_of([(4, 2, "open")])})
    # first=False asserts continuation.
    with pytest.raises(ValueError, match="does not continue"):
        buf.add(obs(9, 0), np.zeros(2), 0.0, False, False, obs(9, 1), first=False,
                grasp_penalty=0.0)
    buf.add(obs(4, 2), terminated=False, truncated=False, next_obs=obs(4, 3), first=False,
            **fields(4, 2))
    assert len(buf) == 4


@pytest.mark.parametrize("bad", [
    {"obs": {"state": np.zeros(4), "images": obs(0, 0)["images"]}},
    {"obs": {"state": np.zeros(3), "images": {"front": np.zeros((4, 5, 3), np.uint8)}}},
    {"next_obs": {"state": np.zeros(3), "images": {
        cam: np.zeros((4, 5, 3), np.float32) for cam in CAMS}}},
    {"next_obs": {"state": np.zeros(3), "images": {
        cam: np.zeros((5, 4, 3), np.uint8) for cam in CAMS}}},
    {"action": np.zeros(3)},
    {"grasp_penalty": None},
    {"reward": None},
    {"grasp_penalty": "missing"},
])
def test_a_bad_transition_raises_and_leaves_the_buffer_unchanged(bad):
    buf = make_buffer(10)
    add_steps(buf, 1, 2, "open")
    before = all_transitions(buf)
    args = {"obs": obs(1, 2), "action": np.zeros(2), "reward": 0.0, "terminated": False,
            "truncated": False, "next_obs": obs(1, 3), "grasp_penalty": 0.5, **bad}
    if args["grasp_penalty"] == "missing":
        del args["grasp_penalty"]
    with pytest.raises((ValueError, TypeError)):
        buf.add(**args)
    after = all_transitions(buf)
    assert len(buf) == 2
    np.testing.assert_array_equal(after["obs"]["state"], before["obs"]["state"])
    add_steps(buf, 1, 1, "open", start=2, first=False)  # still continues the episode


def test_constructor_rejects_bad_specs():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(1, 3, {}, 2)
    with pytest.raises(ValueError, match="shape"):
        ReplayBuffer(10, 3, {"front": (4, 4)}, 2)
    with pytest.raises(ValueError, match="camera name"):
        ReplayBuffer(10, 3, {"a/b": (4, 4, 3)}, 2)
    with pytest.raises(ValueError, match="batch key"):
        ReplayBuffer(10, 3, {}, 2, extras=("reward",))


# ------------------------------------------------------------------------ add_episode


@pytest.mark.parametrize("capacity", [3, 7, 40])
def test_add_episode_equals_adding_step_by_step(capacity):
    episodes = [(1, 4, "terminated"), (2, 9, "truncated"), (3, 2, "open"), (4, 5, "terminated")]
    by_episode, by_step = make_buffer(capacity), make_buffer(capacity)
    for ep, length, end in episodes:
        by_episode.add_episode(make_episode(ep, length, end))
        add_steps(by_step, ep, length, end, first=True)
    # An open episode from add_episode can be continued by add(), as from add().
    by_episode.add_episode(make_episode(6, 2, "open"))
    add_steps(by_step, 6, 2, "open", first=True)
    for buf in (by_episode, by_step):
        add_steps(buf, 6, 1, "terminated", start=2)
    assert len(by_episode) == len(by_step)
    np.testing.assert_array_equal(by_episode.valid_indices(), by_step.valid_indices())
    a, b = all_transitions(by_episode), all_transitions(by_step)
    assert_batches_equal(a, b)
    assert_batches_equal(by_episode.sample(32, np.random.default_rng(3)),
                         by_step.sample(32, np.random.default_rng(3)))


def test_add_episode_checks_the_episode_against_the_buffer():
    buf = make_buffer(10)
    with pytest.raises(ValueError, match="cameras"):
        buf.add_episode(make_episode(1, 3, "terminated", cams={"front": (4, 5, 3)}))
    episode = make_episode(1, 3, "terminated")
    episode.extras = {}
    with pytest.raises(ValueError, match="grasp_penalty"):
        buf.add_episode(episode)
    assert len(buf) == 0


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_batches_equal(a[key], b[key])
        else:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ------------------------------------------------------------------------ sampling


def test_sampling_is_deterministic_given_the_rng_and_refuses_an_empty_buffer():
    buf = make_buffer(30)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4, np.random.default_rng(0))
    add_steps(buf, 1, 10, "terminated")
    assert_batches_equal(buf.sample(16, np.random.default_rng(5)),
                         buf.sample(16, np.random.default_rng(5)))


def test_sample_into_a_given_batch_and_gather_checks_its_indices():
    buf = make_buffer(30)
    add_steps(buf, 1, 10, "terminated")
    out = buf.empty_batch(8)
    batch = buf.sample(8, np.random.default_rng(2), out=out)
    assert batch is out
    check_batch(out, ends_of([(1, 10, "terminated")]))
    assert_batches_equal(out, buf.sample(8, np.random.default_rng(2)))
    with pytest.raises(ValueError, match="out"):
        buf.sample(4, np.random.default_rng(2), out=out)  # wrong batch size
    with pytest.raises(ValueError, match="not sampleable"):
        buf.gather(np.array([10]))  # slot 10 holds episode 1's final observation
    with pytest.raises(ValueError, match="not sampleable"):
        buf.gather(np.array([30]))


def test_cameraless_buffer_works_and_compares_states_for_continuation():
    buf = ReplayBuffer(8, STATE, {}, ACTION)
    buf.add({"state": np.ones(3)}, np.zeros(2), 1.0, False, False, {"state": np.zeros(3)})
    buf.add({"state": np.zeros(3)}, np.zeros(2), 1.0, False, False, {"state": np.ones(3)})
    np.testing.assert_array_equal(buf.valid_indices(), [0, 1])  # continued
    buf.add({"state": np.full(3, 5.0)}, np.zeros(2), 1.0, False, False, {"state": np.ones(3)})
    np.testing.assert_array_equal(buf.valid_indices(), [0, 1, 3])  # missed reset: new slot
    batch = buf.gather(buf.valid_indices())
    assert batch["obs"]["images"] == {} and batch["next_obs"]["images"] == {}
    np.testing.assert_array_equal(batch["obs"]["state"][:, 0], [1, 0, 5])
    np.testing.assert_array_equal(batch["next_obs"]["state"][:, 0], [0, 1, 1])


def test_batch_memory_is_recycled_only_once_nothing_references_it():
    buf = make_buffer(30)
    add_steps(buf, 1, 10, "terminated")
    rng = np.random.default_rng(0)

    def address(batch: dict) -> int:
        return batch["obs"]["images"]["front"].__array_interface__["data"][0]

    first = buf.sample(8, rng)
    first_address, view = address(first), first["next_obs"]["state"][2:]
    del first
    second = buf.sample(8, rng)  # a view of the first batch is alive: new memory
    assert address(second) != first_address
    np.testing.assert_array_equal(view, view)  # still readable
    del view
    third = buf.sample(8, rng)  # now the first block is free again
    assert address(third) == first_address
    ends = ends_of([(1, 10, "terminated")])
    check_batch(second, ends)
    check_batch(third, ends)


def test_bytes_per_transition_are_one_frame_set_plus_small_fields():
    cams = {"front": (128, 128, 3), "wrist": (128, 128, 3)}
    buf = ReplayBuffer(1000, 10, cams, 7, extras=("grasp_penalty",))
    frame_set = 2 * 128 * 128 * 3
    small = 4 * 10 + 4 * 7 + 4 + 3 + 4  # state, action, reward, 3 flags, one extra
    assert buf.nbytes / buf.capacity <= 1.1 * (frame_set + small)
    assert buf.nbytes / buf.capacity >= frame_set


# ------------------------------------------------------------------------ mixing


def tagged_buffer(tag: float, n: int) -> ReplayBuffer:
    buf = make_buffer(n + 1)
    for step in range(n):
        buf.add(obs(1, step, tag=tag), next_obs=obs(1, step + 1, tag=tag), terminated=False,
                truncated=False, **fields(1, step))
    return buf


@pytest.mark.parametrize(("ratio", "batch_size", "n_demo"),
                         [(0.5, 256, 128), (0.3, 10, 3), (0.25, 10, 3), (0.0, 8, 0),
                          (1.0, 8, 8), (0.5, 1, 1)])
def test_mixed_sampler_takes_round_ratio_b_from_demo(ratio, batch_size, n_demo):
    online, demo = tagged_buffer(0.0, 20), tagged_buffer(1.0, 20)
    batch = MixedSampler(online, demo, ratio).sample(batch_size, np.random.default_rng(0))
    tags = batch["obs"]["state"][:, 2]
    np.testing.assert_array_equal(tags, [1.0] * n_demo + [0.0] * (batch_size - n_demo))
    np.testing.assert_array_equal(batch["next_obs"]["state"][:, 2], tags)
    check_batch(batch, ends_of([(1, 20, "open")]))


def test_mixed_sampler_uses_the_other_buffer_when_one_is_empty():
    online, demo, empty = tagged_buffer(0.0, 5), tagged_buffer(1.0, 5), make_buffer(5)
    rng = np.random.default_rng(0)
    assert (MixedSampler(empty, demo).sample(6, rng)["obs"]["state"][:, 2] == 1.0).all()
    assert (MixedSampler(online, empty).sample(6, rng)["obs"]["state"][:, 2] == 0.0).all()
    with pytest.raises(ValueError, match="both"):
        MixedSampler(empty, make_buffer(3)).sample(6, rng)
    with pytest.raises(ValueError, match="differ"):
        MixedSampler(online, ReplayBuffer(5, STATE, {}, ACTION))
    with pytest.raises(ValueError, match="ratio"):
        MixedSampler(online, demo, 1.5)


# ------------------------------------------------------------------------ prefetching


def test_prefetcher_delivers_batches_in_order_and_stops_on_close():
    counter = iter(range(1000))
    with Prefetcher(lambda: {"n": next(counter)}, depth=2) as pre:
        assert [pre.next(timeout=5)["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        time.sleep(0.05)
        assert pre.alive
    assert not pre.alive  # close() joined the thread
    with pytest.raises(RuntimeError, match="closed"):
        pre.next()
    pre.close()  # idempotent


def test_prefetcher_reraises_the_sampling_error_after_earlier_batches():
    calls = iter([1, 2])

    def sample():
        n = next(calls, None)
        if n is None:
            raise KeyError("boom")
        return n

    pre = Prefetcher(sample, depth=4)
    try:
        assert pre.next(timeout=5) == 1 and pre.next(timeout=5) == 2
        for _ in range(2):  # keeps failing the same way
            with pytest.raises(KeyError, match="boom"):
                pre.next(timeout=5)
        pre._thread.join(5)
        assert not pre.alive
    finally:
        pre.close()


def test_prefetcher_times_out_and_close_does_not_hang_on_a_full_queue():
    pre = Prefetcher(lambda: time.sleep(2) or {}, depth=1)
    with pytest.raises(TimeoutError):
        pre.next(timeout=0.05)
    pre.close(timeout=0.1)  # the daemon thread is stuck in sample_fn; close returns anyway
    full = Prefetcher(lambda: {"x": 1}, depth=1)
    time.sleep(0.05)  # producer now blocked on the full queue
    start = time.perf_counter()
    full.close()
    assert not full.alive and time.perf_counter() - start < 1.0


def test_prefetching_while_another_thread_adds_stays_consistent():
    buf = make_buffer(50)
    add_steps(buf, 0, 3, "terminated")
    episodes = [(ep, 1 + ep % 5, END[ep % 3]) for ep in range(1, 120)]
    ends = ends_of([(0, 3, "terminated"), *episodes])
    rng = np.random.default_rng(0)
    done = threading.Event()

    def writer():
        for ep, length, end in episodes:
            add_steps(buf, ep, length, end)
        done.set()

    thread = threading.Thread(target=writer)
    sampler = MixedSampler(buf, buf, 0.5)
    with Prefetcher(lambda: sampler.sample(16, rng), depth=2) as pre:
        thread.start()
        batches = 0
        while not done.is_set() or batches < 5:
            check_batch(pre.next(timeout=5), ends)
            batches += 1
    thread.join()


# ------------------------------------------------------------------------ save / load


def filled_buffer(capacity: int = 12) -> ReplayBuffer:
    buf = make_buffer(capacity)
    add_steps(buf, 1, 5, "terminated")
    add_steps(buf, 2, 4, "truncated")
    add_steps(buf, 3, 4, "open")  # wraps; the open episode continues after loading
    return buf


@pytest.mark.parametrize("capacity", [12, 40])
def test_save_load_round_trips_exactly(tmp_path, capacity):
    buf = filled_buffer(capacity)
    path = tmp_path / "replay.npz"
    buf.save(path)
    loaded = ReplayBuffer.load(path, expect={"image_shapes": CAMS, "extras": ("grasp_penalty",)})
    assert loaded.spec == buf.spec and len(loaded) == len(buf)
    assert loaded.nbytes == buf.nbytes
    np.testing.assert_array_equal(loaded.valid_indices(), buf.valid_indices())
    assert_batches_equal(all_transitions(loaded), all_transitions(buf))
    assert_batches_equal(loaded.sample(64, np.random.default_rng(9)),
                         buf.sample(64, np.random.default_rng(9)))
    for b in (buf, loaded):  # adding goes on identically, continuing the open episode
        add_steps(b, 3, 2, "terminated", start=4, first=False)
        add_steps(b, 4, 3, "open")
    np.testing.assert_array_equal(loaded.valid_indices(), buf.valid_indices())
    assert_batches_equal(loaded.sample(64, np.random.default_rng(9)),
                         buf.sample(64, np.random.default_rng(9)))
    assert [p.name for p in tmp_path.iterdir()] == ["replay.npz"]  # no temp file left


def test_save_load_an_empty_buffer_and_overwrite(tmp_path):
    path = tmp_path / "r.npz"
    make_buffer(5).save(path)
    assert len(ReplayBuffer.load(path)) == 0
    filled_buffer().save(path)
    assert len(ReplayBuffer.load(path)) == len(filled_buffer())


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "empty":
        data = bytearray()
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "garbage":
        data = bytearray(b"not a replay file at all")
    elif how == "pickle":
        data = bytearray(b"\x80\x04\x95" + bytes(20))
    elif how == "flipped":  # one bit inside the pixel data of a camera array
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("images/front.npy")
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                        info.header_offset + 30])
        end = info.header_offset + 30 + name_len + extra_len + info.file_size
        data[end - 7] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage", "pickle", "flipped"])
def test_a_damaged_file_raises_a_clear_error(tmp_path, how):
    path = tmp_path / "replay.npz"
    filled_buffer().save(path)
    corrupt(path, how)
    with pytest.raises(ReplayFileError, match="replay.npz") as info:
        ReplayBuffer.load(path)
    assert isinstance(info.value, ValueError)


def rewrite(src: Path, dst: Path, change) -> None:
    """Copy the npz at src to dst, passing every (name, array) through change()."""
    with np.load(src, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    arrays = dict(change(arrays))
    np.savez(dst, **arrays)


def with_header(arrays: dict, **edits) -> dict:
    import json

    header = json.loads(bytes(arrays["__header__"]))
    header.update(edits)
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    return arrays


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: with_header(a, format="other"), "format"),
    (lambda a: with_header(a, version=99), "version 99"),
    (lambda a: with_header(a, cursor=10**6), "inconsistent"),
    (lambda a: with_header(a, spec={"capacity": 1}), "invalid spec"),
    (lambda a: {k: v for k, v in a.items() if k != "__header__"}, "__header__"),
    (lambda a: {k: v for k, v in a.items() if k != "images/wrist"}, "do not match"),
    (lambda a: {**a, "reward": a["reward"].astype(np.float64)}, "'reward'"),
    (lambda a: {**a, "state": a["state"][:-1]}, "'state'"),
    (lambda a: {**a, "__header__": np.frombuffer(b"{not json", np.uint8)}, "JSON"),
])
def test_a_mismatched_file_raises_a_clear_error(tmp_path, change, message):
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    filled_buffer().save(good)
    rewrite(good, bad, change)
    with pytest.raises(ReplayFileError, match=message) as info:
        ReplayBuffer.load(bad)
    assert "bad.npz" in str(info.value)


def test_load_checks_the_expected_spec_and_a_missing_file(tmp_path):
    path = tmp_path / "replay.npz"
    filled_buffer().save(path)
    with pytest.raises(ReplayFileError, match="image_shapes"):
        ReplayBuffer.load(path, expect={"image_shapes": {"front": (8, 8, 3)}})
    with pytest.raises(ReplayFileError, match="missing.npz"):
        ReplayBuffer.load(tmp_path / "missing.npz")
    with zipfile.ZipFile(path) as z:  # plain npz, readable without hilrl
        assert "__header__.npy" in z.namelist()


# ------------------------------------------------------------------------ property test


episode_st = st.tuples(
    st.integers(1, 6),  # length
    st.sampled_from(END),
    st.sampled_from(["add", "add_first", "add_episode", "resume"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(2, 12), episodes=st.lists(episode_st, min_size=1, max_size=10))
def test_buffer_matches_a_reference_model(capacity, episodes):
    """The reference model: a log of every observation written, one entry each; the
    transition whose obs is entry k lives in slot k % capacity and is sampleable iff
    entries k and k + 1 are among the last `capacity` written."""
    buf = make_buffer(capacity)
    log: list[tuple[int, int]] = []  # (ep, step) of each observation written
    transitions: dict[tuple[int, int], int] = {}  # (ep, step) -> log index of its obs
    ends: dict[tuple[int, int], tuple[bool, bool]] = {}
    ep, next_step, is_open = 0, 0, False
    for length, end, how in episodes:
        if how == "resume" and is_open:  # continue the open episode: no new obs slot
            start = next_step
            add_steps(buf, ep, length, end, start=start)
        else:
            ep, start = ep + 1, 0
            log.append((ep, 0))
            if how == "add_episode":
                buf.add_episode(make_episode(ep, length, end))
            else:
                add_steps(buf, ep, length, end, first=True if how == "add_first" else None)
        for step in range(start, start + length):
            transitions[(ep, step)] = len(log) - 1
            ends[(ep, step)] = flags(step - start, length, end)
            log.append((ep, step + 1))
        next_step, is_open = start + length, end == "open"

    alive = {key: k for key, k in transitions.items() if k >= len(log) - capacity}
    assert len(buf) == len(alive)
    np.testing.assert_array_equal(buf.valid_indices(),
                                  sorted(k % capacity for k in alive.values()))
    if alive:
        batch = all_transitions(buf)
        assert dict(zip(decode(batch), buf.valid_indices().tolist(), strict=True)) == {
            key: k % capacity for key, k in alive.items()}
        check_batch(batch, ends)
        check_batch(buf.sample(8, np.random.default_rng(len(log))), ends)


# ------------------------------------------------------------------------ chunked snapshots

SLOT_BYTES = 152  # one slot of make_buffer(): 2 frames of 4x5x3, the state, the fields


def assert_same_contents(a: ReplayBuffer, b: ReplayBuffer) -> None:
    """Bit-exact: every array, the cursor, the fill and the open episode."""
    assert (a._cursor, a._filled, a._open, len(a)) == (b._cursor, b._filled, b._open, len(b))
    for (name, x), y in zip(a._arrays().items(), b._arrays().values(), strict=True):
        np.testing.assert_array_equal(x[:a._filled], y[:b._filled], err_msg=name)


def test_a_chunked_snapshot_rewrites_only_the_chunks_that_changed(tmp_path):
    from hilrl.learning import replay

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(replay, "CHUNK_BYTES", 4 * SLOT_BYTES)
        buf = make_buffer(40)
        assert buf.chunk_slots == 4
        for ep in range(1, 9):
            add_steps(buf, ep, 5, "terminated")  # 48 slots: the ring wrapped
        first = json.loads((tmp_path / buf.save_chunks(tmp_path, "s1")).read_text())["chunks"]
        assert first == [f"s1.{k}.npz" for k in range(10)]
        add_steps(buf, 9, 2, "open")  # 3 new slots
        second = json.loads((tmp_path / buf.save_chunks(tmp_path, "s2")).read_text())["chunks"]
        rewritten = [name for name in second if name.startswith("s2.")]
        assert 1 <= len(rewritten) <= 2 and len(second) == 10
        loaded = ReplayBuffer.load(tmp_path / "s2.json")
        assert_same_contents(loaded, buf)
        # The loaded buffer goes on writing only its own changes too.
        add_steps(loaded, 9, 1, "terminated", start=2, first=False)
        third = json.loads((tmp_path / loaded.save_chunks(tmp_path, "s3")).read_text())["chunks"]
        assert 1 <= sum(name.startswith("s3.") for name in third) <= 2 and len(third) == 10
    assert ReplayBuffer.snapshot_files(tmp_path / "s3.json") == ["s3.json", *third]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(2, 30), chunk=st.sampled_from([1, 2, 4, 8]),
       episodes=st.lists(st.tuples(episode_st, st.booleans()), min_size=1, max_size=12))
def test_every_chunked_snapshot_restores_the_buffer_exactly(capacity, chunk, episodes):
    """Whatever was added between snapshots (wraps, continued episodes, several snapshots
    in a row or none), loading each snapshot gives the buffer as it was, bit for bit."""
    import tempfile

    from hilrl.learning import replay

    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
        mp.setattr(replay, "CHUNK_BYTES", chunk * SLOT_BYTES)
        buf = make_buffer(capacity)
        ep, next_step, is_open = 0, 0, False
        for i, ((length, end, how), snapshot) in enumerate(episodes):
            if how == "resume" and is_open:
                add_steps(buf, ep, length, end, start=next_step)
                next_step += length
            else:
                ep += 1
                if how == "add_episode":
                    buf.add_episode(make_episode(ep, length, end))
                else:
                    add_steps(buf, ep, length, end)
                next_step = length
            is_open = end == "open"
            if snapshot or i == len(episodes) - 1:
                manifest = buf.save_chunks(tmp, f"s{i}")
                assert_same_contents(ReplayBuffer.load(Path(tmp) / manifest), buf)


def test_a_damaged_or_missing_chunk_or_manifest_raises_a_clear_error(tmp_path):
    buf = filled_buffer(40)
    manifest = tmp_path / buf.save_chunks(tmp_path, "s")
    chunk = tmp_path / "s.0.npz"
    corrupt(chunk, "flipped")
    with pytest.raises(ReplayFileError, match="s.0.npz"):
        ReplayBuffer.load(manifest)
    chunk.unlink()
    with pytest.raises(ReplayFileError, match="s.0.npz"):
        ReplayBuffer.load(manifest)
    header = json.loads(manifest.read_text())
    for chunks, message in ((["../../etc/passwd"], "not a list of file names"),
                            ([], "do not hold")):
        manifest.write_text(json.dumps({**header, "chunks": chunks}))
        with pytest.raises(ReplayFileError, match=message):
            ReplayBuffer.load(manifest)
    manifest.write_text("{not json")
    with pytest.raises(ReplayFileError, match="s.json"):
        ReplayBuffer.load(manifest)


# ------------------------------------------------------------------------ snapshot version


def test_snapshots_are_version_1_and_a_feature_cache_snapshot_is_refused(tmp_path):
    path = tmp_path / "replay.npz"
    filled_buffer().save(path)
    with np.load(path, allow_pickle=False) as f:
        header = json.loads(bytes(f["__header__"]))
    assert header["version"] == 1
    assert set(header["spec"]) == {"capacity", "state_size", "image_shapes", "action_size",
                                   "extras"}
    assert ReplayBuffer.load(path).spec == filled_buffer().spec
    # Version 2 held the removed feature cache's float frames: refused, saying why.
    bad = tmp_path / "bad.npz"
    rewrite(path, bad, lambda a: with_header(a, version=2))
    with pytest.raises(ReplayFileError, match="feature cache.*env.frozen_encoder"):
        ReplayBuffer.load(bad)


# ------------------------------------------------------------------------ add_batch

BATCH_CONFIGS = {
    "images": dict(image_shapes={"front": (2, 3, 3), "wrist": (2, 3, 3)},
                   extras=("grasp_penalty",)),
    "one camera, two extras": dict(image_shapes={"front": (3, 2, 3)},
                                   extras=("grasp_penalty", "cost")),
    "state only": dict(image_shapes={}),
}


def batch_buffer(config: str, capacity: int) -> ReplayBuffer:
    return ReplayBuffer(capacity, STATE, action_size=ACTION, **BATCH_CONFIGS[config])


def obs_rows(buf: ReplayBuffer, ids: list[int], odd: dict[int, float] | None = None,
             image_ids: dict[int, int] | None = None) -> dict:
    """Observation rows with state/frames derived from an id per row (float64 state: exact
    unless ``odd`` adds a value float32 cannot hold, or NaN); ``image_ids`` overrides the
    id the frames of a row derive from."""
    state = np.array([[k, k / 8, -k] for k in ids], np.float64)
    for row, value in (odd or {}).items():
        state[row, 2] += value
    frames = {}
    for c, (cam, shape) in enumerate(buf.image_shapes.items()):
        rows = [(image_ids or {}).get(r, k) for r, k in enumerate(ids)]
        frames[cam] = np.stack([np.full(shape, (k * 7 + c) % 251, np.uint8) for k in rows])
    return {"state": state, "images": frames}


def random_steps(buf: ReplayBuffer, rng: np.random.Generator, n: int, end: str) -> dict:
    ends = np.zeros(n, bool), np.zeros(n, bool)
    if end != "open":
        ends[END.index(end)][-1] = True
    return {"action": rng.normal(size=(n, ACTION)).astype(np.float32),
            "reward": rng.normal(size=n).astype(np.float32),
            "terminated": ends[0], "truncated": ends[1],
            "intervened": rng.random(n) < 0.3 if rng.random() < 0.7 else None,
            "extras": {name: rng.normal(size=n) for name in buf.extras}}


def add_one_by_one(buf: ReplayBuffer, obs: dict, steps: dict) -> None:
    intervened = steps["intervened"]
    for i in range(len(steps["action"])):
        row = [{"state": obs["state"][r], "images": {cam: f[r] for cam, f in obs["images"].items()}}
               for r in (i, i + 1)]
        buf.add(row[0], steps["action"][i], steps["reward"][i], steps["terminated"][i],
                steps["truncated"][i], row[1],
                intervened=False if intervened is None else intervened[i],
                **{name: v[i] for name, v in steps["extras"].items()})


def assert_same_buffer(a: ReplayBuffer, b: ReplayBuffer) -> None:
    arrays_a, arrays_b = a._arrays(), b._arrays()
    assert arrays_a.keys() == arrays_b.keys()
    for name, arr in arrays_a.items():
        np.testing.assert_array_equal(arr, arrays_b[name], err_msg=name)
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.valid_indices(), b.valid_indices())
    assert (a._cursor, a._filled, a._open) == (b._cursor, b._filled, b._open)


batch_st = st.tuples(
    st.integers(1, 7),  # N
    st.sampled_from(END),
    # row 0: continues the previous batch's last row, a fresh obs, or the previous last
    # state with other frames (continues only in a camera-less buffer)
    st.sampled_from(["continue", "continue", "fresh", "other frames"]),
    st.sampled_from([None, None, 0.1, np.nan]),  # a row 1.. add() would not continue from
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.sampled_from(sorted(BATCH_CONFIGS)), capacity=st.integers(2, 9),
       batches=st.lists(batch_st, min_size=1, max_size=8), seed=st.integers(0, 2**16))
def test_add_batch_equals_adding_step_by_step(config, capacity, batches, seed):
    rng = np.random.default_rng(seed)
    by_batch, by_step = batch_buffer(config, capacity), batch_buffer(config, capacity)
    last: tuple[int, float] | None = None  # the previous batch's last row: id, odd value
    next_id = 0
    for n, end, row0, odd in batches:
        ids = list(range(next_id, next_id + n + 1))
        image_ids, odd_rows = None, {}
        if row0 != "fresh" and last is not None:
            ids[0], odd_rows[0] = last
            if row0 == "other frames":
                image_ids = {0: next_id + n + 1}
        next_id += n + 2
        if odd is not None:
            odd_rows[int(rng.integers(0, n + 1))] = odd
        obs = obs_rows(by_batch, ids, odd_rows, image_ids)
        steps = random_steps(by_batch, rng, n, end)
        by_batch.add_batch(obs, **steps)
        add_one_by_one(by_step, obs, steps)
        assert_same_buffer(by_batch, by_step)
        last = ids[-1], odd_rows.get(n, 0.0)
    if len(by_step):
        assert_batches_equal(by_batch.sample(16, np.random.default_rng(seed)),
                             by_step.sample(16, np.random.default_rng(seed)))


def test_add_batch_continues_the_previous_batch_of_an_episode_in_one_slot_per_step():
    buf = batch_buffer("images", 40)
    rng = np.random.default_rng(0)
    buf.add_batch(obs_rows(buf, [0, 1, 2, 3]), **random_steps(buf, rng, 3, "open"))
    buf.add_batch(obs_rows(buf, [3, 4, 5, 6, 7, 8]), **random_steps(buf, rng, 5, "open"))
    assert buf._cursor == 9 and len(buf) == 8  # 8 steps, 9 observations
    buf.add_batch(obs_rows(buf, [8, 9]), **random_steps(buf, rng, 1, "terminated"))
    # After an end the next batch starts a new slot even when its row 0 matches.
    buf.add_batch(obs_rows(buf, [9, 10]), **random_steps(buf, rng, 1, "open"))
    assert buf._cursor == 12 and len(buf) == 10
    assert buf.valid_indices().tolist() == [*range(9), 10]
    batch = buf.gather(buf.valid_indices())
    np.testing.assert_array_equal(batch["obs"]["state"][:, 0], [*range(9), 9])
    np.testing.assert_array_equal(batch["next_obs"]["state"][:, 0], [*range(1, 10), 10])


def test_add_batch_then_add_and_add_episode_interoperate():
    a, b = make_buffer(20), make_buffer(20)
    episode = make_episode(1, 4, "open")
    a.add_episode(episode)
    add_steps(b, 1, 4, "open", first=True)
    # Steps 4..6 of the same (still open) episode, as one wire batch.
    rows = [obs(1, s) for s in range(4, 8)]
    per_step = [fields(1, s) for s in range(4, 7)]
    a.add_batch({"state": np.stack([r["state"] for r in rows]),
                 "images": {cam: np.stack([r["images"][cam] for r in rows]) for cam in CAMS}},
                np.stack([f["action"] for f in per_step]),
                np.array([f["reward"] for f in per_step]), np.zeros(3, bool),
                np.array([False, False, True]), np.array([f["intervened"] for f in per_step]),
                extras={"grasp_penalty": np.array([f["grasp_penalty"] for f in per_step])})
    add_steps(b, 1, 3, "truncated", start=4)
    assert_same_buffer(a, b)
    assert a._cursor == 8


def _bad_batches(buf: ReplayBuffer, rng: np.random.Generator) -> dict[str, tuple[dict, dict]]:
    good_obs, good = obs_rows(buf, [5, 6, 7, 8]), random_steps(buf, rng, 3, "open")

    def change(obs_edit=None, **edits):
        o = {"state": good_obs["state"], "images": dict(good_obs["images"])}
        o.update(obs_edit or {})
        return o, {**good, **edits}

    return {
        "expected shape \\(4, 3\\)": change({"state": good_obs["state"][:3]}),
        "action: expected shape": change(action=np.zeros((3, ACTION + 1))),
        "reward: expected shape": change(reward=np.zeros(4)),
        "only the last step": change(terminated=np.array([False, True, False])),
        "only the last step ": change(truncated=np.array([True, False, True])),
        "'cost' is configured": change(extras={"grasp_penalty": np.zeros(3)}),
        "extra 'cost': expected shape": change(extras={"grasp_penalty": np.zeros(3),
                                                       "cost": np.zeros(2)}),
        # float frames are not cast: a float -> uint8 cast would silently wrap
        "dtype uint8": change({"images": {"front": good_obs["images"]["front"].astype("f4")}}),
        "cameras": change({"images": {}}),
        "intervened: expected shape": change(intervened=np.zeros(2, bool)),
    }


def test_a_bad_batch_raises_and_leaves_the_buffer_unchanged():
    rng = np.random.default_rng(1)
    buf, twin = batch_buffer("one camera, two extras", 6), batch_buffer("one camera, two extras", 6)
    for b in (buf, twin):  # an open episode whose last obs is id 5, as the bad batches' row 0
        b.add_batch(obs_rows(b, [3, 4, 5]), **random_steps(b, np.random.default_rng(2), 2,
                                                            "open"))
    for message, (bad_obs, bad_steps) in _bad_batches(buf, rng).items():
        with pytest.raises(ValueError, match=message.strip()):
            buf.add_batch(bad_obs, **bad_steps)
        assert_same_buffer(buf, twin)
    with pytest.raises(ValueError, match="'state'"):
        buf.add_batch({"images": {}}, **random_steps(buf, rng, 1, "open"))
    assert_same_buffer(buf, twin)
