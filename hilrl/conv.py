"""A 2-D convolution computed as one matrix multiply, for XLA's CPU backend.

XLA:CPU runs ``lax.conv_general_dilated`` (forward and both gradients) at ~20 GFLOP/s on
this project's reference 2-core machine, while a float32 matmul reaches ~150 GFLOP/s. Laying
the k x k input patches side by side (strided slices + one concatenate, cheap memory moves)
turns the convolution into ``patches @ kernel`` and its gradients into matmuls too, which
ran the pixel encoder's update about twice as fast there (see bench/learner_speed.py).
GPUs have fast native convolutions, so ``impl="auto"`` keeps ``lax`` there.

Parameters have the same names and shapes as ``flax.linen.Conv`` (``kernel`` HWIO,
``bias``), so weights move freely between the two implementations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

Impl = Literal["auto", "matmul", "lax"]


def resolve_impl(impl: Impl) -> Literal["matmul", "lax"]:
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "lax"
    return impl


def patches(x: jax.Array, kernel: tuple[int, int], stride: int) -> jax.Array:
    """(B, H, W, C) -> (B, Ho, Wo, kh*kw*C) 'VALID' patches, ordered (row, col, channel)."""
    kh, kw = kernel
    _, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    cols = [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1)


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
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        stride = self.strides if isinstance(self.strides, int) else self.strides[0]
        if not isinstance(self.strides, int) and len(set(self.strides)) != 1:
            raise ValueError(f"Conv needs equal strides on both axes, got {self.strides}")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if self.padding == "SAME":
            ph = _same_padding(x.shape[1], kh, stride)
            pw = _same_padding(x.shape[2], kw, stride)
            x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
        elif self.padding != "VALID":
            (top, bottom), (left, right) = self.padding
            x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        if resolve_impl(self.impl) == "matmul":
            y = patches(x, (kh, kw), stride) @ kernel.reshape(-1, self.features)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, (stride, stride), "VALID",
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(dtype)
        return y
