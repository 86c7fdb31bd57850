"""The learner's networks (flax.linen): encoders, the tanh-Gaussian actor, the critic ensemble.

Everything here is a plain linen module or a pure function; the agents (``hilrl.learning``) own
the parameters and the optimisers.

Observation layout (see DESIGN.md): ``{"state": (B, S) f32, "images": {camera: (B, H, W, 3)
uint8}}``. Either part may be absent (a state-only task has no ``"images"``). A frozen
encoder (``env.frozen_encoder``) is no network here: its features arrive inside the state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hilrl.learning.conv import Conv, Impl, resolve
from hilrl.learning.dormant import COLLECTION, record
from hilrl.learning.saliency import mark

Array = jax.Array
Activation = Callable[[Array], Array]

ACTIVATIONS: dict[str, Activation] = {"relu": nn.relu, "elu": nn.elu, "tanh": jnp.tanh,
                                      "gelu": nn.gelu, "silu": nn.silu}

# Discrete gripper actions, by index: the last entry of the env's action is -1 (open),
# 0 (keep) or +1 (close); the env treats <= -0.5 as open and >= 0.5 as close.
GRIPPER_VALUES = (-1.0, 0.0, 1.0)


def default_init(scale: float = 2.0 ** 0.5) -> nn.initializers.Initializer:
    """Orthogonal init, as in ikostrikov/rlpd and jaxrl."""
    return nn.initializers.orthogonal(scale)


def _activation(name_or_fn: str | Activation) -> Activation:
    return ACTIVATIONS[name_or_fn] if isinstance(name_or_fn, str) else name_or_fn


class MLP(nn.Module):
    """Dense -> LayerNorm -> activation, per hidden size.

    The last layer gets the LayerNorm + activation only when ``activate_final``; heads (a
    Dense to the output size) are added by the caller.
    """

    hidden: Sequence[int]
    layer_norm: bool = True
    activation: str | Activation = "relu"
    activate_final: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = _activation(self.activation)
        for i, size in enumerate(self.hidden):
            x = nn.Dense(size, kernel_init=default_init())(x)
            if i + 1 < len(self.hidden) or self.activate_final:
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = act(x)
                record(self, x, f"units_{i}")
        return x


# --------------------------------------------------------------------------- image encoders


class ConvEncoder(nn.Module):
    """Small strided conv net trained from scratch (DrQ / RLPD's D4PG encoder).

    Input: uint8 or float (B, H, W, C) images with values in [0, 255]; the first conv
    scales by 1/255. Output: the feature map (B, h, w, features[-1]) -- pooling is a
    separate module. With the default strides (2, 2, 2, 2) a 128x128 image becomes 7x7x32,
    a 64x64 one 3x3x32. DrQ's (2, 1, 1, 1), made for 84x84, keeps 57x57 maps at 128x128:
    ~6x the FLOPs (620 GFLOP per 128^2 batch-256 update), which a CPU cannot afford.

    Convolutions are ``hilrl.learning.conv.Conv`` (same parameters as ``nn.Conv``): with ``impl=
    "auto"`` the whole encoder runs whichever of a patches-matmul and ``lax.conv`` was faster
    for it on this machine.
    """

    features: Sequence[int] = (32, 32, 32, 32)
    kernel_sizes: Sequence[int] = (3, 3, 3, 3)
    strides: Sequence[int] = (2, 2, 2, 2)
    impl: Impl = "auto"  # see hilrl.learning.conv.resolve

    @nn.compact
    def __call__(self, images: Array) -> Array:
        x = images
        impl = resolve(self, images)
        for i, (feats, k, s) in enumerate(zip(self.features, self.kernel_sizes, self.strides,
                                              strict=True)):
            scale = 1.0 / 255.0 if i == 0 else 1.0
            x = Conv(feats, (k, k), s, padding="VALID", impl=impl,
                     kernel_init=default_init(), input_scale=scale)(x)
            x = nn.relu(x)
            record(self, x, f"units_conv_{i}")
        return x


class SpatialSoftmax(nn.Module):
    """Spatial soft-argmax keypoints (Levine et al. 2016): per channel, the expected (x, y)
    image coordinate in [-1, 1] under a softmax over positions, with a learned temperature.

    (B, h, w, C) -> (B, 2C).
    """

    init_temperature: float = 1.0

    @nn.compact
    def __call__(self, fmap: Array) -> Array:
        b, h, w, c = fmap.shape
        log_temp = self.param("log_temperature", nn.initializers.constant(
            jnp.log(self.init_temperature)), ())
        logits = fmap.reshape(b, h * w, c) / jnp.exp(log_temp)
        weights = jax.nn.softmax(logits, axis=1)  # over positions
        ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w),
                              indexing="ij")
        pos = jnp.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)  # (h*w, 2)
        keypoints = jnp.einsum("bpc,pd->bcd", weights, pos)  # (B, C, 2)
        return keypoints.reshape(b, 2 * c)


class SpatialEmbedding(nn.Module):
    """Learned spatial embedding (HIL-SERL's ``SpatialLearnedEmbeddings``): ``num_features``
    learned (h, w, C) kernels, each reducing the map to one number per channel.

    (B, h, w, C) -> (B, C * num_features). Its parameter count is h*w*C*num_features, so it is
    tied to the image size.
    """

    num_features: int = 8

    @nn.compact
    def __call__(self, fmap: Array) -> Array:
        b, h, w, c = fmap.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (h, w, c, self.num_features))
        out = jnp.einsum("bhwc,hwcf->bcf", fmap, kernel)
        return out.reshape(b, c * self.num_features)


class MaxMeanPool(nn.Module):
    """Each channel's maximum and mean over the map: (B, h, w, C) -> (B, 2C). Blind to where
    a feature is, so "is it anywhere in view" is learned from a few episodes, where a
    spatial embedding has a weight per location and must see the feature at each one."""

    @nn.compact
    def __call__(self, fmap: Array) -> Array:
        return jnp.concatenate([fmap.max(axis=(-3, -2)), fmap.mean(axis=(-3, -2))], axis=-1)


POOLINGS = ("spatial_embedding", "spatial_softmax", "max_mean")


def make_pooling(kind: str, num_spatial_features: int, name: str | None = None) -> nn.Module:
    if kind == "spatial_embedding":
        return SpatialEmbedding(num_spatial_features, name=name)
    if kind == "spatial_softmax":
        return SpatialSoftmax(name=name)
    if kind == "max_mean":
        return MaxMeanPool(name=name)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {kind!r}")


def _identity(x: Array) -> Array:
    return x


KERNEL = 3  # the conv backbone's kernel size, every layer


def make_backbone(encoder: str, conv_features: Sequence[int] = (32, 32, 32, 32),
                  conv_strides: Sequence[int] = (2, 2, 2, 2), conv_impl: str = "auto",
                  name: str | None = None) -> tuple[nn.Module, Callable[[Array], Array]]:
    """The per-camera image backbone of :class:`ObservationEncoder` and the preprocessing
    applied to the uint8 (B, H, W, 3) images before it: ``backbone(preprocess(images))`` is
    the (B, h, w, C) feature map the encoder pools."""
    if encoder == "conv":
        return ConvEncoder(tuple(conv_features), (KERNEL,) * len(conv_features),
                           tuple(conv_strides),
                           conv_impl, name=name), _identity  # ConvEncoder scales by 1/255
    if encoder == "resnet10":
        # Written separately; imported only when asked for so the conv path never needs it.
        from hilrl.learning.resnet import ResNet10, preprocess

        return ResNet10(conv_impl=conv_impl, name=name), preprocess
    raise ValueError(f"encoder must be 'conv' or 'resnet10', got {encoder!r}")


def backbone_grid(encoder: str, conv_strides: Sequence[int] = (2, 2, 2, 2)
                  ) -> tuple[float, float] | None:
    """Where :func:`make_backbone`'s feature-map cells sit in the image: cell ``i``'s
    receptive field is centred on pixel ``offset + stride * i`` (both axes), returned as
    ``(offset, stride)``; None where the cells spread evenly over the image (resnet10's SAME
    padding). The conv backbone's VALID convolutions drop each layer's border, so its cells
    cover less than the whole image, and stretching the map over the image misplaces it."""
    if encoder != "conv":
        return None
    offset, stride = 0.0, 1.0
    for s in conv_strides:  # a layer's cell j is centred on its input's j*s + (KERNEL-1)/2
        offset += stride * (KERNEL - 1) / 2
        stride *= s
    return offset, stride


class ObservationEncoder(nn.Module):
    """Observation -> one feature vector: per-camera backbone + pooling + bottleneck, a proprio
    MLP for the state, then fusion (concat -> Dense -> LayerNorm -> tanh).

    Every camera has its own parameters (submodules ``backbone_<cam>``, ``pool_<cam>``,
    ``bottleneck_<cam>``). Cameras are visited in sorted name order. Zero cameras is fine
    (state-only tasks).

    ``encoder``:
      - ``"conv"``: :class:`ConvEncoder` trained from scratch (default).
      - ``"resnet10"``: ``hilrl.learning.resnet.ResNet10`` (imported lazily) on
        ``hilrl.learning.resnet.preprocess(images)`` (ImageNet normalisation, as the
        pretrained weights expect), returning (B, h, w, 512), trained with the critic.

    :func:`make_backbone` gives the same backbone + preprocessing (the reward classifier
    uses it too).
    """

    encoder: str = "conv"
    conv_features: Sequence[int] = (32, 32, 32, 32)
    conv_strides: Sequence[int] = (2, 2, 2, 2)
    conv_impl: str = "auto"  # hilrl.learning.conv.Conv: "lax" | "matmul" | "auto" (timed)
    pooling: str = "spatial_embedding"
    num_spatial_features: int = 8
    bottleneck_dim: int = 256  # per camera, after pooling
    proprio_hidden: Sequence[int] = (64,)
    latent_dim: int = 256  # the fused feature size
    fusion_activation: str = "tanh"

    @nn.compact
    def __call__(self, obs: Mapping[str, Any]) -> Array:
        parts = []
        images = obs.get("images", {})
        for cam in sorted(images):
            backbone, preprocess = make_backbone(
                self.encoder, self.conv_features, self.conv_strides, self.conv_impl,
                name=f"backbone_{cam}")
            x = mark(self, cam, backbone(preprocess(images[cam])))  # for Grad-CAM
            x = make_pooling(self.pooling, self.num_spatial_features, name=f"pool_{cam}")(x)
            x = nn.Dense(self.bottleneck_dim, kernel_init=default_init(),
                         name=f"bottleneck_{cam}")(x)
            x = jnp.tanh(nn.LayerNorm(name=f"bottleneck_norm_{cam}")(x))
            record(self, x, f"units_bottleneck_{cam}")
            parts.append(x)
        if "state" in obs:
            parts.append(MLP(self.proprio_hidden, activate_final=True, name="proprio")(
                obs["state"].astype(jnp.float32)))
        if not parts:
            raise ValueError("observation has neither 'state' nor any camera")
        x = jnp.concatenate(parts, axis=-1)
        x = nn.Dense(self.latent_dim, kernel_init=default_init(), name="fusion")(x)
        x = _activation(self.fusion_activation)(nn.LayerNorm(name="fusion_norm")(x))
        record(self, x, "units_fusion")
        return x


# ------------------------------------------------------------------------------------- actor


class TanhGaussianActor(nn.Module):
    """Features -> (mean, log_std) of a Gaussian over pre-tanh actions.

    The state-dependent log-std is squashed smoothly into [log_std_min, log_std_max]
    (``min + (max - min) * (tanh(x) + 1) / 2``, as in CleanRL / SAC-v2), so it never leaves the
    range and still has a gradient at the edges. Use :func:`sample_tanh_gaussian` and
    :func:`tanh_gaussian_mode` on the output.
    """

    action_dim: int
    hidden: Sequence[int] = (256, 256)
    layer_norm: bool = True
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, features: Array) -> tuple[Array, Array]:
        x = MLP(self.hidden, self.layer_norm, activate_final=True)(features)
        mean = nn.Dense(self.action_dim, kernel_init=default_init(1e-2), name="mean")(x)
        raw = nn.Dense(self.action_dim, kernel_init=default_init(1e-2), name="log_std")(x)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (
            jnp.tanh(raw) + 1.0)
        return mean, log_std


_LOG_2PI = jnp.log(2.0 * jnp.pi)


def log_one_minus_tanh_sq(u: Array) -> Array:
    """log(1 - tanh(u)^2), computed stably as 2 (log 2 - u - softplus(-2u))."""
    return 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))


def tanh_gaussian_log_prob(mean: Array, log_std: Array, pre_tanh: Array) -> Array:
    """log density of ``a = tanh(u)``, ``u ~ N(mean, exp(log_std)^2)``, summed over the last
    axis: Gaussian log density of ``u`` minus the change of variables ``log(1 - tanh(u)^2)``."""
    z = (pre_tanh - mean) * jnp.exp(-log_std)
    gauss = -0.5 * z ** 2 - log_std - 0.5 * _LOG_2PI
    return jnp.sum(gauss - log_one_minus_tanh_sq(pre_tanh), axis=-1)


def sample_tanh_gaussian(mean: Array, log_std: Array, key: Array) -> tuple[Array, Array]:
    """Reparameterised sample ``a = tanh(mean + std * eps)`` and its log-probability."""
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
    return jnp.tanh(pre_tanh), tanh_gaussian_log_prob(mean, log_std, pre_tanh)


def tanh_gaussian_mode(mean: Array) -> Array:
    """The deterministic action used for evaluation: tanh of the Gaussian mean."""
    return jnp.tanh(mean)


# ----------------------------------------------------------------------------------- critics


class Critic(nn.Module):
    """(features, action) -> Q, shape (B,)."""

    hidden: Sequence[int] = (256, 256)
    layer_norm: bool = True

    @nn.compact
    def __call__(self, features: Array, actions: Array) -> Array:
        x = jnp.concatenate([features, actions], axis=-1)
        x = MLP(self.hidden, self.layer_norm, activate_final=True)(x)
        return nn.Dense(1, kernel_init=default_init())(x)[..., 0]


class CriticEnsemble(nn.Module):
    """``num`` independent critics: no shared trunk, no shared head.

    ``nn.vmap`` over the parameter axis 0 with ``split_rngs={"params": True}``: every leaf of
    ``params["ensemble"]`` has a leading axis of size ``num``, and each member is initialised
    from its own key. Output (num, B).
    """

    num: int = 2
    hidden: Sequence[int] = (256, 256)
    layer_norm: bool = True

    @nn.compact
    def __call__(self, features: Array, actions: Array) -> Array:
        ensemble = nn.vmap(Critic, variable_axes={"params": 0, COLLECTION: 0},
                           split_rngs={"params": True},
                           in_axes=None, out_axes=0, axis_size=self.num)
        return ensemble(self.hidden, self.layer_norm, name="ensemble")(features, actions)


class StateValue(nn.Module):
    """Features -> V, shape (B,) (DrM's exploitation value, ``SACConfig.exploit_lambda``)."""

    hidden: Sequence[int] = (256, 256)
    layer_norm: bool = True

    @nn.compact
    def __call__(self, features: Array) -> Array:
        x = MLP(self.hidden, self.layer_norm, activate_final=True)(features)
        return nn.Dense(1, kernel_init=default_init())(x)[..., 0]


class GripperCritic(nn.Module):
    """Discrete Q over the gripper actions (open / keep / close, see ``GRIPPER_VALUES``)
    from the observation features alone. Output (B, 3)."""

    hidden: Sequence[int] = (256, 256)
    layer_norm: bool = True
    num_actions: int = len(GRIPPER_VALUES)

    @nn.compact
    def __call__(self, features: Array) -> Array:
        x = MLP(self.hidden, self.layer_norm, activate_final=True)(features)
        return nn.Dense(self.num_actions, kernel_init=default_init())(x)


def gripper_index(gripper_action: Array) -> Array:
    """Continuous gripper command (the env's convention) -> discrete index into
    ``GRIPPER_VALUES``: <= -0.5 open (0), >= 0.5 close (2), else keep (1)."""
    return jnp.where(gripper_action >= 0.5, 2, jnp.where(gripper_action <= -0.5, 0, 1))


def gripper_value(index: Array) -> Array:
    return jnp.asarray(GRIPPER_VALUES, jnp.float32)[index]
