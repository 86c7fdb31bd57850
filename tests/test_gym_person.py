"""A person on any gymnasium env: a device's commands through the task's action layout, the
env's own interventions from its info, and a scripted person plugged in by ``module:factory``
whose interventions reach the learner's online and demo buffers."""

from __future__ import annotations

import functools
import math

import gym_point_env
import numpy as np
import pytest
from gymnasium import spaces
from polling import wait_for

from actor.loop import Idle, run_episode
from hilrl.config import ActionLayout, ConfigError, load_task
from hilrl.envs.action_layout import LayoutActions
from hilrl.interfaces import Button, Command, InputDevice

GYM = ["env.robot=gymnasium", "device.kind=none"]
POINT = [*GYM, "env.gymnasium.id=gym_point_env:PointReach-v0",
         "env.gymnasium.state_keys=[position, goal, velocity]",
         "env.gymnasium.success_key=is_success"]
POINT_LAYOUT = ["env.gymnasium.action_layout.translation=[0, 1, null]",
                f"env.gymnasium.action_layout.translation_scale={gym_point_env.STEP}"]
# x, y, z in [-2, 2] at 5 mm per unit (1 cm per step at the bound), an absolute gripper 0..1.
BOX = [*GYM, "env.gymnasium.id=gym_point_env:BoxRecord-v0",
       "env.gymnasium.kwargs={low: [-2, -2, -2, 0], high: [2, 2, 2, 1]}",
       "env.gymnasium.action_layout.translation=[0, 1, 2]",
       "env.gymnasium.action_layout.translation_scale=0.005",
       "env.gymnasium.action_layout.gripper=3",
       "env.gymnasium.action_layout.gripper_mode=absolute"]
PERSON = ["device.kind=plugin", "device.plugin.factory=gym_point_env:make_person"]


class Replay(InputDevice):
    """Gives the commands it was handed, one a step, then nothing: the test's hand."""

    def __init__(self, commands: list[Command]) -> None:
        self.commands = list(commands)

    def read(self) -> Command:
        return self.commands.pop(0) if self.commands else Command()


def drive(twist=(0, 0, 0, 0, 0, 0), *buttons: str) -> Command:
    return Command(np.asarray(twist, np.float64), frozenset({Button.INTERVENE, *buttons}))


@pytest.fixture
def build(build_stack):
    """``build(*overrides, device=None, seed=0)`` -> an EnvStack of the default task."""
    return functools.partial(build_stack, None, seed=0)


def sent(stack) -> np.ndarray:
    """The action BoxRecord's env received last."""
    return stack.env.unwrapped.last_action


# --- the action layout ------------------------------------------------------------------------


def test_device_twist_arrives_in_the_envs_units_and_the_buffer_gets_the_policy_action(build):
    commands = [drive((0.5, -1.0, 0.25, 0, 0, 0), Button.GRIPPER_CLOSE),
                drive((0, 0, 0, 0, 0, 0)),  # no gripper button: the gripper stays closed
                drive((0, 0, 0, 0, 0, 0), Button.GRIPPER_OPEN)]
    stack = build(*BOX, device=Replay(commands))
    stack.env.reset(seed=0)
    _, _, _, _, info = stack.env.step(np.zeros(4, np.float32))
    # Full deflection is 1 cm a step (the bound, 2 units of 5 mm): 0.5 -> 5 mm = 1 unit.
    np.testing.assert_allclose(sent(stack), [1.0, -2.0, 0.5, 1.0], atol=1e-6)
    assert info["intervened"]
    # What the replay buffer records is the same action in the policy's [-1, 1] space.
    np.testing.assert_allclose(info["action"], [0.5, -1.0, 0.25, 1.0], atol=1e-6)
    stack.env.step(np.zeros(4, np.float32))
    np.testing.assert_allclose(sent(stack), [0, 0, 0, 1.0], atol=1e-6)
    stack.env.step(np.zeros(4, np.float32))
    np.testing.assert_allclose(sent(stack), [0, 0, 0, 0.0], atol=1e-6)
    _, _, _, _, info = stack.env.step(np.full(4, 0.5, np.float32))  # the person let go
    assert not info["intervened"]
    np.testing.assert_allclose(sent(stack), [1.0, 1.0, 1.0, 0.75], atol=1e-6)


def test_a_set_speed_and_the_deadzone_scale_the_twist(build):
    stack = build(*BOX, "env.gymnasium.action_layout.translation_speed=0.004",
                  "device.deadzone=0.1", device=Replay([drive((1.0, 0.05, -0.5, 0, 0, 0))]))
    stack.env.reset(seed=0)
    stack.env.step(np.zeros(4, np.float32))
    # 4 mm per step at full deflection = 0.8 units; 0.05 is inside the deadzone.
    np.testing.assert_allclose(sent(stack)[:3], [0.8, 0.0, -0.4], atol=1e-6)


def test_taking_over_keeps_the_binary_gripper_the_policy_closed(build):
    stack = build(*GYM, "env.gymnasium.id=gym_point_env:BoxRecord-v0",
                  "env.gymnasium.kwargs={low: [-1, -1], high: [1, 1]}",
                  "env.gymnasium.action_layout.translation=[0, null, null]",
                  "env.gymnasium.action_layout.gripper=1",
                  device=Replay([Command(), drive((1, 0, 0, 0, 0, 0)),
                                 drive((1, 0, 0, 0, 0, 0), Button.GRIPPER_OPEN)]))
    stack.env.reset(seed=0)
    stack.env.step(np.array([0.0, 0.3], np.float32))  # the policy: closed (> 0)
    stack.env.step(np.zeros(2, np.float32))
    np.testing.assert_allclose(sent(stack), [1.0, 1.0])  # the person kept it closed
    stack.env.step(np.zeros(2, np.float32))
    np.testing.assert_allclose(sent(stack), [1.0, -1.0])


def test_a_delta_gripper_changes_only_while_a_button_is_held():
    layout = ActionLayout(translation=(0, 1, 2), gripper=3, gripper_mode="delta")
    space = spaces.Box(np.array([-1, -1, -1, -0.2], np.float32),
                       np.array([1, 1, 1, 0.5], np.float32))
    actions = LayoutActions(layout, space, space, "toy")
    assert actions(drive((0,) * 6, Button.GRIPPER_CLOSE), 0.0)[3] == pytest.approx(0.5)
    assert actions(drive((0,) * 6), 0.0)[3] == 0.0
    assert actions(drive((0,) * 6, Button.GRIPPER_OPEN), 0.0)[3] == pytest.approx(-0.2)


@pytest.mark.parametrize("order", ["xyzw", "wxyz"])
def test_an_end_effector_frame_rotates_the_base_frame_twist(order):
    layout = ActionLayout(translation=(0, 1, 2), rotation=(3, 4, 5), frame="end_effector",
                          orientation_key="quat", quaternion_order=order)
    action_space = spaces.Box(-1.0, 1.0, (6,))
    obs_space = spaces.Dict({"quat": spaces.Box(-1.0, 1.0, (4,))})
    actions = LayoutActions(layout, action_space, obs_space, "toy")
    # The end effector is turned 90 degrees about z: base +x is its -y, base +z its +z.
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    quat = [0, 0, s, c] if order == "xyzw" else [c, 0, 0, s]
    out = actions(drive((1, 0, 0, 0, 0, 0.5)), 0.0, {"quat": np.array(quat)})
    np.testing.assert_allclose(out, [0, -1, 0, 0, 0, 0.5], atol=1e-9)


@pytest.mark.parametrize("overrides, match", [
    (["env.gymnasium.action_layout.translation=[0, 1, 4]"],
     r"translation\[2\]: 4 is not an action dimension .*has 4 \(0..3\)"),
    (["env.gymnasium.action_layout.gripper=1"], "may take one role only"),
    (["env.gymnasium.action_layout.gripper_close=1.5"],
     r"gripper_close: 1.5 is outside the bounds \[0.0, 1.0\] of action dimension 3"),
    (["env.gymnasium.kwargs={low: [0, -2, -2, 0], high: [2, 2, 2, 1]}"],
     r"do not span both directions .*set env.gymnasium.action_layout.translation_speed"),
    (["env.gymnasium.action_layout.translation=[0, 1, null]",
      "env.gymnasium.action_layout.frame=end_effector",
      "env.gymnasium.action_layout.orientation_key=quat"], "needs all three translation axes"),
    (["env.gymnasium.action_layout.frame=end_effector",
      "env.gymnasium.action_layout.orientation_key=quat"],
     r"orientation_key: 'quat' is not in the observation"),
    (["env.gymnasium.action_layout.frame=end_effector"], "needs orientation_key"),
    (["env.gymnasium.action_layout.translation_scale=0"], "translation_scale must be > 0"),
])
def test_a_layout_that_does_not_fit_the_env_names_its_setting(build, overrides, match):
    with pytest.raises(ValueError, match=match):
        build(*BOX, *overrides)


def test_a_device_on_an_env_without_a_layout_is_refused_with_what_to_set(build):
    with pytest.raises(ConfigError, match="env.gymnasium.action_layout .*device.kind=none"):
        build(*POINT, "device.kind=keyboard")


# --- the env's own interventions ------------------------------------------------------------


@pytest.mark.parametrize("style, keys", [
    ("hilserl", ["env.gymnasium.intervention.action_key=intervene_action"]),
    ("lerobot", ["env.gymnasium.intervention.action_key=action_intervention",
                 "env.gymnasium.intervention.flag_key=is_intervention"]),
])
def test_interventions_the_env_reports_in_its_info_are_honoured(build, style, keys):
    stack = build(*POINT, "env.gymnasium.id=gym_point_env:PointReachTeleop-v0",
                  f"env.gymnasium.kwargs={{every: 3, style: {style}}}", *keys)
    steps = []

    class Keep:
        def on_reset(self, obs): pass
        def on_step(self, step): steps.append(step)
        def on_end(self, result): pass

    result = run_episode(stack.env, Idle(stack.env.action_space), 3, [Keep()], kind="teleop")
    person = stack.env.unwrapped.person_steps
    assert [s.index for s in steps if s.intervened] == person and len(person) >= 2
    assert result.interventions == len(person)
    for s in steps:
        expected = np.clip((s.obs["state"][2:4] - s.obs["state"][:2]) / gym_point_env.STEP,
                           -1, 1) if s.intervened else np.zeros(2)
        np.testing.assert_allclose(s.action, expected, atol=1e-5)


def test_a_malformed_info_action_is_refused_naming_the_key(build):
    stack = build(*POINT, "env.gymnasium.id=gym_point_env:PointReachTeleop-v0",
                  "env.gymnasium.intervention.action_key=distance")  # a float, not an action
    stack.env.reset(seed=0)
    with pytest.raises(ValueError, match=r"info\['distance'\] .*intervention.action_key"):
        stack.env.step(np.zeros(2, np.float32))


# --- the scripted person plug-in ------------------------------------------------------------


def test_the_plugged_in_person_gets_the_env_and_its_resets_and_drives_it(build):
    stack = build(*POINT, *POINT_LAYOUT, *PERSON, "device.plugin.kwargs={drive_steps: 4}")
    person = stack.device
    assert isinstance(person, gym_point_env.PointPerson)
    results = [run_episode(stack.env, Idle(stack.env.action_space), s, kind="teleop")
               for s in range(3)]
    assert person.resets == 3
    assert [r.interventions for r in results] == [min(4, r.steps) for r in results]
    assert sum(r.interventions for r in results) == person.driven


def test_labels_recorded_through_the_persons_success_button(tmp_path):
    """record-labels --source device on a gymnasium env: the frames the person marks are
    the positives, and the env's own success no longer ends the episode: it ends once the
    person held SUCCESS 20 frames past the first."""
    from actor.labels import record_labels
    from hilrl.storage.dataset import read_dataset

    task = load_task(None, [*POINT, *POINT_LAYOUT, *PERSON, "env.gymnasium.reward=success",
                            "env.gymnasium.kwargs={render_camera: true}",
                            "env.gymnasium.image_keys={front: camera}",
                            "device.plugin.kwargs={drive_steps: 40, success_within: 0.15}"])
    counts = record_labels(task, tmp_path / "labels", 2, source="device", progress=False)
    episodes = read_dataset(tmp_path / "labels")
    assert counts["episodes"] == 2 and counts["success"] > 0 and counts["failure"] > 0
    for episode in episodes:
        assert episode.images["front"].shape[1:] == (32, 32, 3)
        marked = np.flatnonzero(episode.extras["success"])
        # The person holds SUCCESS on every step from the goal on; the episode runs past
        # the env's own success until 21 presses (22 frames: the first frame marked is the
        # one the first press saw, the last keeps its own press).
        assert marked.size and np.array_equal(marked, np.arange(marked[0], episode.length))
        assert episode.length == marked[0] + 22 < task.env.max_episode_steps


@pytest.mark.parametrize("overrides, match", [
    (["device.plugin.factory=gym_point_env"], "must name the person's factory as 'module:f"),
    (["device.plugin.factory=no_such_module:make"], "cannot import 'no_such_module'.*PYTHONPATH"),
    (["device.plugin.factory=gym_point_env:nobody"], "'gym_point_env' has no 'nobody'"),
    (["device.plugin.factory=gym_point_env:STEP"], "is not callable"),
    (["device.plugin.factory=gym_point_env:make_not_a_person"], "returned a .*not an InputDevice"),
    ([*PERSON, "device.plugin.kwargs={speed: 3}"], r"refused device.plugin.kwargs .*speed"),
])
def test_a_bad_plugin_is_refused_naming_the_setting(build, overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(*POINT, *POINT_LAYOUT, "device.kind=plugin", *overrides)


def test_the_persons_interventions_reach_the_online_and_demo_buffers(tmp_path):
    """The real actor node over loopback to a real learner server, and the learner's own
    ingestion into its two buffers: every step goes online, every step the person drove
    also into the demo buffer, and the counts agree with what the person says it did."""
    from actor.node import Actor
    from hilrl.envs.spec import env_spec
    from hilrl.learning import sac
    from hilrl.learning.replay import ReplayBuffer
    from hilrl.transport.learner_server import LearnerServer
    from learner.ingest import Ingestor

    overrides = [*POINT, *POINT_LAYOUT, *PERSON, "device.plugin.kwargs={drive_steps: 6}",
                 "env.max_episode_steps=15", "agent.hidden_dims=[16,16]", "actor.hz=0"]
    spec = env_spec(load_task(None, overrides))
    server = LearnerServer("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", log_dir=tmp_path / "log",
                           schema=spec.wire_schema()).start()
    node = None
    try:
        task = load_task(None, [*overrides, f"actor.learner={server.endpoint}",
                                f"actor.weights={server.weights_endpoint}"])
        node = Actor(task, tmp_path / "run", quiet=True)
        state = sac.create(task.agent, spec.example_observation(), spec.action_size)
        node.policy.set_weights(1, sac.policy(state).params)
        results = [node.episode("train") for _ in range(4)]
        node.client.flush()
        online = ReplayBuffer(1000, **spec.replay_kwargs())
        demo = ReplayBuffer(1000, **spec.replay_kwargs())
        ingest = Ingestor(online, demo)

        def taken() -> bool:
            for message in server.drain():
                ingest.add(message)
            return len(online) == node.counts["env_steps"]

        wait_for(taken, 60)
    finally:
        if node is not None:
            node.close()
        server.close()
    person = node.stack.device
    steps = sum(r.steps for r in results)
    interventions = sum(r.interventions for r in results)
    assert len(online) == steps == node.counts["env_steps"]
    assert interventions == person.driven == sum(min(6, r.steps) for r in results) > 0
    assert len(demo) == ingest.interventions == interventions
    batch = demo.gather(demo.valid_indices())
    # What the demo buffer holds is the person's command in the policy's action space.
    state = batch["obs"]["state"]
    expected = np.clip((state[:, 2:4] - state[:, :2]) / gym_point_env.STEP, -1, 1)
    np.testing.assert_allclose(batch["action"], expected, atol=1e-5)


# --- a person at the keyboard, in a terminal ---------------------------------------------------


class Terminal:
    """``hilrl ARGS`` with a pseudo-terminal as its stdin and stdout, as a person runs it."""

    def __init__(self, args: list[str]) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        master, slave = os.openpty()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(root / "tests"), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "hilrl.cli", *args], stdin=slave,
                                     stdout=slave, stderr=slave, cwd=root, env=env)
        os.close(slave)
        self.master, self.text = master, ""

    def read(self) -> str:
        import os
        import select

        while select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            self.text += chunk.decode(errors="replace")
        return self.text

    def type(self, keys: str) -> None:
        import os

        os.write(self.master, keys.encode())

    def close(self) -> int:
        import os

        try:
            code = self.proc.wait(120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.read()
            os.close(self.master)
        return code


KEYBOARD = [*POINT, *POINT_LAYOUT, "device.kind=keyboard", "env.realtime=true", "env.hz=20",
            "env.max_episode_steps=2000"]


def steer_then_succeed(term: Terminal) -> None:
    """Wait for the key help, then press +x (w, held for its hold time) and enter."""
    wait_for(lambda: "keys:" in term.read() or term.proc.poll() is not None, 120)
    assert term.proc.poll() is None, term.text
    term.type("wwww\r")


def test_teleop_on_a_gymnasium_env_with_the_keyboard():
    term = Terminal(["teleop", "--episodes", "1", *KEYBOARD])
    steer_then_succeed(term)
    assert term.close() == 0, term.text
    line = next(ln for ln in term.text.splitlines() if ln.startswith("episode 1:"))
    steered = int(line.split("(")[1].split()[0])
    assert line.startswith("episode 1: success") and steered >= 1, term.text


def test_record_demos_on_a_gymnasium_env_with_the_keyboard(tmp_path):
    from hilrl.storage.dataset import read_dataset

    out = tmp_path / "demos"
    term = Terminal(["record-demos", "--episodes", "1", "--out", str(out), *KEYBOARD])
    steer_then_succeed(term)
    assert term.close() == 0, term.text
    assert "recorded 1 successful demos" in term.text
    [episode] = read_dataset(out)
    steered = episode.intervened
    assert steered.any() and episode.reward[-1] == 1.0
    # The person's +x, in the policy's action space: full speed on x, nothing on y.
    np.testing.assert_allclose(episode.action[steered], [[1.0, 0.0]] * int(steered.sum()))
    np.testing.assert_allclose(episode.action[~steered], 0.0)
