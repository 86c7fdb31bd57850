"""hilrl on a third-party gymnasium env (tests/gantry_pick), with and without the person.

Each run is the real ``hilrl train-sim --task tests/gantry_pick/task.yaml``: the env, its
scripted person plugged in by ``module:factory`` and the action layout of the task file, demos
recorded through the device path, learner and actor as separate processes, then a 50-episode
evaluation of the final checkpoint (deterministic policy, no person). "No person" is the same
run with ``device.kind=none`` and no demos: RL from scratch on the env's sparse success.

    python bench/gym_plugin.py [--quick] [--runs N]

Full: 3 runs of each with the 15-minute budget (minutes count from the start of the run,
demos included). --quick: 1 run of each with a 2.5-minute budget and a 20-episode final
evaluation (it measures every figure; the success it reaches in that time is lower).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import completed_summary, figure, print_machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "gantry_pick"


def train(run: Path, seed: int, budget: list[str], person: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")]))}
    without = [] if person else ["--demos", "0", "device.kind=none"]
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "hilrl.cli", "train-sim", "--task", str(EXAMPLE / "task.yaml"),
         "--run-dir", str(run), "--no-progress", *budget, *without, f"seed={seed}",
         # The README's figures were measured stopping on 2 pooled rounds: kept.
         "--stop-rounds", "2"],
        cwd=ROOT, env=env)
    return completed_summary(run, proc.returncode, started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=None)
    args = p.parse_args()
    print_machine()
    runs = args.runs or (1 if args.quick else 3)
    budget = ["--minutes", "2.5", "--final-eval", "20"] if args.quick else []
    results: dict[bool, list[dict]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="hilrl-gym-plugin-") as tmp:
        for person in (True, False):
            label = "with the person" if person else "no person"
            for i in range(runs):
                s = train(Path(tmp) / f"{'person' if person else 'none'}{i}", i, budget, person)
                print(f"  {label}, run {i + 1}/{runs} (seed {i}): {s['success_rate']:.0%} "
                      f"after {s['train_minutes']:.1f} min ({s['outcome']}), {s['env_steps']} env "
                      f"steps", flush=True)
                results[person].append(s)

    def median(person: bool, key: str) -> float:
        return statistics.median(float(r[key] or 0.0) for r in results[person])

    print(f"medians over {runs} run(s) each:")
    figure("gym_plugin_success", median(True, "success_rate"),
           "eval success rate, with the scripted person (demos + interventions)")
    figure("gym_plugin_minutes", median(True, "train_minutes"),
           "min from the start of the run (demos included) to the target or the budget")
    figure("gym_plugin_success.no_person", median(False, "success_rate"),
           "eval success rate, RL alone (no demos, no interventions), same budget")
    figure("gym_plugin_minutes.no_person", median(False, "train_minutes"),
           "min to the target or the budget, RL alone")


if __name__ == "__main__":
    main()
