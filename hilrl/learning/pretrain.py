"""Pretrain an image encoder on the demos, freeze it, and let the policy see its features.

The default pixel agent trains its conv encoder online with the critic (on a CPU a small
one at 64x64: ``tasks/*_pixels_cpu.yaml``). This is the option (``train-sim --encoder
pretrained``): before online RL, ``hilrl pretrain-encoder`` trains a small keypoint encoder
on the demos (seconds to a minute). The policy then sees its output as a few extra state
numbers. The actor computes them once per frame (``env.frozen_encoder``). The learner
trains on low-dimensional transitions, as fast as the state-based task.

The encoder: per camera a 3x3 stride-2 conv and a 1x1 conv (a local appearance detector,
with too little context to memorise where the demo objects were), a 1x1 conv to
``keypoints`` maps, and a spatial soft-argmax (Levine et al. 2016): each map becomes one
(x, y) image point. The features are every camera's keypoints plus ``object``, a small MLP's
3-d read-out (below). On 20 held-out pick-cube episodes the grasp-point read-out is 3-7 cm
off (the depth axis is the worst), depending on the seed. The keypoints carry more than
that: the policy reads them too, and RL learns its own use of them.

Three losses, all from data the user already has (no privileged state):

- **BC**: the demo action from keypoints + proprio (MSE of the tanh mean).
- **Success**: whether the step's reward is 1, from keypoints + proprio (class-balanced).
- **A hindsight read-out** (the task's ``pretrain.readout``), a position in the base frame
  of ``tcp_pose`` read off the images, labelled from the demos' own tcp track:
  - ``final_pose``: where the demonstrator's hand ended the task (above the lifted cube,
    at the hole, behind the puck on its target). Every task whose demos succeed has one.
  - ``grasp_point``: where the object is, read from where the demonstrator closed the
    gripper for good. Before that grasp the object rests where the gripper later closes;
    after it, the object moves with the gripper. Picks only.
  - ``none``: no read-out loss.

  Use ``env.relative_frame: false``: the image shows base-frame positions; the relative
  frame's origin, the noisy reset pose, is not visible after the arm moves.

``hilrl pretrain-encoder --heldout DIR`` measures the success head's ROC-AUC on episodes of
other scenes: whether the features see the task, not the demos.

The file is a ``hilrl.storage.weights`` file (no pickle): the encoder's parameters, and the
cameras, image shape and feature size in its metadata.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hilrl.learning.networks import MLP, ConvEncoder, SpatialSoftmax
from hilrl.learning.pretrain_config import READOUTS, PretrainConfig  # noqa: F401 (re-export)

MODEL = "hilrl-keypoint-encoder"
VERSION = 1


class EncoderFileError(ValueError):
    """An encoder file that is missing, corrupt, or made for other cameras or images."""


@dataclass(frozen=True)
class EncoderSpec:
    """What the file's encoder reads and writes."""

    cameras: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (H, W, 3), the same for every camera
    # 31x31 soft-argmax resolution at 64x64. Tuned on 10 demos / 20 held-out episodes:
    # 8 keypoints memorise, 2 underfit; 1x1-only trunks did not fit at all.
    conv_features: tuple[int, ...] = (16, 16)
    conv_kernels: tuple[int, ...] = (3, 1)
    conv_strides: tuple[int, ...] = (2, 1)
    keypoints: int = 4  # per camera
    temperature: float = 0.1  # initial soft-argmax temperature: sharp enough to find a
    # small object among thousands of pixels from the first step
    object_hidden: tuple[int, ...] = (32,)  # the object read-out's hidden layers
    readout: bool = True  # False (pretrain.readout: none): no 3-d read-out in the features

    @property
    def feature_size(self) -> int:
        return 2 * self.keypoints * len(self.cameras) + (3 if self.readout else 0)


class KeypointEncoder(nn.Module):
    """uint8 images {camera: (B, H, W, 3)} -> features (B, feature_size)."""

    spec: EncoderSpec

    @nn.compact
    def __call__(self, images: Mapping[str, jax.Array]) -> jax.Array:
        points = []
        s = self.spec
        for cam in s.cameras:
            fmap = ConvEncoder(s.conv_features, s.conv_kernels, s.conv_strides,
                               name=f"conv_{cam}")(images[cam])
            fmap = nn.Conv(s.keypoints, (1, 1), name=f"maps_{cam}")(fmap)
            points.append(SpatialSoftmax(s.temperature, name=f"softargmax_{cam}")(fmap))
        points = jnp.concatenate(points, axis=-1)
        if not s.readout:
            return points
        x = points
        for i, h in enumerate(s.object_hidden):
            x = nn.relu(nn.Dense(h, name=f"object_hidden{i}")(x))
        obj = nn.Dense(3, name="object")(x)
        return jnp.concatenate([points, obj], axis=-1)


class _Heads(nn.Module):
    """The pretraining heads on (features, proprio); dropped once the encoder is trained."""

    action_size: int

    @nn.compact
    def __call__(self, feats: jax.Array, proprio: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(action, success logit, unit embedding for the time-contrastive loss)."""
        x = jnp.concatenate([feats, proprio], axis=-1)
        action = jnp.tanh(nn.Dense(self.action_size, name="bc_out")(
            nn.relu(MLP((256, 256), name="bc")(x))))
        success = nn.Dense(1, name="success_out")(nn.relu(MLP((128,), name="success")(x)))
        # From the image features alone: with the proprio the hand's pose would tell
        # neighbouring frames apart without looking at the scene.
        z = nn.Dense(32, name="contrast_out")(nn.relu(nn.Dense(64, name="contrast")(feats)))
        z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-6)
        return action, success[:, 0], z


# ------------------------------------------------------------------------------ labels


def final_pose_labels(tcp_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hindsight goal for one demo: every frame is labelled with the tcp position at the
    demo's end, where the demonstrator's hand finished the task (above a picked cube, at a
    hole, behind a pushed puck on its target). Needs no grasp: any task whose demos end in
    success has one. Returns (labels (T+1, 3), mask (T+1,) all True)."""
    tcp_pos = np.asarray(tcp_pos, np.float32)
    return np.broadcast_to(tcp_pos[-1], tcp_pos.shape).copy(), np.ones(len(tcp_pos), bool)


def grasp_point_labels(tcp_pos: np.ndarray, gripper_action: np.ndarray,
                       threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Hindsight object positions for one demo: ``tcp_pos`` (T+1, 3) per observation,
    ``gripper_action`` (T,) per step. Returns (labels (T+1, 3), mask (T+1,) bool).

    The final grasp starts at the first step of the last run of "close" commands, which must
    last to the episode's end (a demo that ends open never held the object: all masked).
    Frames up to it are labelled with the tcp position there; later frames, when the object
    travels in the hand, with their own tcp position.
    """
    close = np.asarray(gripper_action) >= threshold
    labels = np.zeros((len(tcp_pos), 3), np.float32)
    if close.size == 0 or not close[-1]:
        return labels, np.zeros(len(tcp_pos), bool)
    opened = np.flatnonzero(~close)
    g = int(opened[-1]) + 1 if opened.size else 0
    labels[:g + 1] = tcp_pos[g]
    labels[g + 1:] = tcp_pos[g + 1:]
    return labels, np.ones(len(tcp_pos), bool)


@dataclass
class PretrainData:
    """Every demo frame, flat: images {camera: (N, H, W, 3)}, proprio (N, S), and labels.
    ``action``/``has_action``: the action taken from the frame (none from a last frame)."""

    images: dict[str, np.ndarray]
    proprio: np.ndarray
    action: np.ndarray
    has_action: np.ndarray
    success: np.ndarray
    object_pos: np.ndarray
    has_object: np.ndarray
    # Per frame, the flat index of its episode's first frame and one past its last: the
    # time-contrastive loss draws a frame's positive from its own episode.
    episode_start: np.ndarray
    episode_end: np.ndarray

    @property
    def size(self) -> int:
        return len(self.proprio)


def demo_frames(episodes: Sequence[Any], cameras: Sequence[str], tcp: slice,
                readout: str = PretrainConfig.readout) -> PretrainData:
    """Flatten ``hilrl.storage.dataset.Episode`` s into frames with their pretraining labels;
    ``tcp`` is the slice of ``tcp_pose`` in the state (its first 3 entries are used);
    ``readout`` names the hindsight label of the encoder's 3-d read-out (``READOUTS``)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "proprio", "action", "has_action", "success", "object_pos", "has_object")}
    images: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    for i, ep in enumerate(episodes):
        missing = sorted(set(cameras) - set(ep.images))
        if missing:
            raise EncoderFileError(f"demo episode {i} lacks camera(s) {missing}")
        n = ep.length + 1
        for c in cameras:
            images[c].append(ep.images[c])
        parts["proprio"].append(ep.state.astype(np.float32))
        parts["action"].append(np.concatenate([ep.action, ep.action[-1:]]).astype(np.float32))
        parts["has_action"].append(np.arange(n) < ep.length)
        parts["success"].append(np.concatenate([[0.0], ep.reward >= 1.0]).astype(np.float32))
        pos = ep.state[:, tcp][:, :3]
        if readout == "grasp_point":
            labels, mask = grasp_point_labels(pos, ep.action[:, -1])
        elif readout == "final_pose":
            labels, mask = final_pose_labels(pos)
        else:  # none: the read-out is left untrained
            labels, mask = np.zeros((n, 3), np.float32), np.zeros(n, bool)
        parts["object_pos"].append(labels)
        parts["has_object"].append(mask)
    if not parts["proprio"]:
        raise EncoderFileError("no demo episodes to pretrain on")
    start, end = _episode_bounds([len(p) for p in parts["proprio"]])
    return PretrainData({c: np.concatenate(v) for c, v in images.items()},
                        **{k: np.concatenate(v) for k, v in parts.items()},
                        episode_start=start, episode_end=end)


def _episode_bounds(lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    ends = np.cumsum(lengths)
    starts = ends - np.asarray(lengths)
    return (np.repeat(starts, lengths).astype(np.int32),
            np.repeat(ends, lengths).astype(np.int32))


def heldout_frames(episodes: Sequence[Any], cameras: Sequence[str],
                   image_shape: Sequence[int], skip_seeds: Collection[int] = frozenset()
                   ) -> PretrainData:
    """Frames of episodes the encoder never trained on, labelled with success: a labels
    dataset's per-step ``success`` extra (``hilrl record-labels``), else the reward. Frames
    are resized to ``image_shape`` as the policy's cameras would be (labels are recorded at
    the rendered size). Episodes whose ``meta["seed"]`` is in ``skip_seeds`` (the demos'
    scenes) are left out, so held out means unseen scenes too."""
    from hilrl.envs.wrappers import crop_resize

    kept = [ep for ep in episodes if ep.meta.get("seed") not in skip_seeds]
    if not kept:
        raise EncoderFileError("no held-out episodes left: every one replays a demo's scene")
    missing = sorted({c for ep in kept for c in cameras if c not in ep.images})
    if missing:
        raise EncoderFileError(f"held-out episodes lack camera(s) {missing}")
    size = tuple(image_shape[:2])
    images = {c: np.concatenate([np.stack([crop_resize(f, None, size) for f in ep.images[c][1:]])
                                 for ep in kept]) for c in cameras}
    success = np.concatenate([
        np.asarray(ep.extras["success"] if "success" in ep.extras else ep.reward >= 1.0,
                   np.float32).reshape(ep.length) for ep in kept])
    n = len(success)
    return PretrainData(images, np.concatenate([ep.state[1:] for ep in kept]).astype(np.float32),
                        np.zeros((n, kept[0].action.shape[1]), np.float32), np.zeros(n, bool),
                        success, np.zeros((n, 3), np.float32), np.zeros(n, bool),
                        *_episode_bounds([ep.length for ep in kept]))


def heldout_success_auc(params: Any, spec: EncoderSpec, action_size: int, data: PretrainData,
                        chunk: int = 256) -> float:
    """ROC-AUC of the pretraining success head on held-out frames: whether the features see
    the task's outcome, not the demos' scenes."""
    from hilrl.learning.classifier import roc_auc

    @jax.jit
    def logits(p: Any, images: Mapping[str, jax.Array], proprio: jax.Array) -> jax.Array:
        feats = KeypointEncoder(spec).apply({"params": p["encoder"]}, images)
        return _Heads(action_size).apply({"params": p["heads"]}, feats, proprio)[1]

    out = [np.asarray(logits(params, {c: v[i:i + chunk] for c, v in data.images.items()},
                             data.proprio[i:i + chunk])) for i in range(0, data.size, chunk)]
    return roc_auc(np.concatenate(out), data.success > 0.5)


# ---------------------------------------------------------------------------- training


@dataclass
class PretrainState:
    params: Any  # {"encoder", "heads"}
    opt_state: Any
    rng: jax.Array


def _losses(params: Any, spec: EncoderSpec, action_size: int, batch: Mapping[str, Any],
            cfg: PretrainConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    feats = KeypointEncoder(spec).apply({"params": params["encoder"]}, batch["images"])
    action, logit, z = _Heads(action_size).apply({"params": params["heads"]},
                                                 feats, batch["proprio"])
    w_act = batch["has_action"].astype(jnp.float32)
    bc = jnp.sum(jnp.mean((action - batch["action"]) ** 2, -1) * w_act) / jnp.maximum(
        w_act.sum(), 1.0)
    # Class-balanced: successes are a few frames per demo.
    y = batch["success"]
    pos = jnp.maximum(y.mean(), 1e-3)
    weight = jnp.where(y > 0.5, 0.5 / pos, 0.5 / jnp.maximum(1.0 - pos, 1e-3))
    succ = jnp.mean(weight * optax.sigmoid_binary_cross_entropy(logit, y))
    obj = jnp.zeros(())
    if spec.readout:
        w_obj = batch["has_object"].astype(jnp.float32)
        err = jnp.sum((feats[:, -3:] - batch["object_pos"]) ** 2, -1)
        obj = jnp.sum(err * w_obj) / jnp.maximum(w_obj.sum(), 1.0)
    total = cfg.bc_weight * bc + cfg.success_weight * succ + cfg.object_weight * obj
    info = {"bc_mse": bc, "success_bce": succ, "object_rmse_m": jnp.sqrt(obj)}
    # Only training batches (cfg.contrastive_weight > 0) carry positives: evaluate() has no
    # draw of them, and reports no contrastive loss rather than a 0 it did not measure.
    if "positive_images" in batch:
        feats_pos = KeypointEncoder(spec).apply({"params": params["encoder"]},
                                                batch["positive_images"])
        z_pos = _Heads(action_size).apply({"params": params["heads"]}, feats_pos,
                                          batch["proprio"])[2]
        info["contrastive"] = time_contrastive_loss(z, z_pos, cfg.contrastive_temperature)
        total = total + cfg.contrastive_weight * info["contrastive"]
    return total, {"loss": total, **info}


def time_contrastive_loss(anchor: jax.Array, positive: jax.Array, temperature: float
                          ) -> jax.Array:
    """InfoNCE over the batch (Sermanet et al. 2018's time-contrastive idea): each frame's
    unit embedding must pick out a frame a few steps away in its own episode among the
    batch's other frames. Needs no label, only time: features that track what changes
    in the scene as the task progresses."""
    logits = anchor @ positive.T / temperature
    labels = jnp.arange(anchor.shape[0])
    return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                  + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())


def _batch(data: Mapping[str, Any], idx: jax.Array) -> dict[str, Any]:
    return jax.tree.map(lambda x: x[idx], data)


def _color_jitter(images: Mapping[str, jax.Array], strength: float, key: jax.Array
                  ) -> dict[str, jax.Array]:
    """Per image a brightness gain, per-channel colour gains and an offset (no shifts:
    the keypoints are absolute image positions)."""
    out = {}
    for i, (cam, im) in enumerate(sorted(images.items())):
        kb, kc, ko = jax.random.split(jax.random.fold_in(key, i), 3)
        b = im.shape[0]
        gain = (1.0 + strength * jax.random.uniform(kb, (b, 1, 1, 1), minval=-1, maxval=1)) * (
            1.0 + 0.5 * strength * jax.random.uniform(kc, (b, 1, 1, 3), minval=-1, maxval=1))
        off = 255.0 * 0.2 * strength * jax.random.uniform(ko, (b, 1, 1, 1), minval=-1, maxval=1)
        out[cam] = jnp.clip(im.astype(jnp.float32) * gain + off, 0.0, 255.0)
    return out


def make_update(spec: EncoderSpec, action_size: int, cfg: PretrainConfig,
                opt: optax.GradientTransformation) -> Callable:
    """One jitted step: sample a batch on the device, one Adam step on the three losses."""

    @jax.jit
    def update(state: PretrainState, data: Mapping[str, Any]
               ) -> tuple[PretrainState, dict[str, jax.Array]]:
        rng, key, k_aug = jax.random.split(state.rng, 3)
        k_pos, k_pos_aug = jax.random.split(jax.random.fold_in(key, 1))
        n = data["proprio"].shape[0]
        idx = jax.random.randint(key, (cfg.batch_size,), 0, n)
        batch = _batch(data, idx)
        if cfg.contrastive_weight > 0:
            offset = jax.random.randint(k_pos, idx.shape, -cfg.contrastive_window,
                                        cfg.contrastive_window + 1)
            pos = jnp.clip(idx + offset, data["episode_start"][idx], data["episode_end"][idx] - 1)
            batch["positive_images"] = _batch(data["images"], pos)
        if cfg.color_jitter > 0:
            batch["images"] = _color_jitter(batch["images"], cfg.color_jitter, k_aug)
            if "positive_images" in batch:  # its own draw: colour is no cue to the match
                batch["positive_images"] = _color_jitter(batch["positive_images"],
                                                         cfg.color_jitter, k_pos_aug)
        grads, info = jax.grad(_losses, has_aux=True)(state.params, spec, action_size,
                                                      batch, cfg)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        return PretrainState(optax.apply_updates(state.params, updates), opt_state, rng), info

    return update


jax.tree_util.register_dataclass(PretrainState, data_fields=["params", "opt_state", "rng"],
                                 meta_fields=[])


def _device_data(data: PretrainData) -> dict[str, Any]:
    return {"images": {c: jnp.asarray(v) for c, v in data.images.items()},
            "proprio": jnp.asarray(data.proprio), "action": jnp.asarray(data.action),
            "has_action": jnp.asarray(data.has_action), "success": jnp.asarray(data.success),
            "object_pos": jnp.asarray(data.object_pos),
            "has_object": jnp.asarray(data.has_object),
            "episode_start": jnp.asarray(data.episode_start),
            "episode_end": jnp.asarray(data.episode_end)}


def pretrain(data: PretrainData, spec: EncoderSpec, action_size: int,
             cfg: PretrainConfig | None = None,
             progress: Callable[[int, dict[str, float]], None] | None = None
             ) -> tuple[Any, dict[str, float]]:
    """Train encoder + heads on ``data``; returns ({"encoder", "heads"} params, final
    metrics). Only the encoder is kept in the file."""
    cfg = cfg or PretrainConfig()
    if cfg.readout == "grasp_point" and not data.has_object.any():
        raise EncoderFileError("no demo ends holding the object (gripper closed at the end): "
                               "the grasp-point labels need at least one such demo")
    key = jax.random.PRNGKey(cfg.seed)
    k_enc, k_heads, rng = jax.random.split(key, 3)
    example = {c: jnp.asarray(v[:1]) for c, v in data.images.items()}
    enc = KeypointEncoder(spec).init(k_enc, example)["params"]
    feats = KeypointEncoder(spec).apply({"params": enc}, example)
    heads = _Heads(action_size).init(k_heads, feats, jnp.asarray(data.proprio[:1]))["params"]
    params = {"encoder": enc, "heads": heads}
    opt = optax.adam(cfg.lr)
    state = PretrainState(params, opt.init(params), rng)
    update = make_update(spec, action_size, cfg, opt)
    device = _device_data(data)
    info: dict[str, Any] = {}
    for step in range(1, cfg.steps + 1):
        state, info = update(state, device)
        if progress is not None and (step % 100 == 0 or step == cfg.steps):
            progress(step, {k: float(v) for k, v in info.items()})
    return state.params, evaluate(state.params, spec, action_size, device, cfg)


def evaluate(params: Any, spec: EncoderSpec, action_size: int, data: Mapping[str, Any],
             cfg: PretrainConfig, chunk: int = 256) -> dict[str, float]:
    """The losses over every frame (no augmentation), frame-weighted over chunks."""
    losses = jax.jit(lambda p, b: _losses(p, spec, action_size, b, cfg)[1])
    n = int(data["proprio"].shape[0])
    totals: dict[str, float] = {}
    for start in range(0, n, chunk):
        part = losses(params, _batch(data, jnp.arange(start, min(start + chunk, n))))
        for k, v in part.items():
            v = float(v) ** 2 if k == "object_rmse_m" else float(v)
            totals[k] = totals.get(k, 0.0) + v * (min(start + chunk, n) - start) / n
    totals["object_rmse_m"] = totals["object_rmse_m"] ** 0.5
    return totals


# ------------------------------------------------------------------------- the encoder file


def save_encoder(path: str | Path, params: Any, spec: EncoderSpec,
                 info: Mapping[str, Any] | None = None) -> None:
    """Write the encoder (weights_io format: checksummed msgpack, JSON metadata)."""
    from hilrl.storage.weights import save_weights

    meta = {"model": MODEL, "version": VERSION, "spec": dataclasses.asdict(spec),
            "feature_size": spec.feature_size, "info": dict(info or {})}
    save_weights(path, params, meta)


def read_spec(path: str | Path) -> EncoderSpec:
    """The spec of an encoder file, from its header only (cheap)."""
    from hilrl.storage.weights import WeightsError, read_header

    try:
        meta = read_header(path)["meta"]
    except FileNotFoundError:
        raise EncoderFileError(f"{path}: no such encoder file (make one with hilrl "
                               "pretrain-encoder)") from None
    except (WeightsError, OSError, KeyError) as e:
        raise EncoderFileError(f"{path}: not a readable encoder file: {e}") from None
    if meta.get("model") != MODEL or meta.get("version") != VERSION:
        raise EncoderFileError(f"{path}: not a hilrl keypoint encoder (model "
                               f"{meta.get('model')!r} version {meta.get('version')!r}; this "
                               f"hilrl reads {MODEL!r} version {VERSION})")
    try:
        raw = dict(meta["spec"])
        return EncoderSpec(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in raw.items()})
    except (KeyError, TypeError) as e:
        raise EncoderFileError(f"{path}: encoder spec unreadable: {e}") from None


def load_encoder(path: str | Path) -> tuple[Any, EncoderSpec]:
    """Parameters and spec, every array checked against the spec's architecture."""
    from hilrl.storage.weights import WeightsError, load_weights

    spec = read_spec(path)
    example = {c: jax.ShapeDtypeStruct((1, *spec.image_shape), jnp.uint8) for c in spec.cameras}
    target = jax.eval_shape(lambda: KeypointEncoder(spec).init(
        jax.random.PRNGKey(0), {c: jnp.zeros(s.shape, s.dtype) for c, s in example.items()}
    )["params"])
    try:
        params, _ = load_weights(path, target)
    except WeightsError as e:
        raise EncoderFileError(str(e)) from None
    return params, spec


class FrozenEncoder:
    """A loaded encoder file: uint8 images -> features (float32 numpy), jitted.

    ``check(cameras, image_shape)`` raises EncoderFileError when the env delivers other
    cameras or another image size than the encoder was trained on.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.params, self.spec = load_encoder(path)
        self._apply = jax.jit(lambda p, im: KeypointEncoder(self.spec).apply({"params": p}, im))

    @property
    def feature_size(self) -> int:
        return self.spec.feature_size

    def check(self, image_shapes: Mapping[str, Sequence[int]]) -> None:
        missing = [c for c in self.spec.cameras if c not in image_shapes]
        if missing:
            raise EncoderFileError(f"{self.path}: the encoder reads camera(s) {missing}, the "
                                   f"env has {sorted(image_shapes)}")
        for c in self.spec.cameras:
            if tuple(image_shapes[c]) != self.spec.image_shape:
                raise EncoderFileError(
                    f"{self.path}: camera {c!r} delivers {tuple(image_shapes[c])} images, the "
                    f"encoder was trained on {self.spec.image_shape}; set env.image_size (and "
                    "crop/size) as when it was pretrained, or pretrain it again")

    def __call__(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        """{camera: (H, W, 3) or (N, H, W, 3) uint8} -> (F,) or (N, F)."""
        single = np.ndim(images[self.spec.cameras[0]]) == 3
        batch = {c: np.asarray(images[c])[None] if single else np.asarray(images[c])
                 for c in self.spec.cameras}
        out = np.asarray(self._apply(self.params, batch), np.float32)
        return out[0] if single else out

    def episode_state(self, state: np.ndarray, images: Mapping[str, np.ndarray],
                      chunk: int = 256) -> np.ndarray:
        """A recorded episode's (T+1, S) state with the features of its frames appended.
        Raises EncoderFileError when the episode lacks a camera the encoder reads or its
        frames have another size."""
        self.check({c: np.shape(frames)[1:] for c, frames in images.items()})
        feats = [self({c: images[c][i:i + chunk] for c in self.spec.cameras})
                 for i in range(0, len(state), chunk)]
        return np.concatenate([state.astype(np.float32), np.concatenate(feats)], axis=-1)


# ------------------------------------------------------------------------------ command


def pretrain_from_demos(task: Any, demos: Sequence[str | Path], out: str | Path,
                        cfg: PretrainConfig | None = None, spec: EncoderSpec | None = None,
                        progress: bool = True, heldout: Sequence[str | Path] = ()
                        ) -> dict[str, Any]:
    """``hilrl pretrain-encoder``: the demos of ``task`` -> an encoder file at ``out``.

    The cameras are the task's policy cameras; the proprio state is the task's state
    without any features; ``cfg`` defaults to the task's ``pretrain``. ``heldout``:
    datasets of other episodes (labels or demos) on which the success head's ROC-AUC is
    measured (``heldout_success_auc``). Returns the final training metrics.
    """
    from hilrl.envs.manipulator import state_slices
    from hilrl.storage.dataset import iter_dataset

    cfg = cfg or task.pretrain
    env = task.env
    if "tcp_pose" not in env.state_keys:
        raise EncoderFileError("the read-out's labels need tcp_pose in env.state_keys")
    if env.relative_frame:
        raise EncoderFileError(
            "env.relative_frame is true: the tcp pose is then relative to each episode's "
            "reset pose, which the cameras cannot see; pretrain and train with "
            "env.relative_frame: false")
    cameras = tuple(env.policy_cameras if env.policy_cameras is not None
                    else [c.name for c in env.cameras])
    if not cameras:
        raise EncoderFileError("the task has no cameras (env.cameras) to pretrain on")
    episodes = [ep for path in demos for ep in iter_dataset(path)]
    data = demo_frames(episodes, cameras, state_slices(env.state_keys)["tcp_pose"], cfg.readout)
    shapes = {c: data.images[c].shape[1:] for c in cameras}
    if len(set(shapes.values())) != 1:
        raise EncoderFileError(f"the cameras' images differ in size {shapes}; the encoder "
                               "needs one size for all")
    spec = dataclasses.replace(spec or EncoderSpec(cameras, (0, 0, 3)), cameras=cameras,
                               image_shape=tuple(int(x) for x in shapes[cameras[0]]),
                               readout=cfg.readout != "none")
    held = None  # read before training: a bad held-out set fails at once
    if heldout:
        held = heldout_frames([ep for path in heldout for ep in iter_dataset(path)], cameras,
                              spec.image_shape, {ep.meta.get("seed") for ep in episodes})
        if held.proprio.shape[1] != data.proprio.shape[1]:
            raise EncoderFileError(f"the held-out episodes' state has {held.proprio.shape[1]} "
                                   f"numbers, the demos' {data.proprio.shape[1]}: record them "
                                   "with the same task")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="pretrain-encoder", unit="step")

    def report(step: int, info: dict[str, float]) -> None:
        if bar is not None:
            bar.update(step - bar.n)
            bar.set_postfix_str(f"bc {info['bc_mse']:.4f} | object "
                                f"{100 * info['object_rmse_m']:.1f} cm")

    t0 = time.monotonic()
    try:
        params, metrics = pretrain(data, spec, int(episodes[0].action.shape[1]), cfg, report)
    finally:
        if bar is not None:
            bar.close()
    metrics = {**metrics, "seconds": time.monotonic() - t0, "frames": float(data.size),
               "episodes": float(len(episodes)), "readout": cfg.readout}
    if held is not None:
        metrics["heldout_success_auc"] = heldout_success_auc(
            params, spec, int(episodes[0].action.shape[1]), held)
        metrics["heldout_frames"] = float(held.size)
    save_encoder(out, params["encoder"], spec, metrics)
    return metrics
