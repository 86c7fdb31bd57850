"""Env steps per second of the simulated pick-cube env, with two 128x128 cameras and without.

The full wrapper stack runs (safety box, intervention with the scripted expert, relative
frame, time limit), since that is what the actor pays for each step. Each figure is the
median of several runs.

    python bench/sim_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import figure, median_of, print_machine  # noqa: E402

from actor.env_factory import make_env  # noqa: E402
from hilrl.config import load_task  # noqa: E402


def steps_per_second(images: bool, steps: int) -> float:
    task = load_task(None, ["env.image_size=[128,128]"])
    stack = make_env(task, images=images)
    env = stack.env
    try:
        env.reset(seed=0)
        action = env.action_space.sample() * 0
        for _ in range(10):  # warm up the renderer and the caches
            env.step(action)
        done, episode = 0, 0
        start = time.perf_counter()
        env.reset(seed=episode)
        while done < steps:
            _, _, terminated, truncated, _ = env.step(action)
            done += 1
            if terminated or truncated:
                episode += 1
                env.reset(seed=episode)
        return done / (time.perf_counter() - start)
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    args = parser.parse_args()
    print_machine()
    repeats, steps = (3, 200) if args.quick else (5, 1000)
    print(f"stepping the full env stack ({steps} steps, resets included), median of {repeats}")
    with_images = median_of(repeats, lambda: steps_per_second(True, steps),
                            "2 cameras 128x128", "steps/s")
    state_only = median_of(repeats, lambda: steps_per_second(False, steps),
                           "state only", "steps/s")
    figure("sim_steps_per_s_images", with_images, "steps/s")
    figure("sim_steps_per_s_state", state_only, "steps/s")


if __name__ == "__main__":
    main()
