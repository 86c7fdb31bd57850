"""Dormant units (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL"; DrM, Xu et
al. 2024): how much of a network has stopped responding to its inputs.

A unit's score is its mean absolute activation over a batch divided by the mean of that over
its layer; it is tau-dormant when the score is at most tau. A network's dormant ratio is the
fraction of its units, over all recorded layers, that are dormant. DrM reads a high ratio in
the policy as an agent that has stopped exploring, and shrinks-and-perturbs the weights by
it (:func:`hilrl.learning.sac.perturb`).

The networks record each hidden layer's per-unit activity with :func:`record` into the
``"activity"`` collection; applying a network with ``mutable=[COLLECTION]`` returns it, and
without it the recording costs nothing (XLA drops the unused reduction).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

COLLECTION = "activity"


def record(module: nn.Module, x: jax.Array, name: str) -> None:
    """Record the mean |activation| of each unit (the last axis) of ``x`` over the rest (the
    batch and, for a feature map, the positions)."""
    module.sow(COLLECTION, name, jnp.mean(jnp.abs(x), axis=tuple(range(x.ndim - 1))))


def dormant_ratio(activity: Any, threshold: float) -> jax.Array:
    """Fraction of tau-dormant units over every layer in ``activity`` (a tree whose leaves are
    per-unit mean |activation|, shape (..., units); leading axes such as an ensemble's are
    separate layers). Zero when nothing was recorded."""
    dormant = total = 0
    for leaf in jax.tree.leaves(activity):
        layer_mean = jnp.mean(leaf, axis=-1, keepdims=True)
        # A layer with no activity at all is all dormant (0 <= tau), not 0/0.
        score = leaf / jnp.maximum(layer_mean, jnp.finfo(leaf.dtype).tiny)
        dormant = dormant + jnp.sum(score <= threshold)
        total += leaf.size
    return jnp.asarray(dormant / total if total else 0.0, jnp.float32)


def perturb_factor(ratio: jax.Array, rate: float, low: float, high: float) -> jax.Array:
    """DrM's shrink factor: the share of the old weights kept, ``clip(1 - rate * ratio, low,
    high)`` -- the more dormant, the more is replaced by fresh initial weights."""
    return jnp.clip(1.0 - rate * ratio, low, high)
