"""Small gymnasium envs for testing ``env.robot: gymnasium``; importing this registers them.

``PointReach-v0``: a point in [-1, 1]^2 steered onto a goal, with a Dict observation (and an
optional camera), dense reward and ``info["is_success"]``; SAC learns it from the state in a
few thousand steps. ``BoxRecord-v0``: a Box observation and a configurable Box action that it
records, so tests can see exactly what the inner env was sent.

Use ids as ``gym_point_env:PointReach-v0`` so gymnasium imports this module first (with
``tests`` on the Python path).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

IMAGE_SIZE = 32
STEP = 0.1  # displacement per step at action 1
SUCCESS_DISTANCE = 0.1
GOAL_RANGE = 0.7


class PointReachEnv(gym.Env):
    """Move a 2-D point by ``0.1 * action`` per step until it is within 0.1 of the goal.

    It never terminates by itself: success is left to the adapter's ``success_key``, so the
    same env serves both dense (reward -distance) and sparse (reward on success) tasks.
    """

    metadata = {"render_modes": []}

    def __init__(self, render_camera: bool = False) -> None:
        self.render_camera = render_camera
        box = spaces.Box(-1.0, 1.0, (2,), np.float32)
        obs = {"position": box, "goal": box,
               "velocity": spaces.Box(-STEP, STEP, (2,), np.float32)}
        if render_camera:
            obs["camera"] = spaces.Box(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.position = np.zeros(2, np.float32)
        self.goal = np.zeros(2, np.float32)
        self.velocity = np.zeros(2, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = np.zeros(2, np.float32)
        self.goal = self.np_random.uniform(-GOAL_RANGE, GOAL_RANGE, 2).astype(np.float32)
        self.velocity = np.zeros(2, np.float32)
        return self._obs(), {"is_success": self._distance() < SUCCESS_DISTANCE}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        before = self.position
        self.position = np.clip(before + STEP * action, -1.0, 1.0).astype(np.float32)
        self.velocity = (self.position - before).astype(np.float32)
        distance = self._distance()
        info = {"is_success": bool(distance < SUCCESS_DISTANCE), "distance": distance}
        return self._obs(), -distance, False, False, info

    def _distance(self) -> float:
        return float(np.linalg.norm(self.position - self.goal))

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"position": self.position.copy(), "goal": self.goal.copy(),
               "velocity": self.velocity.copy()}
        if self.render_camera:
            obs["camera"] = self._render()
        return obs

    def _render(self) -> np.ndarray:
        image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        for xy, colour in ((self.goal, (0, 255, 0)), (self.position, (255, 0, 0))):
            col, row = np.round((xy + 1.0) / 2.0 * (IMAGE_SIZE - 1)).astype(int)
            row = IMAGE_SIZE - 1 - row  # +y is up in the picture
            image[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2] = colour
        return image


class BoxRecordEnv(gym.Env):
    """A Box observation (3,) and a Box action with the given bounds; keeps the last action."""

    metadata = {"render_modes": []}

    def __init__(self, low: Any = (-2.0, 0.0), high: Any = (2.0, 10.0),
                 shape: tuple[int, ...] | None = None) -> None:
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if shape is not None:
            low, high = np.full(tuple(shape), low), np.full(tuple(shape), high)
        self.action_space = spaces.Box(low, high, dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float64)
        self.last_action: np.ndarray | None = None
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.last_action = np.array(action, copy=True)
        self.t += 1
        return self._obs(), 0.5, False, False, {}

    def _obs(self) -> np.ndarray:
        return np.array([self.t, 1.0, -1.0], np.float64)


def _register(env_id: str, entry_point: str, max_episode_steps: int) -> None:
    if env_id not in gym.registry:  # importing twice (as a module and via "module:Id") is fine
        gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_episode_steps)


_register("PointReach-v0", "gym_point_env:PointReachEnv", 40)
_register("BoxRecord-v0", "gym_point_env:BoxRecordEnv", 1000)
