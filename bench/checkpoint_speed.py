"""What a learner checkpoint costs as the replay buffer grows.

A learner checkpoint (``learner/learner_state.py``) writes the agent and both replay
buffers, whose snapshots are chunked: only the chunks written since the last checkpoint get
new files. Per buffer size it fills an online buffer to capacity (the ring wrapped once),
writes the first checkpoint (everything: ``checkpoint_first_seconds.slots_N``), then times
checkpoints that each follow ``--new`` new transitions, as a running learner's do
(``checkpoint_seconds.slots_N``, median of 3). Two 64x64 cameras by default: a 200k-slot
buffer of them is 4.9 GB of memory and of disk.

    python bench/checkpoint_speed.py [--quick] [--slots N ...] [--new K] [--image S]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import figure, print_machine  # noqa: E402

from hilrl.learning import sac  # noqa: E402
from hilrl.learning.replay import ReplayBuffer  # noqa: E402
from learner.learner_state import RunCheckpoints  # noqa: E402

STATE, ACTION, EPISODE = 14, 7, 200


def fill(buf: ReplayBuffer, transitions: int, rng: np.random.Generator) -> None:
    """Add ``transitions`` steps as episodes of EPISODE steps (one vectorised write each)."""
    shapes = buf.image_shapes
    frames = {cam: rng.integers(0, 256, (EPISODE + 1, *shape), np.uint8)
              for cam, shape in shapes.items()}
    state = rng.standard_normal((EPISODE + 1, STATE)).astype(np.float32)
    action = rng.uniform(-1, 1, (EPISODE, ACTION)).astype(np.float32)
    done = np.arange(EPISODE) == EPISODE - 1
    for _ in range(-(-transitions // EPISODE)):
        buf.add_batch({"state": state, "images": frames}, action,
                      np.zeros(EPISODE, np.float32), done, np.zeros(EPISODE, bool))


def measure(slots: int, new: int, image: int, root: Path) -> tuple[float, list[float]]:
    rng = np.random.default_rng(0)
    cams = {"front": (image, image, 3), "wrist": (image, image, 3)}
    online = ReplayBuffer(slots, STATE, cams, ACTION)
    demo = ReplayBuffer(10_000, STATE, cams, ACTION)
    fill(online, slots, rng)
    fill(demo, 2_000, rng)
    config = sac.SACConfig.cpu(hidden_dims=(256, 256))
    state = sac.create(config, {"state": np.zeros(STATE, np.float32)}, ACTION)
    store = RunCheckpoints(root / f"run_{slots}", keep=2)
    t = time.perf_counter()
    store.save(state.replace(step=state.step + 1), online, demo, {}, {})
    first = time.perf_counter() - t
    times = []
    for i in range(3):
        fill(online, new, rng)
        t = time.perf_counter()
        store.save(state.replace(step=state.step + 2 + i), online, demo, {}, {})
        times.append(time.perf_counter() - t)
    store.close()
    shutil.rmtree(root / f"run_{slots}")
    return first, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k and 50k slots")
    parser.add_argument("--slots", type=int, nargs="*", help="buffer sizes (default 10k, 200k)")
    parser.add_argument("--new", type=int, default=2_000,
                        help="transitions added before each timed checkpoint (default 2000: "
                             "learner.checkpoint_every at ~1 update per transition)")
    parser.add_argument("--image", type=int, default=64, help="camera side (2 cameras)")
    args = parser.parse_args()
    print_machine()
    sizes = args.slots or ([10_000, 50_000] if args.quick else [10_000, 200_000])
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for slots in sizes:
            first, times = measure(slots, args.new, args.image, Path(tmp))
            print(f"{slots} slots of 2 x {args.image}x{args.image}: first checkpoint "
                  f"{first:.2f} s; after {args.new} new transitions each: "
                  f"{', '.join(f'{t:.2f}' for t in times)} s", flush=True)
            results[slots] = first, statistics.median(times)
    for slots, (first, median) in results.items():
        figure(f"checkpoint_first_seconds.slots_{slots}", first, "s")
        figure(f"checkpoint_seconds.slots_{slots}", median, "s")


if __name__ == "__main__":
    main()
