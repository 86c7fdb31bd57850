"""The wrappers between ManipulatorEnv and the actor loop.

Stack order (inner to outer), as built by ``actor.env_factory.make_env``::

    ManipulatorEnv -> SuccessReward -> InterventionWrapper -> GripperPenalty
        -> RelativeFrame [-> ClassifierReward] -> ImageCropResize -> TimeLimit

The learned reward sits before ImageCropResize: it sees the camera frames as rendered and
cuts its own view from them (the crop and size its training data had), so a classifier can
look at 128x128 frames while the policy sees them at 64x64.

Intervention sits below RelativeFrame because devices speak in the base frame; RelativeFrame
turns the applied action in ``info["action"]`` back into the end-effector frame, so what the
replay buffer records is always in the policy's own action space.

A gymnasium env gets ``GymAdapter -> InterventionWrapper [-> Paced] -> TimeLimit``: the
adapter maps the person's commands through the task's action layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from scipy.spatial.transform import Rotation

from hilrl.config import CameraConfig
from hilrl.envs.manipulator import SCENE_KEYS
from hilrl.envs.spec import camera_output_shape
from hilrl.geometry import relative_pose
from hilrl.interfaces import Button, Clock, Command, InputDevice


class EmergencyStop(RuntimeError):  # noqa: N818 - it is an event, and reads best as one
    """The person pressed the emergency stop; the arm has been told to hold where it is."""


def _info_action(action: np.ndarray, info: dict) -> np.ndarray:
    return np.asarray(info.get("action", action), dtype=np.float32)


class SuccessReward(gym.Wrapper):
    """Reward 1 and terminate when the scene reports success (sim, privileged state): the one
    wrapper that turns ``info["scene_success"]`` into ``info["success"]`` and reward
    (``env.reward: sim_success``)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info["success"] = bool(info.get("scene_success", False))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["success"] = success = bool(info.get("scene_success", False))
        if success:
            reward, terminated = 1.0, True
        return obs, float(reward), terminated, truncated, info


def hold(env: gym.Env) -> None:
    """Stop the robot where it is: the first ``hold`` found walking in from ``env`` (the
    robot env's, or GymAdapter's); nothing when no layer has one."""
    layer: object | None = env
    while layer is not None:
        method = getattr(layer, "hold", None)
        if callable(method):
            method()
            return
        layer = getattr(layer, "env", None)


CommandAction = Callable[[Command, float], np.ndarray]


def arm_action(command: Command, deadzone: float, rotation: bool) -> np.ndarray:
    """A command as the robot env's action: the twist (normalised, base frame) as it is,
    rotation only when the actions rotate, and the gripper entry +1 close, -1 open, 0 keep."""
    twist = np.clip(np.asarray(command.twist, dtype=np.float64), -1.0, 1.0)
    twist = np.where(np.abs(twist) > deadzone, twist, 0.0)
    gripper = 0.0
    if Button.GRIPPER_CLOSE in command.buttons:
        gripper = 1.0
    elif Button.GRIPPER_OPEN in command.buttons:
        gripper = -1.0
    motion = twist if rotation else twist[:3]
    return np.append(motion, gripper).astype(np.float32)


class InterventionWrapper(gym.Wrapper):
    """A device's non-zero command replaces the policy's action.

    ``info["action"]`` is the action applied (float32, the env's action space) and
    ``info["intervened"]`` says whose it was: the device's, or a person's the env below
    reported itself (a gymnasium env's own teleop). ``command_action(command, deadzone)``
    turns a command into an action: the robot env's convention by default, a gymnasium env's
    action layout for those. The device's estop button holds the arm and raises
    EmergencyStop, so no loop can carry on by forgetting to check a flag.
    """

    def __init__(self, env: gym.Env, device: InputDevice, deadzone: float = 0.05,
                 command_action: CommandAction | None = None) -> None:
        super().__init__(env)
        self.device = device
        self.deadzone = deadzone
        if command_action is None:
            rotation = env.action_space.shape[0] == 7
            command_action = functools.partial(arm_action, rotation=rotation)
        self.command_action = command_action
        self.episode_interventions = 0
        # False during evaluation: the device may only stop the arm (estop), not steer it.
        self.enabled = True

    def reset(self, **kwargs):
        self.episode_interventions = 0
        result = self.env.reset(**kwargs)
        self.device.reset()
        return result

    def step(self, action):
        command = self.device.read()
        if Button.ESTOP in command.buttons:
            hold(self.env)
            raise EmergencyStop("emergency stop pressed: the arm is holding its pose")
        intervened = self.enabled and command.is_active(self.deadzone)
        if intervened:
            action = self.command_action(command, self.deadzone)
        action = np.asarray(action, dtype=np.float32)
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not info.get("intervened"):  # else the env's own person acted, and info says how
            # The env clips actions to its space; record the action it applied, not the one
            # asked.
            info["action"] = np.clip(action, self.action_space.low, self.action_space.high)
        info["intervened"] = intervened = intervened or bool(info.get("intervened", False))
        self.episode_interventions += intervened
        info["success_button"] = Button.SUCCESS in command.buttons
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self.device.close()
        super().close()


class Paced(gym.Wrapper):
    """Steps an env that keeps its own time no faster than its clock (a gymnasium env
    driven by a person at ``env.realtime``: people steer in wall-clock time)."""

    def __init__(self, env: gym.Env, clock: Clock) -> None:
        super().__init__(env)
        self.clock = clock

    def reset(self, **kwargs):
        result = self.env.reset(**kwargs)
        self.clock.reset()
        return result

    def step(self, action):
        self.clock.tick()
        return self.env.step(action)


class GripperPenalty(gym.Wrapper):
    """``info["grasp_penalty"]``: a cost on every gripper toggle, to discourage chattering."""

    def __init__(self, env: gym.Env, penalty: float) -> None:
        super().__init__(env)
        self.penalty = penalty

    def step(self, action):
        before = self.env.unwrapped.gripper_closed
        obs, reward, terminated, truncated, info = self.env.step(action)
        toggled = self.env.unwrapped.gripper_closed != before
        info["grasp_penalty"] = -abs(self.penalty) if toggled else 0.0
        return obs, reward, terminated, truncated, info


class RelativeFrame(gym.Wrapper):
    """Actions and observations in the end-effector frame, the pose relative to the reset pose.

    A policy trained this way does not care where in the workspace an episode starts. The
    tcp velocity is rotated into the current end-effector frame; the tcp pose becomes the pose
    in the frame of the pose observed at reset, and so do the privileged object_pos and
    target_pos (sim).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.slices = env.unwrapped.state_slices
        if "tcp_pose" not in self.slices:
            raise ValueError("the relative frame needs 'tcp_pose' in env.state_keys")
        self.rotation = env.action_space.shape[0] == 7
        self._reference = np.zeros(7)
        self._ee = Rotation.identity()

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._reference = obs["state"][self.slices["tcp_pose"]].astype(np.float64)
        return self._transform(obs), info

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).copy()
        if action.shape == self.action_space.shape:  # a wrong shape is reported by the env
            action[:3] = self._ee.apply(action[:3])
            if self.rotation:
                action[3:6] = self._ee.apply(action[3:6])
        obs, reward, terminated, truncated, info = self.env.step(action.astype(np.float32))
        if "action" in info:
            applied = _info_action(action, info).astype(np.float64)
            applied[:3] = self._ee.inv().apply(applied[:3])
            if self.rotation:
                applied[3:6] = self._ee.inv().apply(applied[3:6])
            # The policy's action space is clipped to [-1, 1]; a base-frame command rotated
            # into the end-effector frame may leave it by a hair.
            info["action"] = np.clip(applied, -1.0, 1.0).astype(np.float32)
        return self._transform(obs), reward, terminated, truncated, info

    def _transform(self, obs: dict) -> dict:
        state = obs["state"].astype(np.float64)
        tcp = state[self.slices["tcp_pose"]]
        self._ee = Rotation.from_quat(tcp[3:7])
        state[self.slices["tcp_pose"]] = relative_pose(self._reference, tcp)
        ref = self._reference
        for key in SCENE_KEYS & self.slices.keys():
            state[self.slices[key]] = Rotation.from_quat(ref[3:7]).inv().apply(
                state[self.slices[key]] - ref[:3])
        if "tcp_vel" in self.slices:
            vel = state[self.slices["tcp_vel"]]
            inv = self._ee.inv()
            state[self.slices["tcp_vel"]] = np.concatenate([inv.apply(vel[:3]), inv.apply(vel[3:])])
        return {**obs, "state": state.astype(np.float32)}


class EncoderFeatures(gym.ObservationWrapper):
    """Append a frozen encoder's features of the camera images to the state (the images
    stay in the observation for videos; the policy does not see them)."""

    def __init__(self, env: gym.Env, encoder: Any) -> None:
        super().__init__(env)
        self.encoder = encoder
        images = env.observation_space["images"].spaces
        encoder.check({c: space.shape for c, space in images.items()})
        size = env.observation_space["state"].shape[0] + encoder.feature_size
        self.observation_space = gym.spaces.Dict({
            **env.observation_space.spaces,
            "state": gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)})

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        feats = self.encoder(obs["images"])
        return {**obs, "state": np.concatenate([obs["state"], feats]).astype(np.float32)}


class ImageCropResize(gym.ObservationWrapper):
    """Per-camera crop (x0, y0, x1, y1) and resize to (height, width)."""

    def __init__(self, env: gym.Env, cameras: list[CameraConfig]) -> None:
        super().__init__(env)
        self.specs = {c.name: c for c in cameras if c.crop is not None or c.size is not None}
        self.frames: dict[str, np.ndarray] = {}
        spaces = dict(env.observation_space["images"].spaces)
        for name, spec in self.specs.items():
            # The same function as hilrl.envs.spec's, so the learner's layout is this one.
            shape = camera_output_shape(spec, spaces[name].shape[:2])
            spaces[name] = gym.spaces.Box(0, 255, shape, np.uint8)
        self.observation_space = gym.spaces.Dict(
            {**env.observation_space.spaces, "images": gym.spaces.Dict(spaces)})

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        images = dict(obs["images"])
        # The latest frames as rendered, before the cut (the live view shows both).
        self.frames = {name: images[name] for name in self.specs}
        for name, spec in self.specs.items():
            images[name] = crop_resize(images[name], spec.crop, spec.size)
        return {**obs, "images": images}


def crop_resize(frame: np.ndarray, crop: Any = None, size: Any = None) -> np.ndarray:
    """A camera frame cut to ``crop`` (x0, y0, x1, y1) and resized to ``size`` (height,
    width); None leaves that step out. The policy's cameras and the reward classifier's
    views both go through this one function."""
    if crop is not None:
        x0, y0, x1, y1 = crop
        frame = frame[y0:y1, x0:x1]
    if size is not None and frame.shape[:2] != tuple(size):
        h, w = size
        frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame)
