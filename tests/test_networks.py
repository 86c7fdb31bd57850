"""The learner's networks: shapes, per-camera and per-member independence, the tanh-Gaussian
math, pooling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from hilrl.learning import networks as nn_lib

KEY = jax.random.PRNGKey(0)


def _leaves_with_paths(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_mlp_uses_layernorm_and_activates_final_only_when_asked():
    x = jax.random.normal(KEY, (4, 3))
    mlp = nn_lib.MLP((8, 5), activate_final=True)
    params = mlp.init(KEY, x)["params"]
    assert set(params) == {"Dense_0", "Dense_1", "LayerNorm_0", "LayerNorm_1"}
    y = mlp.apply({"params": params}, x)
    assert y.shape == (4, 5) and bool(jnp.all(y >= 0))  # relu after the final LayerNorm
    head = nn_lib.MLP((8, 5))
    params = head.init(KEY, x)["params"]
    assert set(params) == {"Dense_0", "Dense_1", "LayerNorm_0"}
    assert bool(jnp.any(head.apply({"params": params}, x) < 0))  # linear last layer
    elu = nn_lib.MLP((8,), activation="elu", activate_final=True)
    assert bool(jnp.all(elu.apply(elu.init(KEY, x), x) > -1.0))


def test_conv_encoder_scales_uint8_to_unit_range():
    img = np.random.default_rng(0).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    enc = nn_lib.ConvEncoder(strides=(2, 1, 1, 1))
    params = enc.init(KEY, img)
    out = enc.apply(params, img)
    assert out.shape == (2, 5, 5, 32)  # 24 -> 11 (stride 2) -> 9 -> 7 -> 5
    assert nn_lib.ConvEncoder().apply(params, np.zeros((1, 64, 64, 3), np.uint8)).shape == (
        1, 3, 3, 32)  # default strides (2, 2, 2, 2): 64 -> 31 -> 15 -> 7 -> 3
    # The same pixels as floats in [0, 255] give the same output: the /255 happens inside.
    np.testing.assert_allclose(out, enc.apply(params, img.astype(np.float32)), rtol=1e-6)
    # ... and an image already in [0, 1] is treated as (nearly) black.
    dim = enc.apply(params, img.astype(np.float32) / 255.0)
    assert not np.allclose(out, dim)


def test_spatial_softmax_finds_the_peak():
    h, w, c = 5, 7, 2
    fmap = np.zeros((1, h, w, c), np.float32)
    fmap[0, 0, w - 1, 0] = 100.0  # channel 0: top-right corner -> x = +1, y = -1
    fmap[0, 2, 3, 1] = 100.0  # channel 1: centre -> (0, 0)
    mod = nn_lib.SpatialSoftmax()
    out = mod.apply(mod.init(KEY, fmap), fmap)
    assert out.shape == (1, 2 * c)
    np.testing.assert_allclose(out[0].reshape(c, 2), [[1.0, -1.0], [0.0, 0.0]], atol=1e-4)


def test_spatial_embedding_is_a_learned_linear_pooling():
    fmap = jax.random.normal(KEY, (3, 4, 5, 6))
    mod = nn_lib.SpatialEmbedding(num_features=8)
    params = mod.init(KEY, fmap)
    assert params["params"]["kernel"].shape == (4, 5, 6, 8)
    out = mod.apply(params, fmap)
    assert out.shape == (3, 6 * 8)
    # Channel c's feature f is sum over positions of fmap[..., c] * kernel[..., c, f].
    k = params["params"]["kernel"]
    np.testing.assert_allclose(out[1, 2 * 8 + 5], jnp.sum(fmap[1, :, :, 2] * k[:, :, 2, 5]),
                               rtol=1e-5)
    np.testing.assert_allclose(mod.apply(params, 2 * fmap), 2 * out, rtol=1e-5)


def _obs(batch=2, cams=("front", "wrist"), size=24, state=5):
    rng = np.random.default_rng(1)
    obs = {"images": {c: rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
                      for c in cams}}
    if state:
        obs["state"] = rng.normal(size=(batch, state)).astype(np.float32)
    return obs


@pytest.mark.parametrize("pooling", ["spatial_embedding", "spatial_softmax"])
def test_observation_encoder_has_separate_params_per_camera(pooling):
    enc = nn_lib.ObservationEncoder(pooling=pooling, latent_dim=16, bottleneck_dim=8,
                                    conv_features=(8, 8), conv_strides=(2, 1))
    obs = _obs()
    params = enc.init(KEY, obs)["params"]
    for cam in ("front", "wrist"):
        assert {f"backbone_{cam}", f"pool_{cam}", f"bottleneck_{cam}"} <= set(params)
    a = _leaves_with_paths(params["backbone_front"])
    b = _leaves_with_paths(params["backbone_wrist"])
    assert a.keys() == b.keys()
    assert any(not np.allclose(a[k], b[k]) for k in a if "kernel" in k)
    feats = enc.apply({"params": params}, obs)
    assert feats.shape == (2, 16) and bool(jnp.all(jnp.abs(feats) <= 1.0))  # tanh fusion
    # Changing the wrist image changes the features; the camera dict order does not matter.
    swapped = {"state": obs["state"], "images": {"wrist": obs["images"]["wrist"],
                                                  "front": obs["images"]["front"]}}
    np.testing.assert_allclose(enc.apply({"params": params}, swapped), feats)
    other = _obs()
    other["images"]["wrist"] = 255 - other["images"]["wrist"]
    assert not np.allclose(enc.apply({"params": params}, other), feats)


def test_observation_encoder_state_only_and_no_state():
    enc = nn_lib.ObservationEncoder(latent_dim=16)
    state_only = {"state": np.ones((3, 4), np.float32)}
    params = enc.init(KEY, state_only)["params"]
    assert set(params) == {"proprio", "fusion", "fusion_norm"}
    assert enc.apply({"params": params}, state_only).shape == (3, 16)
    images_only = _obs(batch=3, cams=("front",), state=0)
    enc2 = nn_lib.ObservationEncoder(latent_dim=16, conv_features=(8,), conv_strides=(2,))
    assert enc2.apply(enc2.init(KEY, images_only), images_only).shape == (3, 16)
    with pytest.raises(ValueError, match="neither"):
        enc.init(KEY, {"images": {}})


def test_unknown_encoder_or_pooling_is_rejected():
    with pytest.raises(ValueError, match="encoder"):
        nn_lib.ObservationEncoder(encoder="vit").init(KEY, _obs())
    with pytest.raises(ValueError, match="pooling"):
        nn_lib.ObservationEncoder(pooling="max").init(KEY, _obs(size=64))


def test_images_too_small_for_the_encoder_get_a_clear_error():
    # default strides (2, 2, 2, 2): 24 -> 11 -> 5 -> 2, too small for the last 3x3 conv
    with pytest.raises(ValueError, match="2x2 input is smaller than the 3x3 kernel"):
        nn_lib.ObservationEncoder().init(KEY, _obs(size=24))


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    mean = jnp.array([[0.3, -1.2]])
    log_std = jnp.array([[-0.5, 0.4]])
    u = jnp.array([[0.1, -2.0]])
    expected = sum(stats.norm.logpdf(float(u[0, i]), float(mean[0, i]),
                                     float(np.exp(log_std[0, i])))
                   - np.log(1 - np.tanh(float(u[0, i])) ** 2) for i in range(2))
    got = nn_lib.tanh_gaussian_log_prob(mean, log_std, u)
    assert got.shape == (1,)
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)


def test_tanh_gaussian_density_integrates_to_one():
    mean, log_std = 0.7, -0.3

    def density(a):
        u = np.arctanh(a)
        return float(jnp.exp(nn_lib.tanh_gaussian_log_prob(
            jnp.array([[mean]]), jnp.array([[log_std]]), jnp.array([[u]], jnp.float32))[0]))

    total, _ = integrate.quad(density, -1 + 1e-9, 1 - 1e-9, limit=200)
    assert total == pytest.approx(1.0, abs=2e-3)


def test_log_one_minus_tanh_sq_is_stable_for_large_inputs():
    u = jnp.array([0.0, 5.0, 30.0, -30.0])
    out = nn_lib.log_one_minus_tanh_sq(u)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out[:2], np.log(1 - np.tanh([0.0, 5.0]) ** 2), rtol=1e-4)
    np.testing.assert_allclose(out[2], 2 * (np.log(2) - 30.0), rtol=1e-5)  # asymptote


def test_actor_samples_are_squashed_and_log_std_bounded():
    actor = nn_lib.TanhGaussianActor(action_dim=3, hidden=(16,), log_std_min=-5.0,
                                     log_std_max=2.0)
    feats = 1e3 * jax.random.normal(KEY, (64, 10))  # huge inputs saturate the log-std head
    params = actor.init(KEY, feats)
    mean, log_std = actor.apply(params, feats)
    assert mean.shape == log_std.shape == (64, 3)
    assert bool(jnp.all((log_std >= -5.0) & (log_std <= 2.0)))
    a, logp = nn_lib.sample_tanh_gaussian(mean, log_std, jax.random.PRNGKey(1))
    assert a.shape == (64, 3) and logp.shape == (64,)
    assert bool(jnp.all(jnp.abs(a) <= 1.0)) and bool(jnp.all(jnp.isfinite(logp)))
    # Reparameterised: the sample is differentiable w.r.t. the mean.
    g = jax.grad(lambda m: nn_lib.sample_tanh_gaussian(m, log_std, KEY)[0].sum())(mean)
    assert bool(jnp.any(g != 0))
    np.testing.assert_allclose(nn_lib.tanh_gaussian_mode(mean), jnp.tanh(mean))


def test_critic_ensemble_members_are_independent():
    n = 3
    critic = nn_lib.CriticEnsemble(num=n, hidden=(16, 16))
    feats, acts = jax.random.normal(KEY, (5, 7)), jax.random.normal(KEY, (5, 2))
    params = critic.init(KEY, feats, acts)["params"]
    leaves = _leaves_with_paths(params)
    assert all(v.shape[0] == n for v in leaves.values())  # every leaf is per-member
    for name, v in leaves.items():
        if "kernel" in name:  # different initialisations, member by member
            assert not np.allclose(v[0], v[1]) and not np.allclose(v[1], v[2]), name
    q = critic.apply({"params": params}, feats, acts)
    assert q.shape == (n, 5)
    assert not np.allclose(q[0], q[1])

    grads = jax.grad(lambda p: critic.apply({"params": p}, feats, acts)[0].sum())(params)
    for name, g in _leaves_with_paths(grads).items():
        assert np.all(g[1:] == 0), f"member 0's output depends on other members' {name}"
        if "kernel" in name:
            assert np.any(g[0] != 0), name


def test_gripper_critic_and_index_mapping():
    gc = nn_lib.GripperCritic(hidden=(8,))
    feats = jnp.ones((4, 6))
    assert gc.apply(gc.init(KEY, feats), feats).shape == (4, 3)
    idx = nn_lib.gripper_index(jnp.array([-1.0, -0.6, -0.4, 0.0, 0.49, 0.5, 1.0]))
    np.testing.assert_array_equal(idx, [0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(nn_lib.gripper_value(jnp.array([0, 1, 2])), [-1.0, 0.0, 1.0])


def test_conv_impls_share_parameters_and_agree():
    img = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    lax_enc, matmul_enc = nn_lib.ConvEncoder(impl="lax"), nn_lib.ConvEncoder(impl="matmul")
    params = lax_enc.init(KEY, img)
    np.testing.assert_allclose(matmul_enc.apply(params, img), lax_enc.apply(params, img),
                               rtol=1e-4, atol=1e-5)


def test_resnet10_backbone_hook_is_trained_with_the_encoder():
    obs = _obs(batch=2, cams=("front",), size=32)
    enc = nn_lib.ObservationEncoder(encoder="resnet10", latent_dim=16, bottleneck_dim=8,
                                    num_spatial_features=2)
    params = jax.jit(enc.init)(KEY, obs)["params"]
    assert "conv_init" in params["backbone_front"]  # serl's ResNet-10 parameter names
    assert params["pool_front"]["kernel"].shape == (1, 1, 512, 2)  # 32x32 -> 1x1x512
    # No freezing here: a frozen encoder is env.frozen_encoder, outside the agent.
    grads = jax.jit(jax.grad(lambda p: enc.apply({"params": p}, obs).sum()))(params)
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads["backbone_front"]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads["pool_front"]))
    # the backbone sees ImageNet-normalised images, exactly as make_backbone describes
    backbone, preprocess = nn_lib.make_backbone("resnet10")
    fmap = jax.jit(backbone.apply)({"params": params["backbone_front"]},
                                   preprocess(obs["images"]["front"]))
    assert fmap.shape == (2, 1, 1, 512)
