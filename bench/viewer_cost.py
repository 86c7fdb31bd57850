"""What the live view (actor.viewer, Rerun) costs the actor's control loop.

The real actor runs training episodes on the simulated arm at the env's rate: its policy (a
fresh one) acts on the cameras, the scripted person steps in, nothing goes to a learner.
The same episodes run with the view off and with it writing an .rrd file; the figure is the
p99 of one control step's work (the LoopClock's ``loop_ms_p99``: act, env step, observers;
the sleep to the next tick excluded), over all steps of the runs.

    python bench/viewer_cost.py [--quick] [--task FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import figure, print_machine  # noqa: E402

from actor.node import Actor  # noqa: E402
from hilrl.config import load_task  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def loop_p99_ms(task_file: Path, viewer: bool, steps: int, run: Path) -> tuple[float, int]:
    """(p99 ms of a control step, steps the view dropped) over ``steps`` training steps."""
    from hilrl.learning import sac

    overrides = ["device.expert.takeover=stall"] + (["actor.viewer=file"] if viewer else [])
    task = load_task(task_file, overrides)
    node = Actor(task, run, quiet=True, learner=False)
    try:
        state = sac.create(task.agent, node.spec.example_observation(), node.spec.action_size)
        node.policy.set_weights(1, sac.policy(state).params)
        node._send = lambda transition: None  # no learner: the loop's own cost only
        node.episode("train")  # compiles the policy, warms the renderer
        node.clock.step_times.clear()
        while len(node.clock.step_times) < steps:
            node.episode("train")
        return node.clock.summary()["loop_ms_p99"], node.view.dropped if node.view else 0
    finally:
        node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--task", type=Path, default=ROOT / "tasks" / "sim_pick_cube_pixels.yaml",
                        help="task file (default: the 128x128 two-camera pick-cube)")
    args = parser.parse_args()
    print_machine()
    steps = 300 if args.quick else 1500
    print(f"{args.task.name}: {steps} training steps with the view off, then on (.rrd file), "
          "at the env's rate")
    with tempfile.TemporaryDirectory() as tmp:
        off, _ = loop_p99_ms(args.task, False, steps, Path(tmp) / "off")
        on, dropped = loop_p99_ms(args.task, True, steps, Path(tmp) / "on")
        size = (Path(tmp) / "on" / "actors" / "actor0" / "view.rrd").stat().st_size
    print(f"view on: {size / 1e6:.1f} MB of .rrd, {dropped} steps dropped")
    figure("actor_loop_p99_ms.viewer_off", off, "ms")
    figure("actor_loop_p99_ms.viewer_on", on, "ms")


if __name__ == "__main__":
    main()
