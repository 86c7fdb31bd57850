"""The reward classifier: labelled-frame loading, the math (metrics, threshold, split),
training on small synthetic datasets (success = a bright square in view), the file and the
``hilrl train-classifier`` command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hilrl.cli import main
from hilrl.learning.classifier import (
    ClassifierConfig,
    ClassifierError,
    RewardClassifier,
    binary_metrics,
    choose_threshold,
    load_labelled_frames,
    roc_auc,
    split_by_episode,
    train_classifier,
)
from hilrl.storage.dataset import DatasetWriter, EpisodeRecorder
from hilrl.storage.weights import read_header, save_weights

SIZE = 32
CAMS = ("front", "wrist")
SMALL = ClassifierConfig(conv_features=(8, 8, 8), conv_strides=(2, 2, 2), bottleneck_dim=16,
                         hidden_dims=(16,), augment_pad=2)


def frame(rng: np.random.Generator, square: bool, size: int = SIZE) -> np.ndarray:
    """Dark noisy frame; a success shows a bright square somewhere (DrQ shift must not
    matter)."""
    img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    if square:
        y, x = rng.integers(2, size - 10, 2)
        img[y:y + 8, x:x + 8] = rng.integers(200, 256, 3, dtype=np.uint8)
    return img


def write_dataset(path: Path, episodes: int, steps: int = 12, success_every: int = 1,
                  positives: int = 5, seed: int = 0, cams: tuple[str, ...] = CAMS,
                  size: int = SIZE, success_extra: bool = True, blank: bool = False) -> Path:
    """Episode i succeeds (its last ``positives`` steps show the square) when
    i % success_every == 0 (never when success_every is 0); the others never do."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(path, {"kind": "synthetic"})
    rec = EpisodeRecorder()
    for i in range(episodes):
        succeeds = success_every > 0 and i % success_every == 0

        def obs(square: bool) -> dict:
            images = {c: np.zeros((size, size, 3), np.uint8) if blank
                      else frame(rng, square, size) for c in cams}
            return {"state": np.zeros(3, np.float32), "images": images}

        rec.start(obs(False))
        for t in range(steps):
            ok = succeeds and t >= steps - positives
            extras = {"success": np.bool_(ok)} if success_extra else {}
            rec.add(np.zeros(4, np.float32), float(ok), False, t == steps - 1, False, obs(ok),
                    **extras)
        writer.write(rec.finish({"success": succeeds}))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("cls") / "data", episodes=20,
                         success_every=2)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "reward.classifier"
    result = train_classifier(data, out, config=SMALL, target_precision=0.85, max_epochs=40,
                              patience=6, batch_size=32, progress=False)
    return result, out


# ------------------------------------------------------------------------------- math


def test_roc_auc_rank_formula_with_ties():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert roc_auc(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0


def test_threshold_smallest_meeting_pessimistic_precision_else_best():
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 1, 0, 1, 1, 1], bool)
    # tp / (tp + fp + 1): 0.9 -> 1/2, 0.8 -> 2/3, 0.7 -> 3/4, 0.6 -> 3/5, 0.3 -> 4/6.
    t, met = choose_threshold(scores, labels, target_precision=0.75)
    assert met and t == 0.7
    assert binary_metrics(scores, labels, t)["precision"] == 1.0
    t, met = choose_threshold(scores, labels, target_precision=0.65)
    assert met and t == 0.3  # 4 of 5 from 0.3 up are positive, pessimistically 4/6
    # Observed precision 1.0 at 0.7, but three positives cannot show 0.99: best is reported.
    t, met = choose_threshold(scores, labels, target_precision=0.99)
    assert not met and t == 0.7
    # 99 positives above every negative are the least that can show 0.99.
    labels = np.r_[np.zeros(50, bool), np.ones(99, bool)]
    scores = np.linspace(0.0, 1.0, len(labels))
    assert choose_threshold(scores, labels, 0.99) == (scores[50], True)
    assert choose_threshold(scores[1:], labels[1:], 0.99)[1]
    assert not choose_threshold(scores[:-1], labels[:-1], 0.99)[1]
    t, met = choose_threshold(np.array([0.9, 0.8]), np.array([0, 1], bool), 0.99)
    assert not met and t == 0.8  # best pessimistic precision (1/3) at the lowest threshold


def test_split_is_by_episode_and_stratified():
    episode = np.repeat(np.arange(10), 5)
    labels = np.zeros(50, bool)
    labels[episode < 3] = True  # only episodes 0-2 have positives
    val = split_by_episode(episode, labels, 0.2, seed=1)
    assert not set(episode[val]) & set(episode[~val])
    assert labels[val].any() and (~labels[val]).any()
    assert labels[~val].any()
    assert np.array_equal(val, split_by_episode(episode, labels, 0.2, seed=1))


# ------------------------------------------------------------------------------- data


def test_load_labelled_frames_success_labels(data):
    frames = load_labelled_frames(data)
    assert set(frames.images) == set(CAMS)
    assert frames.images["front"].shape == (20 * 12, SIZE, SIZE, 3)
    assert frames.labels.sum() == 10 * 5
    assert len(np.unique(frames.episode)) == 20
    bright = frames.images["front"].reshape(len(frames), -1).max(axis=1) >= 200
    assert np.array_equal(bright, frames.labels)  # obs t+1 is labelled by success[t]


def test_load_last_k_labels(tmp_path):
    d = write_dataset(tmp_path / "d", episodes=4, success_every=2, success_extra=False)
    frames = load_labelled_frames([d], cameras=["front"], labels="last:3")
    assert list(frames.images) == ["front"]
    assert len(frames) == 4 * 13 and frames.labels.sum() == 2 * 3
    with pytest.raises(ClassifierError, match="success"):
        load_labelled_frames(d)  # no per-step success extra


def test_loading_errors(tmp_path):
    d = write_dataset(tmp_path / "d", episodes=2, success_every=2)
    with pytest.raises(ClassifierError, match="'side'"):
        load_labelled_frames(d, cameras=["front", "side"])
    small = write_dataset(tmp_path / "s", episodes=2, size=16)
    with pytest.raises(ClassifierError, match="one image size"):
        load_labelled_frames([d, small])
    none = write_dataset(tmp_path / "n", episodes=3, success_every=0)
    none_ok = write_dataset(tmp_path / "n2", episodes=2, success_every=0)
    with pytest.raises(ClassifierError, match="no success frames .*record-labels"):
        load_labelled_frames([none, none_ok])
    with pytest.raises(ClassifierError, match="does not exist"):
        load_labelled_frames(tmp_path / "missing")
    with pytest.raises(ClassifierError, match="last:K"):
        load_labelled_frames(d, labels="final")


# ------------------------------------------------------------------------------- training


def heldout_metrics(clf: RewardClassifier, dataset: Path) -> dict[str, float]:
    """Accuracy, precision, recall and ROC-AUC of ``clf`` at its own threshold on the frames
    of ``dataset``: episodes it never saw, neither in training nor in choosing the threshold
    (the validation frames that chose it flatter the precision)."""
    frames = load_labelled_frames(dataset, list(clf.cameras))
    return binary_metrics(clf.probabilities(frames.images), frames.labels, clf.threshold)


def test_learns_the_synthetic_task(trained, tmp_path):
    result, out = trained
    m = result.metrics
    assert m["target_precision_met"]
    assert m["n_val_episodes"] == 4 and m["n_train_episodes"] == 16
    # Judged on 10 new episodes (another seed): the square decides.
    held = heldout_metrics(result.classifier, write_dataset(tmp_path / "held", episodes=10,
                                                            success_every=2, seed=99))
    assert held["precision"] >= 0.85 and held["recall"] >= 0.8, held
    assert held["accuracy"] >= 0.95 and held["roc_auc"] >= 0.98, held
    assert m["n_val_frames"] + m["n_train_frames"] == 20 * 12
    report = out.parent / "reward_report"
    assert {p.name for p in result.report_paths} == {"pr_curve.png", "metrics.json",
                                                     "saliency.png"}
    assert (report / "saliency.png").read_bytes()[:4] == b"\x89PNG"
    assert (report / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((report / "metrics.json").read_text())["threshold"] == m["threshold"]
    # Fresh frames: the square decides.
    rng = np.random.default_rng(123)
    clf = result.classifier
    yes = [clf.probability({c: frame(rng, True) for c in CAMS}) >= clf.threshold
           for _ in range(20)]
    no = [clf.probability({c: frame(rng, False) for c in CAMS}) < clf.threshold
          for _ in range(20)]
    assert np.mean(yes) >= 0.9 and np.mean(no) >= 0.9


def test_class_balancing_handles_imbalance(tmp_path):
    # 1 positive per 20 negatives: unweighted BCE would learn "never".
    d = write_dataset(tmp_path / "d", episodes=20, steps=21, positives=1)
    result = train_classifier(d, tmp_path / "c.classifier", config=SMALL, max_epochs=12,
                              patience=12, target_precision=0.75, batch_size=64,
                              progress=False)
    assert result.metrics["pos_weight"] == pytest.approx(20.0, rel=0.1)
    assert result.metrics["recall"] > 0.5


def test_save_load_round_trip(trained, data, tmp_path):
    result, out = trained
    clf = RewardClassifier.load(out)
    assert clf.cameras == {c: (SIZE, SIZE, 3) for c in CAMS}
    assert clf.threshold == result.classifier.threshold
    # pooling "auto" trained one network per pooling and kept the lower held-out loss.
    losses = result.metrics["val_losses"]
    assert set(losses) == {"spatial_embedding", "max_mean"}
    assert clf.config == dataclasses.replace(SMALL, pooling=min(losses, key=losses.get))
    assert clf.meta["metrics"]["accuracy"] == result.metrics["accuracy"]
    assert clf.camera_settings == {c: {"crop": None, "size": None} for c in CAMS}
    frames = load_labelled_frames(data)
    batch = {c: v[:40] for c, v in frames.images.items()}
    p_trained = result.classifier.probabilities(batch)
    p_loaded = clf.probabilities(batch)
    np.testing.assert_array_equal(p_trained, p_loaded)
    one = clf.probability({c: v[7] for c, v in batch.items()})
    assert one == pytest.approx(float(p_loaded[7]), abs=1e-5)
    clf.save(tmp_path / "again.classifier")
    again = RewardClassifier.load(tmp_path / "again.classifier")
    np.testing.assert_array_equal(again.probabilities(batch), p_loaded)


def test_bad_files(trained, tmp_path):
    _, out = trained
    blob = bytearray(out.read_bytes())
    blob[-10] ^= 0xFF
    corrupt = tmp_path / "corrupt.classifier"
    corrupt.write_bytes(bytes(blob))
    with pytest.raises(ClassifierError, match="corrupt"):
        RewardClassifier.load(corrupt)
    (tmp_path / "garbage").write_bytes(b"not a weights file at all")
    with pytest.raises(ClassifierError, match="garbage"):
        RewardClassifier.load(tmp_path / "garbage")
    foreign = tmp_path / "foreign.weights"
    save_weights(foreign, {"dense": {"kernel": np.zeros((2, 2), np.float32)}},
                 {"model": "resnet10"})
    with pytest.raises(ClassifierError, match="not a reward classifier"):
        RewardClassifier.load(foreign)
    clf = RewardClassifier.load(out)
    meta = read_header(out)["meta"]
    newer = tmp_path / "newer.classifier"
    save_weights(newer, clf.params, {**meta, "version": 2})
    with pytest.raises(ClassifierError, match="version 2.*upgrade"):
        RewardClassifier.load(newer)
    with pytest.raises(ClassifierError, match="does not exist"):
        RewardClassifier.load(tmp_path / "nope.classifier")


def test_check_cameras(trained):
    clf = trained[0].classifier
    shape = (SIZE, SIZE, 3)
    clf.check_cameras({"front": shape, "wrist": shape})
    with pytest.raises(ClassifierError, match="'wrist' is missing"):
        clf.check_cameras({"front": shape})
    with pytest.raises(ClassifierError, match="'side' is extra"):
        clf.check_cameras({"front": shape, "wrist": shape, "side": shape})
    with pytest.raises(ClassifierError, match=r"'front' delivers \(64, 64, 3\)"):
        clf.check_cameras({"front": (64, 64, 3), "wrist": shape})
    with pytest.raises(ClassifierError, match="'wrist' is missing"):
        clf.probability({"front": np.zeros(shape, np.uint8)})


def test_training_errors(tmp_path):
    one_class = write_dataset(tmp_path / "d", episodes=3, success_every=0)
    with pytest.raises(ClassifierError, match="no success frames"):
        train_classifier(one_class, tmp_path / "x.classifier", config=SMALL, progress=False)
    assert not (tmp_path / "x.classifier").exists()


def test_unmet_target_precision_is_reported(tmp_path):
    # Every frame is the same blank image: all scores tie, so precision is the positive rate.
    d = write_dataset(tmp_path / "d", episodes=6, steps=8, positives=4, blank=True)
    with pytest.warns(UserWarning, match="no threshold reaches precision 0.99"):
        result = train_classifier(d, tmp_path / "c.classifier", config=SMALL, max_epochs=1,
                                  target_precision=0.99, progress=False, cameras=["front"])
    assert result.metrics["target_precision_met"] is False
    assert result.metrics["precision"] < 0.99
    assert RewardClassifier.load(tmp_path / "c.classifier").meta["metrics"][
        "target_precision_met"] is False


# ------------------------------------------------------------------------------- CLI


def test_cli_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "cli.classifier"
    code = main(["train-classifier", "--data", str(data), "--out", str(out), "--epochs", "3",
                 "--batch-size", "32", "--target-precision", "0.9", "--cameras", "front"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.is_file() and (tmp_path / "cli_report" / "pr_curve.png").is_file()
    assert "ROC-AUC" in captured.out and "threshold" in captured.out
    assert RewardClassifier.load(out).cameras == {"front": (SIZE, SIZE, 3)}
    code = main(["train-classifier", "--data", str(data), "--out", str(out),
                 "--cameras", "side"])
    captured = capsys.readouterr()
    assert code == 2 and "hilrl: error:" in captured.err and "'side'" in captured.err


def test_frozen_resnet10_keeps_pretrained_weights(tmp_path):
    import jax

    from hilrl.storage.weights import resnet10_target

    target = resnet10_target(image_size=SIZE)
    pretrained = jax.tree.map(lambda s: np.random.default_rng(0).normal(
        0, 0.05, s.shape).astype(s.dtype), target)
    weights = tmp_path / "resnet10.weights"
    save_weights(weights, pretrained, {"model": "resnet10"})
    d = write_dataset(tmp_path / "d", episodes=4, steps=6, positives=3, cams=("front",))
    config = ClassifierConfig(encoder="resnet10", freeze_backbone=True, bottleneck_dim=8,
                              hidden_dims=(8,))
    result = train_classifier(d, tmp_path / "r.classifier", config=config, max_epochs=2,
                              resnet_weights=str(weights), progress=False)
    backbone = result.classifier.params["backbone_front"]
    for got, want in zip(jax.tree.leaves(backbone), jax.tree.leaves(pretrained["params"]),
                         strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert RewardClassifier.load(tmp_path / "r.classifier").config.encoder == "resnet10"
    with pytest.raises(ClassifierError, match="--resnet-weights"):
        train_classifier(d, tmp_path / "x.classifier", config=config, progress=False)


def test_learns_sim_labels(tmp_path):
    labels = pytest.importorskip("actor.labels")
    from hilrl.config import load_task

    task = load_task(None, ["env.image_size=[32,32]", "env.sim.jitter=true",
                            "device.expert.takeover=always"])
    counts = labels.record_labels(task, tmp_path / "labels", 12, progress=False)
    assert counts["success"] > 0 and counts["failure"] > 0
    # Bounded by epochs (and early stopping), not minutes: a loaded machine only takes longer.
    result = train_classifier(tmp_path / "labels", tmp_path / "sim.classifier", max_epochs=30,
                              target_precision=0.95, progress=False)
    assert result.metrics["n_val_episodes"] >= 2
    # Judged on episodes of another seed, which neither trained it nor chose its threshold.
    heldout = load_task(None, ["env.image_size=[32,32]", "env.sim.jitter=true",
                               "device.expert.takeover=always", "seed=1"])
    counts = labels.record_labels(heldout, tmp_path / "heldout", 6, progress=False)
    assert counts["success"] > 0 and counts["failure"] > 0
    m = heldout_metrics(result.classifier, tmp_path / "heldout")
    # Precision is what a reward needs (a false success rewards failure); the threshold chosen
    # for it costs recall on new episodes (~0.5 here), which still marks each success.
    assert m["precision"] >= 0.9 and m["roc_auc"] >= 0.9 and m["recall"] >= 0.3, m
    assert set(result.classifier.cameras) == {c.name for c in task.env.cameras}


# ------------------------------------------------------------------------------- saliency


def marked_frame(rng: np.random.Generator, marked: bool) -> tuple[np.ndarray, tuple, tuple]:
    """A dark frame with a blue distractor square somewhere, and on a success a red one
    elsewhere: the red one is the mark. Returns the frame and both squares' (y, x)."""
    img = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
    while True:
        red, blue = rng.integers(1, SIZE - 7, 2), rng.integers(1, SIZE - 7, 2)
        if np.max(np.abs(red - blue)) >= 12:  # apart, so each has a place of its own
            break
    img[blue[0]:blue[0] + 6, blue[1]:blue[1] + 6] = (30, 60, 250)
    if marked:
        img[red[0]:red[0] + 6, red[1]:red[1] + 6] = (250, 40, 30)
    return img, tuple(red), tuple(blue)


def test_grad_cam_points_at_the_mark_the_classifier_learned(tmp_path):
    rng = np.random.default_rng(0)
    writer = DatasetWriter(tmp_path / "marked", {"kind": "synthetic"})
    rec = EpisodeRecorder()
    for i in range(16):
        def obs(ok: bool) -> dict:
            return {"state": np.zeros(3, np.float32),
                    "images": {"front": marked_frame(rng, ok)[0]}}

        rec.start(obs(False))
        for t in range(12):
            ok = i % 2 == 0 and t >= 6
            rec.add(np.zeros(4, np.float32), float(ok), False, t == 11, False, obs(ok),
                    success=np.bool_(ok))
        writer.write(rec.finish({"success": i % 2 == 0}))
    # Stride 1 after the first layer keeps an 11x11 map, fine enough to tell two places apart.
    config = dataclasses.replace(SMALL, conv_strides=(2, 1, 1), pooling="max_mean")
    result = train_classifier(tmp_path / "marked", tmp_path / "marked.classifier",
                              config=config, target_precision=0.8, max_epochs=30, patience=6,
                              batch_size=32, progress=False)
    clf = result.classifier
    frames = [marked_frame(rng, True) for _ in range(20)]
    images = np.stack([f for f, _, _ in frames])
    assert np.mean(clf.probabilities({"front": images}) >= clf.threshold) >= 0.9
    heat = clf.saliency({"front": images})["front"]
    assert heat.shape == (20, SIZE, SIZE) and heat.min() >= 0.0 and heat.max() <= 1.0

    def box(h: np.ndarray, at: tuple) -> float:
        y, x = at
        return float(h[max(y - 2, 0):y + 8, max(x - 2, 0):x + 8].mean())

    red = np.array([box(h, r) for h, (_, r, _) in zip(heat, frames, strict=True)])
    blue = np.array([box(h, b) for h, (_, _, b) in zip(heat, frames, strict=True)])
    # It looks at the red mark, not at the blue square every frame has, nor everywhere.
    assert np.mean(red > blue) >= 0.85, (red, blue)
    assert np.median(red) >= 2.0 * np.median(heat.mean(axis=(1, 2))), red
    assert (tmp_path / "marked_report" / "saliency.png").is_file()
