"""A base policy from outside hilrl, as ``residual.base: residual_base:linear`` names one: a
fixed linear map of the proprioceptive state (what a policy trained elsewhere, wrapped to
hilrl's interface, looks like to hilrl)."""

import numpy as np


class LinearPolicy:
    def __init__(self, state_size: int, action_size: int) -> None:
        rng = np.random.default_rng(7)
        self.weights = rng.normal(0.0, 1.0, (state_size, action_size)).astype(np.float32)

    def __call__(self, obs):
        return np.tanh(np.asarray(obs["state"], np.float32) @ self.weights)


def linear(task) -> LinearPolicy:
    from hilrl.envs.spec import env_spec

    spec = env_spec(task)
    return LinearPolicy(spec.state_size, spec.action_size)
