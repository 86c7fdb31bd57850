"""SAC/RLPD: each loss on a hand-computed case, augmentation, the jitted update, acting, and
learning Pendulum from state."""

import time

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hilrl.learning import sac

KEY = jax.random.PRNGKey(0)


# ------------------------------------------------------------------------------------ losses


def test_critic_target_min_over_the_given_subset_only():
    next_q = jnp.array([[5.0, 1.0],   # member 0
                        [-9.0, -9.0],  # member 1: the lowest, but not in the subset
                        [3.0, 4.0]])  # member 2
    reward = jnp.array([1.0, 0.0])
    mask = jnp.ones(2)
    target = sac.critic_target(next_q, reward, mask, 0.5, jnp.array([0, 2]),
                               next_log_prob=jnp.zeros(2), alpha=1.0, backup_entropy=False)
    # min over members {0, 2}: [3, 1]; 1 + 0.5 * 3 = 2.5, 0 + 0.5 * 1 = 0.5
    np.testing.assert_allclose(target, [2.5, 0.5])
    all_members = sac.critic_target(next_q, reward, mask, 0.5, jnp.arange(3), jnp.zeros(2), 1.0,
                                    False)
    np.testing.assert_allclose(all_members, [1.0 - 4.5, -4.5])


def test_critic_target_bootstraps_through_truncation_not_termination():
    next_q = jnp.array([[2.0, 2.0], [4.0, 4.0]])
    reward = jnp.array([1.0, 1.0])
    # transition 0 was truncated by a time limit (mask 1), transition 1 terminated (mask 0)
    mask = jnp.array([1.0, 0.0])
    target = sac.critic_target(next_q, reward, mask, 0.9, jnp.array([0, 1]), jnp.zeros(2), 1.0,
                               False)
    np.testing.assert_allclose(target, [1.0 + 0.9 * 2.0, 1.0])


def test_critic_target_entropy_backup_only_when_asked():
    next_q = jnp.array([[2.0], [3.0]])
    logp = jnp.array([-1.5])
    args = (next_q, jnp.array([0.0]), jnp.array([1.0]), 0.5, jnp.array([0, 1]), logp, 0.2)
    np.testing.assert_allclose(sac.critic_target(*args, False), [1.0])
    np.testing.assert_allclose(sac.critic_target(*args, True), [0.5 * (2.0 + 0.2 * 1.5)])


def test_critic_loss_is_mean_squared_error_over_members_and_batch():
    q = jnp.array([[1.0, 2.0], [3.0, 0.0]])
    target = jnp.array([1.0, 1.0])
    # errors: 0, 1, 2, -1 -> squares 0, 1, 4, 1 -> mean 1.5
    assert float(sac.critic_loss(q, target)) == pytest.approx(1.5)
    # the target is a constant: no gradient flows into it
    g = jax.grad(lambda t: sac.critic_loss(q, t))(target)
    np.testing.assert_array_equal(g, 0.0)


def test_actor_loss_uses_ensemble_mean_and_alpha():
    logp = jnp.array([-1.0, 2.0])
    q = jnp.array([[1.0, 4.0], [3.0, 0.0]])  # ensemble mean per sample: [2, 2]
    # mean(0.5 * [-1, 2] - [2, 2]) = mean([-2.5, -1]) = -1.75
    assert float(sac.actor_loss(logp, q, 0.5)) == pytest.approx(-1.75)
    # alpha is not trained by the actor loss
    assert float(jax.grad(lambda a: sac.actor_loss(logp, q, a))(0.5)) == 0.0
    # higher Q for the sampled action lowers the loss
    assert float(jax.grad(lambda q_: sac.actor_loss(logp, q_, 0.5))(q)[0, 0]) < 0


def test_temperature_loss_value_and_gradient_sign():
    target_entropy = -1.0
    # entropy 3 (log pi = -3) is above the target: the loss should push alpha down
    high = jnp.array([-3.0, -3.0])
    log_alpha = jnp.log(0.1)
    value, grad = jax.value_and_grad(sac.temperature_loss)(log_alpha, high, target_entropy)
    assert float(value) == pytest.approx(-float(log_alpha) * (-3.0 - 1.0))
    assert float(grad) == pytest.approx(4.0)  # = entropy - target_entropy > 0 -> alpha falls
    # entropy -2 below the target -1: gradient -1 < 0, descent raises alpha
    low = jnp.array([2.0])
    assert float(jax.grad(sac.temperature_loss)(log_alpha, low, target_entropy)) == \
        pytest.approx(-1.0)
    # log pi is held fixed
    g = jax.grad(sac.temperature_loss, argnums=1)(log_alpha, high, target_entropy)
    np.testing.assert_array_equal(g, 0.0)


def test_gripper_double_dqn_target_selects_online_evaluates_target():
    online = jnp.array([[0.0, 5.0, 1.0],    # argmax 1
                        [9.0, 0.0, 0.0]])   # argmax 0
    target = jnp.array([[100.0, 2.0, 300.0],  # the target net's own max (300) must not be used
                        [7.0, 50.0, 60.0]])
    reward = jnp.array([1.0, -1.0])
    mask = jnp.array([1.0, 0.5])
    out = sac.gripper_double_dqn_target(online, target, reward, mask, 0.9)
    np.testing.assert_allclose(out, [1.0 + 0.9 * 2.0, -1.0 + 0.9 * 0.5 * 7.0])


def test_gripper_loss_uses_taken_action():
    q = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # taken actions 2 and 0: errors 3-1=2, 4-4=0 -> mean 2
    assert float(sac.gripper_loss(q, jnp.array([2, 0]), jnp.array([1.0, 4.0]))) == \
        pytest.approx(2.0)


def test_default_target_entropy_is_minus_half_the_continuous_dims():
    assert sac.target_entropy(sac.SACConfig(), 4) == -2.0
    assert sac.target_entropy(sac.SACConfig(discrete_gripper=True), 4) == -1.5
    assert sac.target_entropy(sac.SACConfig(target_entropy=-7.0), 4) == -7.0


def test_config_rejects_bad_subset():
    with pytest.raises(ValueError, match="num_min_critics"):
        sac.SACConfig(num_critics=2, num_min_critics=3)


# ----------------------------------------------------------------------------- augmentation


def _find_shift(out, src, pad):
    """The (dy, dx) with out[i, j] == src[clip(i + dy), clip(j + dx)], or None."""
    h, w = src.shape[:2]
    for dy in range(-pad - 2, pad + 3):
        for dx in range(-pad - 2, pad + 3):
            ys = np.clip(np.arange(h) + dy, 0, h - 1)
            xs = np.clip(np.arange(w) + dx, 0, w - 1)
            if np.array_equal(out, src[ys][:, xs]):
                return dy, dx
    return None


def test_random_shift_is_a_per_sample_replicate_padded_shift():
    h = w = 12
    pad = 4
    # every pixel unique (y * 12 + x < 256) in channel 0, other channels derived
    base = (np.arange(h)[:, None] * w + np.arange(w)[None, :]).astype(np.uint8)
    img = np.stack([base, 255 - base, base // 2], axis=-1)
    batch = np.repeat(img[None], 64, axis=0)
    out = np.asarray(sac.random_shift(jnp.asarray(batch), jax.random.PRNGKey(3), pad))
    assert out.shape == batch.shape and out.dtype == np.uint8
    shifts = [_find_shift(o, img, pad) for o in out]
    assert all(s is not None for s in shifts)  # every output is a shifted copy of its input
    assert all(abs(dy) <= pad and abs(dx) <= pad for dy, dx in shifts)
    assert len(set(shifts)) > 10  # independent per sample
    assert {dy for dy, _ in shifts} >= {-pad, pad} or {dx for _, dx in shifts} >= {-pad, pad}
    # pad 0 is the identity
    np.testing.assert_array_equal(sac.random_shift(jnp.asarray(batch), KEY, 0), batch)


def test_augment_observation_shifts_each_camera_independently_and_keeps_state():
    img = np.random.default_rng(0).integers(0, 256, (16, 12, 12, 3), dtype=np.uint8)
    obs = {"state": np.ones((16, 2), np.float32), "images": {"a": img, "b": img}}
    out = sac.augment_observation(obs, KEY, 4)
    np.testing.assert_array_equal(out["state"], obs["state"])
    assert not np.array_equal(out["images"]["a"], out["images"]["b"])
    assert sac.augment_observation({"state": obs["state"]}, KEY, 4).keys() == {"state"}


# ------------------------------------------------------------------------- update and acting

B, H, CAMS, S, A = 8, 24, ("front", "wrist"), 5, 4


def _tiny_config(**kw):
    base = dict(num_critics=3, num_min_critics=2, utd=1, hidden_dims=(32, 32), latent_dim=32,
                bottleneck_dim=16, proprio_hidden=(16,), conv_features=(8, 8),
                conv_strides=(2, 1), num_spatial_features=4, init_temperature=0.5)
    base.update(kw)
    return sac.SACConfig(**base)


def _obs(rng, n):
    return {"state": rng.normal(size=(n, S)).astype(np.float32),
            "images": {c: rng.integers(0, 256, (n, H, H, 3), dtype=np.uint8) for c in CAMS}}


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"obs": _obs(rng, n), "next_obs": _obs(rng, n),
            "action": rng.uniform(-1, 1, (n, A)).astype(np.float32),
            "reward": rng.normal(size=n).astype(np.float32),
            "mask": (rng.uniform(size=n) > 0.2).astype(np.float32),
            "grasp_penalty": -0.1 * (rng.uniform(size=n) > 0.8).astype(np.float32)}


def _example_obs():
    obs = _obs(np.random.default_rng(9), 1)
    return jax.tree.map(lambda x: x[0], obs)  # unbatched, as the env gives it


def _changed(a, b):
    return any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True))


def test_encoder_gets_no_gradient_from_the_actor_loss():
    config = _tiny_config()
    state = sac.create(config, _example_obs(), A)
    obs = _batch(B)["obs"]
    grad_fn = jax.jit(jax.grad(lambda a, c: sac.actor_objective(
        a, c, state.log_alpha, obs, KEY, config, A)[0], argnums=(0, 1)))
    grads = grad_fn(state.actor_params, state.critic_params)
    actor_g, critic_g = grads
    assert all(np.all(g == 0) for g in jax.tree.leaves(critic_g["encoder"]))
    # (the test can fail: gradient does reach the actor and, through Q, the critic heads)
    assert any(np.any(g != 0) for g in jax.tree.leaves(actor_g))
    assert any(np.any(g != 0) for g in jax.tree.leaves(critic_g["critic"]))


@pytest.mark.parametrize("utd", [1, 2])
def test_update_scan_and_unrolled_agree(utd):
    batch = _batch(B * utd)
    results = {}
    for unrolled in (True, False):
        config = _tiny_config(utd=utd, critic_steps_unrolled=unrolled)
        state = sac.create(config, _example_obs(), A, seed=1)
        new, metrics = sac.update(state, batch)
        assert int(new.step) == 1
        assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
        for name in ("critic_loss", "actor_loss", "temperature", "entropy", "q"):
            assert name in metrics
        assert _changed(state.critic_params["encoder"], new.critic_params["encoder"])
        assert _changed(state.critic_params["critic"], new.critic_params["critic"])
        assert _changed(state.actor_params, new.actor_params)
        assert float(new.log_alpha) != float(state.log_alpha)
        results[unrolled] = new
    a, b = results[True], results[False]
    for x, y in zip(jax.tree.leaves((a.critic_params, a.target_critic_params, a.actor_params,
                                     a.log_alpha)),
                    jax.tree.leaves((b.critic_params, b.target_critic_params, b.actor_params,
                                     b.log_alpha)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_target_is_a_soft_update_of_the_online_critic():
    config = _tiny_config(tau=0.1)
    state = sac.create(config, _example_obs(), A)
    new, _ = sac.update(state, _batch(B))
    # one critic step: target' = 0.9 * target + 0.1 * online' (target started equal to online)
    for old, online, target in zip(jax.tree.leaves(state.critic_params),
                                   jax.tree.leaves(new.critic_params),
                                   jax.tree.leaves(new.target_critic_params), strict=True):
        np.testing.assert_allclose(target, 0.9 * old + 0.1 * online, rtol=1e-5, atol=1e-6)


def test_non_finite_update_is_dropped_and_counted():
    """A NaN reward (past the wire validator, e.g. from a reward bug) makes the losses NaN: the
    update is dropped whole, the next finite one goes ahead."""
    state = sac.create(_tiny_config(), _example_obs(), A)
    bad = _batch(B)
    bad["reward"][3] = np.nan
    dropped, metrics = sac.update(state, bad)
    assert float(metrics["update_skipped"]) == 1.0
    assert not np.isfinite(float(metrics["critic_loss"]))
    kept = (state.critic_params, state.target_critic_params, state.actor_params,
            state.log_alpha, state.critic_opt_state, state.actor_opt_state)
    after = (dropped.critic_params, dropped.target_critic_params, dropped.actor_params,
             dropped.log_alpha, dropped.critic_opt_state, dropped.actor_opt_state)
    for x, y in zip(jax.tree.leaves(kept), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(dropped.rng, state.rng)  # the next batch is augmented afresh
    good, metrics = sac.update(dropped, _batch(B))
    assert float(metrics["update_skipped"]) == 0.0
    assert _changed(dropped.actor_params, good.actor_params)
    assert sac.all_finite(good.critic_params)


def test_update_rejects_batch_not_divisible_by_utd():
    state = sac.create(_tiny_config(utd=2), _example_obs(), A)
    with pytest.raises(ValueError, match="multiple of utd"):
        sac.update(state, _batch(B + 1))


def test_discrete_gripper_update_and_actions():
    config = _tiny_config(discrete_gripper=True, utd=2)
    state = sac.create(config, _example_obs(), A)
    assert "gripper" in state.critic_params and "gripper" in state.target_critic_params
    assert state.actor_params["mean"]["kernel"].shape[-1] == A - 1
    new, metrics = sac.update(state, _batch(2 * B))
    assert np.isfinite(float(metrics["gripper_loss"]))
    assert _changed(state.critic_params["gripper"], new.critic_params["gripper"])
    actions = sac.sample_actions(new, _batch(B)["obs"], KEY)
    assert actions.shape == (B, A)
    assert set(np.asarray(actions[:, -1]).tolist()) <= {-1.0, 0.0, 1.0}
    assert set(sac.policy(new).params) == {"encoder", "actor", "gripper"}


def test_sample_actions_single_and_batched():
    state = sac.create(_tiny_config(), _example_obs(), A)
    single = sac.sample_actions(state, _example_obs(), KEY)
    assert single.shape == (A,) and bool(jnp.all(jnp.abs(single) <= 1))
    pol = sac.policy(state)
    assert set(pol.params) == {"encoder", "actor"}
    obs1 = jax.tree.map(lambda x: x[None], _example_obs())
    det = sac.sample_actions(pol, obs1, KEY, deterministic=True)
    assert det.shape == (1, A)
    np.testing.assert_array_equal(det, sac.sample_actions(pol, obs1, jax.random.PRNGKey(7),
                                                          deterministic=True))
    a1 = sac.sample_actions(pol, obs1, jax.random.PRNGKey(1))
    a2 = sac.sample_actions(pol, obs1, jax.random.PRNGKey(2))
    assert not np.allclose(a1, a2)


@pytest.mark.parametrize(("override", "message"), [
    ("agent.freeze_backbone=true", r"agent\.freeze_backbone: was removed; use env\.frozen_encoder"),
    ("agent.encoder=features", r"encoder 'features' was removed; use env\.frozen_encoder"),
    ("agent.encoder=vit", r"encoder must be 'conv' or 'resnet10'"),
])
def test_a_task_file_with_a_removed_frozen_encoder_switch_says_what_replaces_it(override,
                                                                               message):
    from hilrl.config import load_task
    from hilrl.config.io import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_task(None, [override])


def test_checkpoint_of_the_full_agent_state_restores_bit_exact(tmp_path):
    from hilrl.storage.checkpoint import Checkpointer

    config = _tiny_config(discrete_gripper=True)
    state = sac.create(config, _example_obs(), A, seed=0)
    for i in range(2):
        state, _ = sac.update(state, _batch(B, seed=i))
    with Checkpointer(tmp_path) as ck:
        ck.save(int(state.step), state)
        restored, _ = ck.restore(sac.create(config, _example_obs(), A, seed=7))
    assert int(restored.step) == 2
    for name in ("critic_params", "target_critic_params", "actor_params", "critic_opt_state",
                 "actor_opt_state", "log_alpha", "temperature_opt_state", "rng"):
        for x, y in zip(jax.tree.leaves(getattr(state, name)),
                        jax.tree.leaves(getattr(restored, name)), strict=True):
            x, y = np.asarray(x), np.asarray(y)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    # training goes on exactly as it would have without the save
    a, ma = sac.update(state, _batch(B, seed=5))
    b, mb = sac.update(restored, _batch(B, seed=5))
    assert float(ma["critic_loss"]) == float(mb["critic_loss"])
    for x, y in zip(jax.tree.leaves(a.actor_params), jax.tree.leaves(b.actor_params),
                    strict=True):
        assert np.array_equal(x, y)


# ---------------------------------------------------------------------------------- learning


def _numpy_replay(capacity, obs_dim, act_dim):
    return {"obs": np.zeros((capacity, obs_dim), np.float32),
            "next_obs": np.zeros((capacity, obs_dim), np.float32),
            "action": np.zeros((capacity, act_dim), np.float32),
            "reward": np.zeros(capacity, np.float32), "mask": np.zeros(capacity, np.float32)}


def evaluate(state, episodes=10, seed=1000):
    env = gym.make("Pendulum-v1")
    returns = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        done, total = False, 0.0
        while not done:
            a = np.asarray(sac.sample_actions(state, {"state": obs.astype(np.float32)}, KEY,
                                              deterministic=True))
            obs, r, terminated, truncated, _ = env.step(2.0 * a)  # actions in [-2, 2]
            total += float(r)
            done = terminated or truncated
        returns.append(total)
    return returns


def train_pendulum(steps, utd, seed=0, start_steps=1000, batch_size=128):
    """SAC from state on Pendulum-v1 with a plain numpy replay; returns (state, train
    returns)."""
    config = sac.SACConfig.cpu(utd=utd, discount=0.99, hidden_dims=(128, 128), latent_dim=64,
                               proprio_hidden=(64,), init_temperature=1.0)
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=seed)
    state = sac.create(config, {"state": obs.astype(np.float32)}, 1, seed=seed)
    replay = _numpy_replay(steps, 3, 1)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    episode_return, train_returns = 0.0, []
    for t in range(steps):
        if t < start_steps:
            action = rng.uniform(-1, 1, 1).astype(np.float32)
        else:
            key, k = jax.random.split(key)
            action = np.asarray(sac.sample_actions(state, {"state": obs.astype(np.float32)}, k))
        next_obs, reward, terminated, truncated, _ = env.step(2.0 * action)
        for name, value in (("obs", obs), ("next_obs", next_obs), ("action", action),
                            ("reward", reward), ("mask", 1.0 - float(terminated))):
            replay[name][t] = value
        episode_return += float(reward)
        obs = next_obs
        if terminated or truncated:  # Pendulum only truncates (200 steps): mask stays 1
            train_returns.append(episode_return)
            episode_return = 0.0
            obs, _ = env.reset()
        if t >= start_steps:
            idx = rng.integers(0, t + 1, batch_size * utd)
            batch = {"obs": {"state": replay["obs"][idx]},
                     "next_obs": {"state": replay["next_obs"][idx]},
                     "action": replay["action"][idx], "reward": replay["reward"][idx],
                     "mask": replay["mask"][idx]}
            state, _ = sac.update(state, batch)
    return state, train_returns


def test_random_policy_on_pendulum_scores_far_below_threshold():
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    returns = []
    for e in range(5):
        env.reset(seed=e)
        done, total = False, 0.0
        while not done:
            _, r, term, trunc, _ = env.step(rng.uniform(-2, 2, 1).astype(np.float32))
            total += float(r)
            done = term or trunc
        returns.append(total)
    print("random policy returns", np.round(returns, 1))
    assert max(returns) < -700


def test_sac_learns_pendulum_from_state():
    """CI-sized learning check: 6000 env steps, utd 2, 2 critics (~40 s on 2 CPU cores).
    A random policy scores about -1200 .. -1600 and never above -700."""
    t0 = time.perf_counter()
    state, train_returns = train_pendulum(steps=6000, utd=2)
    returns = evaluate(state)
    wall = time.perf_counter() - t0
    print(f"pendulum: eval returns {np.round(returns, 1)} mean {np.mean(returns):.1f}; "
          f"last train returns {np.round(train_returns[-5:], 1)}; wall {wall:.1f} s")
    assert np.mean(returns) > -600
