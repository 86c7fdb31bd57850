"""Encoder pretraining on demos (hilrl/learning/pretrain.py), its file, and the frozen encoder's
features in the env, the learner's demo loading and the spec."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from hilrl.config import load_task
from hilrl.config.io import ConfigError
from hilrl.envs.spec import env_spec
from hilrl.learning.pretrain import (
    EncoderFileError,
    FrozenEncoder,
    PretrainConfig,
    final_pose_labels,
    grasp_point_labels,
    pretrain_from_demos,
)

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "tasks" / "sim_pick_cube_pixels_cpu.yaml"
SMALL = ["env.image_size=[32,32]", "agent.hidden_dims=[32,32]"]


def test_grasp_point_labels_hold_the_grasp_position_then_follow_the_hand():
    pos = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)  # T = 5 steps, 6 observations
    grip = np.array([-1.0, 1.0, -1.0, 1.0, 1.0])  # closes at 1, opens, closes for good at 3
    labels, mask = grasp_point_labels(pos, grip)
    assert mask.all()
    np.testing.assert_array_equal(labels[:4], np.repeat(pos[3:4], 4, axis=0))
    np.testing.assert_array_equal(labels[4:], pos[4:])
    _, mask = grasp_point_labels(pos, np.array([1.0, 1.0, 1.0, 1.0, -1.0]))  # ends open
    assert not mask.any()


def test_final_pose_labels_are_where_the_hand_ended_the_task():
    pos = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    labels, mask = final_pose_labels(pos)
    assert mask.all()
    np.testing.assert_array_equal(labels, np.repeat(pos[-1:], 6, axis=0))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from actor.teleop import record_demos

    tmp = tmp_path_factory.mktemp("pretrain")
    task = load_task(TASK, [*SMALL, "device.expert.takeover=always"])
    record_demos(task, tmp / "demos", 4, progress=False)
    metrics = pretrain_from_demos(task, [tmp / "demos"], tmp / "enc.hilrl",
                                  PretrainConfig(steps=300, batch_size=32), progress=False)
    return task, tmp, metrics


def test_pretraining_fits_the_grasp_points_of_the_demos(pretrained):
    from hilrl.storage.dataset import iter_dataset

    task, tmp, metrics = pretrained
    episodes = list(iter_dataset(tmp / "demos"))
    labels = np.concatenate([grasp_point_labels(ep.state[:, :3], ep.action[:, -1])[0]
                             for ep in episodes])
    spread = float(np.sqrt(((labels - labels.mean(0)) ** 2).sum(1).mean()))
    # Predicting the mean position would score `spread`; the encoder must beat it clearly.
    assert metrics["object_rmse_m"] < 0.6 * spread, (metrics, spread)
    enc = FrozenEncoder(tmp / "enc.hilrl")
    ep = episodes[0]
    feats = enc({c: ep.images[c] for c in enc.spec.cameras})
    assert feats.shape == (ep.length + 1, enc.feature_size) and np.isfinite(feats).all()
    single = enc({c: ep.images[c][0] for c in enc.spec.cameras})
    np.testing.assert_allclose(single, feats[0], rtol=1e-5, atol=1e-5)


def test_the_env_the_learner_and_the_spec_agree_on_the_features(pretrained):
    from actor.env_factory import make_env
    from actor.teleop import record_demos
    from hilrl.learning.replay import ReplayBuffer
    from hilrl.storage.dataset import iter_dataset
    from learner.ingest import load_demos

    task, tmp, _ = pretrained
    task = load_task(TASK, [*SMALL, f"env.frozen_encoder={tmp / 'enc.hilrl'}"])
    spec = env_spec(task)
    enc = FrozenEncoder(tmp / "enc.hilrl")
    assert spec.image_shapes == {} and spec.state_size == 14 + enc.feature_size
    stack = make_env(task)
    try:
        assert stack.env.observation_space["state"].shape == (spec.state_size,)
        obs, _ = stack.env.reset(seed=3)
        np.testing.assert_allclose(obs["state"][14:], enc(obs["images"]), atol=1e-5)
    finally:
        stack.close()
    buf = ReplayBuffer(1000, **spec.replay_kwargs())
    episodes, steps = load_demos([tmp / "demos"], buf, enc)
    assert episodes == 4 and len(buf) == steps
    # Demos keep what the robot saw: recording with an encoder configured adds no features.
    expert = {**task.device.section("expert"), "takeover": "always"}
    record_demos(dataclasses.replace(task, device=dataclasses.replace(
        task.device, sections={**task.device.sections, "expert": expert})),
        tmp / "raw", 1, progress=False)
    assert next(iter(iter_dataset(tmp / "raw"))).state.shape[1] == 14


def test_bad_encoder_files_and_settings_give_clear_errors(pretrained, tmp_path):
    from hilrl.storage.dataset import iter_dataset
    from hilrl.storage.weights import save_weights

    task, tmp, _ = pretrained
    with pytest.raises(EncoderFileError, match="pretrain-encoder"):
        FrozenEncoder(tmp_path / "missing.hilrl")
    blob = (tmp / "enc.hilrl").read_bytes()
    (tmp_path / "cut.hilrl").write_bytes(blob[:-10])
    with pytest.raises(EncoderFileError, match="truncated|corrupt"):
        FrozenEncoder(tmp_path / "cut.hilrl")
    save_weights(tmp_path / "other.hilrl", {"w": np.zeros(3, np.float32)}, {"model": "resnet10"})
    with pytest.raises(EncoderFileError, match="not a hilrl keypoint encoder"):
        FrozenEncoder(tmp_path / "other.hilrl")
    enc = FrozenEncoder(tmp / "enc.hilrl")
    with pytest.raises(EncoderFileError, match="image_size"):
        enc.check({"front": (64, 64, 3), "wrist": (64, 64, 3)})
    with pytest.raises(EncoderFileError, match="wrist"):
        enc.check({"front": (32, 32, 3)})
    # A recorded episode is checked the same way before it is encoded (learner, baselines).
    demo = next(iter(iter_dataset(tmp / "demos")))
    with pytest.raises(EncoderFileError, match="wrist"):
        enc.episode_state(demo.state, {"front": demo.images["front"]})
    with pytest.raises(EncoderFileError, match="relative_frame"):
        pretrain_from_demos(load_task(TASK, [*SMALL, "env.relative_frame=true"]),
                            [tmp / "demos"], tmp_path / "x.hilrl", progress=False)


def test_final_pose_read_out_fits_and_the_features_predict_success_on_unseen_scenes(
        pretrained, tmp_path):
    from actor.teleop import record_demos
    from hilrl.storage.dataset import iter_dataset

    task, tmp, _ = pretrained
    # Held out: demos of other scenes (another task seed), their last frames the successes.
    record_demos(load_task(TASK, [*SMALL, "device.expert.takeover=always", "seed=1"]),
                 tmp_path / "heldout", 2, progress=False)
    metrics = pretrain_from_demos(task, [tmp / "demos"], tmp_path / "enc.hilrl",
                                  PretrainConfig(steps=300, batch_size=32, readout="final_pose"),
                                  progress=False, heldout=[tmp_path / "heldout"])
    ends = np.stack([ep.state[-1, :3] for ep in iter_dataset(tmp / "demos")])
    spread = float(np.sqrt(((ends - ends.mean(0)) ** 2).sum(1).mean()))
    assert metrics["readout"] == "final_pose"
    assert metrics["object_rmse_m"] < 0.6 * spread, (metrics, spread)
    assert metrics["heldout_frames"] == sum(ep.length for ep in iter_dataset(tmp_path / "heldout"))
    assert metrics["heldout_success_auc"] > 0.8, metrics
    # The demos' own scenes are not held out.
    with pytest.raises(EncoderFileError, match="demo's scene"):
        pretrain_from_demos(task, [tmp / "demos"], tmp_path / "x.hilrl",
                            PretrainConfig(steps=1, readout="final_pose"), progress=False,
                            heldout=[tmp / "demos"])
    with pytest.raises(ConfigError, match="pretrain: unknown encoder read-out 'cube'"):
        load_task(TASK, ["pretrain.readout=cube"])


def test_without_a_read_out_the_features_are_the_keypoints_only(pretrained, tmp_path):
    from hilrl.learning.pretrain import read_spec
    from hilrl.storage.dataset import iter_dataset

    task, tmp, _ = pretrained
    metrics = pretrain_from_demos(task, [tmp / "demos"], tmp_path / "none.hilrl",
                                  PretrainConfig(steps=2, readout="none"), progress=False)
    spec = read_spec(tmp_path / "none.hilrl")
    keypoints = 2 * spec.keypoints * len(spec.cameras)
    assert not spec.readout and spec.feature_size == keypoints
    assert read_spec(tmp / "enc.hilrl").feature_size == keypoints + 3
    demo = next(iter(iter_dataset(tmp / "demos")))
    feats = FrozenEncoder(tmp_path / "none.hilrl")({c: demo.images[c] for c in spec.cameras})
    assert feats.shape == (demo.length + 1, keypoints)
    assert metrics["object_rmse_m"] == 0.0


def test_time_contrastive_loss_is_low_only_when_each_frame_finds_its_neighbour():
    from hilrl.learning.pretrain import time_contrastive_loss

    z = np.linalg.qr(np.random.default_rng(0).standard_normal((16, 16)))[0].astype(np.float32)
    chance = np.log(16)
    matched = float(time_contrastive_loss(z, z, 0.1))
    shuffled = float(time_contrastive_loss(z, np.roll(z, 1, axis=0), 0.1))
    assert matched < 0.01 * chance < chance < shuffled


def test_time_contrastive_pretraining_learns_to_match_neighbouring_frames(pretrained):
    from hilrl.envs.manipulator import state_slices
    from hilrl.learning.pretrain import EncoderSpec, demo_frames, pretrain
    from hilrl.storage.dataset import iter_dataset

    task, tmp, _ = pretrained
    episodes = list(iter_dataset(tmp / "demos"))
    cameras = ("front", "wrist")
    data = demo_frames(episodes, cameras, state_slices(task.env.state_keys)["tcp_pose"], "none")
    # Each frame's positive is drawn from its own episode.
    lengths = [ep.length + 1 for ep in episodes]
    assert list(np.unique(data.episode_start)) == list(np.cumsum([0, *lengths[:-1]]))
    assert (data.episode_start <= np.arange(data.size)).all()
    assert (np.arange(data.size) < data.episode_end).all()

    spec = EncoderSpec(cameras, data.images["front"].shape[1:], readout=False)

    def contrastive_loss_after(steps: int) -> float:
        seen = {}
        cfg = PretrainConfig(steps=steps, batch_size=32, readout="none", contrastive_weight=1.0)
        pretrain(data, spec, episodes[0].action.shape[1], cfg,
                 lambda step, info: seen.__setitem__(step, info["contrastive"]))
        return seen[steps]

    chance = np.log(32)  # a batch of 32: each frame's neighbour among 32 candidates
    first, trained = contrastive_loss_after(1), contrastive_loss_after(300)
    assert first > 0.7 * chance, first  # no shortcut: the untrained features cannot tell
    assert trained < 0.5 * chance and trained < 0.5 * first, (first, trained)
