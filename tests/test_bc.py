"""Behaviour cloning: imitates a fixed expert; warm-starts SAC's actor."""

import jax
import numpy as np
import pytest

from hilrl.learning import bc, sac

KEY = jax.random.PRNGKey(0)
S, A = 6, 3


def _network(**kw):
    return sac.SACConfig.cpu(**{"hidden_dims": (64, 64), "latent_dim": 32,
                                "proprio_hidden": (32,), **kw})


def _expert_data(n, seed):
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(123).normal(size=(S, A)) / np.sqrt(S)  # the fixed expert
    states = rng.normal(size=(n, S)).astype(np.float32)
    return states, np.tanh(states @ w).astype(np.float32)


def _mse(state, states, actions):
    pred = bc.sample_actions(state, {"state": states}, KEY, deterministic=True)
    return float(np.mean((np.asarray(pred) - actions) ** 2))


@pytest.mark.parametrize("loss", ["mse", "nll"])
def test_bc_imitates_a_linear_expert(loss):
    config = bc.BCConfig(network=_network(), loss=loss, lr=1e-3)
    train_s, train_a = _expert_data(2048, seed=0)
    test_s, test_a = _expert_data(512, seed=1)
    state = bc.create(config, {"state": train_s[0]}, A, seed=0)
    before = _mse(state, test_s, test_a)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(400):
        idx = rng.integers(0, len(train_s), 64)
        state, info = bc.update(state, {"obs": {"state": train_s[idx]}, "action": train_a[idx]})
        losses.append(float(info["bc_loss"]))
    after = _mse(state, test_s, test_a)
    print(f"bc[{loss}]: held-out mse {before:.4f} -> {after:.4f}; "
          f"loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}")
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert after < 0.1 * before and after < 0.03


def test_bc_update_on_images_trains_the_encoder():
    config = bc.BCConfig(network=_network(conv_features=(8, 8), conv_strides=(2, 1),
                                          bottleneck_dim=16, num_spatial_features=4))
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=(8, S)).astype(np.float32),
           "images": {"front": rng.integers(0, 256, (8, 20, 20, 3), dtype=np.uint8)}}
    state = bc.create(config, obs, A)
    new, info = bc.update(state, {"obs": obs, "action": rng.uniform(-1, 1, (8, A))})
    assert np.isfinite(float(info["bc_loss"]))
    old_k = state.params["encoder"]["backbone_front"]["Conv_0"]["kernel"]
    new_k = new.params["encoder"]["backbone_front"]["Conv_0"]["kernel"]
    assert not np.allclose(old_k, new_k)


@pytest.mark.parametrize("discrete_gripper", [False, True])
def test_warm_start_sac_acts_like_the_bc_policy(discrete_gripper):
    network = _network(discrete_gripper=discrete_gripper)
    bc_state = bc.create(bc.BCConfig(network=network), {"state": np.zeros(S, np.float32)}, A,
                         seed=3)
    train_s, train_a = _expert_data(256, seed=0)
    for i in range(5):  # move BC away from its initialisation
        sl = slice(64 * (i % 4), 64 * (i % 4 + 1))
        bc_state, _ = bc.update(bc_state, {"obs": {"state": train_s[sl]},
                                           "action": train_a[sl]})
    sac_state = sac.create(network, {"state": np.zeros(S, np.float32)}, A, seed=4)
    warm = bc.warm_start_sac(sac_state, bc_state)
    obs = {"state": train_s[:16]}
    bc_act = np.asarray(bc.sample_actions(bc_state, obs, KEY))
    sac_act = np.asarray(sac.sample_actions(warm, obs, KEY, deterministic=True))
    cold_act = np.asarray(sac.sample_actions(sac_state, obs, KEY, deterministic=True))
    n = A - 1 if discrete_gripper else A
    np.testing.assert_allclose(sac_act[:, :n], bc_act[:, :n], rtol=1e-5, atol=1e-6)
    assert not np.allclose(cold_act[:, :n], bc_act[:, :n])
    # the warm-started agent still trains
    batch = {"obs": obs, "next_obs": obs, "action": train_a[:16], "reward": np.zeros(16),
             "mask": np.ones(16)}
    _, metrics = sac.update(warm, batch)
    assert np.isfinite(float(metrics["critic_loss"]))


def test_warm_start_rejects_mismatched_networks():
    bc_state = bc.create(bc.BCConfig(network=_network()), {"state": np.zeros(S, np.float32)}, A)
    other = sac.create(_network(hidden_dims=(16, 16)), {"state": np.zeros(S, np.float32)}, A)
    with pytest.raises(ValueError, match="same network config"):
        bc.warm_start_sac(other, bc_state)
