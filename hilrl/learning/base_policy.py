"""Base policies for residual RL (``residual.base``; ``hilrl.envs.residual``): what acts while
SAC learns a bounded correction on top.

A base policy is any callable from a batch of observations in the policy's layout --
``{"state": (B, S) float32, "images": {camera: (B, H, W, 3) uint8}}``, as the actor's env
gives them and the replay stores them -- to ``(B, A)`` actions in [-1, 1]. It is frozen:
nothing trains it. Two sources:

- a policy file from ``hilrl train-bc`` (``learner.train_bc``): behaviour cloning on the
  task's demos with SAC's encoder and actor, in the pickle-free weights format;
- ``"module:factory"``: ``factory(task)`` returns one. This is how an imitation policy
  trained elsewhere (a diffusion policy, ACT, ...) comes in: wrap it to the call above.

The actor runs it on every step, the learner on the demos (their actions become residuals),
so it must be deterministic.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hilrl.config.io import ConfigError

FILE_KIND = "hilrl-bc-policy"


class BasePolicy(Protocol):
    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        """A batch of observations -> (B, A) actions in [-1, 1]."""


class BasePolicyError(ConfigError):
    """A base policy that cannot be loaded or does not fit the task (``residual.base``): the
    commands report it in one line, as any other setting that is wrong."""


def applied_action(residual: np.ndarray, base: np.ndarray, scale: float) -> np.ndarray:
    """What the env gets: the base action moved by at most ``scale`` per entry."""
    return np.clip(base + scale * np.clip(residual, -1.0, 1.0), -1.0, 1.0).astype(np.float32)


def to_residual(action: np.ndarray, base: np.ndarray, scale: float) -> np.ndarray:
    """The residual that would have applied ``action`` on ``base`` (a person's correction or
    a demo's action), at the bound where it reaches beyond."""
    return np.clip((np.asarray(action) - base) / scale, -1.0, 1.0).astype(np.float32)


class BCPolicy:
    """A ``hilrl train-bc`` policy file: its mean action (``tanh`` of the Gaussian's mean)."""

    def __init__(self, path: str | Path) -> None:
        import jax

        from hilrl.config.io import ConfigError, from_dict
        from hilrl.learning.sac_config import SACConfig
        from hilrl.storage.weights import WeightsError, load_weights

        try:
            params, meta = load_weights(path, expect={"kind": FILE_KIND})
            self.config = from_dict(SACConfig, meta["network"])
        except (WeightsError, ConfigError, KeyError) as e:
            raise BasePolicyError(f"{path} is not a readable hilrl train-bc policy file: "
                                  f"{e}") from e
        self.path = str(path)
        self.action_size = int(meta["action_size"])
        self.state_size = int(meta["state_size"])
        self.image_shapes = {c: tuple(s) for c, s in meta["image_shapes"].items()}
        self.params = jax.tree.map(np.asarray, params)
        self._key = jax.random.PRNGKey(0)  # unused: the mean action is deterministic

    def check(self, state_size: int, image_shapes: Mapping[str, Sequence[int]],
              action_size: int) -> None:
        want = (state_size, {c: tuple(s) for c, s in image_shapes.items()}, action_size)
        got = (self.state_size, self.image_shapes, self.action_size)
        if got != want:
            raise BasePolicyError(
                f"{self.path} was trained for state size {got[0]}, cameras {got[1]} and "
                f"{got[2]} actions; this task has {want[0]}, {want[1]} and {want[2]}: train "
                "it on this task's demos (hilrl train-bc)")

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        from hilrl.learning import sac

        policy = sac.Policy(self.params, self.config, self.action_size)
        return np.asarray(sac.sample_actions(policy, obs, self._key, deterministic=True))


def load_base_policy(spec: str, task: Any) -> BasePolicy:
    """``residual.base``: a policy file, or ``module:factory`` called with the task."""
    if Path(spec).is_file():
        from hilrl.envs.spec import env_spec

        policy = BCPolicy(spec)
        layout = env_spec(task)
        policy.check(layout.state_size, layout.image_shapes, layout.action_size)
        return policy
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise BasePolicyError(f"residual.base={spec!r} is neither a file nor module:factory")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise BasePolicyError(f"residual.base={spec!r}: {e}") from e
    policy = factory(task)
    if not callable(policy):
        raise BasePolicyError(f"residual.base={spec!r} returned {type(policy).__name__}, not "
                              "a callable from observations to actions")
    return policy
