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
    before, after = sum(first_eval) / len(first_eval), summary["success_rate"]
    # The final evaluation is 20 episodes: a policy that succeeds 80% of the time (the
    # target its training rounds reached) scores under 70% in about one run in ten (seen
    # once in CI: 13 of 20), under 60% in about one in a hundred.
    assert after >= 0.6 and after > before and before < 0.7, (
        summary, first_eval, out.stdout[-1500:])
