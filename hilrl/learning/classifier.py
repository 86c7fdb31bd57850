"""The learned binary reward classifier: camera frames -> "did the task succeed?".

On a real robot nothing measures success, so a small image classifier trained on labelled
frames stands in for the simulator's privileged check. Its output ends episodes and gives the
sparse reward, which is why the decision threshold is chosen for *precision*: a false positive
ends an episode early and rewards a failure, which RL then happily learns to repeat.

Pieces:

- :func:`load_labelled_frames` reads hilrl episode datasets into (frames, labels, episode).
- :func:`train_classifier` trains per-camera encoder + MLP head -> one logit, with class
  balancing, DrQ random shift and early stopping on a validation split made *by episode*
  (frames of one episode are near duplicates, so a frame-level split would leak), picks the
  threshold and writes the classifier file plus a small report.
- :class:`RewardClassifier` is what the env wrapper uses: ``load``, ``check_cameras``,
  ``probability``.

The file is a ``hilrl.storage.weights`` weights file (pickle-free, checksummed) whose JSON meta
holds everything needed to rebuild the model (see :meth:`RewardClassifier.save`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hilrl
from hilrl.learning import saliency
from hilrl.learning.networks import (
    MLP,
    POOLINGS,
    backbone_grid,
    default_init,
    make_backbone,
    make_pooling,
)
from hilrl.learning.saliency import mark
from hilrl.storage.dataset import DatasetError, iter_dataset, read_dataset_info
from hilrl.storage.fsutil import atomic_write_bytes
from hilrl.storage.weights import WeightsError, load_weights, read_header, save_weights

__all__ = [
    "ClassifierConfig",
    "ClassifierError",
    "LabelledFrames",
    "RewardClassifier",
    "TrainResult",
    "binary_cross_entropy",
    "binary_metrics",
    "choose_threshold",
    "load_labelled_frames",
    "pr_curve",
    "retrain_recipe",
    "roc_auc",
    "split_by_episode",
    "train_classifier",
]

FILE_FORMAT = "hilrl-classifier"
FILE_VERSION = 1
LEARNING_RATE = 1e-3
NUM_SPATIAL_FEATURES = 8
_PREDICT_CHUNK = 256  # frames per jitted call in probabilities(): bounds memory and shapes


class ClassifierError(ValueError):
    """Anything the user can fix about classifier data, files or inputs."""


@dataclass(frozen=True)
class ClassifierConfig:
    """The network; stored in the classifier file so ``load`` can rebuild it."""

    encoder: str = "conv"  # "conv" (small, from scratch) | "resnet10"
    conv_features: tuple[int, ...] = (16, 16, 16, 16)
    conv_strides: tuple[int, ...] = (2, 2, 2, 2)
    # "auto": train one with each of AUTO_POOLINGS and keep the one with the lower held-out
    # loss. Where success is a place (a cube's height) the spatial embedding wins; where it is
    # something anywhere in view (a sliver of a marker) it overfits a few episodes'
    # positions and max_mean wins.
    pooling: str = "auto"
    bottleneck_dim: int = 64
    hidden_dims: tuple[int, ...] = (64,)
    freeze_backbone: bool = False  # with resnet10 weights from a local file
    augment_pad: int = 4  # DrQ random shift while training; 0 = off

    def __post_init__(self) -> None:
        if self.encoder not in ("conv", "resnet10"):
            raise ClassifierError(f"encoder must be 'conv' or 'resnet10', got {self.encoder!r}")
        if self.pooling not in (*POOLINGS, "auto"):
            raise ClassifierError(f"pooling must be 'auto' or one of {', '.join(POOLINGS)}, "
                                  f"got {self.pooling!r}")
        if len(self.conv_features) != len(self.conv_strides) or not self.conv_features:
            raise ClassifierError(f"conv_features {self.conv_features} and conv_strides "
                                  f"{self.conv_strides} must be non-empty and equally long")
        if self.augment_pad < 0:
            raise ClassifierError(f"augment_pad must be >= 0, got {self.augment_pad}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ClassifierError(f"unknown classifier config keys {unknown}; the file was "
                                  "probably written by a newer hilrl")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class _ClassifierNet(nn.Module):
    """Per camera (sorted by name): backbone -> pooling -> bottleneck (Dense, LayerNorm,
    tanh); concatenated -> MLP -> one logit. Output (B,)."""

    config: ClassifierConfig
    cameras: tuple[str, ...]

    @nn.compact
    def __call__(self, images: Mapping[str, jax.Array]) -> jax.Array:
        cfg = self.config
        parts = []
        for cam in sorted(self.cameras):
            backbone, preprocess = make_backbone(cfg.encoder, cfg.conv_features,
                                                 cfg.conv_strides, name=f"backbone_{cam}")
            x = mark(self, cam, backbone(preprocess(images[cam])))  # for Grad-CAM
            if cfg.freeze_backbone:
                x = jax.lax.stop_gradient(x)
            x = make_pooling(cfg.pooling, NUM_SPATIAL_FEATURES, name=f"pool_{cam}")(x)
            x = nn.Dense(cfg.bottleneck_dim, kernel_init=default_init(),
                         name=f"bottleneck_{cam}")(x)
            parts.append(jnp.tanh(nn.LayerNorm(name=f"bottleneck_norm_{cam}")(x)))
        x = jnp.concatenate(parts, axis=-1)
        x = MLP(cfg.hidden_dims, activate_final=True, name="head")(x)
        return nn.Dense(1, kernel_init=default_init(1.0), name="logit")(x)[..., 0]


# ----------------------------------------------------------------------------- pure math


def binary_cross_entropy(logits: jax.Array, labels: jax.Array, pos_weight: jax.Array | float
                         ) -> jax.Array:
    """Mean BCE on logits, positives weighted by ``pos_weight`` (negatives / positives) so
    that a rare success class weighs as much as the common failure class. Stable form:
    -log sigmoid(z) = softplus(-z), -log(1 - sigmoid(z)) = softplus(z)."""
    labels = labels.astype(jnp.float32)
    per = pos_weight * labels * jax.nn.softplus(-logits) + (1 - labels) * jax.nn.softplus(logits)
    return jnp.mean(per)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC by the rank (Mann-Whitney) formula, ties getting their average rank. NaN when
    a class is missing."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # Average rank per group of equal scores (1-based ranks).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _pr_counts(scores: np.ndarray, labels: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives of ``score >= t`` for each distinct score ``t``, thresholds in
    decreasing order: ``(thresholds, tp, fp)``."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    # The last index of each group of equal scores: everything >= that score is predicted.
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    return s[last], np.cumsum(y)[last], np.cumsum(~y)[last]


def pr_curve(scores: np.ndarray, labels: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of ``score >= t`` for each distinct score ``t``, thresholds in
    decreasing order: ``(thresholds, precision, recall)``."""
    thresholds, tp, fp = _pr_counts(scores, labels)
    return thresholds, tp / (tp + fp), tp / max(int(np.asarray(labels, bool).sum()), 1)


def choose_threshold(scores: np.ndarray, labels: np.ndarray, target_precision: float
                     ) -> tuple[float, bool]:
    """The smallest threshold whose *pessimistic* precision ``tp / (tp + fp + 1)`` on
    (scores, labels) is >= ``target_precision`` (the most recall at acceptable precision); if
    none reaches it, the one of best pessimistic precision (ties: smallest). Returns
    ``(threshold, met)``.

    The extra false positive is the one the validation split did not happen to contain: the
    smallest threshold whose observed precision just meets the target is the luckiest point of
    a small sample (on sim pick-cube it admitted the frame before the lift and scored 0.986 on
    unseen episodes). A target of 0.99 then needs at least 99 validation positives.

    The threshold is the validation score itself, not a point in the gap below it: the top of
    the gap keeps unseen negatives that score a little higher than the validation ones out.
    """
    thresholds, tp, fp = _pr_counts(scores, labels)
    if len(thresholds) == 0 or not np.asarray(labels, bool).any():
        return 0.5, False
    pessimistic = tp / (tp + fp + 1.0)
    ok = np.flatnonzero(pessimistic >= target_precision)
    met = len(ok) > 0
    # thresholds decrease with the index, so the last qualifying index is the smallest one.
    i = int(ok[-1]) if met else int(np.flatnonzero(pessimistic == pessimistic.max())[-1])
    return float(thresholds[i]), bool(met)


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall (of ``score >= threshold``) and ROC-AUC. Precision of no
    positive prediction is 1 (nothing claimed, nothing wrong); recall with no positives, 1."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    pred = scores >= threshold
    tp = int((pred & labels).sum())
    fp = int((pred & ~labels).sum())
    fn = int((~pred & labels).sum())
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "roc_auc": roc_auc(scores, labels),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
    }


def split_by_episode(episode: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int
                     ) -> np.ndarray:
    """Boolean mask of the validation frames: whole episodes, drawn (seeded) separately from
    episodes with and without any positive frame so both kinds appear in validation when
    there are at least two of that kind (one stays for training)."""
    episodes = np.unique(episode)
    if len(episodes) < 2:
        raise ClassifierError(f"need at least 2 episodes to hold some out for validation, got "
                              f"{len(episodes)}; record more episodes")
    has_pos = {int(e): bool(labels[episode == e].any()) for e in episodes}
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for kind in (True, False):
        group = np.array([e for e in episodes if has_pos[int(e)] == kind])
        if len(group) == 0:
            continue
        n = int(round(val_fraction * len(group)))
        if len(group) >= 2:
            n = min(max(n, 1), len(group) - 1)
        val.extend(rng.permutation(group)[:n].tolist())
    if not val:  # e.g. one episode of each kind: validation still needs something
        val = [int(rng.choice(episodes))]
    if len(val) == len(episodes):
        val = val[:-1]
    return np.isin(episode, val)


# ----------------------------------------------------------------------------- data


@dataclass
class LabelledFrames:
    images: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) bool
    episode: np.ndarray  # (N,) int, a global episode index (for the split)

    def __len__(self) -> int:
        return len(self.labels)


def _parse_labels(labels: str) -> int | None:
    """None for "success", K for "last:K"."""
    if labels == "success":
        return None
    kind, _, k = labels.partition(":")
    if kind == "last" and k.isdigit() and int(k) >= 1:
        return int(k)
    raise ClassifierError(f"labels must be 'success' or 'last:K' with K >= 1, got {labels!r}")


def _as_paths(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def load_labelled_frames(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                         cameras: Sequence[str] | None = None,
                         labels: str = "success") -> LabelledFrames:
    """Labelled frames from hilrl episode datasets (see the module docstring of
    ``hilrl.storage.dataset``).

    ``labels="success"``: the per-step extra ``success`` (T,) labels observation t+1, so the
    frames are ``images[cam][1:]`` (observation 0 precedes any action and is not used).
    ``labels="last:K"``: in episodes whose meta says ``success``, the last K observations are
    positives; every other observation is a negative (demos recorded on hardware).
    """
    last_k = _parse_labels(labels)
    dirs = _as_paths(paths)
    if not dirs:
        raise ClassifierError("no datasets given; pass at least one --data DIR")
    frames: dict[str, list[np.ndarray]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    shape_source: dict[str, Path] = {}
    all_labels: list[np.ndarray] = []
    all_episodes: list[np.ndarray] = []
    cams = list(cameras) if cameras is not None else None
    n_episode = 0
    for d in dirs:
        try:
            episodes = iter_dataset(d)
            for ep in episodes:
                if cams is None:
                    cams = sorted(ep.images)
                    if not cams:
                        raise ClassifierError(f"{d}: the episodes have no cameras; a reward "
                                              "classifier needs images")
                missing = [c for c in cams if c not in ep.images]
                if missing:
                    raise ClassifierError(
                        f"{d}: camera {missing[0]!r} is missing (the dataset has "
                        f"{sorted(ep.images)}); choose cameras with --cameras")
                if last_k is None:
                    if "success" not in ep.extras:
                        raise ClassifierError(
                            f"{d}: episodes have no per-step 'success' extra; record labelled "
                            "episodes with hilrl record-labels, or use --labels last:K for "
                            "successful demos")
                    y = np.asarray(ep.extras["success"]).reshape(ep.length).astype(bool)
                    first = 1
                else:
                    y = np.zeros(ep.length + 1, bool)
                    if ep.meta.get("success"):
                        y[-last_k:] = True
                    first = 0
                for cam in cams:
                    img = ep.images[cam]
                    if cam not in shapes:
                        shapes[cam], shape_source[cam] = img.shape[1:], d
                    elif img.shape[1:] != shapes[cam]:
                        raise ClassifierError(
                            f"camera {cam!r}: frames are {img.shape[1:]} in {d} but "
                            f"{shapes[cam]} in {shape_source[cam]}; record all datasets at "
                            "one image size")
                    frames.setdefault(cam, []).append(img[first:])
                all_labels.append(y)
                all_episodes.append(np.full(len(y), n_episode, np.int64))
                n_episode += 1
        except DatasetError as e:
            raise ClassifierError(str(e)) from None
    where = ", ".join(str(d) for d in dirs)
    if n_episode == 0 or cams is None:
        raise ClassifierError(f"no episodes in {where}; record some first")
    y_all = np.concatenate(all_labels)
    if not y_all.any():
        raise ClassifierError(f"no success frames in {where}: label some with hilrl "
                              "record-labels")
    if y_all.all():
        raise ClassifierError(f"no failure frames in {where}: the classifier needs negatives "
                              "too; record episodes before/without success")
    return LabelledFrames(images={c: np.concatenate(frames[c]) for c in cams}, labels=y_all,
                          episode=np.concatenate(all_episodes))


def _camera_settings_from_data(paths: Sequence[Path], cameras: Sequence[str]
                               ) -> dict[str, dict]:
    """The crop/size of each camera as the recording task had them (from the dataset's
    info["task"]), so the env wrapper can warn when the live cameras are set up otherwise."""
    settings = {cam: {"crop": None, "size": None} for cam in cameras}
    try:
        env = read_dataset_info(paths[0]).get("task", {}).get("env", {})
        for c in env.get("cameras", []):
            if isinstance(c, dict) and c.get("name") in settings:
                settings[c["name"]] = {"crop": c.get("crop"), "size": c.get("size")}
    except (DatasetError, AttributeError):
        pass
    return {cam: {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in s.items()}
            for cam, s in settings.items()}


# ----------------------------------------------------------------------------- classifier

AUTO_POOLINGS = ("spatial_embedding", "max_mean")


def _predict_fn(net: _ClassifierNet) -> Callable[[Any, Mapping[str, Any]], jax.Array]:
    @jax.jit
    def predict(params: Any, images: Mapping[str, Any]) -> jax.Array:
        return jax.nn.sigmoid(net.apply({"params": params}, images))
    return predict


class RewardClassifier:
    """A trained classifier: ``probability(images) >= threshold`` means success."""

    def __init__(self, config: ClassifierConfig, cameras: Mapping[str, Sequence[int]],
                 params: Any, threshold: float = 0.5,
                 camera_settings: Mapping[str, Mapping[str, Any]] | None = None,
                 meta: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.cameras = {cam: tuple(int(d) for d in shape) for cam, shape in
                        sorted(cameras.items())}
        self.camera_settings = {cam: dict((camera_settings or {}).get(
            cam, {"crop": None, "size": None})) for cam in self.cameras}
        self.threshold = float(threshold)
        self.meta = dict(meta or {})
        self.params = params
        self._net = _ClassifierNet(config, tuple(self.cameras))
        self._predict = _predict_fn(self._net)

    # ------------------------------------------------------------------ construction

    @staticmethod
    def init_params(config: ClassifierConfig, cameras: Mapping[str, Sequence[int]],
                    key: jax.Array) -> Any:
        net = _ClassifierNet(config, tuple(sorted(cameras)))
        dummy = {cam: jnp.zeros((1, *shape), jnp.uint8) for cam, shape in cameras.items()}
        return net.init(key, dummy)["params"]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RewardClassifier:
        """Read a classifier file; ClassifierError for anything wrong with it."""
        path = Path(path)
        if not path.is_file():
            raise ClassifierError(f"{path}: classifier file does not exist; train one with "
                                  "hilrl train-classifier")
        try:
            meta = read_header(path)["meta"]
        except (WeightsError, OSError) as e:
            raise ClassifierError(f"{path}: not a readable classifier file ({e}); "
                                  "retrain it with hilrl train-classifier") from None
        if meta.get("format") != FILE_FORMAT:
            raise ClassifierError(f"{path}: a hilrl weights file but not a reward classifier "
                                  f"(meta format {meta.get('format')!r}, expected "
                                  f"{FILE_FORMAT!r}); pass the file train-classifier wrote")
        version = meta.get("version")
        if not isinstance(version, int) or version > FILE_VERSION or version < 1:
            raise ClassifierError(f"{path}: classifier file version {version!r}; this hilrl "
                                  f"({hilrl.__version__}) reads version {FILE_VERSION}: "
                                  "upgrade hilrl or retrain the classifier")
        try:
            config = ClassifierConfig.from_dict(meta["config"])
            cameras = {c: tuple(s) for c, s in meta["cameras"].items()}
            threshold = float(meta["threshold"])
            settings = meta.get("camera_settings") or {}
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ClassifierError(f"{path}: classifier metadata is incomplete ({e}); "
                                  "retrain it with hilrl train-classifier") from None
        target = jax.eval_shape(lambda: cls.init_params(config, cameras, jax.random.key(0)))
        try:
            params, _ = load_weights(path, target=target)
        except (WeightsError, OSError) as e:
            raise ClassifierError(f"{path}: cannot load the classifier weights ({e}); "
                                  "retrain it with hilrl train-classifier") from None
        params = jax.tree.map(jnp.asarray, params)
        known = ("format", "version", "config", "cameras", "camera_settings", "threshold")
        rest = {k: v for k, v in meta.items() if k not in known}
        return cls(config, cameras, params, threshold, settings, rest)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically as a hilrl weights file with the model description in its meta."""
        meta = {**self.meta, "format": FILE_FORMAT, "version": FILE_VERSION,
                "config": self.config.to_dict(),
                "cameras": {c: list(s) for c, s in self.cameras.items()},
                "camera_settings": self.camera_settings, "threshold": self.threshold}
        try:
            save_weights(path, self.params, meta=meta)
        except (OSError, TypeError) as e:
            raise ClassifierError(f"{path}: cannot write the classifier file ({e})") from None

    # ------------------------------------------------------------------ inference

    def check_cameras(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Raise ClassifierError unless ``shapes`` (camera -> frame shape) are exactly the
        cameras and (H, W, 3) frame shapes this classifier was trained on."""
        got = {cam: tuple(int(d) for d in s) for cam, s in shapes.items()}
        want = self.cameras
        problems = []
        for cam in sorted(set(want) - set(got)):
            problems.append(f"camera {cam!r} is missing")
        for cam in sorted(set(got) - set(want)):
            problems.append(f"camera {cam!r} is extra (not used in training)")
        for cam in sorted(set(got) & set(want)):
            if got[cam] != want[cam]:
                problems.append(f"camera {cam!r} delivers {got[cam]}, trained on {want[cam]}")
        if problems:
            raise ClassifierError(
                "the env's cameras do not match the reward classifier: " + "; ".join(problems)
                + f" (env: {got}, classifier: {want}); set env.cameras/env.image_size as when "
                "the classifier was trained, or retrain it")

    def probability(self, images: Mapping[str, np.ndarray]) -> float:
        """Success probability of one observation, ``{camera: (H, W, 3) uint8}``."""
        self.check_cameras({cam: np.shape(img) for cam, img in images.items()})
        batch = {cam: np.asarray(images[cam])[None] for cam in self.cameras}
        return float(self._predict(self.params, batch)[0])

    def probabilities(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        """Success probabilities of N observations, ``{camera: (N, H, W, 3) uint8}`` -> (N,)."""
        self.check_cameras({cam: np.shape(img)[1:] for cam, img in images.items()})
        sizes = {len(img) for img in images.values()}
        if len(sizes) != 1:
            raise ClassifierError(f"cameras have different numbers of frames: "
                                  f"{ {c: len(i) for c, i in images.items()} }")
        return _batched_predict(self._predict, self.params, images, _PREDICT_CHUNK)

    def is_success(self, images: Mapping[str, np.ndarray]) -> bool:
        return self.probability(images) >= self.threshold

    def saliency(self, images: Mapping[str, np.ndarray],
                 toward: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Grad-CAM (``hilrl.learning.saliency``), ``{camera: (N, H, W)}`` in [0, 1] for N
        observations: where each camera's image spoke for success, or, where ``toward``
        (N,) is False, for failure. (Grad-CAM shows evidence for one answer only: asked
        about success, a frame with none is blank.)"""
        self.check_cameras({cam: np.shape(img)[1:] for cam, img in images.items()})
        sign = jnp.where(jnp.asarray(True if toward is None else toward), 1.0, -1.0)
        return saliency.grad_cam(self._net, {"params": self.params},
                                 {cam: jnp.asarray(images[cam]) for cam in self.cameras},
                                 lambda logit: sign * logit,
                                 {cam: shape[:2] for cam, shape in self.cameras.items()},
                                 backbone_grid(self.config.encoder, self.config.conv_strides))


def _batched_predict(predict: Callable, params: Any, images: Mapping[str, np.ndarray],
                     chunk: int) -> np.ndarray:
    """Run ``predict`` over N frames in fixed-size chunks (the last one padded) so the jitted
    function sees at most two shapes whatever N is."""
    n = len(next(iter(images.values())))
    out = np.empty(n, np.float32)
    if n == 0:
        return out
    size = min(chunk, n)
    for start in range(0, n, size):
        idx = np.arange(start, start + size).clip(max=n - 1)
        probs = predict(params, {cam: img[idx] for cam, img in images.items()})
        m = min(size, n - start)
        out[start:start + m] = np.asarray(probs)[:m]
    return out


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    classifier: RewardClassifier
    metrics: dict
    report_paths: list[Path] = field(default_factory=list)


def _make_train_step(net: _ClassifierNet, tx: optax.GradientTransformation, pad: int):
    from hilrl.learning.sac import augment_observation

    @jax.jit
    def train_step(params, opt_state, images, labels, key, pos_weight):
        images = augment_observation({"images": images}, key, pad)["images"]

        def loss_fn(p):
            return binary_cross_entropy(net.apply({"params": p}, images), labels, pos_weight)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def _subset(frames: LabelledFrames, mask: np.ndarray) -> LabelledFrames:
    idx = np.flatnonzero(mask)
    return LabelledFrames({c: v[idx] for c, v in frames.images.items()}, frames.labels[idx],
                          frames.episode[idx])


def _val_loss(scores: np.ndarray, labels: np.ndarray, pos_weight: float) -> float:
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(np.mean(-pos_weight * labels * np.log(p) - (1 - labels) * np.log(1 - p)))


def _load_resnet(params: Any, cameras: Sequence[str], weights: str | None,
                 config: ClassifierConfig) -> Any:
    if config.encoder != "resnet10":
        if weights:
            raise ClassifierError("--resnet-weights needs --encoder resnet10")
        return params
    if weights is None:
        if config.freeze_backbone:
            raise ClassifierError("a frozen resnet10 backbone needs pretrained weights: pass "
                                  "--resnet-weights FILE")
        return params
    from hilrl.storage.weights import load_pretrained_resnet10

    try:
        pretrained = load_pretrained_resnet10(weights)["params"]
    except (WeightsError, OSError) as e:
        raise ClassifierError(f"cannot load ResNet-10 weights: {e}") from None
    params = dict(params)
    for cam in cameras:
        params[f"backbone_{cam}"] = pretrained
    return params


def train_classifier(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                     out: str | Path, *, cameras: Sequence[str] | None = None,
                     labels: str = "success", config: ClassifierConfig = ClassifierConfig(),
                     camera_settings: Mapping[str, Mapping[str, Any]] | None = None,
                     val_fraction: float = 0.2, target_precision: float = 0.99,
                     batch_size: int = 64, max_epochs: int = 50, patience: int = 5,
                     minutes: float | None = None, seed: int = 0,
                     resnet_weights: str | None = None, progress: bool = True) -> TrainResult:
    """Train a reward classifier on labelled episodes and write it to ``out`` (plus a report
    directory ``<out stem>_report/`` with ``pr_curve.png``, ``metrics.json`` and
    ``saliency.png``, Grad-CAM on held-out frames)."""
    if not 0.0 < val_fraction < 1.0:
        raise ClassifierError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 < target_precision <= 1.0:
        raise ClassifierError(f"target_precision must be in (0, 1], got {target_precision}")
    if batch_size < 1 or max_epochs < 1 or patience < 1:
        raise ClassifierError("batch_size, max_epochs and patience must be >= 1")
    out = Path(out)
    started = time.monotonic()
    deadline = started + minutes * 60.0 if minutes is not None else math.inf
    dirs = _as_paths(paths)
    data = load_labelled_frames(dirs, cameras, labels)
    cams = sorted(data.images)
    val_mask = split_by_episode(data.episode, data.labels, val_fraction, seed)
    train, val = _subset(data, ~val_mask), _subset(data, val_mask)
    del data
    n_pos = int(train.labels.sum())
    if n_pos == 0 or n_pos == len(train):
        raise ClassifierError("the training split has only one class; record more episodes "
                              "(both with and without success)")
    pos_weight = (len(train) - n_pos) / n_pos
    shapes = {cam: tuple(train.images[cam].shape[1:]) for cam in cams}
    _log(progress, f"classifier: {len(train)} train frames ({n_pos} positive, "
         f"{len(np.unique(train.episode))} episodes), {len(val)} validation frames "
         f"({int(val.labels.sum())} positive, {len(np.unique(val.episode))} episodes), "
         f"cameras {shapes}")

    candidates = AUTO_POOLINGS if config.pooling == "auto" else (config.pooling,)
    fits = []
    for pooling in candidates:
        if len(candidates) > 1:
            _log(progress, f"classifier: pooling {pooling}")
        fits.append(_fit(dataclasses.replace(config, pooling=pooling), train, val, cams,
                         shapes, resnet_weights, batch_size, max_epochs, patience, deadline,
                         seed, pos_weight, progress))
    fit = min(fits, key=lambda f: f.val_loss)
    config, best_params, scores = fit.config, fit.params, fit.scores
    if len(candidates) > 1:
        _log(progress, f"classifier: kept pooling {config.pooling} (held-out loss "
             + ", ".join(f"{f.config.pooling} {f.val_loss:.4f}" for f in fits) + ")")
    threshold, met = choose_threshold(scores, val.labels, target_precision)
    metrics: dict[str, Any] = binary_metrics(scores, val.labels, threshold)
    metrics.update({
        "threshold": threshold,
        "target_precision": target_precision,
        "target_precision_met": met,
        "n_train_frames": len(train),
        "n_val_frames": len(val),
        "n_train_episodes": int(len(np.unique(train.episode))),
        "n_val_episodes": int(len(np.unique(val.episode))),
        "positives_train": n_pos,
        "positives_val": int(val.labels.sum()),
        "pos_weight": pos_weight,
        "pooling": config.pooling,
        "val_loss": fit.val_loss,
        "val_losses": {f.config.pooling: f.val_loss for f in fits},
        "best_epoch": fit.best_epoch,
        "epochs": fit.epochs,
        "stop_reason": fit.stop_reason,
        "train_seconds": time.monotonic() - started,
    })
    if not met:
        needed = math.ceil(target_precision / (1.0 - target_precision) - 1e-9) \
            if target_precision < 1.0 else math.inf
        warnings.warn(f"no threshold reaches precision {target_precision} on the validation "
                      f"split (counting one unseen false positive, so at least {needed} "
                      f"validation positives are needed; there are {metrics['positives_val']}); "
                      f"using threshold {threshold:.3f} (validation precision "
                      f"{metrics['precision']:.3f}, recall {metrics['recall']:.3f}). Label more "
                      f"data, raise --val-fraction, or lower the target.", stacklevel=2)
    settings = (dict(camera_settings) if camera_settings is not None
                else _camera_settings_from_data(dirs, cams))
    meta = {
        "metrics": _json_safe(metrics),
        "target_precision": target_precision,
        "data": {"paths": [str(d.resolve()) for d in dirs], "labels": labels},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "hilrl_version": hilrl.__version__,
    }
    clf = RewardClassifier(config, shapes, jax.device_get(best_params), threshold, settings,
                           meta)
    clf.save(out)
    report = out.parent / f"{out.stem}_report"
    report_paths = write_report(report, scores, val.labels, threshold, metrics)
    report_paths.append(write_saliency(report / "saliency.png", clf, val, scores))
    return TrainResult(clf, metrics, report_paths)


SALIENCY_ROWS = 8


def write_saliency(path: Path, clf: RewardClassifier, val: LabelledFrames,
                   scores: np.ndarray) -> Path:
    """Grad-CAM of held-out frames: the most confident false positives and false negatives
    first (what a person debugging the reward needs to see), then true positives and
    negatives, ``SALIENCY_ROWS`` in all; each map shows what spoke for the classifier's
    answer."""
    predicted = scores >= clf.threshold
    labels = val.labels.astype(bool)
    order = np.argsort(-scores)  # most confident success first
    groups = [("false positive", order[(~labels & predicted)[order]]),
              ("false negative", order[::-1][(labels & ~predicted)[order[::-1]]]),
              ("true positive", order[(labels & predicted)[order]]),
              ("true negative", order[::-1][(~labels & ~predicted)[order[::-1]]])]
    picked: list[tuple[str, int]] = []
    for name, idx in groups:  # two of each kind, if it has them
        picked += [(name, int(i)) for i in idx[:2]]
    for name, idx in groups:  # then fill up from whichever kinds have more
        picked += [(name, int(i)) for i in idx[2:] if len(picked) < SALIENCY_ROWS]
    picked = picked[:SALIENCY_ROWS]
    rows = [int(i) for _, i in picked]
    images = {cam: val.images[cam][rows] for cam in clf.cameras}
    heat = clf.saliency(images, toward=scores[rows] >= clf.threshold)
    return saliency.plot(path, [
        (f"{name}\np={scores[i]:.3f}", {c: images[c][k] for c in images},
         {c: heat[c][k] for c in heat}) for k, (name, i) in enumerate(picked)],
        f"reward classifier Grad-CAM, held-out frames (threshold {clf.threshold:.2f}): "
        "what spoke for its answer")


def retrain_recipe(path: str | os.PathLike[str], extra: Sequence[str | os.PathLike[str]] = ()
                   ) -> dict[str, Any]:
    """:func:`train_classifier`'s arguments that train the classifier in ``path`` again, on
    its own data plus the datasets ``extra`` (e.g. frames a person rejected): ``paths``,
    ``cameras``, ``labels``, ``config``, ``target_precision``, ``camera_settings``."""
    clf = RewardClassifier.load(path)
    data = clf.meta.get("data") or {}
    if not data.get("paths"):
        raise ClassifierError(f"{path}: the file does not say what data it was trained on; "
                              "retrain it with --data")
    paths: list[Path] = []
    for p in [*data["paths"], *extra]:
        if Path(p).resolve() not in paths:
            paths.append(Path(p).resolve())
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ClassifierError(f"{path} was trained on {missing}, which no longer exist; "
                              "retrain it with --data")
    return {"paths": paths, "cameras": list(clf.cameras), "labels": data.get("labels", "success"),
            "config": clf.config,
            "target_precision": float(clf.meta.get("target_precision", 0.99)),
            "camera_settings": clf.camera_settings}


@dataclass
class _Fit:
    config: ClassifierConfig
    params: Any
    scores: np.ndarray  # on the validation frames
    val_loss: float
    best_epoch: int
    epochs: int
    stop_reason: str


def _fit(config: ClassifierConfig, train: LabelledFrames, val: LabelledFrames,
         cams: list[str], shapes: dict[str, tuple[int, ...]], resnet_weights: str | None,
         batch_size: int, max_epochs: int, patience: int, deadline: float, seed: int,
         pos_weight: float, progress: bool) -> _Fit:
    """Train one network, early-stopped on the held-out loss; its best parameters."""
    key = jax.random.key(seed)
    key, init_key = jax.random.split(key)
    params = RewardClassifier.init_params(config, shapes, init_key)
    params = _load_resnet(params, cams, resnet_weights, config)
    net = _ClassifierNet(config, tuple(cams))
    tx = optax.adam(LEARNING_RATE)
    opt_state = tx.init(params)
    train_step = _make_train_step(net, tx, config.augment_pad)
    predict = _predict_fn(net)

    rng = np.random.default_rng(seed)
    batch = min(batch_size, len(train))
    steps_per_epoch = max(1, math.ceil(len(train) / batch))
    best_loss, best_params, best_epoch, bad_epochs = math.inf, params, 0, 0
    epoch = 0
    stop_reason = "max_epochs"
    pw = jnp.float32(pos_weight)
    for epoch in range(1, max_epochs + 1):
        order = rng.permutation(len(train))
        # Fixed batch shape (one compile): the last batch is topped up with random frames.
        order = np.concatenate([order, rng.integers(0, len(train),
                                                    steps_per_epoch * batch - len(order))])
        losses = []
        for s in range(steps_per_epoch):
            idx = np.sort(order[s * batch:(s + 1) * batch])
            key, step_key = jax.random.split(key)
            params, opt_state, loss = train_step(
                params, opt_state, {c: train.images[c][idx] for c in cams},
                train.labels[idx], step_key, pw)
            losses.append(loss)
            if time.monotonic() > deadline:
                break
        scores = _batched_predict(predict, params, val.images, max(batch, 64))
        loss_val = _val_loss(scores, val.labels, pos_weight)
        _log(progress, f"epoch {epoch}: train loss {float(np.mean(losses)):.4f}, "
             f"validation loss {loss_val:.4f}")
        if loss_val < best_loss:
            best_loss, best_params, best_epoch, bad_epochs = loss_val, params, epoch, 0
        else:
            bad_epochs += 1
        if bad_epochs >= patience:
            stop_reason = "early_stopping"
            break
        if time.monotonic() > deadline:
            stop_reason = "time_budget"
            break

    scores = _batched_predict(predict, best_params, val.images, max(batch, 64))
    return _Fit(config, best_params, scores, best_loss, best_epoch, epoch, stop_reason)


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def _json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """NaN (e.g. ROC-AUC with one class in validation) is not JSON: store None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}


def write_report(directory: Path, scores: np.ndarray, labels: np.ndarray, threshold: float,
                 metrics: Mapping[str, Any]) -> list[Path]:
    """``pr_curve.png`` (validation precision-recall, chosen point marked) and
    ``metrics.json``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    directory.mkdir(parents=True, exist_ok=True)
    _, precision, recall = pr_curve(scores, labels)
    fig = Figure(figsize=(5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", label="validation")
    ax.plot([metrics["recall"]], [metrics["precision"]], "o", color="C3",
            label=f"threshold {threshold:.3f}")
    ax.axhline(metrics["target_precision"], color="grey", ls="--", lw=0.8,
               label=f"target precision {metrics['target_precision']}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(min(0.5, float(np.min(precision, initial=1.0))) - 0.02, 1.02)
    ax.set_title(f"reward classifier (ROC-AUC {metrics['roc_auc']:.3f})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    png = directory / "pr_curve.png"
    fig.savefig(png, dpi=100)
    js = directory / "metrics.json"
    atomic_write_bytes(js, json.dumps(_json_safe(metrics), indent=2).encode() + b"\n")
    return [png, js]
