"""``env.robot: gymnasium``: registered gymnasium envs built by ``actor.env_factory.make_env``
and seen through hilrl's observation, action and info layout (hilrl.envs.gym_adapter)."""

from __future__ import annotations

import functools

import gym_point_env  # noqa: F401 - registers PointReach-v0 and BoxRecord-v0
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from hilrl.config import load_task
from hilrl.envs.gym_adapter import GymAdapter, make_gym_env
from hilrl.interfaces import NullDevice

GYM = ["env.robot=gymnasium", "device.kind=none"]
POINT = [*GYM, "env.gymnasium.id=gym_point_env:PointReach-v0"]
POINT_STATE = [*POINT, "env.gymnasium.state_keys=[position, goal, velocity]"]
POINT_CAMERA = [*POINT_STATE, "env.gymnasium.kwargs={render_camera: true}",
                "env.gymnasium.image_keys={front: camera}"]
BOX = [*GYM, "env.gymnasium.id=gym_point_env:BoxRecord-v0"]


@pytest.fixture
def build(build_stack):
    """``build(*overrides, images=..., device=..., seed=...)`` -> an EnvStack of the default
    task."""
    return functools.partial(build_stack, None)


def toward_goal(env) -> np.ndarray:
    point = env.unwrapped
    return np.clip((point.goal - point.position) / gym_point_env.STEP, -1, 1).astype(np.float32)


# --- Box observations and action rescaling ---------------------------------------------------


def test_pendulum_box_observation_is_the_state_and_actions_span_the_torque(build):
    stack = build(*GYM, "env.gymnasium.id=Pendulum-v1")
    env = stack.env
    assert env.observation_space["state"].shape == (3,)
    assert env.observation_space["state"].dtype == np.float32
    assert len(env.observation_space["images"].spaces) == 0
    assert env.action_space.shape == (1,) and env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)

    obs, _ = env.reset(seed=3)
    assert obs["state"].dtype == np.float32
    np.testing.assert_allclose(obs["state"], env.unwrapped._get_obs(), rtol=1e-6)
    for hilrl_action, torque in ((1.0, 2.0), (-1.0, -2.0), (0.0, 0.0), (0.5, 1.0)):
        obs, reward, terminated, truncated, info = env.step(np.array([hilrl_action], np.float32))
        assert env.unwrapped.last_u == pytest.approx(torque)
        np.testing.assert_array_equal(info["action"], [hilrl_action])
        assert info["intervened"] is False and info["grasp_penalty"] == 0.0
        assert reward < 0.0  # Pendulum's own cost, untouched with reward=env
        np.testing.assert_allclose(obs["state"], env.unwrapped._get_obs(), rtol=1e-6)
        assert "success" not in info  # no success_key: no claim either way
    assert isinstance(stack.device, NullDevice)


def test_actions_rescale_onto_asymmetric_bounds_and_clip(build):
    env = build(*BOX).env  # bounds low (-2, 0), high (2, 10)
    env.reset()
    inner = env.unwrapped
    for action, sent in (([1, -1], [2, 0]), ([0, 0], [0, 5]), ([-1, 1], [-2, 10]),
                         ([0.5, 0.5], [1, 7.5])):
        env.step(np.array(action, np.float32))
        np.testing.assert_allclose(inner.last_action, sent)
        assert inner.last_action.dtype == np.float32
    _, reward, _, _, info = env.step(np.array([3.0, -7.0], np.float32))
    np.testing.assert_allclose(inner.last_action, [2, 0])
    np.testing.assert_array_equal(info["action"], [1, -1])  # what was applied, not asked
    assert reward == 0.5


def test_multi_dimensional_action_space_is_flattened(build):
    env = build(*BOX, "env.gymnasium.kwargs={low: -1, high: 1, shape: [2, 2]}").env
    assert env.action_space.shape == (4,)
    env.reset()
    env.step(np.array([1, -1, 0, 0.5], np.float32))
    np.testing.assert_allclose(env.unwrapped.last_action, [[1, -1], [0, 0.5]])


@pytest.mark.parametrize("action", [[np.nan, 0.0], [0.0, np.inf], [0.0], [[0.0, 0.0]]])
def test_bad_actions_are_refused_before_the_env_steps(build, action):
    env = build(*BOX).env
    env.reset()
    with pytest.raises(ValueError, match="finite|shape"):
        env.step(np.array(action, np.float32))
    assert env.unwrapped.last_action is None and env.unwrapped.t == 0


# --- Dict observations --------------------------------------------------------------------------


def test_dict_observation_state_keys_and_camera(build):
    env = build(*POINT_CAMERA).env
    space = env.observation_space
    assert space["state"].shape == (6,) and space["state"].dtype == np.float32
    assert list(space["images"].spaces) == ["front"]
    assert space["images"]["front"].shape == (32, 32, 3)
    assert space["images"]["front"].dtype == np.uint8

    obs, _ = env.reset(seed=0)
    for _ in range(3):
        inner = env.unwrapped._obs()
        assert obs in space
        expected = np.concatenate([inner["position"], inner["goal"], inner["velocity"]])
        np.testing.assert_array_equal(obs["state"], expected)
        np.testing.assert_array_equal(obs["images"]["front"], inner["camera"])
        assert obs["images"]["front"].any()  # the point and goal are drawn
        obs, *_ = env.step(np.array([0.7, -0.4], np.float32))
    np.testing.assert_allclose(obs["state"][4:], [0.07, -0.04], atol=1e-6)  # velocity


def test_state_keys_order_is_kept(build):
    env = build(*POINT, "env.gymnasium.state_keys=[goal, position]").env
    obs, _ = env.reset(seed=1)
    inner = env.unwrapped
    np.testing.assert_array_equal(obs["state"], np.concatenate([inner.goal, inner.position]))


def test_images_false_drops_the_cameras(build):
    env = build(*POINT_CAMERA, images=False).env
    assert len(env.observation_space["images"].spaces) == 0
    obs, _ = env.reset()
    assert obs["images"] == {} and obs["state"].shape == (6,)


# The state is unbounded by design, and the checker prefers a raw env to a wrapped one.
@pytest.mark.filterwarnings("ignore:.*(infinity|unwrapped version).*:UserWarning")
def test_env_checker_accepts_the_adapted_env():
    # The adapter is what makes a gymnasium env hilrl's; the person's wrapper above it holds
    # a live device, which gymnasium's spec machinery cannot copy.
    task = load_task(None, POINT_CAMERA)
    env = make_gym_env(task.env.gymnasium, task.env.max_episode_steps, seed=0)
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_seed_makes_the_episodes_reproducible(build):
    goals = [build(*POINT_STATE, seed=s).env.reset()[0]["state"][2:4] for s in (5, 5, 6)]
    np.testing.assert_array_equal(goals[0], goals[1])
    assert not np.array_equal(goals[0], goals[2])


# --- success, reward, time limit ----------------------------------------------------------------


def test_success_key_terminates_with_sparse_reward(build):
    env = build(*POINT_STATE, "env.gymnasium.success_key=is_success",
                "env.gymnasium.reward=success").env
    _, info = env.reset(seed=2)
    assert info["success"] is False
    rewards = []
    for _ in range(40):
        _, reward, terminated, truncated, info = env.step(toward_goal(env))
        rewards.append(reward)
        assert info["success"] == (env.unwrapped._distance() < 0.1)
        if terminated:
            break
    assert terminated and not truncated and info["success"] is True
    assert rewards[-1] == 1.0 and set(rewards[:-1]) == {0.0} and len(rewards) > 1


def test_dense_env_reward_with_success_key(build):
    env = build(*POINT_STATE, "env.gymnasium.success_key=is_success").env
    env.reset(seed=2)
    _, reward, terminated, _, info = env.step(np.zeros(2, np.float32))
    assert reward == pytest.approx(-env.unwrapped._distance()) and reward < -0.1
    assert not terminated and info["success"] is False


def test_without_success_key_reaching_the_goal_does_not_end_the_episode(build):
    env = build(*POINT_STATE, "env.max_episode_steps=30").env
    env.reset(seed=2)
    for _ in range(29):
        _, _, terminated, truncated, info = env.step(toward_goal(env))
        assert not terminated and not truncated
    assert info["is_success"]  # the inner info is passed through
    assert env.step(toward_goal(env))[3]


@pytest.mark.parametrize("steps", [5, 60])  # below and above the registered limit of 40
def test_time_limit_truncates_at_max_episode_steps(build, steps):
    env = build(*POINT_STATE, f"env.max_episode_steps={steps}").env
    env.reset()
    for _ in range(steps - 1):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
        assert not terminated and not truncated
    _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
    assert truncated and not terminated


# --- the stack ----------------------------------------------------------------------------------


def test_stack_hold_reaches_the_adapter(build, monkeypatch):
    held = []
    monkeypatch.setattr(GymAdapter, "hold", lambda self: held.append(self))
    stack = build(*POINT_STATE)
    stack.hold()
    assert len(held) == 1 and isinstance(held[0], GymAdapter)


def test_scripted_device_needs_the_sim(build):
    task = [*POINT_STATE, "device.kind=scripted"]
    with pytest.raises(ValueError, match="device.kind=none"):
        build(*task)
    device = NullDevice()
    assert build(*task, device=device).device is device  # a device passed in is used


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, match", [
    ([*POINT, "env.gymnasium.state_keys=[position, speed]"],
     r"state_keys: 'speed' is not in .*available keys: .*'position'"),
    ([*POINT_STATE, "env.gymnasium.image_keys={front: camera}"],
     r"image_keys: 'camera' is not in .*available keys: 'goal', 'position', 'velocity'"),
    ([*POINT_STATE, "env.gymnasium.image_keys={front: goal}"],
     r"image_keys: 'front' -> 'goal' .*uint8 Box \(H, W, 3\)"),
    ([*POINT], r"Dict observation .*'position'.*set env.gymnasium.state_keys"),
    ([*GYM, "env.gymnasium.id=Pendulum-v1", "env.gymnasium.state_keys=[theta]"],
     r"Box observation.*state_keys \(\['theta'\]\)"),
    ([*GYM, "env.gymnasium.id=Pendulum-v1", "env.gymnasium.image_keys={front: pixels}"],
     r"Box observation.*image_keys \(\{'front': 'pixels'\}\)"),
    ([*GYM, "env.gymnasium.id=CartPole-v1"], "Discrete action space; only continuous Box"),
    ([*BOX, "env.gymnasium.kwargs={low: [-.inf, 0], high: [1, 1]}"],
     "action bounds must be finite"),
    ([*POINT_STATE, "env.gymnasium.reward=success"], "reward=success needs .*success_key"),
    ([*GYM, "env.gymnasium.id=NoSuchEnv-v0"],
     r"'NoSuchEnv-v0' was not found.*gymnasium.registry.*'module:Id-v0'"),
    ([*GYM, "env.gymnasium.id=no_such_module:PointReach-v0"],
     r"'no_such_module:PointReach-v0' was not found.*no_such_module"),
    ([*GYM], "needs env.gymnasium.id"),
    ([*POINT_STATE, "env.gymnasium.kwargs={colour: red}"], r"refused env.gymnasium.kwargs.*colour"),
])
def test_configuration_errors_name_the_setting(build, overrides, match):
    with pytest.raises(ValueError, match=match):
        build(*overrides)
