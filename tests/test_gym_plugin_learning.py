"""The whole loop on a third-party env (tests/gantry_pick) through the plug-in path: its
scripted person records the demos and steps in during training through the task's action
layout, hilrl's learner and actor train on it, and the final policy, judged alone, succeeds
where the untrained one did not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "gantry_pick"


@pytest.mark.timeout(1800)  # a hang guard: the budget is update calls
def test_the_example_env_learns_with_its_plugged_in_person(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-m", "hilrl.cli", "train-sim", "--task", str(EXAMPLE / "task.yaml"),
         "--run-dir", str(run), "--final-eval", "20", "--no-progress",
         # Work in update calls, at most 2 per transition the actor sent (the budget
         # follows the data however loaded the machine); minutes only guard a hang.
         "--max-updates", "12000", "--minutes", "30", "learner.max_updates_per_step=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700)
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]
    records = [json.loads(line) for line in
               (run / "actors" / "actor0" / "episodes.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    first_eval = [r["success"] for r in records if r["kind"] == "eval"][:10]
    # The person was there: it stepped in during training, and those steps were counted.
    assert sum(r["interventions"] for r in train) > 0
    summary = json.loads((run / "train_sim.json").read_text())
    assert summary["eval_episodes"] == 20
    assert summary["success_rate"] >= 0.7 > sum(first_eval) / len(first_eval), (
        summary, first_eval, out.stdout[-1500:])
