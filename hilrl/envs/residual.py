"""Residual RL's action (ResiP, Ankile et al. 2024, "From Imitation to Refinement"): a frozen
base policy acts, and the agent's action is a bounded correction to it.

:class:`ResidualAction` is the outermost wrapper of the actor's env when ``residual.base`` is
set. The agent acts in [-1, 1] as always; the env below gets ``clip(base(obs) + scale *
residual)`` (:func:`hilrl.learning.base_policy.applied_action`). What is recorded as the
step's action (``info["action"]``) is the residual of the action the env applied: on a
person's step it is the residual their action implied (at the bound where it reached
beyond, counted in ``info["residual_clipped"]``), so the replay holds the agent's actions
in the agent's own terms. ``info["base_action"]`` and ``info["applied_action"]`` keep the
rest.

Nothing else changes: SAC, the replay and the transport see an ordinary task whose actions
happen to be corrections. The learner turns the demos' actions into residuals the same way
(``learner.ingest.load_demos``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from hilrl.learning.base_policy import BasePolicy, applied_action, to_residual


def _batched(obs: dict[str, Any]) -> dict[str, Any]:
    return {"state": np.asarray(obs["state"])[None],
            "images": {cam: np.asarray(frame)[None]
                       for cam, frame in obs.get("images", {}).items()}}


class ResidualAction(gym.Wrapper):
    def __init__(self, env: gym.Env, base: BasePolicy, scale: float) -> None:
        super().__init__(env)
        self.base, self.scale = base, float(scale)
        self._base_action: np.ndarray | None = None

    def _next_base(self, obs: dict[str, Any]) -> None:
        action = np.asarray(self.base(_batched(obs)), np.float32)
        if action.shape != (1, *self.action_space.shape) or not np.all(np.isfinite(action)):
            raise ValueError(f"the base policy gave {action.shape} actions ({action!r}); it "
                             f"must give finite (B, {self.action_space.shape[0]}) ones")
        self._base_action = action[0]

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._next_base(obs)
        return obs, info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        base = self._base_action
        if base is None:
            raise RuntimeError("step() before reset()")
        obs, reward, terminated, truncated, info = self.env.step(
            applied_action(np.asarray(action, np.float32), base, self.scale))
        applied = np.asarray(info.get("action", applied_action(action, base, self.scale)),
                             np.float32)
        residual = to_residual(applied, base, self.scale)
        info["base_action"], info["applied_action"] = base, applied
        info["residual_clipped"] = bool(np.any(np.abs(applied - base) > self.scale + 1e-6))
        info["action"] = residual
        if not (terminated or truncated):
            self._next_base(obs)
        return obs, reward, terminated, truncated, info
