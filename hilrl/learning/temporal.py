"""Temporal auxiliary losses for the image encoder (``agent.aux_loss``), trained with the
critic on the same batch: what the encoder must know about how an action changes what the
cameras see.

- ``"taco"`` (TACO, Zheng et al. 2023): an InfoNCE loss that makes ``(z_t, a_t)`` pick out
  its own ``z_{t+1}`` among the batch's, through a bilinear score of two projections.
- ``"spr"`` (SPR, Schwarzer et al. 2021): a transition model predicts ``z_{t+1}`` from
  ``(z_t, a_t)``; the loss is the negative cosine similarity of the prediction and the
  projected target.

Both look one step ahead (the papers use 3 and 5), because the replay samples single
transitions, and both take ``z_{t+1}`` from the target encoder without a gradient (the
keys of a momentum encoder, as CURL and SPR's target network), which costs no forward
pass: the critic's target already computed it. ``z`` is the observation encoder's fused
feature. The parameters live in ``critic_params["aux"]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hilrl.learning.networks import MLP, default_init

AUX_LOSSES = ("none", "taco", "spr")


class TemporalHead(nn.Module):
    """The auxiliary networks. ``query(z_t, a_t)``: TACO's ``W G(z_t, a_t)``, SPR's
    ``predictor(projection(transition(z_t, a_t)))``. ``key(z_{t+1})``: TACO's ``H``, SPR's
    ``projection`` (which SPR applies with the target network's, a moving average's,
    parameters)."""

    kind: str
    latent_dim: int
    dim: int = 64
    hidden: Sequence[int] = (256,)

    def setup(self) -> None:
        out = self.latent_dim if self.kind == "spr" else self.dim
        self.action = nn.Dense(self.dim, kernel_init=default_init())
        self.transition = MLP((*self.hidden, out))
        self.projection = MLP((*self.hidden, self.dim))
        # TACO's bilinear score, SPR's predictor: a linear map either way.
        self.head = nn.Dense(self.dim, use_bias=self.kind == "spr",
                             kernel_init=nn.initializers.orthogonal())

    def query(self, z: jax.Array, action: jax.Array) -> jax.Array:
        h = self.transition(jnp.concatenate([z, self.action(action)], axis=-1))
        return self.head(self.projection(h) if self.kind == "spr" else h)

    def key(self, z_next: jax.Array) -> jax.Array:
        return self.projection(z_next)

    def __call__(self, z: jax.Array, action: jax.Array, z_next: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
        return self.query(z, action), self.key(z_next)


def taco_loss(query: jax.Array, key: jax.Array) -> jax.Array:
    """InfoNCE over the batch: row i's positive is key i, the other keys its negatives."""
    logits = query @ key.T
    logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.arange(query.shape[0])))


def spr_loss(query: jax.Array, key: jax.Array) -> jax.Array:
    """Negative cosine similarity of the prediction and the (stopped) projected target."""
    def unit(x: jax.Array) -> jax.Array:
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)

    return -jnp.mean(jnp.sum(unit(query) * jax.lax.stop_gradient(unit(key)), axis=-1))


def aux_loss(kind: str, query: jax.Array, key: jax.Array) -> jax.Array:
    return taco_loss(query, key) if kind == "taco" else spr_loss(query, key)
