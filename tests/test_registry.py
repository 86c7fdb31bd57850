"""Hardware that plugs in: a toy arm, camera and input device registered from this file alone
drive the real env stack (ManipulatorEnv + wrappers, built by make_env), and bad settings or
kinds are refused with the dotted key."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from actor.env_factory import make_env
from hilrl.config import CameraConfig, TaskConfig, load_task
from hilrl.config.io import ConfigError
from hilrl.interfaces import Button, Camera, Clock, Command, InputDevice, RobotDriver, RobotState
from robot_drivers.registry import (
    ARMS,
    CAMERAS,
    DEVICES,
    Rig,
    register_arm,
    register_camera,
    register_device,
    resolve,
)

# --- the toys: each a driver, its settings dataclass and a factory ----------------------------


@dataclass(frozen=True)
class ToyArmSettings:
    gripper_max_width: float = 0.08

    def __post_init__(self) -> None:
        if self.gripper_max_width <= 0:
            raise ValueError(f"gripper_max_width must be > 0, got {self.gripper_max_width}")


class ToyArm(RobotDriver):
    """Reaches every target at once, and remembers every command it got."""

    def __init__(self, settings: ToyArmSettings) -> None:
        self.settings = settings
        self.pose = np.array([0.5, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0])
        self.targets: list[np.ndarray] = []
        self.grips: list[float] = []
        self.connected = self.closed = False

    def connect(self) -> None:
        self.connected = True

    def state(self) -> RobotState:
        width = self.settings.gripper_max_width * (1.0 - (self.grips[-1] if self.grips else 0.0))
        return RobotState(tcp_pose=self.pose.copy(), tcp_vel=np.zeros(6), gripper_width=width)

    def move_to(self, pose: np.ndarray) -> None:
        self.pose = np.asarray(pose, dtype=np.float64).copy()
        self.targets.append(self.pose.copy())

    def gripper(self, command: float) -> None:
        self.grips.append(float(command))

    def home(self) -> None:
        pass

    def recover(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class ToyClock(Clock):
    def __init__(self) -> None:
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1


def make_toy_rig(task: TaskConfig, settings: ToyArmSettings, *, seed: int) -> Rig:
    return Rig(ToyArm(settings), clock=ToyClock())


@dataclass(frozen=True)
class ToyCameraSettings:
    shade: int = 0  # every pixel's value


class ToyCamera(Camera):
    def __init__(self, name: str, size: tuple[int, int], shade: int) -> None:
        self.name = name
        self.frame = np.full((*size, 3), shade, np.uint8)

    def read(self) -> np.ndarray:
        return self.frame


def make_toy_camera(task: TaskConfig, settings: ToyCameraSettings, *,
                    camera: CameraConfig) -> Camera:
    return ToyCamera(camera.name, task.env.image_size, settings.shade)


@dataclass(frozen=True)
class ToyDeviceSettings:
    every: int = 3  # steer on every n-th read, hands off in between
    push: float = 0.8  # +x twist while steering


class ToyDevice(InputDevice):
    def __init__(self, settings: ToyDeviceSettings) -> None:
        self.settings = settings
        self.reads = 0
        self.closed = False

    def read(self) -> Command:
        self.reads += 1
        if self.reads % self.settings.every:
            return Command()
        twist = np.array([self.settings.push, 0, 0, 0, 0, 0], dtype=np.float64)
        return Command(twist, frozenset({Button.GRIPPER_CLOSE}))

    def close(self) -> None:
        self.closed = True


def make_toy_device(task: TaskConfig, settings: ToyDeviceSettings, *, world: object,
                    env: object, seed: int) -> InputDevice:
    return ToyDevice(settings)


@pytest.fixture
def toys() -> Iterator[None]:
    """The toys registered for one test; the registry is as it was afterwards."""
    undo = [register_arm("toy", make_toy_rig, settings=ToyArmSettings),
            register_camera("toy", make_toy_camera, settings=ToyCameraSettings),
            register_device("toy", make_toy_device, settings=ToyDeviceSettings)]
    yield
    for u in undo:
        u()
    assert "toy" not in ARMS.kinds() + CAMERAS.kinds() + DEVICES.kinds()


TOY = ["env.robot=toy", "device.kind=toy", "env.reward=none", "env.relative_frame=false",
       "env.reset_noise=0", "env.image_size=[8,8]", "env.max_episode_steps=12",
       "env.cameras=[{name: front, driver: toy, shade: 7}]"]


# --- a whole episode on the toys ---------------------------------------------------------------


def test_toy_arm_and_device_run_an_episode_with_interventions(toys):
    task = load_task(None, [*TOY, "env.toy.gripper_max_width=0.05", "device.toy.every=3"])
    stack = make_env(task)
    arm = stack.env.unwrapped.driver.inner  # inside the safety wrapper
    assert isinstance(arm, ToyArm) and arm.connected
    assert arm.settings.gripper_max_width == 0.05
    assert isinstance(stack.device, ToyDevice)

    obs, _ = stack.env.reset(seed=0)
    assert (obs["images"]["front"] == 7).all()  # the toy camera, with its own setting
    after_reset = len(arm.targets)
    intervened, applied = [], []
    truncated = False
    while not truncated:
        x_before = arm.pose[0]
        obs, _, terminated, truncated, info = stack.env.step(np.zeros(4, np.float32))
        assert not terminated
        intervened.append(info["intervened"])
        applied.append(arm.pose[0] - x_before)
        if info["intervened"]:
            np.testing.assert_allclose(info["action"], [0.8, 0, 0, 1], atol=1e-6)
    steps = task.env.max_episode_steps
    assert intervened == [(t + 1) % 3 == 0 for t in range(steps)]
    # The device's push reached the toy arm on exactly those steps, scaled to metres.
    expected = [0.8 * task.env.max_translation if i else 0.0 for i in intervened]
    np.testing.assert_allclose(applied, expected, atol=1e-9)
    assert len(arm.targets) - after_reset == steps
    assert 1.0 in arm.grips  # the device's gripper button closed the toy gripper
    assert obs["state"][7 + 6] == pytest.approx(0.0)  # gripper_width: closed
    assert stack.env.unwrapped.clock.ticks >= steps
    assert stack.device.reads == steps
    stack.close()
    assert arm.closed and stack.device.closed


def test_the_toy_cameras_reopen_by_their_driver(toys):
    stack = make_env(load_task(None, TOY))
    first = stack.env.unwrapped.cameras[0]
    stack.reopen_cameras()
    again = stack.env.unwrapped.cameras[0]
    assert isinstance(again, ToyCamera) and again is not first
    stack.close()


# --- refused with the dotted key -----------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("env.toy.gripper_max_widht=0.1",
     "env.toy.gripper_max_widht: unknown key; known keys: gripper_max_width "
     "(did you mean 'gripper_max_width'?)"),
    ("device.toy.evry=2", "device.toy.evry: unknown key; known keys: every, push "
                          "(did you mean 'every'?)"),
    ("env.cameras=[{name: front, driver: toy, shdae: 7}]",
     "env.cameras[0].shdae: unknown key"),
])
def test_unknown_settings_key_names_the_dotted_key_and_suggests(toys, override, message):
    task = load_task(None, [*TOY, override])
    with pytest.raises(ConfigError) as err:
        make_env(task)
    assert str(err.value).startswith(message), str(err.value)
    if "shdae" in override:
        assert "did you mean 'shade'?" in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("env.toy.gripper_max_width=wide",
     "env.toy.gripper_max_width: expected float, got 'wide' (str)"),
    ("device.toy.every=true", "device.toy.every: expected int, got True (bool)"),
    ("device.toy=3", "device.toy: unknown key"),  # a section must be a mapping
    ("env.toy.gripper_max_width=-1", "env.toy: gripper_max_width must be > 0"),
])
def test_wrong_type_or_value_is_refused(toys, override, message):
    with pytest.raises(ConfigError) as err:
        make_env(load_task(None, [*TOY, override]))
    assert str(err.value).startswith(message), str(err.value)


def test_unknown_kind_lists_the_registered_ones(toys):
    cases = [("env.robot=tyo", "env.robot: unknown robot 'tyo'; registered: franka, gymnasium, "
                               "hilserl_http, sim, toy (did you mean 'toy'?)"),
             ("device.kind=tyo", "device.kind: unknown input device 'tyo'; registered: gamepad, "
                                 "keyboard, none, plugin, scripted, spacemouse, toy"),
             ("env.cameras=[{name: a, driver: webcam}]",
              "env.cameras[0].driver: unknown camera driver 'webcam'; registered: opencv, "
              "realsense, toy"),
             ("env.tyo.speed=1", "env.tyo: unknown key; neither a key of env nor the settings "
                                 "of a registered robot (franka, hilserl_http, sim, toy)")]
    for override, message in cases:
        with pytest.raises(ConfigError) as err:
            make_env(load_task(None, [*TOY, override]))
        assert str(err.value).startswith(message), str(err.value)


def test_sections_of_other_kinds_are_checked_too(toys):
    """A typo in the franka section of a task run on another arm is caught now, not on the
    robot day."""
    with pytest.raises(ConfigError, match=r"^env\.franka\.hots: unknown key.*did you mean 'host'"):
        make_env(load_task(None, [*TOY, "env.franka.hots=robot"]))


def test_needs_of_the_sim_are_refused_on_an_arm_without_them(toys):
    with pytest.raises(ValueError, match="env.reward=sim_success needs the simulated robot"):
        make_env(load_task(None, [*TOY, "env.reward=sim_success"]))
    with pytest.raises(ValueError, match="device.kind=scripted needs the simulated robot"):
        make_env(load_task(None, [*TOY, "device.kind=scripted"]))


def test_registering_a_kind_twice_is_refused_unless_replaced(toys):
    with pytest.raises(ValueError, match="already registered"):
        register_arm("toy", make_toy_rig)
    undo = register_arm("toy", make_toy_rig, settings=ToyDeviceSettings, replace=True)
    assert ARMS.entries["toy"].settings is ToyDeviceSettings
    undo()
    assert ARMS.entries["toy"].settings is ToyArmSettings
    # Two devices cannot read one settings section.
    with pytest.raises(ValueError, match="section 'expert' is already 'scripted''s"):
        register_device("oracle", make_toy_device, section="expert")
    assert "oracle" not in DEVICES.kinds()


# --- the built-in kinds --------------------------------------------------------------------------


def test_sim_settings_reach_the_world_and_keep_their_yaml_surface():
    task = load_task(None, ["env.sim.lift_height=0.08", "env.sim.cube_x=[0.45, 0.5]",
                            "device.kind=none", "env.image_size=[32,32]"])
    parts = resolve(task)
    cube = parts.arm.settings.task_settings("pick_cube")
    assert cube.lift_height == 0.08 and cube.cube_x == (0.45, 0.5)
    stack = make_env(task, images=False)
    assert stack.world.config.task_settings("pick_cube").lift_height == 0.08
    assert stack.world.image_size == (32, 32)
    stack.env.reset(seed=0)
    assert 0.45 <= stack.world.object_position()[0] <= 0.5
    stack.close()


def test_hardware_sections_load_and_convert_with_their_drivers_settings():
    task = load_task("tasks/franka_template.yaml", ["device.gamepad.index=1",
                                                    "device.expert.takeover=never"])
    parts = resolve(task)
    assert parts.arm.settings.host == "172.16.0.2" and parts.arm.settings.realtime is True
    assert [type(c.settings).__name__ for c in parts.cameras] == ["RealSenseSettings",
                                                                 "OpenCVSettings"]
    assert parts.cameras[0].settings.source == "123456789012"
    assert parts.cameras[1].settings.source == "/dev/video0"
    assert type(parts.device.settings).__name__ == "SpaceMouseSettings"


def test_the_old_gamepad_index_key_says_where_it_moved():
    with pytest.raises(ConfigError, match=r"device\.gamepad_index: moved.*device\.gamepad\.index"):
        load_task(None, ["device.gamepad_index=1"])


def test_importing_the_registry_imports_no_driver():
    code = ("import sys, robot_drivers.registry, actor.env_factory;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('mujoco', 'franky', 'hid', "
            "'pygame', 'pyrealsense2') or m in ('robot_drivers.franka', "
            "'robot_drivers.sim.world', 'robot_drivers.devices.spacemouse')];"
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
