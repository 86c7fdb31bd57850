"""How closely the Franka driver tracks 10 Hz Cartesian targets, on franky-sim.

The real franky client drives franky-sim (a MuJoCo Franka behind libfranka's network
protocol) through ``robot_drivers.franka.FrankaDriver``: a policy-like random walk of targets,
steps of up to ``env.max_translation`` (2 cm) per axis, one every 100 ms.

- ``pose_tracking_error_mm``: distance between the arm and the target it was given, measured
  just before the next target (100 ms later); median over all targets, median of 3 runs.
- ``pose_settled_error_mm``: the same 1 s after the last target (steady-state accuracy).
- ``move_to_ms_p99``: how long one ``move_to()`` call takes in the control loop.

franky-sim steps its physics in Python at 1 kHz; on a busy 2-core machine it runs slower than
real time, which shows up here as tracking lag that a real arm would not have.

    python bench/franky_tracking.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import figure, median_of, print_machine  # noqa: E402

from robot_drivers.franka import FrankaDriver, FrankaSettings  # noqa: E402
from robot_drivers.franky_sim_server import start_server  # noqa: E402

DOWN = np.array([1.0, 0.0, 0.0, 0.0])
LOW, HIGH = np.array([0.35, -0.15, 0.15]), np.array([0.60, 0.15, 0.40])


def run(driver: FrankaDriver, targets: int, seed: int, results: dict[str, list[float]]
        ) -> float:
    rng = np.random.default_rng(seed)
    target = np.r_[0.45, 0.0, 0.30, DOWN]
    driver.move_to(target)
    time.sleep(3.0)
    errors, calls = [], []
    for _ in range(targets):
        target[:3] = np.clip(target[:3] + rng.uniform(-0.02, 0.02, 3), LOW, HIGH)
        start = time.perf_counter()
        driver.move_to(target)
        calls.append(time.perf_counter() - start)
        time.sleep(max(0.0, 0.1 - (time.perf_counter() - start)))
        errors.append(np.linalg.norm(driver.state().tcp_pose[:3] - target[:3]))
    time.sleep(1.0)
    results["settled"].append(1000 * float(np.linalg.norm(
        driver.state().tcp_pose[:3] - target[:3])))
    results["move_to_p99"].append(1000 * float(np.percentile(calls, 99)))
    return 1000 * float(np.median(errors))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer targets")
    args = parser.parse_args()
    print_machine()
    targets = 20 if args.quick else 100
    settings = FrankaSettings()
    print(f"franky-sim, {targets} random-walk targets at 10 Hz per run, dynamics factor "
          f"{settings.dynamics_factor} (the env.franka default), median of 3 runs", flush=True)
    host, proc = start_server()
    driver = FrankaDriver(host, realtime=False, dynamics_factor=settings.dynamics_factor)
    results: dict[str, list[float]] = {"settled": [], "move_to_p99": []}
    try:
        driver.connect()
        driver.home()
        seeds = iter(range(3))
        error = median_of(3, lambda: run(driver, targets, next(seeds), results),
                          "median error before the next target", "mm")
    finally:
        driver.close()
        proc.terminate()
        proc.wait(timeout=10)
    figure("pose_tracking_error_mm", error, "mm")
    figure("pose_settled_error_mm", float(np.median(results["settled"])), "mm")
    figure("move_to_ms_p99", float(np.median(results["move_to_p99"])), "ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
