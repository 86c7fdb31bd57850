"""The imitation baselines (actor.baselines) on the state pick-cube task, from demos the
scripted person records through the real env stack, evaluated in the real sim."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from actor.baselines import BaselineConfig, load_demonstrations, run_baseline, train_bc
from actor.env_factory import make_env
from actor.teleop import record_demos
from hilrl.config import TaskConfig, load_task
from hilrl.learning import bc
from hilrl.reporting.metrics import read_jsonl

TASK = Path(__file__).resolve().parent.parent / "tasks" / "sim_pick_cube.yaml"  # state only
RECORD_KEYS = {"kind", "episode", "env_steps", "steps", "success", "interventions", "time"}


def task(*overrides: str) -> TaskConfig:
    return load_task(TASK, ["device.kind=scripted", *overrides])


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """demos(*overrides) -> a directory of 10 successful state-only demos (made once)."""
    made: dict[tuple[str, ...], Path] = {}

    def _demos(*overrides: str) -> Path:
        if overrides not in made:
            out = tmp_path_factory.mktemp("demos")
            record_demos(task("device.expert.takeover=always", *overrides), out, 10,
                         images=False, progress=False)
            made[overrides] = out
        return made[overrides]

    return _demos


def test_bc_learns_from_the_demos_and_logs_like_the_actor(demos, tmp_path):
    t = task()
    cfg = BaselineConfig(bc_steps=2000, final_eval=20)
    trained = run_baseline(t, [demos()], tmp_path / "bc", "bc", cfg)
    untrained = run_baseline(t, [demos()], tmp_path / "bc0", "bc",
                             BaselineConfig(bc_steps=0, final_eval=20))
    print(f"bc: {trained['success_rate']:.0%}, untrained {untrained['success_rate']:.0%}")
    assert trained["success_rate"] >= 0.6
    assert trained["success_rate"] >= untrained["success_rate"] + 0.5

    records = read_jsonl(tmp_path / "bc" / "episodes.jsonl")
    assert len(records) == 20 and all(r.keys() >= RECORD_KEYS for r in records)
    assert all(r["kind"] == "eval" and r["interventions"] == 0 for r in records)
    assert np.mean([r["success"] for r in records]) == trained["success_rate"]
    assert trained["labelled_steps"] == len(load_demonstrations(t, [demos()]).state)


def test_hgdagger_adds_the_interventions_up_to_the_budget(demos, tmp_path):
    budget = 40
    t = task("device.expert.takeover=stall")
    cfg = BaselineConfig(bc_steps=500, rounds_episodes=4, intervention_budget=budget,
                         eval_every_round=0, final_eval=5)
    summary = run_baseline(t, [demos()], tmp_path, "hgdagger", cfg)
    records = read_jsonl(tmp_path / "episodes.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    rounds = [train[i:i + 4] for i in range(0, len(train), 4)]
    per_round = [sum(r["interventions"] for r in round_) for round_ in rounds]
    print(f"hgdagger: interventions per round {per_round}")

    # Rounds of 4 episodes until the budget is used, and not one round more.
    assert all(len(round_) == 4 for round_ in rounds)
    assert summary["interventions"] == sum(per_round) >= budget
    assert sum(per_round[:-1]) < budget
    # Every intervened step joined the data set.
    demo_steps = len(load_demonstrations(t, [demos()]).state)
    assert summary["labelled_steps"] == demo_steps + summary["interventions"]
    assert summary["env_steps"] == sum(r["steps"] for r in train) == train[-1]["env_steps"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 5 and all(r["interventions"] == 0 for r in evals)


def _stuck_at_the_cube(policy: bc.BCState, t: TaskConfig, episodes: int
                       ) -> tuple[float, float]:
    """(success rate, share of the failures that end beside the cube with the gripper
    open) of the deterministic policy without interventions."""
    stack = make_env(t, images=False, seed=1)
    stack.set_interventions(False)
    key = jax.random.PRNGKey(0)
    results = []
    try:
        for episode in range(episodes):
            obs, _ = stack.env.reset(seed=10_000 + episode)
            while True:
                action = np.asarray(bc.sample_actions(
                    policy, {"state": obs["state"], "images": {}}, key, deterministic=True))
                obs, _, terminated, truncated, info = stack.env.step(action)
                if terminated or truncated:
                    break
            world = stack.world
            near = np.linalg.norm(world.object_position() - world.tcp_pose()[:3]) < 0.06
            results.append((bool(info["success"]), near and world.gripper_command < 0.5))
    finally:
        stack.close()
    failures = [stuck for success, stuck in results if not success]
    return (float(np.mean([s for s, _ in results])),
            float(np.mean(failures)) if failures else 0.0)


def test_a_person_who_pauses_leaves_bc_waiting_at_the_cube(demos):
    """What makes imitation lose to RL with human data (README, "The evidence"): a person
    stops to look before pressing "close", so the demos say "wait" at the grasp pose more
    often than "close", and a regression onto the mean action waits there. The same person
    without the pauses is imitated well."""
    human = ("device.expert.style=human",)
    t = task(*human)
    results = {}
    for name, overrides in (("pauses", human), ("no pauses", (*human,
                            "device.expert.pause_steps=[0,0]"))):
        policy = train_bc(load_demonstrations(t, [demos(*overrides)]), t, steps=3000)
        results[name] = _stuck_at_the_cube(policy, t, episodes=20)
    print(f"BC (success, failures stuck at the cube): {results}")
    assert results["pauses"][0] + 0.3 <= results["no pauses"][0]
    assert results["pauses"][1] >= 0.7
