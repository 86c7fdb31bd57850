"""The env stack (ManipulatorEnv + wrappers, built by actor.env_factory.make_env) on the real
MuJoCo sim. Nothing of the sim is mocked; a couple of test-only cameras and input devices stand
in where a test needs a fault or a person's hand. Images are 32x32 to keep rendering cheap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy.spatial.transform import Rotation

from actor.env_factory import make_env
from hilrl.config import load_task
from hilrl.config.io import ConfigError
from hilrl.envs.manipulator import ManipulatorEnv
from hilrl.envs.safety import WorkspaceBox
from hilrl.envs.wrappers import EmergencyStop, ImageCropResize, InterventionWrapper
from hilrl.interfaces import Button, Camera, CameraError, Command, InputDevice, NullDevice
from robot_drivers.sim.drivers import SimArm, SimCamera, SimClock, SimScene
from robot_drivers.sim.scene import FINGER_MAX
from robot_drivers.sim.world import SimSettings, SimWorld

SMALL = "env.image_size=[32,32]"
NO_DEVICE = "device.kind=none"


class FixedDevice(InputDevice):
    """A test-only hand: returns whatever command the test put in ``command``."""

    def __init__(self, command: Command | None = None) -> None:
        self.command = command or Command()
        self.reads = 0

    def read(self) -> Command:
        self.reads += 1
        return self.command


class WrongSizeCamera(Camera):
    """A camera that delivers frames of another resolution than the env expects."""

    def __init__(self, name: str, shape=(16, 24, 3), dtype=np.uint8) -> None:
        self.name = name
        self.shape = shape
        self.dtype = dtype

    def read(self) -> np.ndarray:
        return np.zeros(self.shape, self.dtype)


@pytest.fixture
def build():
    """``build(overrides, images=..., device=...)`` -> an EnvStack closed after the test."""
    stacks = []

    def _build(*overrides: str, images: bool = True, device: InputDevice | None = None):
        stack = make_env(load_task(None, [SMALL, NO_DEVICE, *overrides]), device, images=images)
        stacks.append(stack)
        return stack

    yield _build
    for stack in stacks:
        stack.close()


@pytest.fixture
def world():
    w = SimWorld(image_size=(32, 32))
    yield w
    w.close()


def tcp(stack) -> np.ndarray:
    return stack.world.tcp_pose()


def step(stack, action):
    return stack.env.step(np.asarray(action, dtype=np.float32))


def rotation_angle(q1: np.ndarray, q2: np.ndarray) -> float:
    return float((Rotation.from_quat(q1).inv() * Rotation.from_quat(q2)).magnitude())


def assert_obs_in_space(obs, space, cameras):
    assert obs["state"].dtype == np.float32
    assert obs["state"].shape == space["state"].shape
    assert set(obs["images"]) == set(cameras)
    for name in cameras:
        img = obs["images"][name]
        assert img.dtype == np.uint8
        assert img.ndim == 3 and img.shape[2] == 3
        assert img.shape == space["images"][name].shape
    assert space.contains(obs)


# --- gymnasium conformance ------------------------------------------------------------------


def test_check_env_passes_on_the_sim_env_with_both_cameras(build):
    stack = build()
    env = stack.env.unwrapped
    assert isinstance(env, ManipulatorEnv)
    assert set(env.observation_space["images"].spaces) == {"front", "wrist"}
    check_env(env)


def test_check_env_passes_on_the_full_wrapped_stack(build):
    stack = build("env.relative_frame=true")
    check_env(stack.env, skip_render_check=True)


@pytest.mark.parametrize("relative", [False, True])
def test_observations_match_the_observation_space(build, relative):
    stack = build(f"env.relative_frame={str(relative).lower()}")
    space = stack.env.observation_space
    assert space["images"]["front"].shape == (32, 32, 3)
    assert space["images"]["wrist"].shape == (32, 32, 3)
    # tcp_pose 7 + tcp_vel 6 + gripper_width 1, the default state keys
    assert space["state"].shape == (14,)
    obs, info = stack.env.reset(seed=0)
    assert_obs_in_space(obs, space, ["front", "wrist"])
    assert isinstance(info, dict)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, reward, terminated, truncated, info = step(stack, rng.uniform(-1, 1, 4))
        assert_obs_in_space(obs, space, ["front", "wrist"])
        assert isinstance(reward, float)
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
        assert info["action"].dtype == np.float32
        assert stack.env.action_space.contains(info["action"])
    # the images are rendered scenes, not blank frames
    assert obs["images"]["front"].std() > 0
    assert obs["images"]["wrist"].std() > 0


def test_state_only_stack_has_no_images(build):
    stack = build(images=False)
    obs, _ = stack.env.reset(seed=0)
    assert obs["images"] == {}
    assert stack.env.observation_space.contains(obs)


# --- time limit -------------------------------------------------------------------------------


def test_time_limit_truncates_and_never_terminates(build):
    stack = build("env.max_episode_steps=6", images=False)
    for _episode in range(2):
        stack.env.reset(seed=0)
        flags = [step(stack, np.zeros(4))[2:4] for _ in range(6)]
        assert flags[:-1] == [(False, False)] * 5
        assert flags[-1] == (False, True)


# --- bad actions ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("relative", [False, True])
def test_non_finite_action_is_rejected_and_nothing_moves(build, bad, relative):
    stack = build(f"env.relative_frame={str(relative).lower()}", images=False)
    stack.env.reset(seed=0)
    step(stack, [1.0, 0.0, 0.0, 0.0])
    target = stack.world.target.copy()
    gripper = stack.world.gripper_command
    action = np.array([0.5, bad, 0.0, 1.0], np.float32)
    with pytest.raises(ValueError, match="not finite"):
        stack.env.step(action)
    np.testing.assert_array_equal(stack.world.target, target)
    assert stack.world.gripper_command == gripper
    # the env is still usable afterwards
    step(stack, np.zeros(4))


@pytest.mark.parametrize("shape", [(3,), (7,), (2, 2), ()])
def test_wrong_shaped_action_is_rejected(build, shape):
    stack = build(images=False)
    stack.env.reset(seed=0)
    target = stack.world.target.copy()
    with pytest.raises(ValueError, match=r"shape"):
        stack.env.step(np.zeros(shape, np.float32))
    np.testing.assert_array_equal(stack.world.target, target)


def test_rotation_actions_need_seven_entries(build):
    stack = build("env.rotation_actions=true", images=False)
    assert stack.env.action_space.shape == (7,)
    stack.env.reset(seed=0)
    with pytest.raises(ValueError, match="dxyz, drot, gripper"):
        stack.env.step(np.zeros(4, np.float32))


# --- cameras ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, dtype", [((16, 24, 3), np.uint8), ((32, 32), np.uint8), ((32, 32, 3), np.float32)])
def test_camera_with_wrong_frame_raises_camera_error_naming_it(world, shape, dtype):
    cfg = load_task(None, [SMALL]).env
    cameras = [SimCamera(world, "front"), WrongSizeCamera("wrist", shape, dtype)]
    env = ManipulatorEnv(SimArm(world), cameras, SimClock(world, cfg.hz), cfg, SimScene(world))
    with pytest.raises(CameraError, match="'wrist'"):
        env.reset(seed=0)


def test_sim_camera_with_unknown_name_raises(world):
    with pytest.raises(CameraError, match="'top'"):
        SimCamera(world, "top")


# --- motion -----------------------------------------------------------------------------------


def _displacement(stack, action, steps=5, seed=1):
    stack.env.reset(seed=seed)
    start = tcp(stack)[:3].copy()
    for _ in range(steps):
        step(stack, action)
    return tcp(stack)[:3] - start


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_actions_move_the_tcp_along_base_axes(build, axis, sign):
    stack = build("env.relative_frame=false", images=False)
    action = np.zeros(4)
    action[axis] = sign
    moved = _displacement(stack, action)
    # 5 steps at 2 cm per step commanded; tracking lags a little
    assert sign * moved[axis] > 0.04
    others = np.delete(moved, axis)
    assert np.all(np.abs(others) < 0.25 * abs(moved[axis]))


@pytest.mark.parametrize(
    "axis, world_direction",
    # reset orientation is roll = pi: EE x = world x, EE y = world -y, EE z = world -z
    [(0, [1, 0, 0]), (1, [0, -1, 0]), (2, [0, 0, -1])])
def test_actions_move_the_tcp_along_ee_axes_in_relative_frame(build, axis, world_direction):
    stack = build("env.relative_frame=true", images=False)
    action = np.zeros(4)
    action[axis] = 1.0
    moved = _displacement(stack, action)
    along = moved @ np.asarray(world_direction, float)
    assert along > 0.04
    assert np.linalg.norm(moved - along * np.asarray(world_direction)) < 0.25 * along


def test_orientation_is_held_without_rotation_actions(build):
    stack = build("env.relative_frame=false", images=False)
    stack.env.reset(seed=0)
    reset_orientation = stack.env.unwrapped.reset_pose[3:]
    for action in ([1, 1, 1, 0], [-1, 0, -1, 1], [0, -1, 1, -1]):
        for _ in range(4):
            step(stack, action)
        assert rotation_angle(tcp(stack)[3:], reset_orientation) < 0.05


def test_rotation_actions_rotate_the_tcp(build):
    stack = build("env.relative_frame=false", "env.rotation_actions=true", images=False)
    stack.env.reset(seed=0)
    start = Rotation.from_quat(tcp(stack)[3:])
    for _ in range(5):
        step(stack, [0, 0, 0, 0, 0, 1, 0])  # +yaw about the base z axis
    turned = (Rotation.from_quat(tcp(stack)[3:]) * start.inv()).as_rotvec()
    assert turned[2] > 0.15  # 5 steps of 0.1 rad commanded; tracking lags behind
    assert np.all(np.abs(turned[:2]) < 0.3 * turned[2])


def test_gripper_closes_opens_and_holds(build):
    stack = build(images=False)
    stack.env.reset(seed=0)
    env = stack.env.unwrapped

    def width_after(g, steps=2):
        for _ in range(steps):
            _, _, _, _, info = step(stack, [0, 0, 0, g])
        return stack.world.gripper_width(), info["gripper_closed"]

    open_width = stack.world.gripper_width()
    assert open_width > 1.5 * FINGER_MAX  # starts open
    closed_width, closed = width_after(1.0)
    assert closed and env.gripper_closed
    assert closed_width < 0.25 * open_width
    for hold in (0.0, 0.3, -0.3):  # between the thresholds: keep the gripper as it is
        width, closed = width_after(hold)
        assert closed and abs(width - closed_width) < 0.005
    reopened, closed = width_after(-1.0)
    assert not closed and reopened > 0.9 * open_width
    for hold in (0.0, 0.3, -0.3):
        width, closed = width_after(hold)
        assert not closed and abs(width - reopened) < 0.005


# --- RelativeFrame ----------------------------------------------------------------------------


def test_relative_frame_pose_starts_at_identity_and_follows_the_tcp(build):
    stack = build("env.relative_frame=true", images=False)
    slices = stack.env.unwrapped.state_slices
    obs, _ = stack.env.reset(seed=5)
    rel = obs["state"][slices["tcp_pose"]]
    np.testing.assert_allclose(rel[:3], 0.0, atol=1e-6)
    np.testing.assert_allclose(rel[3:], [0, 0, 0, 1], atol=1e-6)
    start = tcp(stack).copy()
    for _ in range(4):
        obs, *_ = step(stack, [0, 0, 1, 0])  # EE +z: down in the world
    rel = obs["state"][slices["tcp_pose"]].astype(np.float64)
    # the relative position is the world displacement expressed in the reset EE frame
    world_moved = tcp(stack)[:3] - start[:3]
    expected = Rotation.from_quat(start[3:]).inv().apply(world_moved)
    np.testing.assert_allclose(rel[:3], expected, atol=2e-4)
    assert rel[2] > 0.03 and world_moved[2] < -0.03
    # the absolute observation is not relative: compare with a stack without the wrapper
    base = build("env.relative_frame=false", images=False)
    base_obs, _ = base.env.reset(seed=5)
    np.testing.assert_allclose(base_obs["state"][slices["tcp_pose"]][:3], start[:3], atol=1e-6)


def test_relative_frame_reports_intervention_in_the_ee_frame(build):
    up = Command(twist=np.array([0.0, 0.0, 1.0, 0, 0, 0]))
    device = FixedDevice(up)
    stack = build("env.relative_frame=true", images=False, device=device)
    stack.env.reset(seed=0)
    z0 = tcp(stack)[2]
    for _ in range(3):
        _, _, _, _, info = step(stack, [0.3, -0.2, 0.5, 0.0])  # the policy, overridden
    assert info["intervened"]
    np.testing.assert_allclose(info["action"], [0, 0, -1, 0], atol=0.02)  # tracking error
    assert info["action"].dtype == np.float32
    assert tcp(stack)[2] - z0 > 0.03  # the device's base-frame +z moved the arm up


def test_relative_frame_round_trips_policy_actions(build):
    stack = build("env.relative_frame=true", images=False)
    stack.env.reset(seed=0)
    rng = np.random.default_rng(1)
    for _ in range(4):
        action = rng.uniform(-1, 1, 4).astype(np.float32)
        _, _, _, _, info = stack.env.step(action)
        assert not info["intervened"]
        np.testing.assert_allclose(info["action"], action, atol=1e-5)


# --- InterventionWrapper ----------------------------------------------------------------------


@pytest.mark.parametrize("relative", [False, True])
def test_info_action_is_the_applied_action_inside_the_action_space(build, relative):
    stack = build(f"env.relative_frame={str(relative).lower()}", images=False)
    stack.env.reset(seed=0)
    x0 = tcp(stack)[0]
    ee = Rotation.from_quat(tcp(stack)[3:]) if relative else Rotation.identity()
    asked = np.array([3.0, 0.0, -0.5])  # out of range: the env clips, in the base frame
    _, _, _, _, info = step(stack, [*asked, 2.0])
    assert stack.env.action_space.contains(info["action"])
    applied = ee.inv().apply(np.clip(ee.apply(asked), -1.0, 1.0))
    np.testing.assert_allclose(info["action"], [*applied, 1.0], atol=1e-4)
    np.testing.assert_allclose(info["action"], [1.0, 0.0, -0.5, 1.0], atol=0.1)
    # the arm moved by one full-scale step, not three
    for _ in range(3):
        step(stack, np.zeros(4))
    assert 0.01 < tcp(stack)[0] - x0 < 0.03


def test_null_device_lets_the_policy_act(build):
    stack = build("env.relative_frame=false", images=False)
    assert isinstance(stack.device, NullDevice)
    stack.env.reset(seed=0)
    x0 = tcp(stack)[0]
    action = np.array([-1.0, 0.25, 0.0, 1.0], np.float32)
    for _ in range(3):
        _, _, _, _, info = stack.env.step(action)
        assert info["intervened"] is False
        np.testing.assert_array_equal(info["action"], action)
    assert tcp(stack)[0] - x0 < -0.03
    assert stack.env.unwrapped.gripper_closed


def test_device_command_replaces_the_policy_action(build):
    device = FixedDevice(Command(twist=np.array([1.0, 0, 0, 0, 0, 0]),
                                 buttons=frozenset({Button.GRIPPER_CLOSE})))
    stack = build("env.relative_frame=false", images=False, device=device)
    intervention = stack.env.get_wrapper_attr("episode_interventions")
    assert intervention == 0
    stack.env.reset(seed=0)
    x0 = tcp(stack)[0]
    for _ in range(3):
        _, _, _, _, info = step(stack, [-1.0, 0.0, 0.0, -1.0])  # the policy says the opposite
        assert info["intervened"] is True
        np.testing.assert_array_equal(info["action"], [1.0, 0, 0, 1.0])
    assert tcp(stack)[0] - x0 > 0.03
    assert stack.env.unwrapped.gripper_closed
    assert stack.env.get_wrapper_attr("episode_interventions") == 3
    # hands off: the policy acts again and the count stops
    device.command = Command(twist=np.array([0.01, 0, 0, 0, 0, 0]))  # inside the deadzone
    _, _, _, _, info = step(stack, [0.0, 0.0, 0.0, -1.0])
    assert info["intervened"] is False
    assert not stack.env.unwrapped.gripper_closed
    assert stack.env.get_wrapper_attr("episode_interventions") == 3
    stack.env.reset(seed=0)
    assert stack.env.get_wrapper_attr("episode_interventions") == 0


def test_intervene_button_alone_takes_control(build):
    device = FixedDevice(Command(buttons=frozenset({Button.INTERVENE})))
    stack = build("env.relative_frame=false", images=False, device=device)
    stack.env.reset(seed=0)
    _, _, _, _, info = step(stack, [1.0, 1.0, 1.0, 1.0])
    assert info["intervened"] is True
    np.testing.assert_array_equal(info["action"], np.zeros(4))
    assert not stack.env.unwrapped.gripper_closed


def test_estop_raises_and_holds_the_arm(build):
    device = FixedDevice()
    stack = build(images=False, device=device)
    stack.env.reset(seed=0)
    for _ in range(2):
        step(stack, [1.0, 1.0, 1.0, 0.0])  # moving: the target runs ahead of the tcp
    assert np.linalg.norm(stack.world.target[:3] - tcp(stack)[:3]) > 0.005
    device.command = Command(buttons=frozenset({Button.ESTOP}))
    with pytest.raises(EmergencyStop):
        step(stack, [1.0, 1.0, 1.0, 1.0])
    now = tcp(stack)
    np.testing.assert_allclose(stack.world.target[:3], now[:3], atol=1e-9)
    assert rotation_angle(stack.world.target[3:], now[3:]) < 1e-9
    assert not stack.env.unwrapped.gripper_closed  # the policy's close was not applied


def test_intervention_wrapper_closes_its_device(world):
    class ClosingDevice(FixedDevice):
        closed = False

        def close(self):
            self.closed = True

    cfg = load_task(None, [SMALL]).env
    env = ManipulatorEnv(SimArm(world), [], SimClock(world, cfg.hz), cfg, SimScene(world))
    device = ClosingDevice()
    InterventionWrapper(env, device).close()
    assert device.closed


# --- GripperPenalty ---------------------------------------------------------------------------


def test_grasp_penalty_only_on_gripper_toggles(build):
    stack = build("env.gripper_penalty=0.25", images=False)
    stack.env.reset(seed=0)
    grippers = [0.0, 1.0, 1.0, 0.2, -1.0, -0.6, -1.0, 0.7, 1.0, 0.0, -0.5, 0.0]
    # open at reset; >= 0.5 closes, <= -0.5 opens (the documented thresholds)
    toggles = [False, True, False, False, True, False, False, True, False, False, True, False]
    penalties, states = [], []
    for g in grippers:
        _, _, _, _, info = step(stack, [0.0, 0.0, 0.0, g])
        penalties.append(info["grasp_penalty"])
        states.append(info["gripper_closed"])
    assert penalties == [-0.25 if t else 0.0 for t in toggles]
    changed = [states[0]] + [a != b for a, b in zip(states, states[1:], strict=False)]
    assert changed == toggles


def test_grasp_penalty_counts_device_toggles_too(build):
    device = FixedDevice(Command(buttons=frozenset({Button.GRIPPER_CLOSE})))
    stack = build("env.gripper_penalty=-2", images=False, device=device)
    stack.env.reset(seed=0)
    penalties = [step(stack, [0, 0, 0, -1.0])[4]["grasp_penalty"] for _ in range(3)]
    assert penalties == [-2.0, 0.0, 0.0]


# --- ImageCropResize --------------------------------------------------------------------------


def test_crop_and_resize_shapes(build):
    stack = build(
        "env.cameras=[{name: front, crop: [4, 2, 28, 30]}, {name: wrist, size: [16, 20]}]")
    space = stack.env.observation_space["images"]
    assert space["front"].shape == (28, 24, 3)
    assert space["wrist"].shape == (16, 20, 3)
    obs, _ = stack.env.reset(seed=0)
    assert_obs_in_space(obs, stack.env.observation_space, ["front", "wrist"])
    # the crop is the (x0, y0, x1, y1) box of the raw frame
    raw = stack.env.unwrapped._last_images["front"]
    assert raw.shape == (32, 32, 3)
    np.testing.assert_array_equal(obs["images"]["front"], raw[2:30, 4:28])
    obs, *_ = step(stack, [0.0, 0.0, 0.0, 0.0])
    assert_obs_in_space(obs, stack.env.observation_space, ["front", "wrist"])


def test_crop_plus_resize(build):
    stack = build("env.cameras=[{name: front, crop: [0, 0, 16, 32], size: [8, 8]}]")
    assert stack.env.observation_space["images"]["front"].shape == (8, 8, 3)
    obs, _ = stack.env.reset(seed=0)
    assert obs["images"]["front"].shape == (8, 8, 3)
    assert obs["images"]["front"].flags["C_CONTIGUOUS"]
    assert stack.env.observation_space.contains(obs)
    check_env(stack.env, skip_render_check=True)


@pytest.mark.parametrize("crop", [[0, 0, 33, 10], [0, 0, 10, 40], [20, 20, 64, 64]])
def test_crop_outside_the_frame_raises(world, crop):
    cfg = load_task(None, [SMALL]).env
    env = ManipulatorEnv(SimArm(world), [SimCamera(world, "front")], SimClock(world, cfg.hz),
                         cfg, SimScene(world))
    spec = load_task(None, [f"env.cameras=[{{name: front, crop: {crop}}}]"]).env.cameras
    with pytest.raises(ValueError, match="outside"):
        ImageCropResize(env, spec)


# --- determinism --------------------------------------------------------------------------------


def _rollout(stack, seed):
    obs, _ = stack.env.reset(seed=seed)
    cube = stack.world.object_position()
    states, images = [obs["state"]], [obs["images"]["front"]]
    for action in ([0.5, -0.3, 0.2, 1.0], [-1.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -1.0]):
        obs, *_ = step(stack, action)
        states.append(obs["state"])
        images.append(obs["images"]["front"])
    return cube, np.array(states), np.array(images)


def test_same_seed_same_episode(build):
    stack = build()
    cube1, states1, images1 = _rollout(stack, 7)
    _rollout(stack, 8)  # something different in between
    cube2, states2, images2 = _rollout(stack, 7)
    np.testing.assert_array_equal(cube1, cube2)
    np.testing.assert_array_equal(states1, states2)
    np.testing.assert_array_equal(images1, images2)
    # a fresh env with the same seed too
    cube3, states3, images3 = _rollout(build(), 7)
    np.testing.assert_array_equal(cube1, cube3)
    np.testing.assert_array_equal(states1, states3)
    np.testing.assert_array_equal(images1, images3)


def test_different_seeds_different_cube_positions(build):
    stack = build(images=False)
    cubes = []
    for seed in range(6):
        stack.env.reset(seed=seed)
        cubes.append(stack.world.object_position())
    cubes = np.array(cubes)
    assert len({tuple(c) for c in cubes.round(6)}) == len(cubes)
    cfg = SimSettings().task_settings("pick_cube")  # the default task sets no env.sim
    assert np.all((cubes[:, 0] >= cfg.cube_x[0]) & (cubes[:, 0] <= cfg.cube_x[1]))
    assert np.all((cubes[:, 1] >= cfg.cube_y[0]) & (cubes[:, 1] <= cfg.cube_y[1]))


def test_reset_starts_inside_the_workspace_near_the_reset_pose(build):
    stack = build(images=False)
    env = stack.env.unwrapped
    box = WorkspaceBox(env.config.workspace)
    for seed in range(3):
        stack.env.reset(seed=seed)
        now = tcp(stack)
        assert box.contains(now, tol=0.005)
        assert np.all(np.abs(now[:2] - env.reset_pose[:2]) < env.config.reset_noise + 0.006)
        assert abs(now[2] - env.reset_pose[2]) < 0.006


# --- config errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ("env:\n  hz: 10\n  cammeras: []\n", "env.cammeras"),
        ("env:\n  workspace:\n    hihg: [1, 1, 1]\n", "env.workspace.hihg"),
        ("env:\n  max_episode_steps: ten\n", "env.max_episode_steps"),
        ("env:\n  max_episode_steps: true\n", "env.max_episode_steps"),
        ("env:\n  image_size: [32, 32, 3]\n", "env.image_size"),
        ("env:\n  relative_frame: 1\n", "env.relative_frame"),
        ("env:\n  cameras:\n    - name: front\n    - {name: wrist, size: [0, 8]}\n",
         "env.cameras[1]"),
        ("env:\n  workspace:\n    low: [0.8, 0, 0]\n", "env.workspace"),
        ("env:\n  hz: 0\n", "env"),
        ("env:\n  state_keys: [tcp_pose, torque]\n", "env"),
    ],
)
def test_bad_task_file_names_the_key(tmp_path, text, key):
    path = tmp_path / "task.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_task(path)
    message = str(err.value)
    assert message.startswith(f"{key}:") or f" {key}:" in message, message
    assert str(path) in message


@pytest.mark.parametrize(
    "text, key",
    [
        ("device:\n  expert:\n    nosie: 0.1\n", "device.expert.nosie"),
        ("device:\n  kind: joystick\n", "device.kind"),
        ("env:\n  cameras:\n    - name: front\n      szie: [8, 8]\n", "env.cameras[0].szie"),
        ("env:\n  sim:\n    jiter: true\n", "env.sim.jiter"),
        ("env:\n  franka:\n    host: 3\n", "env.franka.host"),
    ],
)
def test_bad_hardware_settings_name_the_key_when_the_env_is_built(tmp_path, text, key):
    """The core loads hardware settings as plain mappings; their drivers' dataclasses check
    them before anything is opened."""
    path = tmp_path / "task.yaml"
    path.write_text(text)
    task = load_task(path)
    with pytest.raises(ConfigError) as err:
        make_env(task, images=False)
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_good_task_file_loads(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("name: t\nenv:\n  hz: 20\n  image_size: [32, 32]\n"
                    "  cameras: [{name: front, size: [16, 16]}]\n")
    task = load_task(path, ["env.max_episode_steps=7"])
    assert task.name == "t"
    assert task.env.hz == 20.0 and isinstance(task.env.hz, float)
    assert task.env.image_size == (32, 32)
    assert task.env.cameras[0].size == (16, 16)
    assert task.env.max_episode_steps == 7
