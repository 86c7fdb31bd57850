"""Learning from pixels on this CPU, in CI: `hilrl train-sim --pixels` with a small budget
(the CPU configuration: 64x64 cameras, encoder pretrained on the demos and frozen) must end
clearly above the untrained policy on the same evaluation. The budget is work, not time:
at most 8000 update calls, at most 1.5 per transition the actor sent, so a loaded machine
only makes the run longer; the actor runs unpaced (the scripted person's stall rule counts
steps, not seconds). On 2 cores beside other work it reached the target at 4630 calls
(6270 env steps), 3.4 minutes with the demos and the pretraining; paced at the task's
20 Hz, at 5871 calls (3914 env steps) in 5.4 minutes. Those figures are from 2 critics; the
task's 10 (RLPD's ensemble) make each call ~3x slower, and the test took 5.3 minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from actor.node import Actor
from hilrl.config import load_task
from hilrl.learning import sac

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "tasks" / "sim_pick_cube_pixels_cpu.yaml"
EVAL_EPISODES = 20


def _untrained_success(run: Path) -> float:
    """The same evaluation (deterministic, no interventions) of a freshly initialised policy
    on the same frozen encoder."""
    task = load_task(TASK, [f"env.frozen_encoder={run / 'encoder.hilrl'}"])
    node = Actor(task, run / "untrained", quiet=True, learner=False)
    try:
        state = sac.create(task.agent, node.spec.example_observation(), node.spec.action_size)
        node.policy.set_weights(0, sac.policy(state).params)
        results = node.evaluate(EVAL_EPISODES)
    finally:
        node.close()
    return sum(r.success for r in results) / len(results)


@pytest.mark.timeout(1800)  # a hang guard beyond the work's bound, room for a loaded machine
def test_train_sim_learns_pick_cube_from_pixels(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "hilrl.cli", "train-sim", "--pixels", "--run-dir", str(run),
         "--max-updates", "8000", "--minutes", "25",  # the minutes only catch a hang
         "--target", "0.8", "--final-eval", str(EVAL_EPISODES), "--no-progress",
         "learner.max_updates_per_step=1.5", "actor.hz=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    on_cpu = jax.default_backend() == "cpu"
    assert ("no GPU was found" in out.stdout) == on_cpu, out.stdout[-3000:]
    assert ("pretraining the image encoder" in out.stdout) == on_cpu
    # The whole run happened: a report, checkpoints, the summary.
    assert out.returncode in (0, 1), out.stderr[-3000:]  # 1: below --target
    assert (run / "report" / "learning_curve.png").stat().st_size > 10_000
    assert (run / "learner" / "checkpoints").is_dir()
    summary = json.loads((run / "train_sim.json").read_text())
    assert summary["eval_episodes"] == EVAL_EPISODES and summary["update_calls"] > 0
    assert summary["outcome"].startswith(("target reached", "update budget spent")), summary
    trained = summary["success_rate"]
    untrained = _untrained_success(run)
    assert trained >= 0.6 and trained >= untrained + 0.4, (trained, untrained,
                                                            out.stdout[-3000:])
