"""Small gymnasium envs for testing ``env.robot: gymnasium``; importing this registers them.

``PointReach-v0``: a point in [-1, 1]^2 steered onto a goal, with a Dict observation (and an
optional camera), dense reward and ``info["is_success"]``; SAC learns it from the state in a
few thousand steps. ``BoxRecord-v0``: a Box observation and a configurable Box action that it
records, so tests can see exactly what the inner env was sent. ``PointReachTeleop-v0``:
PointReach with its own teleop reported in the info. ``make_person``: a scripted person for
PointReach through the plug-in device.

Use ids as ``gym_point_env:PointReach-v0`` so gymnasium imports this module first (with
``tests`` on the Python path).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hilrl.interfaces import Button, Command, InputDevice

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


class PointReachTeleopEnv(PointReachEnv):
    """PointReach with its own teleop, as a user's existing wrapper would have it: every
    ``every``-th step a "person" replaces the action with one toward the goal and says so in
    the info, HIL-SERL style (``intervene_action`` only when it acted) or LeRobot style
    (``action_intervention`` always, ``is_intervention`` the flag)."""

    def __init__(self, every: int = 3, style: str = "hilserl") -> None:
        super().__init__()
        self.every, self.style, self.t = every, style, 0
        self.person_steps: list[int] = []  # the steps the person took (0-based, per episode)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.t, self.person_steps = 0, []
        return super().reset(seed=seed, options=options)

    def step(self, action):
        person = self.t % self.every == 0
        if person:
            action = np.clip((self.goal - self.position) / STEP, -1, 1).astype(np.float32)
            self.person_steps.append(self.t)
        obs, reward, terminated, truncated, info = super().step(action)
        self.t += 1
        if self.style == "hilserl" and person:
            info["intervene_action"] = np.asarray(action, np.float32)
        elif self.style == "lerobot":
            info["action_intervention"] = np.asarray(action, np.float32)
            info["is_intervention"] = person
        return obs, reward, terminated, truncated, info


class PointPerson(InputDevice):
    """A scripted person for PointReach (``device.kind: plugin``): drives straight at the
    goal for the first ``drive_steps`` steps of each episode, then lets the policy act. It
    counts the commands it gave, so tests can check every one arrived."""

    def __init__(self, env: gym.Env, drive_steps: int, grip_every: int,
                 success_within: float) -> None:
        self.point = env.unwrapped
        self.drive_steps, self.grip_every = drive_steps, grip_every
        self.success_within = success_within
        self.pressed: list[int] = []  # the steps (per episode) it held SUCCESS
        self.t = 0
        self.driven = 0  # commands given, over all episodes
        self.resets = 0

    def reset(self) -> None:
        self.t = 0
        self.resets += 1
        self.pressed = []

    def read(self) -> Command:
        self.t += 1
        seen_done = np.linalg.norm(self.point.goal - self.point.position) < self.success_within
        if seen_done:  # the person sees the point on the goal and says so
            self.pressed.append(self.t - 1)
        if self.t > self.drive_steps:
            return Command(buttons=frozenset({Button.SUCCESS} if seen_done else set()))
        self.driven += 1
        twist = np.zeros(6)
        twist[:2] = np.clip((self.point.goal - self.point.position) / STEP, -1, 1)
        buttons = {Button.INTERVENE}
        if self.grip_every and self.t % self.grip_every == 0:
            buttons.add(Button.GRIPPER_CLOSE)
        if seen_done:
            buttons.add(Button.SUCCESS)
        return Command(twist, frozenset(buttons))


def make_person(env: gym.Env, *, seed: int, drive_steps: int = 5, grip_every: int = 0,
                success_within: float = 0.0) -> PointPerson:
    """The plug-in factory (``device.plugin.factory: gym_point_env:make_person``)."""
    return PointPerson(env, drive_steps, grip_every, success_within)


def make_not_a_person(env: gym.Env, *, seed: int) -> gym.Env:
    """A factory that breaks the contract (returns no InputDevice), for the error test."""
    return env


def _register(env_id: str, entry_point: str, max_episode_steps: int) -> None:
    if env_id not in gym.registry:  # importing twice (as a module and via "module:Id") is fine
        gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_episode_steps)


_register("PointReach-v0", "gym_point_env:PointReachEnv", 40)
_register("BoxRecord-v0", "gym_point_env:BoxRecordEnv", 1000)
_register("PointReachTeleop-v0", "gym_point_env:PointReachTeleopEnv", 40)
