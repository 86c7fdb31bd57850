"""Residual RL (hilrl.envs.residual, hilrl.learning.base_policy, hilrl train-bc) on the state
pick-cube task: the real sim and env stack, the scripted person, demos it records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actor.env_factory import make_env
from actor.loop import Observer, run_episode
from actor.teleop import record_demos
from hilrl.config import TaskConfig, load_task
from hilrl.envs.residual import ResidualAction
from hilrl.envs.spec import env_spec
from hilrl.learning.base_policy import (
    BasePolicyError,
    BCPolicy,
    applied_action,
    load_base_policy,
    to_residual,
)
from hilrl.learning.replay import ReplayBuffer
from hilrl.storage.dataset import iter_dataset
from learner.ingest import load_demos, residual_of
from learner.train_bc import train_bc_policy

TASK = Path(__file__).resolve().parent.parent / "tasks" / "sim_pick_cube.yaml"  # state only
BASE = "residual_base:linear"  # tests/residual_base.py


def task(*overrides: str) -> TaskConfig:
    return load_task(TASK, ["device.kind=scripted", *overrides])


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demos")
    record_demos(task("device.expert.takeover=always"), out, 4, images=False, progress=False)
    return out


class Steps(Observer):
    def __init__(self) -> None:
        self.steps = []

    def on_step(self, step) -> None:
        self.steps.append(step)


class Random:
    version = -1

    def __init__(self, size: int) -> None:
        self.rng, self.size = np.random.default_rng(0), size

    def act(self, obs):
        return self.rng.uniform(-1.5, 1.5, self.size).astype(np.float32)  # beyond the bound too


def run(t: TaskConfig, interventions: bool) -> tuple[list, ResidualAction]:
    stack = make_env(t, residual=True)
    try:
        stack.set_interventions(interventions)
        wrapper = stack._wrapper(ResidualAction)
        assert wrapper is not None and stack.env is wrapper  # outermost
        steps = Steps()
        run_episode(stack.env, Random(env_spec(t).action_size), seed=3, observers=[steps],
                    kind="train")
        return steps.steps, wrapper
    finally:
        stack.close()


def test_the_env_applies_the_base_action_plus_the_bounded_residual():
    t = task(f"residual.base={BASE}", "residual.scale=0.3")
    base = load_base_policy(BASE, t)
    steps, _ = run(t, interventions=False)
    assert len(steps) > 10
    for step in steps:
        info = step.info
        expected_base = base({"state": step.obs["state"][None]})[0]
        assert np.allclose(info["base_action"], expected_base, atol=1e-6)
        # The action the stack below applied (read back from it) is base + 0.3 * residual,
        # never more than 0.3 from the base on any entry.
        assert np.all(np.abs(info["applied_action"] - info["base_action"]) <= 0.3 + 1e-6)
        assert not info["residual_clipped"] and not step.intervened
        # What the loop records is the residual, in [-1, 1], that gives the applied action.
        assert np.all(np.abs(step.action) <= 1.0)
        assert np.allclose(applied_action(step.action, info["base_action"], 0.3),
                           info["applied_action"], atol=1e-6)
    # Sanity: the random residuals were not all zero, and some went past the bound.
    assert np.mean([np.any(np.abs(s.action) == 1.0) for s in steps]) > 0.5


def test_a_persons_correction_is_stored_as_the_residual_it_implied():
    t = task(f"residual.base={BASE}", "residual.scale=0.3", "device.expert.takeover=always")
    steps, _ = run(t, interventions=True)
    driven = [s for s in steps if s.intervened]
    assert len(driven) > 10
    for step in driven:
        info = step.info
        person = info["applied_action"]  # the person's action, applied as it is
        assert np.allclose(step.action, to_residual(person, info["base_action"], 0.3))
        assert info["residual_clipped"] == bool(
            np.any(np.abs(person - info["base_action"]) > 0.3 + 1e-6))
    # The scripted person moves far from a random linear policy: some corrections are at the
    # bound, and say so.
    assert any(s.info["residual_clipped"] for s in driven)


def test_train_bc_writes_a_base_policy_that_imitates_the_demos(demos, tmp_path):
    t = task()
    spec = env_spec(t)
    episodes = list(iter_dataset(demos))
    obs = {"state": np.concatenate([ep.state[:-1] for ep in episodes]), "images": {}}
    actions = np.concatenate([ep.action for ep in episodes])

    def demo_mse(path: Path) -> float:
        policy = load_base_policy(str(path), t)
        assert isinstance(policy, BCPolicy)
        return float(np.mean((policy(obs) - actions) ** 2))

    untrained = train_bc_policy(t, [demos], tmp_path / "bc0.weights", steps=1)
    trained = train_bc_policy(t, [demos], tmp_path / "bc.weights", steps=400)
    assert trained["episodes"] == 4 and trained["transitions"] == len(actions)
    assert demo_mse(tmp_path / "bc.weights") < 0.5 * demo_mse(tmp_path / "bc0.weights"), (
        trained, untrained)
    policy = BCPolicy(tmp_path / "bc.weights")
    assert np.array_equal(policy(obs), policy(obs))  # deterministic: the mean action
    assert policy(obs).shape == (len(actions), spec.action_size)
    # A task with other actions (rotation: 7) refuses it, saying why.
    with pytest.raises(BasePolicyError, match="4 actions.*7"):
        load_base_policy(str(tmp_path / "bc.weights"), task("env.rotation_actions=true"))


def test_the_learner_turns_the_demos_actions_into_residuals(demos):
    t = task(f"residual.base={BASE}", "residual.scale=0.5")
    base = load_base_policy(BASE, t)
    spec = env_spec(t)
    plain, converted = (ReplayBuffer(1000, **spec.replay_kwargs()) for _ in range(2))
    load_demos([demos], plain)
    load_demos([demos], converted, residual=residual_of(base, 0.5, batch=7))  # several batches
    rows = plain.valid_indices()
    assert np.array_equal(rows, converted.valid_indices())
    a, b = plain.gather(rows), converted.gather(rows)
    expected = to_residual(a["action"], base(a["obs"]), 0.5)
    assert np.allclose(b["action"], expected, atol=1e-6)
    assert not np.allclose(b["action"], a["action"])


def test_a_base_policy_that_cannot_be_loaded_says_what_is_wrong(tmp_path):
    t = task()
    with pytest.raises(BasePolicyError, match="neither a file nor module:factory"):
        load_base_policy(str(tmp_path / "missing.weights"), t)
    with pytest.raises(BasePolicyError, match="No module named"):
        load_base_policy("no_such_module:factory", t)
    (tmp_path / "junk.weights").write_bytes(b"not weights")
    with pytest.raises(BasePolicyError, match="not a readable hilrl train-bc policy file"):
        load_base_policy(str(tmp_path / "junk.weights"), t)
    with pytest.raises(ValueError, match="scale"):
        task("residual.scale=0")


def test_the_actor_refuses_a_base_policy_it_cannot_load_in_one_line(tmp_path, capsys):
    from hilrl.cli import main

    code = main(["actor", "--task", str(TASK), "--run-dir", str(tmp_path), "--quiet",
                 "residual.base=no_such_module:factory"])
    err = capsys.readouterr().err
    assert code == 2 and "residual.base='no_such_module:factory'" in err
    assert "Traceback" not in err
