"""Behaviour cloning with SAC's networks, to learn from demos alone or to warm-start SAC.

The policy is SAC's :class:`~hilrl.learning.networks.TanhGaussianActor` on the same
:class:`~hilrl.learning.networks.ObservationEncoder` (built from a :class:`SACConfig` in
``BCConfig.network``, so the parameter trees match). Two losses:

- ``"mse"`` (default): ``mean((tanh(mean) - a)^2)`` -- robust to demo actions at exactly
  +-1 (gripper commands, saturated teleop); the log-std head is not trained.
- ``"nll"``: maximum likelihood of the demo action under the tanh-Gaussian (actions clipped
  to +-(1 - 1e-4) for the inverse tanh); trains the log-std head too.

Here the encoder is trained by the BC loss (unlike SAC, where only the critic trains it).

Warm-starting SAC: build both from the same network config, train BC, then
``sac_state = bc.warm_start_sac(sac.create(cfg, obs, A), bc_state)``. This copies the actor
(dropping the gripper column when SAC's gripper is discrete) and, by default, the encoder into
the critic and target critic; the moved parameters' optimiser states are reset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import flax.struct as struct
import jax
import jax.numpy as jnp
import optax

from hilrl.learning import networks as nets_lib
from hilrl.learning import sac

Array = jax.Array


@dataclass(frozen=True)
class BCConfig:
    network: sac.SACConfig = sac.SACConfig()  # encoder + actor architecture (SAC's fields)
    lr: float = 3e-4
    loss: str = "mse"  # "mse" | "nll"
    augment_pad: int = 4  # DrQ random shift; 0 turns it off

    def __post_init__(self) -> None:
        if self.loss not in ("mse", "nll"):
            raise ValueError(f"loss must be 'mse' or 'nll', got {self.loss!r}")


def _net_config(config: BCConfig) -> sac.SACConfig:
    # BC predicts every action entry with the continuous actor, gripper included.
    return dataclasses.replace(config.network, discrete_gripper=False)


@struct.dataclass
class BCState:
    params: Any  # {"encoder", "actor"}
    opt_state: optax.OptState
    rng: Array
    step: Array
    config: BCConfig = struct.field(pytree_node=False)
    action_size: int = struct.field(pytree_node=False)


def create(config: BCConfig, obs_example: Mapping[str, Any], action_size: int,
           seed: int = 0) -> BCState:
    nets = sac.make_nets(_net_config(config), action_size)
    obs = sac._batched(obs_example)
    rng, k_enc, k_actor = jax.random.split(jax.random.PRNGKey(seed), 3)
    enc = nets.encoder.init(k_enc, obs)["params"]
    feats = nets.encoder.apply({"params": enc}, obs)
    params = {"encoder": enc, "actor": nets.actor.init(k_actor, feats)["params"]}
    return BCState(params, optax.adam(config.lr).init(params), rng, jnp.zeros((), jnp.int32),
                   config, action_size)


def bc_loss(mean: Array, log_std: Array, actions: Array, kind: str) -> Array:
    """Imitation loss of demo ``actions`` (B, A) in [-1, 1] under the policy's (mean,
    log_std)."""
    if kind == "mse":
        return jnp.mean((nets_lib.tanh_gaussian_mode(mean) - actions) ** 2)
    pre_tanh = jnp.arctanh(jnp.clip(actions, -1.0 + 1e-4, 1.0 - 1e-4))
    return -jnp.mean(nets_lib.tanh_gaussian_log_prob(mean, log_std, pre_tanh))


@jax.jit
def update(state: BCState, batch: Mapping[str, Any]) -> tuple[BCState, dict[str, Array]]:
    """One gradient step on ``batch`` = ``{"obs", "action"}`` (other keys ignored)."""
    config = state.config
    nets = sac.make_nets(_net_config(config), state.action_size)
    rng, k_aug = jax.random.split(state.rng)
    obs = sac.augment_observation(batch["obs"], k_aug, config.augment_pad)
    actions = batch["action"]

    def loss_fn(params: Any) -> tuple[Array, dict[str, Array]]:
        feats = nets.encoder.apply({"params": params["encoder"]}, obs)
        mean, log_std = nets.actor.apply({"params": params["actor"]}, feats)
        loss = bc_loss(mean, log_std, actions, config.loss)
        mse = jnp.mean((nets_lib.tanh_gaussian_mode(mean) - actions) ** 2)
        return loss, {"bc_loss": loss, "mse": mse}

    grads, info = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optax.adam(config.lr).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(params=params, opt_state=opt_state, rng=rng, step=state.step + 1), info


def policy(state: BCState) -> sac.Policy:
    """The BC policy in SAC's acting format: :func:`sac.sample_actions` runs it."""
    return sac.Policy(state.params, _net_config(state.config), state.action_size)


def sample_actions(state: BCState, obs: Mapping[str, Any], rng: Array,
                   deterministic: bool = True) -> Array:
    return sac.sample_actions(policy(state), obs, rng, deterministic)


def _take_action_columns(tree: Any, n: int) -> Any:
    return jax.tree.map(lambda x: x[..., :n], tree)


def warm_start_sac(sac_state: sac.SACState, bc_state: BCState,
                   copy_encoder: bool = True) -> sac.SACState:
    """SAC state with BC's actor (and encoder) parameters; see the module docstring."""
    actor = bc_state.params["actor"]
    n_cont = sac.continuous_dim(sac_state.config, sac_state.action_size)
    if n_cont != bc_state.action_size:
        if n_cont != bc_state.action_size - 1:
            raise ValueError(f"BC has {bc_state.action_size} action dims, SAC's actor {n_cont}")
        actor = {**actor, "mean": _take_action_columns(actor["mean"], n_cont),
                 "log_std": _take_action_columns(actor["log_std"], n_cont)}
    if jax.tree.structure(actor) != jax.tree.structure(sac_state.actor_params) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(actor),
                                               jax.tree.leaves(sac_state.actor_params),
                                               strict=True)):
        raise ValueError("BC and SAC actors differ: build both from the same network config")
    _, actor_opt, _ = sac._optimizers(sac_state.config)
    new = sac_state.replace(actor_params=actor, actor_ema_params=actor,
                            actor_opt_state=actor_opt.init(actor))
    if copy_encoder:
        critic = {**new.critic_params, "encoder": bc_state.params["encoder"]}
        target = {**new.target_critic_params, "encoder": bc_state.params["encoder"]}
        critic_opt = sac._optimizers(sac_state.config)[0]
        new = new.replace(critic_params=critic, target_critic_params=target,
                          critic_opt_state=critic_opt.init(critic))
    return new


__all__ = ["BCConfig", "BCState", "bc_loss", "create", "policy", "sample_actions", "update",
           "warm_start_sac"]
