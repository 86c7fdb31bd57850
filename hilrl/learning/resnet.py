"""ResNet-10 image encoder (GroupNorm), the architecture of HIL-SERL's frozen "resnetv1-10".

The module and parameter names follow serl_launcher's ``ResNetEncoder`` (``conv_init``,
``norm_init``, ``ResNetBlock_{0..3}`` each with ``Conv_0``, ``MyGroupNorm_0``, ``Conv_1``,
``MyGroupNorm_1`` and, where the shape changes, ``conv_proj``/``norm_proj``), so pretrained
weights converted from that project load without renaming. Weights are only ever read from a
local file in hilrl's own pickle-free format: see
:func:`hilrl.storage.weights.load_pretrained_resnet10`.

GroupNorm (not BatchNorm) means there is no mutable state: ``train`` changes nothing and
exists only so the call signature matches the other encoders. Freezing is the agent's job
(``jax.lax.stop_gradient`` on the features and keeping these params out of the optimizer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hilrl.learning.conv import Conv, Impl, resolve

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_conv_init = nn.initializers.kaiming_normal()


def preprocess(images_uint8: jax.Array | np.ndarray) -> jax.Array:
    """uint8 RGB images (..., H, W, 3) -> float32, scaled to [0, 1] then ImageNet-normalised.

    Kept outside the module so the normalisation the pretrained weights expect is explicit
    and the module itself stays a pure function of float inputs.
    """
    x = jnp.asarray(images_uint8)
    if x.shape[-1] != 3:
        raise ValueError(f"expected RGB images with 3 channels last, got shape {x.shape}")
    x = x.astype(jnp.float32) / 255.0
    return (x - IMAGENET_MEAN) / IMAGENET_STD


class _BasicBlock(nn.Module):
    """conv3x3 - GN - relu - conv3x3 - GN (+ 1x1 conv/GN projection when shapes differ) - relu."""

    filters: int
    strides: int
    num_groups: int
    dtype: Any = jnp.float32
    conv_impl: Impl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = _conv(self.dtype, self.conv_impl)
        norm = _norm(self.num_groups, self.dtype)
        s = (self.strides, self.strides)
        y = conv(self.filters, (3, 3), s, name="Conv_0")(x)
        y = nn.relu(norm(name="MyGroupNorm_0")(y))
        y = conv(self.filters, (3, 3), name="Conv_1")(y)
        y = norm(name="MyGroupNorm_1")(y)
        residual = x
        if residual.shape != y.shape:
            residual = conv(self.filters, (1, 1), s, name="conv_proj")(residual)
            residual = norm(name="norm_proj")(residual)
        return nn.relu(residual + y)


def _conv(dtype: Any, impl: Impl):
    def make(features: int, kernel: tuple[int, int], strides: tuple[int, int] = (1, 1),
             padding: Any = "SAME", name: str | None = None) -> Conv:
        return Conv(features, kernel, strides, padding=padding, use_bias=False, impl=impl,
                    dtype=dtype, kernel_init=_conv_init, name=name)
    return make


def _norm(num_groups: int, dtype: Any):
    def make(name: str) -> nn.GroupNorm:
        return nn.GroupNorm(num_groups=num_groups, epsilon=1e-5, dtype=dtype, name=name)
    return make


class ResNet10(nn.Module):
    """ResNet-10 feature extractor: (B, H, W, 3) normalised float32 -> (B, H/32, W/32, 512).

    Stem: 7x7/2 conv (64) + GroupNorm + relu + 3x3/2 max-pool; then one basic block per
    stage with (64, 128, 256, 512) channels and strides (1, 2, 2, 2). ``num_groups=4``
    matches serl's pretrained weights; 32 is the usual GroupNorm default when training
    from scratch. Returns the feature map, not a pooled vector, so the caller picks the
    pooling (spatial embeddings, avg, ...).
    """

    num_groups: int = 4
    num_filters: int = 64
    stage_sizes: Sequence[int] = (1, 1, 1, 1)
    dtype: Any = jnp.float32
    conv_impl: Impl = "auto"  # see hilrl.learning.conv.resolve

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # GroupNorm has no running statistics; kept for a uniform encoder API
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ResNet10 expects (B, H, W, 3) inputs, got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"ResNet10 expects normalised float inputs (use preprocess()), "
                            f"got dtype {x.dtype}")
        impl = resolve(self, x, "conv_impl")
        conv = _conv(self.dtype, impl)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(_norm(self.num_groups, self.dtype)(name="norm_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                # serl names its blocks ResNetBlock_<k> in creation order; keep that.
                k = sum(self.stage_sizes[:i]) + j
                x = _BasicBlock(self.num_filters * 2**i, strides, self.num_groups,
                                self.dtype, impl, name=f"ResNetBlock_{k}")(x)
        return x


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(params)))
