"""The README's main job as a benchmark: ``hilrl train-sim`` on the state-based sim pick-cube.

Each run is the real command (learner, actor and scripted human as separate processes on
this machine's cores, demos recorded first, a 50-episode evaluation of the final
checkpoint); the figures are medians over runs with different seeds.

    python bench/train_sim.py [--quick] [--runs N] [-- extra train-sim arguments]

Full: 3 runs with the 15-minute budget. --quick: 1 run with a 2.5-minute budget and a
20-episode final evaluation (it measures every figure; the success it reaches in that
time is lower).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import completed_summary, figure, print_machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("extra", nargs="*", help="passed on to hilrl train-sim")
    args = p.parse_args()
    print_machine()
    runs = args.runs or (1 if args.quick else 3)
    budget = ["--minutes", "2.5", "--final-eval", "20"] if args.quick else []
    results = []
    with tempfile.TemporaryDirectory(prefix="hilrl-train-sim-") as tmp:
        for i in range(runs):
            run = Path(tmp) / f"run{i}"
            t0, started = time.monotonic(), time.time()
            proc = subprocess.run(
                [sys.executable, "-m", "hilrl.cli", "train-sim", "--run-dir", str(run),
                 "--no-progress", *budget, *args.extra, f"seed={i}"], cwd=ROOT)
            summary = completed_summary(run, proc.returncode, started)
            print(f"  run {i + 1}/{runs} (seed {i}, exit {proc.returncode}, "
                  f"{(time.monotonic() - t0) / 60:.1f} min in all): {summary}", flush=True)
            results.append(summary)

    def median(key: str) -> float:
        return statistics.median(float(r[key] or 0.0) for r in results)

    print(f"medians over {runs} run(s):")
    episodes = int(median("eval_episodes"))
    figure("train_sim_success", median("success_rate"), f"eval success rate ({episodes} episodes)")
    figure("train_sim_minutes", median("train_minutes"), "min to the target or the budget")
    figure("actor_overrun_p99_ms", median("actor_overrun_p99_ms"), "ms past the deadline")
    figure("learner_updates_per_s", median("learner_updates_per_s"),
           "critic updates/s (update calls x utd) while the actor runs")


if __name__ == "__main__":
    main()
