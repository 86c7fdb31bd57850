"""Peg insertion, quick variant, learned with the learned reward only: ``hilrl train-sim
--task tasks/sim_peg_insert.yaml --reward classifier`` records demos and labels through the
scripted person's SUCCESS button, trains the classifier, learns from its reward alone, and
the final policy, judged by the simulator's success, inserts where the first evaluated
policy did not. Bounded by update calls; the minutes only guard a hang."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(2400)
def test_peg_insertion_learns_from_the_classifier_alone(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "hilrl.cli", "train-sim", "--task",
         str(ROOT / "tasks" / "sim_peg_insert.yaml"), "--reward", "classifier",
         "--run-dir", str(run), "--label-episodes", "10", "--classifier-epochs", "15",
         "--final-eval", "20", "--no-progress", "--max-updates", "16000",
         # The update count or the target ends training, never the clock (--minutes 0); the
         # subprocess timeout only catches a hang.
         "--minutes", "0",
         # The quick variant: the classifier's cameras at 64x64 (the wrist camera sees the
         # peg go in from close by), and at most 2 update calls per transition sent.
         "env.image_size=[64,64]", "learner.max_updates_per_step=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=2300)
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((run / "train_sim.json").read_text())
    records = [json.loads(line) for line in
               (run / "actors" / "actor0" / "episodes.jsonl").read_text().splitlines()]
    first_eval = [r.get("judged_success") for r in records if r["kind"] == "eval"][:10]
    assert len(first_eval) == 10 and all(v is not None for v in first_eval)
    assert summary["reward"] == "classifier" and summary["eval_episodes"] == 20
    # The classifier's reward, not the simulator's, ended the successful training episodes.
    train = [r for r in records if r["kind"] == "train"]
    assert sum(r["success"] for r in train) > 0
    assert summary["false_success_episodes"] <= summary["judged_train_episodes"]
    assert summary["success_rate"] >= 0.6 > sum(first_eval) / len(first_eval), (
        summary, first_eval, out.stdout[-1500:])
