"""The frozen-encoder feature cache (hilrl.feature_cache): features equal the backbone's, the
feature buffer is a slot-for-slot twin of the image buffer, and a features-mode SAC update
on cached features computes what the update with the frozen backbone inside computes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hilrl.feature_cache import FeatureEpisode, FrozenBackbone
from hilrl.learning import sac
from hilrl.learning.replay import ReplayBuffer
from hilrl.learning.resnet import ResNet10, preprocess
from hilrl.storage.dataset import Episode

CAMS = ("front", "wrist")
STATE, ACTION = 3, 2


def frames(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (n, size, size, 3), np.uint8)


def make_episode(rng: np.random.Generator, length: int, size: int = 32) -> Episode:
    terminated = np.zeros(length, bool)
    terminated[-1] = True
    return Episode(
        state=rng.standard_normal((length + 1, STATE)).astype(np.float32),
        images={cam: frames(rng, length + 1, size) for cam in CAMS},
        action=rng.uniform(-1, 1, (length, ACTION)).astype(np.float32),
        reward=terminated.astype(np.float32),
        terminated=terminated,
        truncated=np.zeros(length, bool),
        intervened=rng.random(length) < 0.3,
        extras={"grasp_penalty": -rng.random(length).astype(np.float32)},
    )


def image_buffer(capacity: int, size: int = 32) -> ReplayBuffer:
    return ReplayBuffer(capacity, STATE, {cam: (size, size, 3) for cam in CAMS}, ACTION,
                        extras=("grasp_penalty",))


@pytest.fixture(scope="module")
def small_resnet():
    """A narrow ResNet-10 (8 filters in the stem; 64 channels out) and its variables."""
    module = ResNet10(num_filters=8)
    # Random weights from numpy on the abstract tree: module.init would compile the whole
    # forward pass once more just to make them.
    shapes = jax.eval_shape(module.init, jax.random.key(1),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    rng = np.random.default_rng(1)

    def draw(path, leaf):
        if path[-1].key == "kernel":  # He init: keeps activations O(1) through the blocks
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
        return rng.normal(1.0 if path[-1].key == "scale" else 0.0, 0.1,
                          leaf.shape).astype(np.float32)

    return module, jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def backbone(small_resnet):
    """The cache as one would build it for pretrained weights: float16, ImageNet
    preprocessing. Shared, and every test feeds it multiples of 4 frames (or a single
    observation), so it compiles for 4 and 1 frames only."""
    return FrozenBackbone.resnet10(small_resnet[1], CAMS, num_filters=8, chunk_size=4)


# --------------------------------------------------------------------------- backbone


def test_cached_features_equal_the_backbone_applied_directly(small_resnet, backbone):
    module, variables = small_resnet
    rng = np.random.default_rng(0)
    images = {cam: frames(rng, 11) for cam in CAMS}
    apply = jax.jit(lambda x: module.apply(variables, preprocess(x)))
    direct = {cam: np.asarray(apply(images[cam])) for cam in CAMS}
    assert direct["front"].shape == (11, 1, 1, 64)  # 32x32 -> 1x1 (H/32)

    # float32 storage, chunks of 4 frames (11 = 4 + 4 + 3, padded to 4): the same numbers
    # up to float32 noise (XLA fuses GroupNorm differently for another batch size).
    traced = []

    def apply_fn(params, x):
        traced.append(x.shape[0])  # runs once per compilation (trace time)
        return module.apply({"params": params}, preprocess(x))

    exact = FrozenBackbone(apply_fn, {cam: variables["params"] for cam in CAMS},
                           dtype="float32", chunk_size=4)
    f32 = exact.encode(images)
    # One compiled shape, never more than chunk_size frames per pass (the 1 is the abstract
    # trace jax.eval_shape makes to learn the feature shape).
    assert sorted(traced) == [1, 4]
    for cam in CAMS:
        assert f32[cam].dtype == np.float32
        np.testing.assert_allclose(f32[cam], direct[cam], rtol=1e-5, atol=1e-5)

    # float16 storage (the default) rounds each value to 11 significant bits: relative
    # error <= 2^-11 ~ 4.9e-4 (plus float32 noise), half the bytes of float32.
    f16 = backbone.encode(images)
    for cam in CAMS:
        assert f16[cam].dtype == np.float16 and f16[cam].nbytes * 2 == f32[cam].nbytes
        err = np.abs(f16[cam].astype(np.float32) - direct[cam])
        assert (err <= 2.0 ** -11 * np.abs(direct[cam]) + 1e-5).all(), err.max()


def test_encode_observation_single_and_batched(backbone):
    rng = np.random.default_rng(1)
    batch = {"state": np.ones((4, STATE), np.float32),
             "images": {cam: frames(rng, 4) for cam in CAMS}}
    out = backbone.encode_observation(batch)
    assert set(out) == {"state", "features"} and out["state"] is batch["state"]
    assert out["features"]["front"].shape == (4, 1, 1, 64)
    single = backbone.encode_observation(
        {"state": batch["state"][1], "images": {cam: batch["images"][cam][1] for cam in CAMS}})
    for cam in CAMS:
        assert single["features"][cam].shape == (1, 1, 64)
        np.testing.assert_allclose(single["features"][cam], out["features"][cam][1],
                                   rtol=1e-3)
    with pytest.raises(ValueError, match="differ"):
        backbone.encode({"front": batch["images"]["front"]})
    with pytest.raises(ValueError, match="uint8"):
        backbone.encode({cam: np.zeros((1, 32, 32, 3), np.float32) for cam in CAMS})


def test_encode_transition_encodes_each_frame_of_an_episode_once(backbone, monkeypatch):
    rng = np.random.default_rng(6)
    episode = [{"state": np.full(STATE, t, np.float32),
                "images": {cam: frames(rng, 1)[0] for cam in CAMS}} for t in range(4)]
    calls = []
    encode_frames = backbone.encode_frames
    monkeypatch.setattr(backbone, "encode_frames",
                        lambda cam, x: calls.append(cam) or encode_frames(cam, x))
    pairs = [backbone.encode_transition(episode[t], episode[t + 1]) for t in range(3)]
    assert len(calls) == 4 * len(CAMS)  # 4 frames per camera, not 6
    monkeypatch.undo()
    for t, (obs, next_obs) in enumerate(pairs):
        for got, raw in ((obs, episode[t]), (next_obs, episode[t + 1])):
            assert got["state"] is raw["state"]
            want = backbone.encode_observation(raw)["features"]
            for cam in CAMS:
                np.testing.assert_array_equal(got["features"][cam], want[cam])
    monkeypatch.setattr(backbone, "encode_frames",
                        lambda cam, x: calls.append(cam) or encode_frames(cam, x))
    calls.clear()
    backbone.encode_transition(episode[0], episode[1])  # does not continue: encoded again
    assert len(calls) == 2 * len(CAMS)


def test_feature_spec_for_two_128px_cameras_and_resnet10_needs_no_compute():
    # Abstract weights: shapes only, nothing is run (the real ones come from
    # hilrl.storage.weights.load_pretrained_resnet10).
    variables = jax.eval_shape(ResNet10().init, jax.random.key(0),
                               jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32))
    backbone = FrozenBackbone.resnet10(variables, CAMS)
    images = image_buffer(1000, size=128)
    spec = backbone.feature_spec(images.spec)
    assert spec["image_shapes"] == {cam: [4, 4, 512] for cam in CAMS}
    assert spec["image_dtypes"] == {cam: "float16" for cam in CAMS}
    assert spec["camera_key"] == "features" and spec["extras"] == ["grasp_penalty"]
    features = ReplayBuffer(**spec)
    small = 4 * STATE + 4 * ACTION + 4 + 3 + 4 + 1
    assert features.nbytes / features.capacity == 2 * 4 * 4 * 512 * 2 + small  # 32 KiB
    assert images.nbytes / images.capacity == 2 * 128 * 128 * 3 + small  # 96 KiB
    with pytest.raises(ValueError, match="cameras"):
        backbone.feature_spec({**images.spec, "image_shapes": {"front": [128, 128, 3]}})


def test_demos_become_a_feature_buffer_twin_of_the_image_buffer(backbone):
    rng = np.random.default_rng(2)
    episodes = [make_episode(rng, n) for n in (7, 19, 3)]  # 8, 20, 4 frames
    images = image_buffer(64)
    features = ReplayBuffer(**backbone.feature_spec(images.spec))
    for ep in episodes:
        images.add_episode(ep)
    assert backbone.add_episodes(features, iter(episodes)) == 3
    encoded = backbone.encode_episode(episodes[1])
    assert isinstance(encoded, FeatureEpisode) and encoded.length == 19
    assert encoded.features["front"].shape == (20, 1, 1, 64)
    # Same slots: the same rng draws the same transitions from both buffers.
    np.testing.assert_array_equal(features.valid_indices(), images.valid_indices())
    a = images.sample(16, np.random.default_rng(5))
    b = features.sample(16, np.random.default_rng(5))
    for key in ("action", "reward", "mask", "grasp_penalty"):
        np.testing.assert_array_equal(a[key], b[key])
    for key in ("obs", "next_obs"):
        np.testing.assert_array_equal(a[key]["state"], b[key]["state"])
        want = backbone.encode(a[key]["images"])
        for cam in CAMS:
            np.testing.assert_allclose(b[key]["features"][cam], want[cam], rtol=2e-3,
                                       atol=1e-5)
    with pytest.raises(ValueError, match="features ReplayBuffer"):
        backbone.add_episodes(images, episodes)


# --------------------------------------------------------------------------- SAC on features

B = 16
# Frozen tiny conv backbone (32x32 -> 7x7x8) inside the update, no augmentation: the images
# agent the cache must reproduce. (The full ResNet-10 inside sac.update takes ~1 min to
# compile on CPU; the cache's side of that is covered above.)
IMAGES_CONFIG = sac.SACConfig.cpu(
    encoder="conv", conv_features=(8, 8), conv_strides=(2, 2), freeze_backbone=True,
    augment_pad=0, hidden_dims=(32, 32), bottleneck_dim=16, latent_dim=32,
    proprio_hidden=(16,), num_spatial_features=2, utd=1)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cached_update_equals_the_update_with_the_frozen_backbone_inside(dtype):
    rng = np.random.default_rng(4)
    episodes = [make_episode(rng, 10) for _ in range(3)]
    images = image_buffer(60)
    for ep in episodes:
        images.add_episode(ep)
    slow = sac.create(IMAGES_CONFIG, images.sample(1, rng)["obs"], ACTION, seed=7)
    # Cache that very backbone (as ObservationEncoder applies it) into a feature buffer.
    cache = FrozenBackbone.from_sac_encoder(IMAGES_CONFIG, slow.critic_params["encoder"],
                                            dtype=dtype)
    features = ReplayBuffer(**cache.feature_spec(images.spec))
    cache.add_episodes(features, episodes)
    assert features.spec["image_shapes"] == {cam: [7, 7, 8] for cam in CAMS}
    # The features agent gets the same remaining parameters: flax derives each
    # submodule's init key from its name, so the same seed gives the same heads.
    fast = sac.create(dataclasses.replace(IMAGES_CONFIG, encoder="features"),
                      features.sample(1, rng)["obs"], ACTION, seed=7)
    head = {k: v for k, v in slow.critic_params["encoder"].items()
            if not k.startswith("backbone_")}
    start = fast
    for a, b in zip(jax.tree.leaves(head), jax.tree.leaves(fast.critic_params["encoder"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)

    # Same rng -> the same transitions from both (slot-for-slot twin) buffers.
    rtol = {"float32": 1e-5, "float16": 2e-3}[dtype]
    for i in range(3):
        slow, slow_metrics = sac.update(slow, images.sample(B, np.random.default_rng(i)))
        fast, fast_metrics = sac.update(fast, features.sample(B, np.random.default_rng(i)))
        slow_metrics, fast_metrics = jax.device_get((slow_metrics, fast_metrics))
        assert slow_metrics.keys() == fast_metrics.keys()
        assert all(np.isfinite(v) for v in fast_metrics.values())
        for key in ("critic_loss", "q", "target_q", "actor_loss", "entropy"):
            np.testing.assert_allclose(fast_metrics[key], slow_metrics[key], rtol=rtol,
                                       atol=rtol * 1e-2, err_msg=f"update {i}: {key}")
    # Training moved the trainable parts of the features agent ...
    for name, before, after in (
            ("pooling", start.critic_params["encoder"]["pool_front"],
             fast.critic_params["encoder"]["pool_front"]),
            ("critic", start.critic_params["critic"], fast.critic_params["critic"]),
            ("actor", start.actor_params, fast.actor_params)):
        assert any(not np.array_equal(x, y) for x, y in zip(
            jax.tree.leaves(before), jax.tree.leaves(after), strict=True)), name
    # ... and not the frozen backbone of the images agent.
    after = FrozenBackbone.from_sac_encoder(IMAGES_CONFIG, slow.critic_params["encoder"])
    for cam in CAMS:
        for a, b in zip(jax.tree.leaves(cache._params[cam]),
                        jax.tree.leaves(after._params[cam]), strict=True):
            np.testing.assert_array_equal(a, b)
    if dtype == "float32":
        # Adam normalises each weight's step, so a near-zero gradient whose sign flips under
        # float16 rounding moves that weight by ~lr: parameters are compared at float32 only.
        for a, b in zip(jax.tree.leaves((slow.critic_params["critic"], slow.actor_params)),
                        jax.tree.leaves((fast.critic_params["critic"], fast.actor_params)),
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The actor node: raw observation -> cached backbone -> features-mode policy.
    obs = {"state": np.zeros(STATE, np.float32),
           "images": {cam: frames(rng, 1)[0] for cam in CAMS}}
    action = sac.sample_actions(fast, cache.encode_observation(obs), jax.random.key(0),
                                deterministic=True)
    want = sac.sample_actions(slow, obs, jax.random.key(0), deterministic=True)
    assert action.shape == (ACTION,)
    np.testing.assert_allclose(action, want, rtol=10 * rtol, atol=10 * rtol * 1e-2)
