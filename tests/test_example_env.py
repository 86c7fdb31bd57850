"""tests/gantry_pick: a third-party gymnasium env (GantryPick-v0) and its scripted person,
checked on their own terms (the env's action convention, seeding, camera) and through the
task file hilrl loads."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent / "gantry_pick"
sys.path.insert(0, str(EXAMPLE))  # as a user's PYTHONPATH=tests/gantry_pick does

import gantry_pick  # noqa: E402, F401 - registers GantryPick-v0
import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402
from person import make_person  # noqa: E402

from actor.env_factory import make_env  # noqa: E402
from hilrl.config import load_task  # noqa: E402
from hilrl.interfaces import Button, Command, InputDevice  # noqa: E402

ENV_ID = "gantry_pick:GantryPick-v0"
MAX_STEPS = 80  # the task file's max_episode_steps


@pytest.fixture
def make():
    """``make(**kwargs)`` -> a GantryPick-v0 closed after the test."""
    envs = []

    def _make(**kwargs) -> gym.Env:
        env = gym.make(ENV_ID, **kwargs)
        envs.append(env)
        return env

    yield _make
    for env in envs:
        env.close()


def to_action(command: Command) -> np.ndarray:
    """The env's action for a person's command: full deflection is the translation bound."""
    if Button.GRIPPER_CLOSE in command.buttons:
        gripper = 1.0
    elif Button.GRIPPER_OPEN in command.buttons:
        gripper = -1.0
    else:
        gripper = 0.0
    return np.array([*(np.asarray(command.twist[:3]) * 2.0), gripper], np.float32)


def test_the_env_and_the_person_import_nothing_of_hilrl_but_its_interfaces():
    for name, allowed in (("gantry_pick.py", set()), ("person.py", {"hilrl.interfaces"})):
        tree = ast.parse((EXAMPLE / name).read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        ours = {m for m in modules if m.split(".")[0] in ("hilrl", "actor", "learner",
                                                          "robot_drivers")}
        assert ours == allowed, name


# The env's own convention: translation bounds of +-2, which the checker would rather see at 1.
@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space.*:UserWarning")
def test_env_checker_passes(make):
    check_env(make().unwrapped, skip_render_check=False)


def test_translation_moves_a_centimetre_per_step_at_the_bound(make):
    env = make(render_camera=False)
    obs, _ = env.reset(seed=0)
    assert env.action_space.shape == (4,)
    np.testing.assert_array_equal(env.action_space.high, [2, 2, 2, 1])
    np.testing.assert_array_equal(env.action_space.low, [-2, -2, -2, -1])
    positions = [obs["tcp"].astype(np.float64)]
    for _ in range(6):
        obs, *_ = env.step(np.array([2.0, 0.0, 0.0, 0.0], np.float32))
        positions.append(obs["tcp"].astype(np.float64))
    moves = np.diff(positions, axis=0)
    np.testing.assert_allclose(moves[2:, 0], 0.01, atol=5e-4)  # after the servo settles
    assert np.abs(moves[:, 1:]).max() < 1e-3  # only x moves
    for _ in range(4):  # half speed backwards along y, to check the sign and the scale
        obs, *_ = env.step(np.array([0.0, -1.0, 0.0, 0.0], np.float32))
        positions.append(obs["tcp"].astype(np.float64))
    assert np.diff(positions, axis=0)[-1, 1] == pytest.approx(-0.005, abs=5e-4)


def test_gripper_deltas_close_and_open_the_fingers_gradually(make):
    env = make(render_camera=False)
    obs, _ = env.reset(seed=0)
    assert obs["fingers"].shape == (1,) and obs["fingers"][0] == pytest.approx(0.08)
    openings = []
    for _ in range(5):  # a quarter of the 8 cm range per step: closed after four
        obs, *_ = env.step(np.array([0, 0, 0, 1.0], np.float32))
        openings.append(float(obs["fingers"][0]))
    np.testing.assert_allclose(openings, [0.06, 0.04, 0.02, 0.0, 0.0], atol=1e-3)
    obs, *_ = env.step(np.array([0, 0, 0, -0.5], np.float32))
    assert obs["fingers"][0] == pytest.approx(0.01, abs=1e-3)
    obs, *_ = env.step(np.zeros(4, np.float32))  # 0 keeps the opening
    assert obs["fingers"][0] == pytest.approx(0.01, abs=1e-3)


@pytest.mark.parametrize("style", ["oracle", "human"])
def test_the_person_driving_every_step_picks_the_cube(make, style):
    env = make(render_camera=False, max_episode_steps=MAX_STEPS)
    person = make_person(env, seed=1, takeover="always", style=style)
    assert isinstance(person, InputDevice)
    successes = 0
    for episode in range(10):
        env.reset(seed=100 + episode)
        person.reset()
        for _ in range(MAX_STEPS):
            command = person.read()
            assert command.twist.shape == (6,) and np.all(np.abs(command.twist) <= 1.0)
            assert Button.INTERVENE in command.buttons
            _, reward, terminated, truncated, info = env.step(to_action(command))
            if info["is_success"]:
                assert reward == 1.0 and not terminated  # the env leaves ending to hilrl
                successes += 1
                break
            assert reward == 0.0
    assert successes >= 9


def test_a_person_who_never_takes_over_only_watches(make):
    env = make(render_camera=False)
    person = make_person(env, seed=0, takeover="never")
    env.reset(seed=0)
    for _ in range(20):
        command = person.read()
        assert not command.buttons and not command.twist.any()
        env.step(env.action_space.sample())


def test_a_stalled_policy_gets_help_for_hold_steps(make):
    env = make(render_camera=False)
    person = make_person(env, seed=0, takeover="stall", stall_steps=5, hold_steps=8)
    env.reset(seed=0)
    active = []
    for _ in range(20):  # a policy that does nothing: no progress
        command = person.read()
        active.append(command.is_active())
        env.step(to_action(command) if command.is_active() else np.zeros(4, np.float32))
    assert active[:5] == [False] * 5 and active[5:13] == [True] * 8 and not active[13]


def test_the_person_notices_a_new_episode_without_reset(make):
    env = make(render_camera=False)
    person = make_person(env, seed=0, takeover="stall", stall_steps=3, hold_steps=50)
    env.reset(seed=0)
    for _ in range(5):  # stalls: the person is holding on
        env.step(np.zeros(4, np.float32))
        person.read()
    assert person.read().is_active()
    env.reset(seed=1)  # no person.reset(): the env's step counter went back
    assert not person.read().is_active()


def test_reset_seed_decides_the_cube_position(make):
    env = make(render_camera=False)
    first = env.reset(seed=7)[0]["cube"]
    env.step(env.action_space.sample())
    again = env.reset(seed=7)[0]["cube"]
    other = env.reset(seed=8)[0]["cube"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.all(np.abs(first[:2]) <= 0.04) and first[2] == pytest.approx(0.02)


def test_the_camera_sees_the_gripper_move(make):
    env = make()
    before = env.reset(seed=0)[0]["camera"]
    assert before.dtype == np.uint8 and before.shape == (64, 64, 3)
    for _ in range(3):
        after = env.step(np.array([0.0, 2.0, -2.0, 0.0], np.float32))[0]["camera"]
    assert np.abs(after.astype(int) - before.astype(int)).sum() > 64 * 255
    assert "camera" not in make(render_camera=False).reset(seed=0)[0]


def test_the_task_file_builds_the_env_in_hilrl():
    task = load_task(EXAMPLE / "task.yaml")
    stack = make_env(task)
    try:
        env = stack.env
        assert env.observation_space["state"].shape == (7,)  # tcp, fingers, cube
        assert env.action_space.shape == (4,)
        obs, _ = env.reset()
        inner = env.unwrapped
        np.testing.assert_allclose(obs["state"][4:], inner.cube_position(), atol=1e-6)
        # hilrl's [-1, 1] spans the env's bounds: 1 is +2 units, a centimetre a step
        _, _, _, _, info = env.step(np.array([0.0, 0.0, 1.0, -1.0], np.float32))
        np.testing.assert_array_equal(info["action"], [0, 0, 1, -1])
        assert info["success"] is False
    finally:
        stack.close()
