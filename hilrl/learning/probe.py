"""A linear probe of an agent's image features: do they see the task's outcome on scenes the
agent never trained on?

The encoder trained online by the critic has no success head to score, so it gets a probe:
a class-balanced logistic regression on its per-camera image features (each camera's
bottleneck, before the proprio is fused in, so the hand's pose cannot stand in for the
scene), fitted on one set of labelled episodes and scored by ROC-AUC on another.
``bench/encoders.py --probe`` runs it on a training run's checkpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hilrl.learning import sac


@functools.partial(jax.jit, static_argnums=0)
def _bottlenecks(encoder: nn.Module, params: Any, obs: Mapping[str, Any]) -> jax.Array:
    _, inter = encoder.apply(
        {"params": params}, obs, mutable=["intermediates"],
        capture_intermediates=lambda m, _: (m.name or "").startswith("bottleneck_norm_"))
    found = inter["intermediates"]
    return jnp.concatenate([jnp.tanh(found[k]["__call__"][0]) for k in sorted(found)], -1)


def image_features(state: sac.SACState, obs: Mapping[str, Any], chunk: int = 256) -> np.ndarray:
    """(N, cameras x bottleneck) image features of the critic's encoder for a batch of
    observations ``{"state": (N, S), "images": {cam: (N, H, W, 3) uint8}}``: each camera's
    normalised bottleneck after its tanh, cameras in sorted order."""
    n = len(obs["state"])
    if n == 0 or not obs.get("images"):
        raise ValueError("image_features needs at least one frame of at least one camera")
    encoder, params = state.nets.encoder, state.critic_params["encoder"]
    parts = [np.asarray(_bottlenecks(encoder, params, jax.tree.map(lambda v, i=i: v[i:i + chunk],
                                                                   obs)))
             for i in range(0, n, chunk)]
    return np.concatenate(parts)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50
                 ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Class-balanced, L2-regularised logistic regression by Newton's method (deterministic,
    no learning rate). Features are standardised first. Returns (w, b, mean, std):
    ``score(x) = ((x - mean) / std) @ w + b``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, bool)
    if y.all() or not y.any():
        raise ValueError("the probe needs both successful and failed frames to fit")
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1)
    weight = np.where(y, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    reg = l2 * np.eye(z.shape[1])
    reg[-1, -1] = 0.0  # no penalty on the bias
    theta = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(z @ theta)))
        grad = z.T @ (weight * (p - y)) + reg @ theta
        hess = (z * (weight * p * (1 - p))[:, None]).T @ z + reg
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1]), mean, std


def probe_scores(fit: tuple[np.ndarray, float, np.ndarray, np.ndarray], x: np.ndarray
                 ) -> np.ndarray:
    w, b, mean, std = fit
    return ((np.asarray(x, np.float64) - mean) / std) @ w + b
