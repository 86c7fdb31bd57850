"""A 2-D convolution computed as one matrix multiply, for XLA's CPU backend.

XLA:CPU runs ``lax.conv_general_dilated`` (forward and both gradients) at ~20 GFLOP/s on
this project's reference 2-core machine, while a float32 matmul reaches ~150 GFLOP/s. Laying
the k x k input patches side by side (strided slices + one concatenate, cheap memory moves)
turns the convolution into ``patches @ kernel`` and its gradients into matmuls too. The
128x128, batch-256 update then makes ~2x the critic updates/s of ``lax`` on that machine
(figure ``conv_matmul_speedup.pix128_b256_e2_u1`` of bench/learner_speed.py: 1.5-2.6).
GPUs have fast native convolutions, so ``impl="auto"`` keeps ``lax`` there.

Parameters have the same names and shapes as ``flax.linen.Conv`` (``kernel`` HWIO,
``bias``), so weights move freely between the two implementations.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Impl = Literal["auto", "matmul", "lax"]


def resolve_impl(impl: Impl) -> Literal["matmul", "lax"]:
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "lax"
    return impl


def _sliced_patches(x: jax.Array, kernel: tuple[int, int], stride: int) -> jax.Array:
    kh, kw = kernel
    _, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    cols = [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1)


def _gathered_patches(x: jax.Array, kernel: tuple[int, int], stride: int) -> jax.Array:
    kh, kw = kernel
    b, h, w, c = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    rows = stride * np.arange(ho)[:, None, None, None] + np.arange(kh)[None, None, :, None]
    cols = stride * np.arange(wo)[None, :, None, None] + np.arange(kw)[None, None, None, :]
    index = (rows * w + cols).reshape(-1)  # (Ho, Wo, kh, kw) positions, a constant
    return jnp.take(x.reshape(b, h * w, c), index, axis=1).reshape(b, ho, wo, kh * kw * c)


# Two formulations of one linear map, each used where XLA:CPU runs it faster (2-core
# reference, 512 images): the forward as one gather (layer 2 of the pixel encoder: 206 ms
# against 517 ms for slices + concatenate), the gradient as the transpose of the slices
# (pads and adds; the gather's transpose, a scatter-add, made forward + backward slower).
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def patches(x: jax.Array, kernel: tuple[int, int], stride: int) -> jax.Array:
    """(B, H, W, C) -> (B, Ho, Wo, kh*kw*C) 'VALID' patches, ordered (row, col, channel)."""
    return _gathered_patches(x, kernel, stride)


def _patches_fwd(x: jax.Array, kernel: tuple[int, int], stride: int
                 ) -> tuple[jax.Array, jax.ShapeDtypeStruct]:
    return _gathered_patches(x, kernel, stride), jax.ShapeDtypeStruct(x.shape, x.dtype)


def _patches_bwd(kernel: tuple[int, int], stride: int, x_struct: jax.ShapeDtypeStruct,
                 g: jax.Array) -> tuple[jax.Array | None]:
    if not jnp.issubdtype(x_struct.dtype, jnp.floating):
        return (None,)  # integer images have no gradient
    transpose = jax.linear_transpose(lambda x: _sliced_patches(x, kernel, stride), x_struct)
    return transpose(g)


patches.defvjp(_patches_fwd, _patches_bwd)


def _same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


Padding = Literal["VALID", "SAME"] | Sequence[tuple[int, int]]


class Conv(nn.Module):
    """Drop-in for ``nn.Conv``: equal strides on both axes, VALID / SAME / explicit
    ((top, bottom), (left, right)) padding, no dilation."""

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "VALID"
    use_bias: bool = True
    impl: Impl = "auto"
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    dtype: jnp.dtype | None = None  # compute dtype; None: the input's (float32 for ints)
    # The output is conv(x * input_scale) + bias, with the scale applied after the matmul:
    # uint8 images then go into the patches as uint8 (a quarter of float32's memory
    # traffic, which is what the first layer's patch building is bound by on a CPU).
    input_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        stride = self.strides if isinstance(self.strides, int) else self.strides[0]
        if not isinstance(self.strides, int) and len(set(self.strides)) != 1:
            raise ValueError(f"Conv needs equal strides on both axes, got {self.strides}")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        dtype = self.dtype or (x.dtype if jnp.issubdtype(x.dtype, jnp.floating)
                               else jnp.float32)
        kernel = kernel.astype(dtype)
        matmul = resolve_impl(self.impl) == "matmul"
        if not matmul:
            x = x.astype(dtype)
        if self.padding == "SAME":
            ph = _same_padding(x.shape[1], kh, stride)
            pw = _same_padding(x.shape[2], kw, stride)
            x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
        elif self.padding != "VALID":
            (top, bottom), (left, right) = self.padding
            x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        if x.shape[1] < kh or x.shape[2] < kw:
            raise ValueError(f"{self.name}: the {x.shape[1]}x{x.shape[2]} input is smaller than "
                             f"the {kh}x{kw} kernel; use larger images or smaller strides")
        if matmul:
            cols = patches(x, (kh, kw), stride).astype(dtype)  # cast after the copy
            y = cols @ kernel.reshape(-1, self.features)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, (stride, stride), "VALID",
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.input_scale != 1.0:
            y = y * jnp.asarray(self.input_scale, dtype)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(dtype)
        return y
