"""ManipulatorEnv: a gymnasium env over any RobotDriver, Cameras and Clock.

Observations are ``{"state": float32 vector, "images": {camera: uint8 HxWx3}}``; the state
vector concatenates ``config.state_keys`` in order and ``state_slices`` tells where each one
sits. Actions are end-effector deltas in the base frame, normalised to [-1, 1]: xyz
(+ rotation vector when ``rotation_actions``) and a last gripper entry (>= 0.5 closes,
<= -0.5 opens, anything between keeps the gripper as it is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from hilrl.config import EnvConfig
from hilrl.envs.safety import SafeDriver, WorkspaceBox
from hilrl.geometry import apply_delta, pose, pose_from_euler, rotation
from hilrl.interfaces import Camera, CameraError, Clock, RobotDriver, RobotState, Scene

STATE_SIZES = {"tcp_pose": 7, "tcp_vel": 6, "gripper_width": 1, "wrench": 6, "joint_positions": 7,
               "object_pos": 3, "target_pos": 3}
GRIPPER_THRESHOLD = 0.5
# State keys the Scene, not the robot, provides: positions in the base frame.
SCENE_KEYS = frozenset({"object_pos", "target_pos"})
# info key of the scene's privileged success (simulation only): judges, never rewards.
SCENE_SUCCESS = "scene_success"
RESET_TOLERANCE = 0.005  # metres from the reset pose that count as "there"
RESET_MAX_TICKS = 50


def state_slices(state_keys: Sequence[str]) -> dict[str, slice]:
    """Where each of ``state_keys`` sits in the state vector (concatenated in order); the
    one table the env, ``hilrl.envs.spec`` and encoder pretraining all read."""
    slices: dict[str, slice] = {}
    start = 0
    for key in state_keys:
        slices[key] = slice(start, start + STATE_SIZES[key])
        start += STATE_SIZES[key]
    return slices


class ManipulatorEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        driver: RobotDriver,
        cameras: Sequence[Camera],
        clock: Clock,
        config: EnvConfig,
        scene: Scene | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.config = config
        self.driver = SafeDriver(driver, WorkspaceBox(config.workspace))
        self.cameras = list(cameras)
        self.clock = clock
        self.scene = scene
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": config.hz}

        self.state_slices = state_slices(config.state_keys)
        start = max((s.stop for s in self.state_slices.values()), default=0)
        h, w = config.image_size
        self.observation_space = gym.spaces.Dict({
            "state": gym.spaces.Box(-np.inf, np.inf, (start,), np.float32),
            "images": gym.spaces.Dict({
                c.name: gym.spaces.Box(0, 255, (h, w, 3), np.uint8) for c in self.cameras}),
        })
        n = 7 if config.rotation_actions else 4
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n,), np.float32)

        self.reset_pose = pose_from_euler(config.reset_pose)
        self.gripper_closed = False
        self._last_images: dict[str, np.ndarray] = {}
        self.driver.connect()

    # --- gymnasium API ----------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.driver.recover()
        self._set_gripper(False)
        self.driver.home()
        if self.scene is not None:
            self.scene.reset(self.np_random)
        noise = self.config.reset_noise
        start = self.reset_pose.copy()
        start[:2] += self.np_random.uniform(-noise, noise, 2)
        self.driver.move_to(start)
        self.clock.reset()
        for _ in range(RESET_MAX_TICKS):
            self.clock.tick()
            if np.linalg.norm(self.driver.state().tcp_pose[:3] - start[:3]) < RESET_TOLERANCE:
                break
        return self._observe()

    def step(self, action: np.ndarray):
        action = self._check_action(action)
        robot = self.driver.state()
        delta = action[:3] * self.config.max_translation
        if self.config.rotation_actions:
            target = apply_delta(robot.tcp_pose, delta, action[3:6] * self.config.max_rotation)
        else:
            # Without rotation actions the orientation is held at the reset orientation, so
            # small tracking errors cannot accumulate into a drift.
            target = pose(robot.tcp_pose[:3] + delta, rotation(self.reset_pose))
        self.driver.move_to(target)
        if action[-1] >= GRIPPER_THRESHOLD:
            self._set_gripper(True)
        elif action[-1] <= -GRIPPER_THRESHOLD:
            self._set_gripper(False)
        self.clock.tick()
        obs, info = self._observe()
        return obs, 0.0, False, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or not self._last_images:
            return None
        return np.concatenate(list(self._last_images.values()), axis=1)

    def close(self) -> None:
        for camera in self.cameras:
            camera.close()
        self.driver.close()

    # --- helpers ----------------------------------------------------------------------------

    def hold(self) -> None:
        """Stop where the arm is (emergency stop): target the current pose, keep the gripper."""
        self.driver.move_to(self.driver.state().tcp_pose)

    def _set_gripper(self, closed: bool) -> None:
        self.driver.gripper(1.0 if closed else 0.0)
        self.gripper_closed = closed

    def _check_action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"action has shape {a.shape}, expected {self.action_space.shape} "
                f"({'dxyz, drot, gripper' if self.config.rotation_actions else 'dxyz, gripper'})")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action {a} is not finite; nothing was sent to the robot")
        return np.clip(a, -1.0, 1.0)

    def _observe(self) -> tuple[dict, dict]:
        robot = self.driver.state()
        images = {}
        want = self.observation_space["images"]
        for camera in self.cameras:
            frame = camera.read()
            expected = want[camera.name].shape
            if frame.shape != expected or frame.dtype != np.uint8:
                raise CameraError(
                    f"camera {camera.name!r} gave a {frame.dtype} frame of shape {frame.shape}, "
                    f"expected uint8 {expected}: set env.image_size to the camera's resolution "
                    f"and use the camera's crop/size to change what the policy sees")
            images[camera.name] = frame
        self._last_images = images
        scene_state = self.scene.state() if self.scene is not None else None
        obs = {"state": state_vector(robot, self.config.state_keys, scene_state),
               "images": images}
        info: dict[str, Any] = {"gripper_closed": self.gripper_closed}
        if self.scene is not None:
            # The scene's privileged truth, a judge's key: only SuccessReward
            # (env.reward=sim_success) turns it into reward; otherwise it reaches no reward,
            # no transition and no learner, only the actor's episode records.
            info[SCENE_SUCCESS] = self.scene.success()
        return obs, info


def state_vector(robot: RobotState, keys: Sequence[str],
                 scene_state: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    parts = []
    for key in keys:
        if key in SCENE_KEYS:
            value = (scene_state or {}).get(key)
            if value is None:
                raise ValueError(f"state key {key!r} is privileged simulation state, which "
                                 "this scene does not provide (only simulated tasks do, and "
                                 "target_pos only those with a target): remove it from "
                                 "env.state_keys")
        else:
            value = getattr(robot, key)
        if value is None:
            raise ValueError(f"state key {key!r} is not measured by this robot driver; "
                             f"remove it from env.state_keys")
        parts.append(np.atleast_1d(np.asarray(value, dtype=np.float64)))
    return np.concatenate(parts).astype(np.float32)

