"""The one episode loop (actor.loop) on the real simulated arm: what observers see, the hooks
the actor node needs (pacing, holding, faults, stop), and one success rule for every caller:
the actor (train and eval), demo recording, the BC / HG-DAgger runner and label recording.
The stand-ins are a hand that presses buttons on a schedule, in place of a person, and a
wrapper that raises the error a reflex raises."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from actor.env_factory import EnvStack, make_env
from actor.loop import EpisodeResult, Idle, Obs, Observer, Step, decide_success, run_episode
from hilrl.config import load_task
from hilrl.envs.wrappers import EmergencyStop, InterventionWrapper
from hilrl.interfaces import Button, Command, InputDevice, RobotError
from hilrl.reporting.metrics import read_jsonl
from hilrl.storage.dataset import read_dataset

ROOT = Path(__file__).resolve().parent.parent
STATE_TASK = ROOT / "tasks" / "sim_pick_cube.yaml"
TINY = ["agent.hidden_dims=[16,16]", "agent.latent_dim=16", "agent.proprio_hidden=[16]"]
PRESS_AT = 4  # the hand presses SUCCESS on its 5th read: episodes end after 5 steps


class Hand(InputDevice):
    """Never steers; presses SUCCESS from read ``success_from`` on, ESTOP at ``estop_at``."""

    def __init__(self, success_from: int | None = None, estop_at: int | None = None) -> None:
        self.success_from, self.estop_at = success_from, estop_at
        self.reads = 0

    def read(self) -> Command:
        n = self.reads
        self.reads += 1
        if n == self.estop_at:
            return Command(buttons=frozenset({Button.ESTOP}))
        if self.success_from is not None and n >= self.success_from:
            return Command(buttons=frozenset({Button.SUCCESS}))
        return Command()


class Log(Observer):
    """Everything the loop told it, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_reset(self, obs: Obs) -> None:
        self.events.append(("reset", obs))

    def on_step(self, step: Step) -> None:
        self.events.append(("step", step))

    def on_end(self, result: EpisodeResult) -> None:
        self.events.append(("end", result))

    def steps(self) -> list[Step]:
        return [e for kind, e in self.events if kind == "step"]


class Pacer:
    """Counts what the loop asks of its clock."""

    def __init__(self) -> None:
        self.calls = {"start_step": 0, "end_step": 0, "restart": 0}

    def start_step(self) -> None:
        self.calls["start_step"] += 1

    def end_step(self) -> None:
        self.calls["end_step"] += 1

    def restart(self) -> None:
        self.calls["restart"] += 1


class ReflexAt(gym.Wrapper):
    """Raises RobotError on step ``at`` (0-based), as the Franka driver does on a reflex."""

    def __init__(self, env: gym.Env, at: int) -> None:
        super().__init__(env)
        self.at, self.count = at, 0

    def step(self, action):
        if self.count == self.at:
            raise RobotError("cartesian reflex")
        self.count += 1
        return self.env.step(action)


@pytest.fixture
def home():
    """home(*overrides, device=None) -> the default sim task's env stack, state only."""
    stacks: list[EnvStack] = []

    def _home(*overrides: str, device: InputDevice | None = None) -> EnvStack:
        task = load_task(None, ["device.kind=none", "env.max_episode_steps=12", *overrides])
        stacks.append(make_env(task, device, images=False))
        return stacks[-1]

    yield _home
    for stack in stacks:
        stack.close()


def _hand_over(stack: EnvStack, device: InputDevice) -> None:
    """Put ``device`` in the hand of a stack built elsewhere (the actor's, the runner's)."""
    layer = stack.env
    while not isinstance(layer, InterventionWrapper):
        layer = layer.env
    layer.device = device


def test_observers_see_the_reset_every_step_in_order_and_the_end(home):
    stack = home()
    log = Log()
    result = run_episode(stack.env, Idle(stack.env.action_space), 3, [log], kind="teleop")
    kinds = [kind for kind, _ in log.events]
    assert kinds == ["reset"] + ["step"] * 12 + ["end"]
    steps = log.steps()
    assert [s.index for s in steps] == list(range(12))
    # Each step acts on the observation the previous one produced, from the reset on.
    assert steps[0].obs is log.events[0][1]
    assert all(b.obs is a.next_obs for a, b in zip(steps, steps[1:], strict=False))
    assert [s.truncated for s in steps] == [False] * 11 + [True]  # the time limit
    assert not any(s.terminated or s.success or s.intervened for s in steps)
    assert log.events[-1][1] is result
    assert (result.kind, result.seed, result.steps, result.success, result.fault) == (
        "teleop", 3, 12, False, None)
    # The same seed gives the same scene.
    again = Log()
    run_episode(stack.env, Idle(stack.env.action_space), 3, [again], kind="teleop")
    np.testing.assert_array_equal(again.events[0][1]["state"], log.events[0][1]["state"])


def test_the_success_button_ends_the_episode_with_reward_one(home):
    stack = home(device=Hand(success_from=PRESS_AT))
    log = Log()
    result = run_episode(stack.env, Idle(stack.env.action_space), 0, [log], kind="teleop")
    last = log.steps()[-1]
    assert result.steps == PRESS_AT + 1 and result.steps_to_success == PRESS_AT + 1
    assert result.success and result.ret == 1.0
    assert last.reward == 1.0 and last.terminated and last.success
    assert result.time_to_success_s(10.0) == pytest.approx((PRESS_AT + 1) / 10.0)


def test_decide_success_is_the_env_or_the_button():
    assert decide_success(0.0, False, {}) == (0.0, False, False)
    assert decide_success(1.0, True, {"success": True}) == (1.0, True, True)
    assert decide_success(0.0, False, {"success_button": True}) == (1.0, True, True)
    # Labels: the button marks the frame, the episode and its reward go on.
    assert decide_success(0.0, False, {"success_button": True}, button_ends=False) == (
        0.0, False, True)


def test_every_caller_ends_on_the_success_button(tmp_path):
    """The actor (train and eval), demo recording and the BC / HG-DAgger runner decide
    success the same way; the baselines used to ignore the button."""
    from actor.baselines import _Runner
    from actor.node import Actor
    from actor.teleop import record_demos
    from hilrl.learning import bc, sac

    ended = PRESS_AT + 1
    dead = "tcp://127.0.0.1:9"  # no learner: training transitions wait in the outbox
    task = load_task(STATE_TASK, [*TINY, "device.kind=none", "actor.hz=0",
                                  f"actor.learner={dead}", f"actor.weights={dead}"])
    node = Actor(task, tmp_path / "run", quiet=True)
    try:
        state = sac.create(task.agent, node.spec.example_observation(), node.spec.action_size)
        node.policy.set_weights(5, sac.policy(state).params)
        for kind in ("train", "eval"):
            _hand_over(node.stack, Hand(success_from=PRESS_AT))
            r = node.episode(kind)
            assert (r.kind, r.steps, r.success, r.ret, r.policy_version) == (
                kind, ended, True, 1.0, 5)
    finally:
        node.close()
    records = read_jsonl(node.episodes_log)
    assert [(r["kind"], r["steps"], r["success"], r["return"]) for r in records] == [
        ("train", ended, True, 1.0), ("eval", ended, True, 1.0)]
    assert records[0]["time_to_success_s"] == pytest.approx(ended / task.env.hz)
    assert node.counts["env_steps"] == ended

    assert record_demos(task, tmp_path / "demos", 1, images=False, progress=False,
                        device=Hand(success_from=PRESS_AT)) == 1
    (demo,) = read_dataset(tmp_path / "demos")
    assert demo.length == ended and demo.meta["success"]
    assert demo.reward[-1] == 1.0 and demo.terminated[-1] and demo.extras["success"][-1]

    runner = _Runner(task, tmp_path / "bc" / "episodes.jsonl", seed=0)
    try:
        policy = bc.create(bc.BCConfig(network=task.agent, augment_pad=0),
                           {"state": np.zeros((1, node.spec.state_size), np.float32),
                            "images": {}}, node.spec.action_size)
        for kind in ("train", "eval"):
            _hand_over(runner.stack, Hand(success_from=PRESS_AT))
            record, new = runner.episode(policy, kind)
            assert (record["steps"], record["success"], new) == (ended, True, None)
    finally:
        runner.close()
    assert runner.env_steps == ended  # training steps only


def test_label_recording_keeps_going_through_the_button(tmp_path):
    from actor.labels import record_labels

    task = load_task(None, ["env.image_size=[32,32]", "device.kind=none",
                            "env.max_episode_steps=8"])
    record_labels(task, tmp_path / "labels", 1, source="device", progress=False,
                  device=Hand(success_from=PRESS_AT))
    (episode,) = read_dataset(tmp_path / "labels")
    assert episode.length == 8 and not episode.terminated.any() and episode.reward.max() == 0
    # Frame t carries read t + 1's verdict (the read made seeing it): the first pressed read,
    # PRESS_AT, labels the frame before it.
    pressed = PRESS_AT - 1
    assert episode.extras["success"].tolist() == [False] * pressed + [True] * (8 - pressed)


def test_a_fault_ends_the_episode_through_the_handler_or_propagates_without(home):
    stack = home()
    env = ReflexAt(stack.env, at=3)
    faults: list[Exception] = []

    def on_fault(error: RobotError) -> str:
        faults.append(error)
        return f"{type(error).__name__}: {error}"

    log = Log()
    result = run_episode(env, Idle(env.action_space), 0, [log], kind="eval", on_fault=on_fault)
    assert result.fault == "RobotError: cartesian reflex" and result.steps == 3
    assert len(faults) == 1 and len(log.steps()) == 3 and log.events[-1] == ("end", result)

    env.count = 0
    log = Log()
    with pytest.raises(RobotError):
        run_episode(env, Idle(env.action_space), 0, [log], kind="eval")
    assert [kind for kind, _ in log.events] == ["reset"] + ["step"] * 3  # no end


def test_held_ticks_do_not_step_and_restart_the_clock(home):
    stack = home("env.max_episode_steps=5")
    ticks = {"n": 0}

    def before_step() -> bool:  # the arm holds for the first 3 ticks (learner lost)
        ticks["n"] += 1
        return ticks["n"] > 3

    pacer = Pacer()
    result = run_episode(stack.env, Idle(stack.env.action_space), 0, kind="train", clock=pacer,
                         before_step=before_step)
    assert result.steps == 5 and ticks["n"] == 8
    # One schedule from the reset, a fresh one after each held tick; only steps end one.
    assert pacer.calls == {"start_step": 8, "end_step": 5, "restart": 1 + 3}


def test_a_stop_ends_the_episode_while_holding_or_after_a_step(home):
    stack = home()
    checks = {"n": 0}

    def stopped() -> bool:
        checks["n"] += 1
        return checks["n"] >= 3

    log = Log()
    result = run_episode(stack.env, Idle(stack.env.action_space), 0, [log], kind="train",
                         before_step=lambda: False, stopped=stopped)
    assert result.steps == 0 and checks["n"] == 3 and log.events[-1] == ("end", result)

    checks["n"] = 0
    result = run_episode(stack.env, Idle(stack.env.action_space), 0, kind="train",
                         stopped=stopped)
    assert result.steps == 3


def test_until_ends_the_episode_after_the_step_it_accepts(home):
    stack = home()
    result = run_episode(stack.env, Idle(stack.env.action_space), 0, kind="labels",
                         until=lambda step: step.index == 2)
    assert result.steps == 3


def test_a_reset_stopped_before_the_episode_tells_no_observer(home):
    stack = home()
    log = Log()
    result = run_episode(stack.env, Idle(stack.env.action_space), 0, [log], kind="train",
                         reset=lambda seed: None)
    assert result.fault == "stopped during reset" and result.steps == 0 and log.events == []


def test_the_estop_propagates_with_the_steps_before_it_observed(home):
    stack = home(device=Hand(estop_at=2))
    log = Log()
    with pytest.raises(EmergencyStop):
        run_episode(stack.env, Idle(stack.env.action_space), 0, [log], kind="teleop")
    assert [kind for kind, _ in log.events] == ["reset", "step", "step"]
