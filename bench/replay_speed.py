"""Replay buffer speed and memory with two 128x128 cameras (hilrl.learning.replay).

Fills a buffer (20k transitions, ~2 GB; 5k with --quick) with 100-step episodes, then
times sampling 256-transition batches (obs + next_obs images gathered, i.e. ~50 MB copied
per batch), 50/50 mixed demo/online sampling, and single-transition add(). Each figure is
the median of several runs; each run averages many calls.

    python bench/replay_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import figure, median_of, print_machine  # noqa: E402

from hilrl.learning.replay import MixedSampler, ReplayBuffer  # noqa: E402
from hilrl.storage.dataset import Episode  # noqa: E402

CAMERAS = {"front": (128, 128, 3), "wrist": (128, 128, 3)}
STATE, ACTION, EXTRAS = 10, 7, ("grasp_penalty",)
EPISODE = 100
BATCH = 256


def make_episode(rng: np.random.Generator, length: int = EPISODE) -> Episode:
    terminated = np.zeros(length, bool)
    terminated[-1] = True
    return Episode(
        state=rng.standard_normal((length + 1, STATE)).astype(np.float32),
        images={cam: rng.integers(0, 256, (length + 1, *shape), dtype=np.uint8)
                for cam, shape in CAMERAS.items()},
        action=rng.uniform(-1, 1, (length, ACTION)).astype(np.float32),
        reward=terminated.astype(np.float32),
        terminated=terminated,
        truncated=np.zeros(length, bool),
        intervened=rng.random(length) < 0.2,
        extras={"grasp_penalty": np.zeros(length, np.float32)},
    )


def filled_buffer(capacity: int, rng: np.random.Generator) -> ReplayBuffer:
    buf = ReplayBuffer(capacity, STATE, CAMERAS, ACTION, extras=EXTRAS)
    # A few distinct episodes copied over and over: every slot gets written, so all the
    # memory is really committed and sampling pays real cache misses.
    episodes = [make_episode(rng) for _ in range(4)]
    for i in range(capacity // (EPISODE + 1) + 1):
        buf.add_episode(episodes[i % len(episodes)])
    return buf


def ms_per_call(sample: object, calls: int) -> float:
    for _ in range(3):  # warm the batch memory pool
        sample()
    start = time.perf_counter()
    for _ in range(calls):
        batch = sample()
    del batch
    return (time.perf_counter() - start) / calls * 1e3


def adds_per_second(buf: ReplayBuffer, n: int, rng: np.random.Generator) -> float:
    frames = [{"state": rng.standard_normal(STATE).astype(np.float32),
               "images": {cam: rng.integers(0, 256, shape, dtype=np.uint8)
                          for cam, shape in CAMERAS.items()}} for _ in range(8)]
    action = np.zeros(ACTION, np.float32)
    start = time.perf_counter()
    for i in range(n):
        ended = i % EPISODE == EPISODE - 1
        buf.add(frames[i % 8], action, 0.0, ended, False, frames[(i + 1) % 8],
                grasp_penalty=0.0)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller buffer, fewer repeats")
    args = parser.parse_args()
    print_machine()
    capacity, repeats, calls = (5_000, 3, 20) if args.quick else (20_000, 5, 50)
    rng = np.random.default_rng(0)

    start = time.perf_counter()
    online = filled_buffer(capacity, rng)
    demo = filled_buffer(2_000, rng)
    print(f"filled {capacity} + 2000 slots of 2x128x128 in {time.perf_counter() - start:.1f} s "
          f"({online.nbytes / 2**30:.2f} GiB online buffer, {len(online)} transitions)")

    # What one transition holds, from the data given to the buffer (not from its layout):
    # one frame set (next_obs is the next transition's frames) plus the small fields.
    one = make_episode(rng, 1)
    frame_set = sum(frames[0].nbytes for frames in one.images.values())
    small = (one.state[0].nbytes + one.action[0].nbytes + one.reward[0].nbytes
             + one.terminated[0].nbytes + one.truncated[0].nbytes + one.intervened[0].nbytes
             + sum(v[0].nbytes for v in one.extras.values()))
    per_transition = online.nbytes / len(online)  # every array, over sampleable transitions
    per_slot = online.nbytes / online.capacity
    ratio = per_transition / (frame_set + small)
    print(f"stored {online.nbytes} bytes for {len(online)} sampleable transitions "
          f"({EPISODE}-step episodes, each using {EPISODE + 1} slots) = {per_transition:.0f} "
          f"bytes per transition; one frame set {frame_set} + small fields {small} = "
          f"{frame_set + small}; per slot {per_slot:.0f}")
    sample_rng = np.random.default_rng(1)
    print(f"sample({BATCH}) x {calls} per run, median of {repeats}")
    sample_ms = median_of(repeats, lambda: ms_per_call(lambda: online.sample(BATCH, sample_rng),
                                                       calls), "sample", "ms")
    mixed = MixedSampler(online, demo, 0.5)
    mixed_ms = median_of(repeats, lambda: ms_per_call(lambda: mixed.sample(BATCH, sample_rng),
                                                      calls), "mixed 50/50 sample", "ms")
    # A small separate buffer, already written once, so the timing excludes the OS
    # committing fresh pages (that is a one-off per slot, paid while filling).
    add_buf = filled_buffer(2_000, rng)
    adds = median_of(repeats, lambda: adds_per_second(add_buf, 2_000 if args.quick else 5_000,
                                                      rng), "add()", "transitions/s")

    figure(f"replay_sample_ms.b{BATCH}_pix128x2", sample_ms, "ms")
    figure(f"replay_samples_per_s.b{BATCH}_pix128x2", BATCH / sample_ms * 1e3, "samples/s")
    figure("replay_bytes_ratio", ratio,
           f"ratio (stored bytes per transition, {EPISODE}-step episodes, / one frame set + "
           "small fields)")
    figure("replay_bytes_ratio.per_slot", per_slot / (frame_set + small), "ratio")
    figure(f"replay_sample_ms.mixed_b{BATCH}_pix128x2", mixed_ms, "ms")
    figure("replay_add_per_s.pix128x2", adds, "transitions/s")


if __name__ == "__main__":
    main()
