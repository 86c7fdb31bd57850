"""Any registered gymnasium env, seen through hilrl's env layout (``env.robot: gymnasium``).

hilrl's policies, replay buffer and actor loop expect observations ``{"state": float32 (S,),
"images": {camera: uint8 (H, W, 3)}}`` and actions in [-1, 1]^A, with ``info["success"]``,
``info["action"]``, ``info["intervened"]`` and ``info["grasp_penalty"]`` on every step.
:class:`GymAdapter` maps a gymnasium env onto that layout as ``GymnasiumSettings`` describes;
:func:`make_gym_env` builds it from the task file. Everything that cannot be mapped is refused
at construction, naming the setting to change, rather than failing mid-episode.

The adapter is also where a person reaches the env: :meth:`GymAdapter.command_action` turns a
device's command into a policy-space action through the task's action layout (the
intervention wrapper above calls it), and an env that makes its own interventions reports
them in its info (``env.gymnasium.intervention``), which the adapter passes on as hilrl's.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit

from hilrl.config import GymnasiumSettings
from hilrl.envs.action_layout import LayoutActions
from hilrl.interfaces import Command

_REGISTRY_HINT = 'python -c "import gymnasium; print(list(gymnasium.registry))"'


def _numel(space: spaces.Space) -> int:
    return math.prod(space.shape)  # () -> 1


class GymAdapter(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Maps a gymnasium env's observations, actions and infos onto hilrl's layout.

    Box observation: the state is the observation, flattened. Dict observation: the state is
    ``state_keys`` flattened and concatenated in order; ``image_keys`` maps camera names to
    uint8 HxWx3 entries. The action, in [-1, 1]^A, is rescaled linearly onto the env's Box
    bounds. ``seed`` seeds the first reset that brings none, so a run is reproducible.
    """

    def __init__(self, env: gym.Env, settings: GymnasiumSettings, seed: int | None = None) -> None:
        # Recorded so env.spec can rebuild the whole stack (gymnasium.make(env.spec)).
        gym.utils.RecordConstructorArgs.__init__(self, settings=settings, seed=seed)
        gym.Wrapper.__init__(self, env)
        self.settings = settings
        self._pending_seed = seed
        self._check_action_space(env.action_space)
        self._env_action_space: spaces.Box = env.action_space
        self._low = env.action_space.low.astype(np.float64).ravel()
        self._high = env.action_space.high.astype(np.float64).ravel()
        size = _numel(env.action_space)
        self.action_space = spaces.Box(-1.0, 1.0, (size,), np.float32)
        self.observation_space = self._build_observation_space(env.observation_space)
        self.layout = LayoutActions(settings.action_layout, env.action_space,
                                    env.observation_space, settings.id)
        self._raw_observation: Any = None  # the env's own, for an end-effector frame layout
        if settings.reward == "success" and not settings.success_key:
            raise ValueError("env.gymnasium.reward=success needs env.gymnasium.success_key: "
                             "the info key that says the task succeeded")

    # --- construction -----------------------------------------------------------------------

    def _check_action_space(self, space: spaces.Space) -> None:
        if not isinstance(space, spaces.Box):
            raise ValueError(
                f"env {self.settings.id!r} has a {type(space).__name__} action space; only "
                "continuous Box actions are supported (hilrl's policies output [-1, 1]^A)")
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ValueError(
                f"env {self.settings.id!r}: action bounds must be finite to rescale [-1, 1] onto "
                f"them, got low={space.low} high={space.high}")

    def _build_observation_space(self, space: spaces.Space) -> spaces.Dict:
        s = self.settings
        if isinstance(space, spaces.Box):
            if s.state_keys or s.image_keys:
                raise ValueError(
                    f"env {s.id!r} has a Box observation, which is the state itself; leave "
                    f"env.gymnasium.state_keys ({s.state_keys}) and image_keys ({s.image_keys}) "
                    "empty")
            size = _numel(space)
            images: dict[str, spaces.Box] = {}
        elif isinstance(space, spaces.Dict):
            if not s.state_keys and not s.image_keys:
                raise ValueError(
                    f"env {s.id!r} has a Dict observation with keys {list(space.spaces)}; set "
                    "env.gymnasium.state_keys and/or env.gymnasium.image_keys to pick from them")
            size = 0
            for key in s.state_keys:
                sub = self._sub_space(space, key, "state_keys")
                if sub.shape is None or not np.issubdtype(sub.dtype, np.number):
                    raise ValueError(
                        f"env.gymnasium.state_keys: {key!r} is a {type(sub).__name__}; state "
                        "keys must be numeric arrays (Box)")
                size += _numel(sub)
            images = {}
            for camera, key in s.image_keys.items():
                sub = self._sub_space(space, key, "image_keys")
                if not (isinstance(sub, spaces.Box) and sub.dtype == np.uint8
                        and len(sub.shape) == 3 and sub.shape[2] == 3):
                    raise ValueError(
                        f"env.gymnasium.image_keys: {camera!r} -> {key!r} is {sub}; camera "
                        "images must be uint8 Box (H, W, 3); list that key in state_keys if it "
                        "is not an image")
                images[camera] = spaces.Box(0, 255, sub.shape, np.uint8)
        else:
            raise ValueError(
                f"env {s.id!r} has a {type(space).__name__} observation space; only Box and "
                "Dict observations are supported")
        return spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, (size,), np.float32),
            "images": spaces.Dict(images),
        })

    def _sub_space(self, space: spaces.Dict, key: str, setting: str) -> spaces.Space:
        if key not in space.spaces:
            raise ValueError(
                f"env.gymnasium.{setting}: {key!r} is not in the observation of env "
                f"{self.settings.id!r}; available keys: {', '.join(map(repr, space.spaces))}")
        return space.spaces[key]

    # --- gymnasium API ----------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        obs, info = self.env.reset(seed=seed, options=options)
        self._raw_observation = obs
        self.layout.reset()
        info = dict(info)
        if self.settings.success_key:
            info["success"] = False
        return self._observe(obs), info

    def step(self, action):
        applied = self._check_action(action)
        env_action = self.to_env(applied)
        self.layout.applied(env_action)
        space = self._env_action_space
        obs, reward, terminated, truncated, info = self.env.step(
            env_action.reshape(space.shape).astype(space.dtype))
        self._raw_observation = obs
        info = dict(info)
        intervened = False
        person = self._env_intervention(info)
        if person is not None:
            applied, intervened = self.to_policy(person), True
            self.layout.applied(person)
        key = self.settings.success_key
        if key:
            success = bool(info.get(key, False))
            info["success"] = success
            terminated = bool(terminated) or success
        if self.settings.reward == "success":
            reward = 1.0 if info["success"] else 0.0
        info["action"] = applied
        info["intervened"] = intervened
        info["grasp_penalty"] = 0.0
        return self._observe(obs), float(reward), bool(terminated), bool(truncated), info

    def hold(self) -> None:
        """Nothing to stop: a simulated env does not move between steps."""

    # --- the person ---------------------------------------------------------------------------

    def command_action(self, command: Command, deadzone: float) -> np.ndarray:
        """The policy-space action (float32, [-1, 1]^A) a device's command asks for, through
        the task's action layout."""
        return self.to_policy(self.layout(command, deadzone, self._raw_observation))

    def to_env(self, action: np.ndarray) -> np.ndarray:
        """[-1, 1]^A -> the env's Box bounds (flattened, float64)."""
        env_action = self._low + (action.astype(np.float64) + 1.0) * 0.5 * (self._high - self._low)
        # Rounding may leave the bounds by an ulp, which strict envs refuse.
        return np.clip(env_action, self._low, self._high)

    def to_policy(self, env_action: np.ndarray) -> np.ndarray:
        """The env's Box -> [-1, 1]^A (flattened, float32); the inverse of :meth:`to_env`."""
        span = self._high - self._low
        safe = np.where(span > 0, span, 1.0)
        action = np.where(span > 0, 2.0 * (env_action - self._low) / safe - 1.0, 0.0)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _env_intervention(self, info: dict[str, Any]) -> np.ndarray | None:
        """The env action a person applied, when the env says one did (its own teleop)."""
        keys = self.settings.intervention
        if not keys.action_key or keys.action_key not in info:
            return None
        if keys.flag_key and not info.get(keys.flag_key, False):
            return None
        value = info[keys.action_key]
        action = np.asarray(value, dtype=np.float64).ravel()
        if action.size != self._low.size or not np.all(np.isfinite(action)):
            raise ValueError(
                f"env {self.settings.id!r}: info[{keys.action_key!r}] (env.gymnasium."
                f"intervention.action_key) must be a finite action of the env's action space "
                f"{self._env_action_space}, got {value!r}")
        return np.clip(action, self._low, self._high)

    # --- helpers ----------------------------------------------------------------------------

    def _check_action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action shape {a.shape} != {self.action_space.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a}")
        return np.clip(a, -1.0, 1.0)

    def _observe(self, obs: Any) -> dict[str, Any]:
        s = self.settings
        if not isinstance(obs, dict):  # a Box observation is the state
            state = np.asarray(obs, dtype=np.float32).ravel()
            return {"state": state, "images": {}}
        parts = [np.ravel(np.asarray(obs[k], dtype=np.float32)) for k in s.state_keys]
        state = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        images = {cam: np.asarray(obs[key], dtype=np.uint8) for cam, key in s.image_keys.items()}
        return {"state": state, "images": images}


def make_gym_adapter(settings: GymnasiumSettings, max_episode_steps: int,
                     seed: int | None = None) -> GymAdapter:
    """``gymnasium.make(settings.id, **settings.kwargs)`` -> GymAdapter."""
    if not settings.id:
        raise ValueError("env.robot=gymnasium needs env.gymnasium.id, e.g. Pendulum-v1")
    module, _, name = settings.id.rpartition(":")
    try:
        if module:  # what gymnasium.make does; gymnasium.spec alone does not import
            importlib.import_module(module)
        gym.spec(name)
    except (gym.error.Error, ModuleNotFoundError) as e:
        raise ValueError(
            f"env.gymnasium.id: {settings.id!r} was not found ({e}). Registered ids are listed "
            f"by {_REGISTRY_HINT}; an id written 'module:Id-v0' makes gymnasium import the "
            "module that registers it first") from e
    # The task's episode length replaces the registered one, which would otherwise cut
    # episodes short below the outer TimeLimit without the task file saying so.
    kwargs = {"max_episode_steps": max_episode_steps, **settings.kwargs}
    try:
        env = gym.make(settings.id, **kwargs)
    except TypeError as e:
        raise ValueError(
            f"gymnasium.make({settings.id!r}) refused env.gymnasium.kwargs "
            f"{settings.kwargs}: {e}") from e
    try:
        adapted = GymAdapter(env, settings, seed)
    except ValueError:
        env.close()
        raise
    adapted.action_space.seed(seed)
    return adapted


def make_gym_env(settings: GymnasiumSettings, max_episode_steps: int,
                 seed: int | None = None) -> gym.Env:
    """The adapted env (:func:`make_gym_adapter`) within the task's episode length."""
    return TimeLimit(make_gym_adapter(settings, max_episode_steps, seed), max_episode_steps)
