"""Builds the env stack a task file describes: arm, cameras, clock, device (the kinds
registered in robot_drivers.registry), then the wrappers every robot gets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit

from hilrl.config import ConfigError, TaskConfig
from hilrl.envs.classifier_reward import ClassifierReward
from hilrl.envs.gym_adapter import make_gym_adapter
from hilrl.envs.manipulator import ManipulatorEnv
from hilrl.envs.wrappers import (
    EncoderFeatures,
    GripperPenalty,
    ImageCropResize,
    InterventionWrapper,
    Paced,
    RelativeFrame,
    SuccessReward,
    hold,
)
from hilrl.interfaces import Camera, InputDevice
from robot_drivers.clock import WallClock
from robot_drivers.registry import Part, Rig, resolve

W = TypeVar("W", bound=gym.Wrapper)


@dataclass
class EnvStack:
    env: gym.Env  # the outermost wrapper; what the actor loop steps
    device: InputDevice
    world: object | None = None  # the SimWorld, when the robot is simulated
    open_cameras: Callable[[], list[Camera]] | None = None  # real cameras: open them anew
    # The env keeps its own time (a simulation, a gymnasium env): nothing moves between steps,
    # so a loop that feeds no learner need not be paced to the wall clock.
    simulated: bool = False

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
        """Stop the robot where it is (see ``hilrl.envs.wrappers.hold``)."""
        hold(self.env)

    def set_interventions(self, enabled: bool) -> None:
        """Let the device steer (training) or only e-stop (evaluation, scripted episodes)."""
        self.intervention_wrapper().enabled = enabled

    def intervention_wrapper(self) -> InterventionWrapper:
        """The wrapper that reads the device (every stack has one)."""
        wrapper = self._wrapper(InterventionWrapper)
        if wrapper is None:
            raise RuntimeError("this env stack has no InterventionWrapper (make_env adds one)")
        return wrapper

    def reward_classifier(self) -> ClassifierReward | None:
        """The learned reward's wrapper (env.reward=classifier), or None."""
        return self._wrapper(ClassifierReward)

    def camera_frames(self) -> dict[str, np.ndarray]:
        """The latest frames as rendered of the cameras the task crops or resizes."""
        crop = self._wrapper(ImageCropResize)
        return crop.frames if crop is not None else {}

    def _wrapper(self, kind: type[W]) -> W | None:
        env = self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, kind):
                return env
            env = env.env
        return None

    def close(self) -> None:
        self.env.close()  # closes the device (InterventionWrapper) and the driver
        if self.world is not None:
            self.world.close()


GYMNASIUM = "gymnasium"  # env.robot value that is no arm: any gymnasium env (hilrl.envs)


def make_env(task: TaskConfig, device: InputDevice | None = None, *,
             images: bool = True, seed: int | None = None, features: bool = True,
             residual: bool = False) -> EnvStack:
    """The env for ``task``; ``device`` overrides the configured one, ``images=False`` drops
    the cameras (state-only runs and tests). ``features=False`` leaves out the frozen
    encoder's features (``env.frozen_encoder``): demos record what the robot saw, so they
    can pretrain an encoder and serve every encoder after it. ``residual=True`` (the actor
    node) makes the actions corrections to ``residual.base`` when the task sets one; demos
    and teleop keep the person's own actions.

    The arm, the cameras and the device are the kinds registered in robot_drivers.registry;
    all their settings are checked before any of them is opened."""
    cfg = task.env
    seed = task.seed if seed is None else seed
    if not (images and features) and cfg.frozen_encoder:
        task = dataclasses.replace(task, env=dataclasses.replace(cfg, frozen_encoder=""))
    parts = resolve(task, own_robots=(GYMNASIUM,))
    if parts.arm is None:
        stack = _make_gym_stack(task, device, parts.device, images=images, seed=seed)
        if residual:
            stack.env = _residual(stack.env, task)
        return stack

    rig: Rig = parts.arm.build(task, seed=seed)
    cameras: list[Camera] = []
    try:
        if cfg.reward == "sim_success" and rig.scene is None:
            raise ConfigError(f"env.reward=sim_success needs the simulated robot; with "
                              f"env.robot={cfg.robot} use env.reward: classifier (hilrl "
                              f"train-classifier) or none (the device's success button)")
        if not images:
            open_cameras = None
        elif rig.camera is not None:  # rendered by the arm's own world: nothing to reopen
            cameras, open_cameras = [rig.camera(c) for c in cfg.cameras], None
        else:
            def open_cameras() -> list[Camera]:
                return _open_cameras(task, parts.cameras)

            cameras = open_cameras()
        clock = rig.clock if rig.clock is not None else WallClock(cfg.hz)
        env: gym.Env = ManipulatorEnv(rig.driver, cameras, clock, cfg, scene=rig.scene)
        if device is None:
            device = parts.device.build(task, world=rig.world, env=env, seed=seed)
    except BaseException:
        for camera in cameras:
            camera.close()
        if device is not None:
            device.close()
        if rig.world is not None:
            rig.world.close()
        raise
    if cfg.reward == "sim_success":
        env = SuccessReward(env)
    env = _wrap(env, task, device, images)
    return EnvStack(_residual(env, task) if residual else env, device, rig.world,
                    open_cameras=open_cameras, simulated=rig.clock is not None)


def _wrap(env: gym.Env, task: TaskConfig, device: InputDevice, images: bool) -> gym.Env:
    """The wrappers every robot gets, simulated or real, in the same order."""
    cfg = task.env
    env = InterventionWrapper(env, device, task.device.deadzone)
    env = GripperPenalty(env, cfg.gripper_penalty)
    if cfg.relative_frame:
        env = RelativeFrame(env)
    if cfg.reward == "classifier":  # on the frames as rendered: it cuts its own view
        env = classifier_reward(env, task, images)
    if images:
        env = ImageCropResize(env, cfg.cameras)
    if cfg.frozen_encoder:
        from hilrl.learning.pretrain import FrozenEncoder

        env = EncoderFeatures(env, FrozenEncoder(cfg.frozen_encoder))
    return TimeLimit(env, cfg.max_episode_steps)


def _open_cameras(task: TaskConfig, parts: list[Part]) -> list[Camera]:
    """Open every camera of ``task.env.cameras`` by its driver; on a failure, close the ones
    already open."""
    cameras: list[Camera] = []
    try:
        for config, part in zip(task.env.cameras, parts, strict=True):
            cameras.append(part.build(task, camera=config))
    except BaseException:
        for camera in cameras:
            camera.close()
        raise
    return cameras


def _make_gym_stack(task: TaskConfig, device: InputDevice | None, device_part: Part, *,
                    images: bool, seed: int) -> EnvStack:
    """A gymnasium env with a person on it: the device's commands reach the env through the
    task's action layout (``env.gymnasium.action_layout``)."""
    settings = task.env.gymnasium
    if not images:
        settings = dataclasses.replace(settings, image_keys={})
    adapter = make_gym_adapter(settings, task.env.max_episode_steps, seed)
    try:
        if device is None and task.device.kind != "none" and not adapter.layout.active:
            raise ConfigError(
                f"device.kind={task.device.kind}: a device drives a gymnasium env through "
                "env.gymnasium.action_layout (which action dimensions move the end effector "
                "and the gripper, and in what units), which this task does not set; set it, "
                "or use device.kind=none")
        if device is None:
            device = device_part.build(task, world=None, env=adapter.env, seed=seed)
    except BaseException:
        adapter.close()
        raise
    env: gym.Env = InterventionWrapper(adapter, device, task.device.deadzone,
                                       adapter.command_action)
    if task.env.realtime:  # a person steering it needs the steps in wall-clock time
        env = Paced(env, WallClock(task.env.hz))
    return EnvStack(TimeLimit(env, task.env.max_episode_steps), device, world=None,
                    simulated=True)


def _residual(env: gym.Env, task: TaskConfig) -> gym.Env:
    """Outermost, so the base policy sees what the agent's policy sees (residual.base)."""
    if not task.residual.base:
        return env
    from hilrl.envs.residual import ResidualAction
    from hilrl.learning.base_policy import load_base_policy

    return ResidualAction(env, load_base_policy(task.residual.base, task), task.residual.scale)


def classifier_reward(env: gym.Env, task: TaskConfig, images: bool) -> gym.Env:
    """Wrap ``env`` with the learned reward of ``task.env.classifier``."""
    from hilrl.learning.classifier import ClassifierError, RewardClassifier

    if not images:
        raise ClassifierError("env.reward=classifier needs the cameras; this env was built "
                              "without images")
    settings = task.env.classifier
    return ClassifierReward(env, RewardClassifier.load(settings.path), settings,
                            env.unwrapped.state_slices)
