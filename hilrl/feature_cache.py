"""Frozen-encoder feature cache: run a frozen image backbone once per frame, train on features.

Why: with a frozen backbone (e.g. pretrained ResNet-10, HIL-SERL's default) the backbone's
output for a frame never changes, yet an update that sees images recomputes it for every
sampled obs *and* next_obs, for the online and the target encoder, in every critic step
and again for the actor -- on a CPU that forward pass is nearly all of the update's cost.
Computing it once, when a frame enters the learner, and storing the (h, w, C) feature map
in the replay buffer makes the update run on features only (``SACConfig(encoder=
"features")``: the trainable pooling, bottleneck, proprio MLP, fusion, actor and critics),
so a CPU learner can do many updates per second. It is a pure speed-up: the update computes
exactly what it would with the frozen backbone inside it (tests/test_feature_cache.py checks
the critic loss matches), up to the storage precision (float16 by default).

Trade-offs:

- **No DrQ augmentation.** Random shifts act on pixels before the backbone; a cached
  feature map cannot be shifted the same way (``sac.augment_observation`` only touches
  ``obs["images"]``, so cached features go through unaugmented whatever ``augment_pad``
  says). With a pretrained frozen encoder this is what HIL-SERL does too, but on small
  datasets it can cost sample efficiency; train the conv encoder from images (no cache)
  if augmentation matters more than update speed.
- **Storage precision.** float16 halves memory against float32 (a 4x4x512 map: 16 KiB vs
  32 KiB per camera per frame, against 48 KiB for the 128x128x3 uint8 image it replaces)
  and rounds each value to a relative 2^-11 (~5e-4); the tests bound the difference.
- **The backbone must really be frozen**, and it is baked into the buffer: changing its
  weights (or its preprocessing) means re-encoding every stored frame.

Pieces:

- :class:`FrozenBackbone`: per-camera backbone apply functions, jitted and batched,
  ``encode(images) -> features`` and ``encode_observation(obs)`` (single or batched), in
  chunks of at most ``chunk_size`` frames per forward pass (bounded memory), and
  ``encode_transition(obs, next_obs)`` for the learner's inbox (each frame encoded once).
- :meth:`FrozenBackbone.feature_spec`: the feature ``ReplayBuffer`` spec for an image
  buffer's spec, shapes from ``jax.eval_shape`` (no compute).
- :class:`FeatureEpisode` / :meth:`FrozenBackbone.encode_episode` /
  :meth:`FrozenBackbone.add_episodes`: demos (``hilrl.storage.dataset.Episode``) to features, one
  episode at a time, into a feature buffer.

The actor node keeps acting on images: it runs the same frozen backbone on each observation
(``encode_observation``) and feeds the features to the features-mode policy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FeatureEpisode", "FrozenBackbone"]

Params = Any
# (params, uint8 images (B, H, W, 3)) -> features (B, ...), traceable by jax.
ApplyFn = Callable[[Params, jax.Array], jax.Array]

STORAGE_DTYPES = ("float16", "float32")


@dataclass(eq=False)
class FeatureEpisode:
    """A ``hilrl.storage.dataset.Episode`` whose ``images`` were replaced by backbone ``features``
    ({camera: (T+1, ...) float}); every other field is the episode's own (not copied).
    ``ReplayBuffer(camera_key="features").add_episode`` takes it."""

    state: np.ndarray
    features: dict[str, np.ndarray]
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    intervened: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Number of steps T (there are T + 1 observations)."""
        return int(np.shape(self.action)[0])


def _bucket(n: int, chunk_size: int) -> int:
    # Pad a partial chunk to a power of two (capped at chunk_size): a handful of compiled
    # shapes instead of one per remainder length.
    return min(chunk_size, 1 << max(n - 1, 0).bit_length())


def _unwrap_variables(tree: Params) -> Params:
    # load_pretrained_resnet10 returns {"params": ...}; accept that or the bare params.
    if isinstance(tree, Mapping) and set(tree) == {"params"}:
        return tree["params"]
    return tree


class FrozenBackbone:
    """A frozen image backbone per camera, jitted: uint8 frames -> stored feature arrays.

    Args:
        apply_fn: ``(params, uint8 images (B, H, W, 3)) -> (B, ...)`` features, including any
            preprocessing; traced by ``jax.jit`` (one compilation per camera parameter
            structure and batch bucket).
        params: ``{camera: params}``; cameras may share one tree (it is moved to the device
            once). Leaves may be ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape`` of
            ``module.init``) to only compute shapes and specs; ``encode`` then fails.
        dtype: storage dtype of the features, ``"float16"`` (default: half the memory,
            ~5e-4 relative rounding) or ``"float32"``.
        chunk_size: most frames per forward pass; bounds the activation memory when
            encoding whole episodes. Partial chunks are padded to a power of two.

    Use the constructors :meth:`resnet10`, :meth:`from_module` or :meth:`from_sac_encoder`.
    """

    def __init__(self, apply_fn: ApplyFn, params: Mapping[str, Params], *,
                 dtype: str | np.dtype = "float16", chunk_size: int = 256) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {self.dtype.name}")
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        if not params:
            raise ValueError("params must name at least one camera")
        self.cameras = tuple(sorted(params))
        self.chunk_size = int(chunk_size)
        self._apply_fn = apply_fn
        placed: dict[int, Params] = {}  # id -> device tree, so shared trees move once
        self._params: dict[str, Params] = {}
        for cam in self.cameras:
            tree = params[cam]
            if id(tree) not in placed:
                placed[id(tree)] = jax.tree.map(
                    lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.device_put(x),
                    tree)
            self._params[cam] = placed[id(tree)]
        dt = jnp.dtype(self.dtype)
        self._jitted = jax.jit(lambda p, x: apply_fn(p, x).astype(dt))
        self._shape_cache: dict[tuple[str, tuple[int, ...]], tuple[int, ...]] = {}
        # encode_transition's last next_obs: (copied frames, its read-only features).
        self._memo: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
        self._memo_lock = threading.Lock()

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_module(cls, module: Any, params: Params, cameras: Iterable[str] | None = None,
                    preprocess: Callable[[jax.Array], jax.Array] | None = None,
                    **kwargs: Any) -> FrozenBackbone:
        """Any linen module called as ``module.apply({"params": p}, preprocess(images))``.

        ``cameras`` given: ``params`` is one tree shared by all of them. ``cameras`` None:
        ``params`` is ``{camera: tree}``. ``preprocess`` maps the uint8 batch to the module's
        input (None: the uint8 batch itself, as ``networks.ConvEncoder`` takes). ``kwargs``
        go to the constructor (``dtype``, ``chunk_size``).
        """
        if isinstance(cameras, str):
            raise TypeError(f"cameras must be a collection of names, not the string "
                            f"{cameras!r}")
        prep = preprocess or (lambda x: x)

        def apply_fn(p: Params, images: jax.Array) -> jax.Array:
            return module.apply({"params": p}, prep(images))

        if cameras is None:
            per_camera = {cam: _unwrap_variables(p) for cam, p in dict(params).items()}
        else:
            shared = _unwrap_variables(params)
            per_camera = {cam: shared for cam in cameras}
        return cls(apply_fn, per_camera, **kwargs)

    @classmethod
    def resnet10(cls, variables: Params, cameras: Iterable[str], *,
                 preprocess: Callable[[jax.Array], jax.Array] | None = None,
                 num_groups: int = 4, num_filters: int = 64,
                 stage_sizes: tuple[int, ...] = (1, 1, 1, 1), **kwargs: Any) -> FrozenBackbone:
        """ResNet-10 with one shared set of weights, e.g. from
        ``hilrl.storage.weights.load_pretrained_resnet10(path)`` (``{"params": ...}`` or bare).

        ``preprocess`` defaults to ``hilrl.learning.resnet.preprocess`` ([0, 1] then ImageNet
        mean/std), what pretrained weights expect. ``num_groups``, ``num_filters`` and
        ``stage_sizes`` are ``ResNet10``'s; ``kwargs`` (``dtype``, ``chunk_size``) go to the
        constructor. A 128x128 image gives a 4x4x(8 * num_filters) map.
        """
        from hilrl.learning.resnet import ResNet10
        from hilrl.learning.resnet import preprocess as imagenet_preprocess

        module = ResNet10(num_groups=num_groups, num_filters=num_filters,
                          stage_sizes=tuple(stage_sizes))
        return cls.from_module(module, variables, cameras, preprocess or imagenet_preprocess,
                               **kwargs)

    @classmethod
    def from_sac_encoder(cls, config: Any, encoder_params: Params, **kwargs: Any
                         ) -> FrozenBackbone:
        """The backbones of an images-mode ``ObservationEncoder`` (``config`` a
        ``SACConfig`` with ``encoder`` "conv" or "resnet10"; ``encoder_params`` e.g.
        ``state.critic_params["encoder"]``), applied exactly as the encoder applies them.

        Mirrors ``networks.ObservationEncoder``'s backbone call (ConvEncoder on uint8;
        ResNet10 on ``x / 255`` -- note: *without* ImageNet normalisation, unlike
        :meth:`resnet10`). Use it to switch an agent trained with a frozen in-update
        backbone to the cache, or to check the two agree.
        """
        from hilrl.learning import networks

        if config.encoder == "conv":
            n = len(config.conv_features)
            module = networks.ConvEncoder(tuple(config.conv_features), (3,) * n,
                                          tuple(config.conv_strides))
            preprocess = None
        elif config.encoder == "resnet10":
            from hilrl.learning.resnet import ResNet10

            module = ResNet10()

            def preprocess(x: jax.Array) -> jax.Array:
                return x.astype(jnp.float32) / 255.0
        else:
            raise ValueError(f"config.encoder must be 'conv' or 'resnet10', got "
                             f"{config.encoder!r}")
        prefix = "backbone_"
        per_camera = {name[len(prefix):]: p for name, p in encoder_params.items()
                      if name.startswith(prefix)}
        if not per_camera:
            raise ValueError("encoder_params has no 'backbone_<camera>' entries")
        return cls.from_module(module, per_camera, None, preprocess, **kwargs)

    # ------------------------------------------------------------------ shapes and specs

    def feature_shape(self, camera: str, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-frame feature shape for ``(H, W, 3)`` frames of ``camera`` (no compute)."""
        key = (camera, tuple(int(s) for s in image_shape))
        if key not in self._shape_cache:
            self._check_camera(camera)
            x = jax.ShapeDtypeStruct((1, *key[1]), jnp.uint8)
            out = jax.eval_shape(self._apply_fn, self._params[camera], x)
            self._shape_cache[key] = tuple(int(s) for s in out.shape[1:])
        return self._shape_cache[key]

    def feature_spec(self, image_spec: Mapping[str, Any]) -> dict[str, Any]:
        """The spec of a features ``ReplayBuffer`` mirroring an image buffer's spec.

        ``image_spec`` is ``ReplayBuffer.spec`` of the image buffer (or the same keys by
        hand); capacity, state, action and extras are kept, each camera's frame becomes its
        feature shape in this backbone's storage dtype, under ``obs["features"]``.
        ``ReplayBuffer(**backbone.feature_spec(spec))`` is the empty feature buffer.
        """
        shapes = dict(image_spec["image_shapes"])
        if set(shapes) != set(self.cameras):
            raise ValueError(f"image spec cameras {sorted(shapes)} differ from the "
                             f"backbone's {list(self.cameras)}")
        dtypes = dict(image_spec.get("image_dtypes") or {})
        if any(np.dtype(d) != np.uint8 for d in dtypes.values()):
            raise ValueError(f"image spec must hold uint8 images, got dtypes {dtypes}")
        features = {cam: list(self.feature_shape(cam, tuple(s))) for cam, s in shapes.items()}
        return {"capacity": int(image_spec["capacity"]),
                "state_size": int(image_spec["state_size"]),
                "image_shapes": features,
                "action_size": int(image_spec["action_size"]),
                "extras": list(image_spec.get("extras", ())),
                "image_dtypes": {cam: self.dtype.name for cam in features},
                "camera_key": "features"}

    # ------------------------------------------------------------------ encoding

    def _check_camera(self, camera: str) -> None:
        if camera not in self._params:
            raise ValueError(f"camera {camera!r} has no backbone (cameras: "
                             f"{list(self.cameras)})")

    def encode_frames(self, camera: str, frames: Any) -> np.ndarray:
        """(N, H, W, 3) uint8 frames of one camera -> (N, ...) features in the storage
        dtype, ``chunk_size`` frames per forward pass."""
        self._check_camera(camera)
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"camera {camera!r}: expected (N, H, W, 3) uint8 frames, got "
                             f"shape {frames.shape} dtype {frames.dtype}")
        n = frames.shape[0]
        out = np.empty((n, *self.feature_shape(camera, frames.shape[1:])), self.dtype)
        params = self._params[camera]
        for start in range(0, n, self.chunk_size):
            chunk = frames[start:start + self.chunk_size]
            b = chunk.shape[0]
            padded = _bucket(b, self.chunk_size)
            if padded != b:  # rows are independent (no batch statistics): zeros are inert
                chunk = np.concatenate([chunk, np.zeros((padded - b, *chunk.shape[1:]),
                                                        np.uint8)])
            out[start:start + b] = np.asarray(self._jitted(params, chunk))[:b]
        if self.dtype == np.float16 and not np.isfinite(out).all():
            raise FloatingPointError(f"camera {camera!r}: features overflow float16 "
                                     "(|x| > 65504) or are not finite; use dtype='float32'")
        return out

    def encode(self, images: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``{camera: (B, H, W, 3) uint8}`` -> ``{camera: (B, ...) features}`` (numpy, storage
        dtype). Every camera of the backbone must be present."""
        if set(images) != set(self.cameras):
            raise ValueError(f"cameras {sorted(images)} differ from the backbone's "
                             f"{list(self.cameras)}")
        return {cam: self.encode_frames(cam, images[cam]) for cam in self.cameras}

    def encode_observation(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """``{"state", "images": {cam}}`` -> ``{"state", "features": {cam}}`` for a single
        observation (frames (H, W, 3)) or a batch ((B, H, W, 3)); the result has the same
        batching. Other entries are passed through unchanged. This is what a features
        ``ReplayBuffer.add`` and a features-mode policy take."""
        images = dict(obs.get("images") or {})
        single = any(np.ndim(img) == 3 for img in images.values())
        if single:
            images = {cam: np.asarray(img)[None] for cam, img in images.items()}
        features = self.encode(images)
        if single:
            features = {cam: f[0] for cam, f in features.items()}
        out = {k: v for k, v in obs.items() if k != "images"}
        out["features"] = features
        return out

    def encode_transition(self, obs: Mapping[str, Any], next_obs: Mapping[str, Any]
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``encode_observation`` of a single transition's obs and next_obs, for the learner's
        inbox, which receives transitions one at a time: within an episode ``obs`` is the
        previous ``next_obs``, so its features are reused (frames compared exactly) and
        each frame goes through the backbone once, not twice. Feature arrays of
        ``next_obs`` are read-only (the next call may hand them out again)."""
        with self._memo_lock:
            memo = self._memo
        images = dict(obs.get("images") or {})
        if memo is not None and set(images) == set(memo[0]) and all(
                np.array_equal(images[cam], memo[0][cam]) for cam in images):
            features = memo[1]
            encoded = {k: v for k, v in obs.items() if k != "images"}
            encoded["features"] = dict(features)
        else:
            encoded = self.encode_observation(obs)
        encoded_next = self.encode_observation(next_obs)
        for arr in encoded_next["features"].values():
            arr.setflags(write=False)  # shared with the next call's obs features
        frames = {cam: np.array(img) for cam, img in (next_obs.get("images") or {}).items()}
        with self._memo_lock:
            self._memo = (frames, dict(encoded_next["features"]))
        return encoded, encoded_next

    def encode_episode(self, episode: Any) -> FeatureEpisode:
        """A ``hilrl.storage.dataset.Episode`` (T + 1 frames per camera) -> :class:`FeatureEpisode`.

        Frames go through the backbone ``chunk_size`` at a time, so peak memory is the
        episode's own arrays plus its features plus one chunk's activations.
        """
        return FeatureEpisode(
            state=episode.state, features=self.encode(dict(episode.images or {})),
            action=episode.action, reward=episode.reward, terminated=episode.terminated,
            truncated=episode.truncated, intervened=episode.intervened,
            extras=dict(episode.extras or {}), meta=dict(getattr(episode, "meta", {}) or {}))

    def add_episodes(self, buffer: Any, episodes: Iterable[Any]) -> int:
        """Encode demos one episode at a time and ``add_episode`` them to a features
        ``ReplayBuffer`` (e.g. ``add_episodes(buf, hilrl.storage.dataset.iter_dataset(path))``: only
        one episode's frames are in memory at once). Returns the number of episodes."""
        if getattr(buffer, "camera_key", None) != "features":
            raise ValueError("buffer must be a features ReplayBuffer (camera_key='features'); "
                             "build it with ReplayBuffer(**backbone.feature_spec(spec))")
        count = 0
        for episode in episodes:
            buffer.add_episode(self.encode_episode(episode))
            count += 1
        return count
