"""Crash schedule: learner + 2 actors on the sim, SIGKILLed at seeded random moments.

For ``--cycles`` cycles (20; ``--quick``: 5) a random victim (learner or one actor) is
SIGKILLed after a random wait and restarted with ``--resume``; then everything is stopped
cleanly, the learner is resumed once more and the run is checked (tests/crash_schedule.py):
every transition in the learner's log once and without holes, replay and step counter equal
to the log, nothing lost from sessions that were not SIGKILLed, every committed checkpoint
restorable. Exits 1 when a check fails.

    python bench/crash_schedule.py [--quick] [--seed N] [--cycles N] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

# As tests/conftest.py, before anything imports mujoco or jax.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path.home() / ".cache" / "hilrl-jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from common import figure, print_machine  # noqa: E402
from crash_schedule import HarnessError, run_crash_schedule  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5 cycles instead of 20")
    p.add_argument("--cycles", type=int, default=None, help="override the number of cycles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait", type=float, nargs=2, default=(3.0, 15.0), metavar=("MIN", "MAX"),
                   help="seconds between a node being up and the next kill (uniform)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="keep the run here (default: a temporary directory, deleted)")
    args = p.parse_args(argv)
    cycles = args.cycles if args.cycles is not None else (5 if args.quick else 20)
    print_machine()
    run = args.run_dir or Path(tempfile.mkdtemp(prefix="hilrl-crash-"))
    if (run / "run").exists():
        print(f"{run / 'run'} exists: give a new --run-dir (figures come from this "
              "invocation's run only)", flush=True)
        return 2
    try:
        try:
            result = run_crash_schedule(run / "run", cycles=cycles, seed=args.seed,
                                        wait_s=tuple(args.wait))
        except HarnessError as e:
            print(f"the schedule could not be carried out: {e}", flush=True)
            return 2
        print(result.summary(), flush=True)
        figure("crash_cycles", result.cycles, "count")
        figure("crash_duplicates", result.duplicate_transitions, "count")
        figure("crash_lost_from_live_sessions", result.lost_from_live_sessions, "count")
        figure("crash_corrupt_checkpoints", len(result.corrupt_checkpoints), "count")
        # How much the lost-from-live-sessions figure says about learner crashes.
        figure("crash_learner_kills_survived_by_clean_sessions",
               result.learner_kills_survived, "count")
        figure("crash_minutes", result.wall_s / 60, "min")
        return 0 if result.ok else 1
    finally:
        if args.run_dir is None:
            shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
