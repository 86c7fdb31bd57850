"""SAC with RLPD's choices, as HIL-SERL uses it -- the whole agent in one file.

RLPD (Ball et al. 2023): an ensemble of N independent critics with LayerNorm, the target is the
min over a random subset of M members, the actor maximises the ensemble mean, several critic
steps per actor step ("UTD"), and no entropy term in the target for sparse rewards. Pixels:
DrQ random-shift augmentation, and the image encoder is trained by the critic loss only -- the
actor reads ``stop_gradient`` of the same encoder's features. Optionally the gripper is a
discrete action with its own double-DQN critic (HIL-SERL's hybrid agent), rewarded with
``reward + grasp_penalty_weight * grasp_penalty``.

Usage::

    state = sac.create(SACConfig(...), example_obs, action_size, seed=0)
    state, metrics = sac.update(state, batch)          # one jitted call: utd critic steps,
                                                       # then one actor + temperature step
    action = sac.sample_actions(sac.policy(state), obs, key)   # on the actor node

Parameter layout (what checkpoints and weight messages hold):
``critic_params = {"encoder", "critic", ["gripper"]}`` (the encoder lives with the critic,
because only the critic loss trains it), ``target_critic_params`` the same tree, and
``actor_params`` separately, ``actor_ema_params`` its moving average. :func:`policy` picks
what the actor node needs: ``{"encoder", "actor", ["gripper"]}`` (``config.policy_tau``).

Batch (from the replay buffer): ``{"obs": {"state": (B,S) f32, "images": {cam: (B,H,W,3)
uint8}}, "next_obs": same, "action": (B,A) f32, "reward": (B,) f32, "mask": (B,) f32 = 1 -
terminated, optional "grasp_penalty": (B,) f32}``; for ``utd > 1`` the leading dim is
``utd * B`` and each critic step takes its own slice.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hilrl.learning import dormant, temporal
from hilrl.learning import networks as nets_lib
from hilrl.learning.sac_config import SACConfig

Array = jax.Array
Params = Any
Batch = Mapping[str, Any]


class Nets(NamedTuple):
    encoder: nets_lib.ObservationEncoder
    actor: nets_lib.TanhGaussianActor
    critic: nets_lib.CriticEnsemble
    gripper: nets_lib.GripperCritic | None
    temporal: temporal.TemporalHead | None  # config.aux_loss
    value: nets_lib.StateValue | None  # config.exploit_lambda


def continuous_dim(config: SACConfig, action_size: int) -> int:
    return action_size - 1 if config.discrete_gripper else action_size


@functools.lru_cache(maxsize=64)
def make_nets(config: SACConfig, action_size: int) -> Nets:
    encoder = nets_lib.ObservationEncoder(
        encoder=config.encoder, conv_features=config.conv_features,
        conv_strides=config.conv_strides, conv_impl=config.conv_impl, pooling=config.pooling,
        num_spatial_features=config.num_spatial_features, bottleneck_dim=config.bottleneck_dim,
        proprio_hidden=config.proprio_hidden, latent_dim=config.latent_dim)
    actor = nets_lib.TanhGaussianActor(continuous_dim(config, action_size), config.hidden_dims,
                                       config.layer_norm, config.log_std_min, config.log_std_max)
    critic = nets_lib.CriticEnsemble(config.num_critics, config.hidden_dims, config.layer_norm)
    gripper = (nets_lib.GripperCritic(config.hidden_dims, config.layer_norm)
               if config.discrete_gripper else None)
    aux = (temporal.TemporalHead(config.aux_loss, config.latent_dim, config.aux_dim)
           if config.aux_loss != "none" else None)
    value = (nets_lib.StateValue(config.hidden_dims, config.layer_norm)
             if config.exploit_lambda > 0 else None)
    return Nets(encoder, actor, critic, gripper, aux, value)


def target_entropy(config: SACConfig, action_size: int) -> float:
    if config.target_entropy is not None:
        return config.target_entropy
    return -continuous_dim(config, action_size) / 2.0


@struct.dataclass
class SACState:
    """The whole learner state, an immutable pytree (config and sizes are static)."""

    critic_params: Params  # {"encoder", "critic", ["gripper"]}
    target_critic_params: Params
    actor_params: Params
    actor_ema_params: Params  # what the actors run (config.policy_tau)
    critic_opt_state: optax.OptState
    actor_opt_state: optax.OptState
    log_alpha: Array  # scalar; temperature alpha = exp(log_alpha)
    temperature_opt_state: optax.OptState
    rng: Array
    step: Array  # number of update() calls
    config: SACConfig = struct.field(pytree_node=False)
    action_size: int = struct.field(pytree_node=False)

    @property
    def nets(self) -> Nets:
        return make_nets(self.config, self.action_size)

    @property
    def temperature(self) -> Array:
        return jnp.exp(self.log_alpha)


@struct.dataclass
class Policy:
    """What the actor node needs to act: ``params = {"encoder", "actor", ["gripper"]}``."""

    params: Params
    config: SACConfig = struct.field(pytree_node=False)
    action_size: int = struct.field(pytree_node=False)


def policy(state: SACState) -> Policy:
    """The policy the actors run: the slow copy (target encoder, averaged actor), or with
    ``policy_tau = 1`` the latest one."""
    slow = state.config.policy_tau < 1.0
    critic = state.target_critic_params if slow else state.critic_params
    params = {"encoder": critic["encoder"],
              "actor": state.actor_ema_params if slow else state.actor_params}
    if state.config.discrete_gripper:
        params["gripper"] = critic["gripper"]
    return Policy(params, state.config, state.action_size)


# ------------------------------------------------------------------------- pure loss functions


def critic_target(next_q_ensemble: Array, reward: Array, mask: Array, discount: float,
                  subset_idx: Array, next_log_prob: Array, alpha: Array | float,
                  backup_entropy: bool, next_value: Array | None = None,
                  lam: Array | float = 0.0) -> Array:
    """TD target ``r + discount * mask * (min_{i in subset} Q'_i(s', a') [- alpha log pi])``.

    ``next_q_ensemble`` (N, B) from the target critics at ``a' ~ pi(s')``; ``subset_idx`` (M,)
    picks the members to take the min over; ``mask`` = 1 - terminated: a truncated transition
    still bootstraps. With ``next_value`` (B,), the min is blended with it:
    ``lam * next_value + (1 - lam) * min`` (DrM's exploitation).
    """
    next_q = jnp.min(next_q_ensemble[subset_idx], axis=0)
    if next_value is not None:
        next_q = lam * next_value + (1.0 - lam) * next_q
    if backup_entropy:
        next_q = next_q - alpha * next_log_prob
    return reward + discount * mask * next_q


def return_bound(reward: np.ndarray, terminated: np.ndarray, discount: float) -> float:
    """The largest discounted return transitions with these rewards allow: every step earns
    the largest reward seen on a step that does not end the episode, forever, then the
    largest reward seen on one that does. For a 0/1 success reward that ends the episode it
    is 1; a mean Q well above it is the critics overestimating. ``inf`` when unbounded."""
    reward, terminated = np.asarray(reward, np.float64), np.asarray(terminated, bool)
    if reward.size == 0:
        return float("inf")
    going_on = max(float(reward[~terminated].max(initial=0.0)), 0.0)
    ending = max(float(reward[terminated].max(initial=0.0)), 0.0)
    if going_on == 0.0:
        return ending
    return going_on / (1.0 - discount) + ending if discount < 1.0 else float("inf")


def expectile_loss(value: Array, target: Array, expectile: float) -> Array:
    """Asymmetric squared error: with ``expectile`` > 0.5, ``value`` learns an upper
    expectile of ``target`` (IQL's and DrM's value loss)."""
    err = value - target
    return jnp.mean(jnp.where(err > 0, 1.0 - expectile, expectile) * err ** 2)


def exploit_lambda(actor_dormant: Array, config: SACConfig) -> Array:
    """DrM's exploitation weight: near ``exploit_lambda`` once the actor's dormant ratio is
    below ``target_dormant_ratio``, near 0 while it is above."""
    return config.exploit_lambda / (1.0 + jnp.exp(
        config.exploit_temperature * (actor_dormant - config.target_dormant_ratio)))


def critic_loss(q_ensemble: Array, target: Array) -> Array:
    """Mean over members and batch of (Q_i(s, a) - target)^2; ``q_ensemble`` (N, B)."""
    return jnp.mean((q_ensemble - jax.lax.stop_gradient(target)[None]) ** 2)


def actor_loss(log_prob: Array, q_ensemble: Array, alpha: Array | float) -> Array:
    """``mean(alpha * log pi(a|s) - mean_i Q_i(s, a))`` with ``a ~ pi(s)``; ``alpha`` is held
    fixed (stop-gradient)."""
    return jnp.mean(jax.lax.stop_gradient(alpha) * log_prob - jnp.mean(q_ensemble, axis=0))


def temperature_loss(log_alpha: Array, log_prob: Array, target_entropy: float) -> Array:
    """``-log_alpha * mean(log pi + target_entropy)`` (log pi held fixed).

    Its gradient is ``entropy - target_entropy``: when the policy's entropy is below target
    the gradient is negative and descent raises alpha.
    """
    return -log_alpha * jnp.mean(jax.lax.stop_gradient(log_prob) + target_entropy)


def gripper_double_dqn_target(next_q_online: Array, next_q_target: Array, reward: Array,
                              mask: Array, discount: float) -> Array:
    """Double DQN: pick ``a' = argmax`` with the online net, evaluate it with the target net.
    ``next_q_*`` (B, K) -> target (B,)."""
    best = jnp.argmax(next_q_online, axis=-1)
    next_q = jnp.take_along_axis(next_q_target, best[:, None], axis=-1)[:, 0]
    return reward + discount * mask * next_q


def gripper_loss(q: Array, action_index: Array, target: Array) -> Array:
    """Mean squared TD error of the taken gripper action; ``q`` (B, K)."""
    q_taken = jnp.take_along_axis(q, action_index[:, None], axis=-1)[:, 0]
    return jnp.mean((q_taken - jax.lax.stop_gradient(target)) ** 2)


# ------------------------------------------------------------------------------ augmentation


def random_shift(images: Array, key: Array, pad: int) -> Array:
    """DrQ random shift: replicate-pad by ``pad`` pixels, then crop back to (H, W) at an
    independent random offset per sample (shift in [-pad, pad] on each axis). (B, H, W, C)."""
    if pad <= 0:
        return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)
    crop = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))
    return crop(padded, offsets)


def augment_observation(obs: Mapping[str, Any], key: Array, pad: int) -> dict[str, Any]:
    """Random-shift every camera of ``obs`` (each with its own key); other entries as is."""
    obs = dict(obs)
    if "images" in obs and pad > 0:
        cams = sorted(obs["images"])
        keys = jax.random.split(key, max(len(cams), 1))
        obs["images"] = {cam: random_shift(obs["images"][cam], k, pad)
                         for cam, k in zip(cams, keys, strict=False)}
    return obs


# ----------------------------------------------------------------------------------- create


def _optimizers(config: SACConfig) -> tuple[optax.GradientTransformation, ...]:
    return (optax.adam(config.critic_lr), optax.adam(config.actor_lr),
            optax.adam(config.temperature_lr))


def _is_unbatched(obs: Mapping[str, Any]) -> bool:
    if "state" in obs:
        return np.ndim(obs["state"]) == 1
    if obs.get("images"):
        return np.ndim(obs["images"][sorted(obs["images"])[0]]) == 3
    raise ValueError("observation has neither 'state' nor 'images'")


def _batched(obs: Mapping[str, Any]) -> Any:
    if _is_unbatched(obs):
        return jax.tree.map(lambda x: jnp.asarray(x)[None], dict(obs))
    return jax.tree.map(jnp.asarray, dict(obs))


def _init_params(config: SACConfig, action_size: int, obs: Any, keys: Array
                 ) -> tuple[Params, Params]:
    """Fresh ``(critic_params, actor_params)`` for a batched example observation, from 4 keys
    (encoder, actor, critic, gripper)."""
    nets = make_nets(config, action_size)
    k_enc, k_actor, k_critic, k_grip = keys
    enc_params = nets.encoder.init(k_enc, obs)["params"]
    feats = nets.encoder.apply({"params": enc_params}, obs)
    act = jnp.zeros((feats.shape[0], continuous_dim(config, action_size)), jnp.float32)
    critic_params = {"encoder": enc_params,
                     "critic": nets.critic.init(k_critic, feats, act)["params"]}
    if nets.gripper is not None:
        critic_params["gripper"] = nets.gripper.init(k_grip, feats)["params"]
    if nets.temporal is not None:  # its own key, leaving the others' draws as they were
        full_action = jnp.zeros((feats.shape[0], action_size), jnp.float32)
        critic_params["aux"] = nets.temporal.init(jax.random.fold_in(k_critic, 1), feats,
                                                  full_action, feats)["params"]
    if nets.value is not None:
        critic_params["value"] = nets.value.init(jax.random.fold_in(k_critic, 2),
                                                 feats)["params"]
    return critic_params, nets.actor.init(k_actor, feats)["params"]


def create(config: SACConfig, obs_example: Mapping[str, Any], action_size: int,
           seed: int = 0) -> SACState:
    """Initialise parameters and optimisers from one example observation (batched or not)."""
    rng, *keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    critic_params, actor_params = _init_params(config, action_size, _batched(obs_example),
                                               jnp.stack(keys))
    log_alpha = jnp.asarray(np.log(config.init_temperature), jnp.float32)
    critic_opt, actor_opt, temp_opt = _optimizers(config)
    return SACState(
        critic_params=critic_params,
        target_critic_params=jax.tree.map(jnp.copy, critic_params),
        actor_params=actor_params,
        actor_ema_params=jax.tree.map(jnp.copy, actor_params),
        critic_opt_state=critic_opt.init(critic_params),
        actor_opt_state=actor_opt.init(actor_params),
        log_alpha=log_alpha,
        temperature_opt_state=temp_opt.init(log_alpha),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
        config=config,
        action_size=action_size,
    )


# ------------------------------------------------------------------------------------ update


def _encode(nets: Nets, encoder_params: Params, obs: Any) -> Array:
    return nets.encoder.apply({"params": encoder_params}, obs)


def critic_step(state: SACState, batch: Batch, key: Array) -> tuple[SACState, dict[str, Array]]:
    """One critic (+ gripper critic) gradient step on ``batch`` and a soft target update."""
    config, nets = state.config, state.nets
    n_cont = continuous_dim(config, state.action_size)
    k_next, k_subset = jax.random.split(key)
    obs, next_obs = batch["obs"], batch["next_obs"]
    alpha = jnp.exp(state.log_alpha)

    # Targets: a' ~ pi(s') from the online encoder's features (as the actor would act),
    # Q' from the target encoder + target critics. Nothing here is differentiated.
    next_feats = _encode(nets, state.critic_params["encoder"], next_obs)
    (mean, log_std), activity = nets.actor.apply({"params": state.actor_params}, next_feats,
                                                 mutable=[dormant.COLLECTION])
    next_action, next_log_prob = nets_lib.sample_tanh_gaussian(mean, log_std, k_next)
    target_feats = _encode(nets, state.target_critic_params["encoder"], next_obs)
    next_q = nets.critic.apply({"params": state.target_critic_params["critic"]},
                               target_feats, next_action)
    subset = jax.random.choice(k_subset, config.num_critics, (config.num_min_critics,),
                               replace=False)
    next_value, lam, exploit_info = None, 0.0, {}
    if nets.value is not None:
        lam = exploit_lambda(dormant.dormant_ratio(activity, config.dormant_threshold), config)
        next_value = nets.value.apply({"params": state.critic_params["value"]}, next_feats)
        exploit_info = {"exploit_lambda": lam}
    target_q = critic_target(next_q, batch["reward"], batch["mask"], config.discount, subset,
                             next_log_prob, alpha, config.backup_entropy, next_value, lam)
    if nets.gripper is not None:
        grip_reward = batch["reward"]
        if "grasp_penalty" in batch:
            grip_reward = grip_reward + config.grasp_penalty_weight * batch["grasp_penalty"]
        grip_target = gripper_double_dqn_target(
            nets.gripper.apply({"params": state.critic_params["gripper"]}, next_feats),
            nets.gripper.apply({"params": state.target_critic_params["gripper"]}, target_feats),
            grip_reward, batch["mask"], config.discount)
        grip_index = nets_lib.gripper_index(batch["action"][:, -1])

    def loss_fn(params: Params) -> tuple[Array, dict[str, Array]]:
        feats = _encode(nets, params["encoder"], obs)
        q = nets.critic.apply({"params": params["critic"]}, feats, batch["action"][:, :n_cont])
        loss = critic_loss(q, target_q)
        info = {"critic_loss": loss, "q": jnp.mean(q), "target_q": jnp.mean(target_q)}
        if nets.gripper is not None:
            grip_q = nets.gripper.apply({"params": params["gripper"]}, feats)
            g_loss = gripper_loss(grip_q, grip_index, grip_target)
            info.update(gripper_loss=g_loss, gripper_q=jnp.mean(grip_q))
            loss = loss + g_loss
        if nets.value is not None:  # V: an upper expectile of Q over the replay's actions
            v = nets.value.apply({"params": params["value"]}, jax.lax.stop_gradient(feats))
            q_data = jax.lax.stop_gradient(jnp.min(q[subset], axis=0))
            v_loss = expectile_loss(v, q_data, config.exploit_expectile)
            info.update(exploit_info, value_loss=v_loss)
            loss = loss + v_loss
        if nets.temporal is not None:
            # z_{t+1} is the target encoder's (no gradient); SPR's key projection is the
            # target network's too, TACO's is trained.
            key_params = (params if config.aux_loss == "taco"
                          else state.target_critic_params)["aux"]
            query = nets.temporal.apply({"params": params["aux"]}, feats, batch["action"],
                                        method=temporal.TemporalHead.query)
            key = nets.temporal.apply({"params": key_params}, target_feats,
                                      method=temporal.TemporalHead.key)
            a_loss = temporal.aux_loss(config.aux_loss, query, key)
            info["aux_loss"] = a_loss
            loss = loss + config.aux_weight * a_loss
        return loss, info

    grads, info = jax.grad(loss_fn, has_aux=True)(state.critic_params)
    critic_opt = _optimizers(config)[0]
    updates, opt_state = critic_opt.update(grads, state.critic_opt_state, state.critic_params)
    params = optax.apply_updates(state.critic_params, updates)
    target = optax.incremental_update(params, state.target_critic_params, config.tau)
    info["critic_grad_norm"] = optax.tree.norm(grads)
    return state.replace(critic_params=params, target_critic_params=target,
                         critic_opt_state=opt_state), info


def actor_objective(actor_params: Params, critic_params: Params, log_alpha: Array, obs: Any,
                    key: Array, config: SACConfig, action_size: int
                    ) -> tuple[Array, dict[str, Array]]:
    """The actor loss as a function of all parameters. The encoder's features enter through
    ``stop_gradient``: the actor loss never trains the encoder (nor is it meant to train the
    critic -- the update differentiates w.r.t. ``actor_params`` only)."""
    nets = make_nets(config, action_size)
    feats = jax.lax.stop_gradient(_encode(nets, critic_params["encoder"], obs))
    mean, log_std = nets.actor.apply({"params": actor_params}, feats)
    action, log_prob = nets_lib.sample_tanh_gaussian(mean, log_std, key)
    q = nets.critic.apply({"params": critic_params["critic"]}, feats, action)
    loss = actor_loss(log_prob, q, jnp.exp(log_alpha))
    return loss, {"actor_loss": loss, "log_prob": log_prob, "entropy": -jnp.mean(log_prob),
                  "actor_q": jnp.mean(q), "log_std": jnp.mean(log_std)}


def actor_step(state: SACState, batch: Batch, key: Array) -> tuple[SACState, dict[str, Array]]:
    """One actor step, then one temperature step on the same sampled actions' log-probs."""
    config = state.config
    _, actor_opt, temp_opt = _optimizers(config)
    grads, info = jax.grad(actor_objective, has_aux=True)(
        state.actor_params, state.critic_params, state.log_alpha, batch["obs"], key, config,
        state.action_size)
    updates, actor_opt_state = actor_opt.update(grads, state.actor_opt_state, state.actor_params)
    actor_params = optax.apply_updates(state.actor_params, updates)

    h_target = target_entropy(config, state.action_size)
    log_prob = info.pop("log_prob")
    t_loss, t_grad = jax.value_and_grad(temperature_loss)(state.log_alpha, log_prob, h_target)
    t_updates, temp_opt_state = temp_opt.update(t_grad, state.temperature_opt_state)
    log_alpha = optax.apply_updates(state.log_alpha, t_updates)
    info.update(temperature_loss=t_loss, temperature=jnp.exp(log_alpha),
                actor_grad_norm=optax.tree.norm(grads))
    ema = optax.incremental_update(actor_params, state.actor_ema_params, config.policy_tau)
    return state.replace(actor_params=actor_params, actor_ema_params=ema,
                         actor_opt_state=actor_opt_state, log_alpha=log_alpha,
                         temperature_opt_state=temp_opt_state), info


_BATCH_KEYS = ("obs", "next_obs", "action", "reward", "mask", "grasp_penalty")


@jax.jit
def update(state: SACState, batch: Batch) -> tuple[SACState, dict[str, Array]]:
    """``utd`` critic steps (each on its own slice of the batch, leading dim ``utd * B``), then
    one actor + temperature step on the last slice -- all in one jitted call, no host sync.

    Images of ``obs`` and ``next_obs`` are random-shifted (DrQ) here, independently per
    sample, camera and obs/next_obs. The critic loop is Python-unrolled or a ``lax.scan``
    (``config.critic_steps_unrolled``; None = unrolled on CPU, where XLA ran unrolled
    conv-gradient steps 9-24x faster than the scan, scan elsewhere). Both give the same
    result for the same state.
    """
    before = state
    config = state.config
    batch = {k: batch[k] for k in _BATCH_KEYS if k in batch}
    rng, k_obs, k_next, k_critic, k_actor = jax.random.split(state.rng, 5)
    batch["obs"] = augment_observation(batch["obs"], k_obs, config.augment_pad)
    batch["next_obs"] = augment_observation(batch["next_obs"], k_next, config.augment_pad)

    n = batch["reward"].shape[0]
    if n % config.utd:
        raise ValueError(f"batch size {n} is not a multiple of utd={config.utd}")
    # Slice i is rows i, i + utd, i + 2 utd, ...: a batch split into contiguous blocks over
    # devices (data_parallel) then holds an equal share of every slice on each device.
    slices = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((n // config.utd, config.utd) + x.shape[1:]), 0, 1),
        batch)
    keys = jax.random.split(k_critic, config.utd)
    unrolled = config.critic_steps_unrolled
    if unrolled is None:
        unrolled = jax.default_backend() == "cpu"
    if unrolled:
        infos = []
        for i in range(config.utd):
            state, info = critic_step(state, jax.tree.map(lambda x, i=i: x[i], slices), keys[i])
            infos.append(info)
        critic_info = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *infos)
    else:
        state, infos = jax.lax.scan(lambda s, xs: critic_step(s, *xs), state, (slices, keys))
        critic_info = jax.tree.map(jnp.mean, infos)

    state, actor_info = actor_step(state, jax.tree.map(lambda x: x[-1], slices), k_actor)
    info = {**critic_info, **actor_info}
    # A non-finite loss or parameter (a diverging critic, an extreme batch) must not reach the
    # weights the actors run or the checkpoints: the whole update is dropped instead, on the
    # device, and counted in info["update_skipped"].
    ok = all_finite((info, state.critic_params, state.actor_params, state.log_alpha))
    state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), state, before)
    state = state.replace(rng=rng, step=before.step + 1)
    return state, {**info, "update_skipped": 1.0 - ok.astype(jnp.float32)}


@jax.jit
def dormant_ratios(state: SACState, batch: Batch) -> dict[str, Array]:
    """The dormant ratio (:mod:`hilrl.learning.dormant`) of the encoder, the actor, the critic
    ensemble and, if any, the gripper critic, on ``batch``'s observations and actions as they
    are (no augmentation)."""
    config, nets = state.config, state.nets
    params, keep = state.critic_params, [dormant.COLLECTION]
    feats, activity = nets.encoder.apply({"params": params["encoder"]}, batch["obs"],
                                         mutable=keep)
    ratios = {"encoder": activity}
    ratios["actor"] = nets.actor.apply({"params": state.actor_params}, feats, mutable=keep)[1]
    action = batch["action"][:, :continuous_dim(config, state.action_size)]
    ratios["critic"] = nets.critic.apply({"params": params["critic"]}, feats, action,
                                         mutable=keep)[1]
    if nets.gripper is not None:
        ratios["gripper"] = nets.gripper.apply({"params": params["gripper"]}, feats,
                                               mutable=keep)[1]
    return {k: dormant.dormant_ratio(v, config.dormant_threshold) for k, v in ratios.items()}


@jax.jit
def perturb(state: SACState, batch: Batch) -> tuple[SACState, dict[str, Array]]:
    """DrM's dormant-ratio-guided shrink-and-perturb: every network (encoder, actor, critics,
    their slow copies) becomes ``f * itself + (1 - f) * a fresh initialisation``, with ``f``
    from the actor's dormant ratio on ``batch`` (:func:`dormant.perturb_factor`); the actor's
    and critics' optimisers start over, as DrM's do."""
    config = state.config
    ratio = dormant_ratios(state, batch)["actor"]
    f = dormant.perturb_factor(ratio, config.perturb_rate, config.perturb_min,
                               config.perturb_max)
    rng, key = jax.random.split(state.rng)
    example = jax.tree.map(lambda x: x[:1], batch["obs"])
    fresh_critic, fresh_actor = _init_params(config, state.action_size, example,
                                             jax.random.split(key, 4))

    def blend(old: Params, new: Params) -> Params:
        return jax.tree.map(lambda o, n: f * o + (1.0 - f) * n, old, new)

    critic, actor = blend(state.critic_params, fresh_critic), blend(state.actor_params,
                                                                    fresh_actor)
    critic_opt, actor_opt, _ = _optimizers(config)
    state = state.replace(
        critic_params=critic, target_critic_params=blend(state.target_critic_params,
                                                         fresh_critic),
        actor_params=actor, actor_ema_params=blend(state.actor_ema_params, fresh_actor),
        critic_opt_state=critic_opt.init(critic), actor_opt_state=actor_opt.init(actor),
        rng=rng)
    return state, {"actor_dormant_ratio": ratio, "perturb_factor": f}


def critic_saliency(state: SACState, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Grad-CAM (:mod:`hilrl.learning.saliency`) of the critics' mean Q of the policy's mean
    action, per camera: ``{camera: (B, H, W)}`` in [0, 1]."""
    from hilrl.learning import saliency

    nets, params = state.nets, state.critic_params
    n_cont = continuous_dim(state.config, state.action_size)

    def q(feats: Array) -> Array:
        mean, _ = nets.actor.apply({"params": state.actor_params}, feats)
        action = jax.lax.stop_gradient(nets_lib.tanh_gaussian_mode(mean))[:, :n_cont]
        return jnp.mean(nets.critic.apply({"params": params["critic"]}, feats, action), axis=0)

    images = obs["images"]
    return saliency.grad_cam(nets.encoder, {"params": params["encoder"]}, obs, q,
                             {cam: tuple(np.shape(images[cam])[1:3]) for cam in images},
                             nets_lib.backbone_grid(state.config.encoder,
                                                    state.config.conv_strides))


def all_finite(tree: Any) -> Array:
    """Scalar bool: every element of every floating leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# ------------------------------------------------------------------------------------ acting


@functools.partial(jax.jit, static_argnames=("deterministic",))
def _sample_actions(pol: Policy, obs: Any, rng: Array, deterministic: bool) -> Array:
    nets = make_nets(pol.config, pol.action_size)
    feats = _encode(nets, pol.params["encoder"], obs)
    mean, log_std = nets.actor.apply({"params": pol.params["actor"]}, feats)
    if deterministic:
        action = nets_lib.tanh_gaussian_mode(mean)
    else:
        action, _ = nets_lib.sample_tanh_gaussian(mean, log_std, rng)
    if nets.gripper is not None:
        grip_q = nets.gripper.apply({"params": pol.params["gripper"]}, feats)
        grip = nets_lib.gripper_value(jnp.argmax(grip_q, axis=-1))
        action = jnp.concatenate([action, grip[:, None]], axis=-1)
    return action


def sample_actions(pol: Policy | SACState, obs: Mapping[str, Any], rng: Array,
                   deterministic: bool = False) -> Array:
    """Actions in [-1, 1] for a batched or single observation (then the result is (A,)).

    The gripper (``discrete_gripper``) is the gripper critic's argmax as -1 / 0 / +1.
    """
    if isinstance(pol, SACState):
        pol = policy(pol)
    single = _is_unbatched(obs)
    action = _sample_actions(pol, _batched(obs), rng, deterministic)
    return action[0] if single else action
