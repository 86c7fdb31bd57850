"""Builds the env stack a task file describes: driver, cameras, clock, device, wrappers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
from gymnasium.wrappers import TimeLimit

from hilrl.config import TaskConfig
from hilrl.envs.gym_adapter import make_gym_env
from hilrl.envs.manipulator import ManipulatorEnv
from hilrl.envs.wrappers import (
    GripperPenalty,
    ImageCropResize,
    InterventionWrapper,
    RelativeFrame,
    SuccessReward,
)
from hilrl.interfaces import InputDevice, NullDevice


@dataclass
class EnvStack:
    env: gym.Env  # the outermost wrapper; what the actor loop steps
    device: InputDevice
    world: object | None = None  # the SimWorld, when the robot is simulated

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
             images: bool = True, seed: int | None = None) -> EnvStack:
    """The env for ``task``; ``device`` overrides the configured one, ``images=False`` drops
    the cameras (state-only runs and tests)."""
    cfg = task.env
    seed = task.seed if seed is None else seed
    if cfg.robot == "gymnasium":
        return _make_gym_stack(task, device, images=images, seed=seed)
    if cfg.robot != "sim":  # pragma: no cover - real drivers arrive with their issue
        raise ValueError(f"env.robot={cfg.robot!r} is not supported yet")

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
    env = InterventionWrapper(env, device, task.device.deadzone)
    env = GripperPenalty(env, cfg.gripper_penalty)
    if cfg.relative_frame:
        env = RelativeFrame(env)
    if images:
        env = ImageCropResize(env, cfg.cameras)
    if cfg.reward == "classifier":
        env = classifier_reward(env, task, images)
    env = TimeLimit(env, cfg.max_episode_steps)
    return EnvStack(env, device, world)


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
    kind = task.device.kind
    if kind == "none":
        return NullDevice()
    if kind == "keyboard":
        from robot_drivers.devices.keyboard import KeyboardDevice

        return KeyboardDevice(rotation=task.env.rotation_actions)
    if world is None:
        raise ValueError("device.kind=scripted needs the simulated robot (env.robot=sim)")
    from robot_drivers.devices.scripted import ScriptedExpert

    return ScriptedExpert(world, task.device.expert, seed=seed)


def classifier_reward(env: gym.Env, task: TaskConfig, images: bool) -> gym.Env:
    """Wrap ``env`` with the learned reward of ``task.env.classifier``."""
    from hilrl.classifier import ClassifierError, RewardClassifier
    from hilrl.envs.classifier_reward import ClassifierReward

    if not images:
        raise ClassifierError("env.reward=classifier needs the cameras; this env was built "
                              "without images")
    settings = task.env.classifier
    return ClassifierReward(env, RewardClassifier.load(settings.path), settings,
                            task.env.cameras, env.unwrapped.state_slices)
