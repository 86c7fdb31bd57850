"""Builds the env stack a task file describes: driver, cameras, clock, device, wrappers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
from gymnasium.wrappers import TimeLimit

from hilrl.config import TaskConfig
from hilrl.envs.gym_adapter import make_gym_env
from hilrl.envs.manipulator import ManipulatorEnv
from hilrl.envs.wrappers import (
    EncoderFeatures,
    GripperPenalty,
    ImageCropResize,
    InterventionWrapper,
    RelativeFrame,
    SuccessReward,
)
from hilrl.interfaces import Camera, InputDevice, NullDevice, RobotDriver


@dataclass
class EnvStack:
    env: gym.Env  # the outermost wrapper; what the actor loop steps
    device: InputDevice
    world: object | None = None  # the SimWorld, when the robot is simulated
    open_cameras: Callable[[], list[Camera]] | None = None  # real cameras: open them anew

    def reopen_cameras(self) -> None:
        """Close the env's cameras and open them again (after one froze or was unplugged);
        a no-op for rendered cameras. Raises CameraError while they cannot be opened."""
        if self.open_cameras is None:
            return
        robot_env = self.env.unwrapped
        for camera in robot_env.cameras:
            camera.close()
        robot_env.cameras = self.open_cameras()

    def hold(self) -> None:
        """Stop the robot where it is: the first ``hold`` found walking in from the outermost
        wrapper (GymAdapter's, or the robot env's); nothing when no layer has one."""
        layer: object | None = self.env
        while layer is not None:
            hold = getattr(layer, "hold", None)
            if callable(hold):
                hold()
                return
            layer = getattr(layer, "env", None)

    def set_interventions(self, enabled: bool) -> None:
        """Let the device steer (training) or only e-stop (evaluation, scripted episodes)."""
        env = self.env
        while env is not None:
            if isinstance(env, InterventionWrapper):
                env.enabled = enabled
                return
            env = getattr(env, "env", None)

    def close(self) -> None:
        self.env.close()  # closes the device (InterventionWrapper) and the driver
        if self.world is not None:
            self.world.close()


def make_env(task: TaskConfig, device: InputDevice | None = None, *,
             images: bool = True, seed: int | None = None, features: bool = True) -> EnvStack:
    """The env for ``task``; ``device`` overrides the configured one, ``images=False`` drops
    the cameras (state-only runs and tests). ``features=False`` leaves out the frozen
    encoder's features (``env.frozen_encoder``): demos record what the robot saw, so they
    can pretrain an encoder and serve every encoder after it."""
    cfg = task.env
    seed = task.seed if seed is None else seed
    if not (images and features) and cfg.frozen_encoder:
        task = dataclasses.replace(task, env=dataclasses.replace(cfg, frozen_encoder=""))
    if cfg.robot == "gymnasium":
        return _make_gym_stack(task, device, images=images, seed=seed)
    if cfg.robot != "sim":
        return _make_robot_stack(task, device, images=images, seed=seed)

    from robot_drivers.sim.drivers import SimArm, SimCamera, SimClock, SimScene
    from robot_drivers.sim.world import SimConfig, SimWorld

    h, w = cfg.image_size
    world = SimWorld(SimConfig(
        render_width=w, render_height=h, physics_dt=cfg.sim.physics_dt,
        cube_x=cfg.sim.cube_x, cube_y=cfg.sim.cube_y, lift_height=cfg.sim.lift_height,
        jitter=cfg.sim.jitter))
    cameras = [SimCamera(world, c.name) for c in cfg.cameras] if images else []
    env: gym.Env = ManipulatorEnv(
        SimArm(world), cameras, SimClock(world, cfg.hz, cfg.realtime), cfg, scene=SimScene(world))
    if cfg.reward == "sim_success":
        env = SuccessReward(env)
    if device is None:
        device = make_device(task, world, seed)
    return EnvStack(_wrap(env, task, device, images), device, world)


def _wrap(env: gym.Env, task: TaskConfig, device: InputDevice, images: bool) -> gym.Env:
    """The wrappers every robot gets, simulated or real, in the same order."""
    cfg = task.env
    env = InterventionWrapper(env, device, task.device.deadzone)
    env = GripperPenalty(env, cfg.gripper_penalty)
    if cfg.relative_frame:
        env = RelativeFrame(env)
    if images:
        env = ImageCropResize(env, cfg.cameras)
    if cfg.reward == "classifier":
        env = classifier_reward(env, task, images)
    if cfg.frozen_encoder:
        from hilrl.learning.pretrain import FrozenEncoder

        env = EncoderFeatures(env, FrozenEncoder(cfg.frozen_encoder))
    return TimeLimit(env, cfg.max_episode_steps)


def _make_robot_stack(task: TaskConfig, device: InputDevice | None, *, images: bool,
                      seed: int) -> EnvStack:
    """A real arm (or a protocol-level simulator of one), real cameras, the wall clock."""
    from robot_drivers.clock import WallClock

    cfg = task.env
    if cfg.reward == "sim_success":
        raise ValueError(f"env.reward=sim_success needs the simulated robot; with "
                         f"env.robot={cfg.robot} use env.reward: classifier (hilrl "
                         f"train-classifier) or none (the device's success button)")
    if device is None:
        if task.device.kind == "scripted":
            raise ValueError(f"device.kind=scripted needs the simulated robot; with "
                             f"env.robot={cfg.robot} use spacemouse, gamepad, keyboard or none")
        device = make_device(task, None, seed)
    cameras = make_cameras(task) if images else []
    try:
        env = ManipulatorEnv(make_driver(task), cameras, WallClock(cfg.hz), cfg)
    except BaseException:
        for camera in cameras:
            camera.close()
        device.close()
        raise
    return EnvStack(_wrap(env, task, device, images), device, world=None,
                    open_cameras=(lambda: make_cameras(task)) if images else None)


def make_driver(task: TaskConfig) -> RobotDriver:
    """The arm driver of ``task.env.robot`` (not connected yet: ManipulatorEnv connects it)."""
    cfg = task.env
    if cfg.robot == "franka":
        from robot_drivers.franka import FrankaDriver

        f = cfg.franka
        return FrankaDriver(f.host, realtime=f.realtime, dynamics_factor=f.dynamics_factor,
                            home_joints=f.home_joints, gripper_speed=f.gripper_speed,
                            gripper_force=f.gripper_force, gripper_max_width=f.gripper_max_width)
    if cfg.robot == "hilserl_http":
        from robot_drivers.hilserl_http import HilSerlHttpDriver

        h = cfg.hilserl_http
        return HilSerlHttpDriver(h.url, timeout=h.timeout, state_hz=h.state_hz,
                                 params=h.params or None)
    raise ValueError(f"env.robot={cfg.robot!r} has no hardware driver")


def make_cameras(task: TaskConfig) -> list[Camera]:
    """Open every camera of ``task.env.cameras``; on a failure, close the ones already open."""
    cameras: list[Camera] = []
    try:
        for c in task.env.cameras:
            if c.driver == "realsense":
                from robot_drivers.cameras.realsense import RealSenseCamera as kind
            else:
                from robot_drivers.cameras.opencv import OpenCVCamera as kind
            cameras.append(kind(c.name, c.source, size=task.env.image_size, fps=c.fps,
                                exposure=c.exposure, stale_after=c.stale_after))
    except BaseException:
        for camera in cameras:
            camera.close()
        raise
    return cameras


def _make_gym_stack(task: TaskConfig, device: InputDevice | None, *, images: bool,
                    seed: int) -> EnvStack:
    settings = task.env.gymnasium
    if not images:
        settings = dataclasses.replace(settings, image_keys={})
    if device is None:
        if task.device.kind == "scripted":
            raise ValueError("device.kind=scripted needs the simulated robot; use device.kind=none "
                             "with a gymnasium env")
        device = make_device(task, None, seed)
    env = make_gym_env(settings, task.env.max_episode_steps, seed)
    return EnvStack(env, device, world=None)


def make_device(task: TaskConfig, world: object | None, seed: int = 0) -> InputDevice:
    d = task.device
    kind = d.kind
    if kind == "none":
        return NullDevice()
    mapping = {"axes": d.axes, "scale": d.scale}
    if kind == "keyboard":
        from robot_drivers.devices.keyboard import KeyboardDevice

        return KeyboardDevice(rotation=task.env.rotation_actions, **mapping)
    if kind == "spacemouse":
        from robot_drivers.devices.spacemouse import SpaceMouseDevice

        s = d.spacemouse
        return SpaceMouseDevice(buttons=d.buttons or None, path=s.path, vendor_id=s.vendor_id,
                                product_id=s.product_id, **mapping)
    if kind == "gamepad":
        from robot_drivers.devices.gamepad import GamepadDevice

        return GamepadDevice(buttons=d.buttons or None, index=d.gamepad_index, **mapping)
    if world is None:
        raise ValueError("device.kind=scripted needs the simulated robot (env.robot=sim)")
    from robot_drivers.devices.scripted import ScriptedExpert

    return ScriptedExpert(world, d.expert, seed=seed)


def classifier_reward(env: gym.Env, task: TaskConfig, images: bool) -> gym.Env:
    """Wrap ``env`` with the learned reward of ``task.env.classifier``."""
    from hilrl.envs.classifier_reward import ClassifierReward
    from hilrl.learning.classifier import ClassifierError, RewardClassifier

    if not images:
        raise ClassifierError("env.reward=classifier needs the cameras; this env was built "
                              "without images")
    settings = task.env.classifier
    return ClassifierReward(env, RewardClassifier.load(settings.path), settings,
                            task.env.cameras, env.unwrapped.state_slices)
