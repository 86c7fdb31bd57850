"""A 2-D convolution with two implementations, chosen per network by timing.

- ``lax``: XLA's own ``lax.conv_general_dilated``.
- ``matmul``: the k x k input patches laid side by side (one gather forward, strided slices'
  transpose backward), then ``patches @ kernel``; its gradients are matmuls too. On the
  2-core reference CPU it trains the small pixel encoder 2-3x faster than ``lax``, while
  ``lax`` runs a frozen ResNet-10 1.4x faster than it.

With ``impl="auto"`` (the default) a network of these layers (the pixel encoder, ResNet-10)
is timed whole with each implementation at its input shape, once per machine
(``hilrl.learning.autotune``), for two uses: the forward alone (acting, frozen encoders) and
the parameters' gradients (training). Where the uses pick differently, a custom VJP runs the
training pick whenever the layer is differentiated. ``bench/learner_speed.py`` prints the
picks and their timings.

Parameters have the same names and shapes as ``flax.linen.Conv`` (``kernel`` HWIO,
``bias``), so weights move freely between the implementations.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hilrl.learning import autotune

# "auto", "matmul", "lax", or a (forward, train) pair: see ``resolve``.
Impl = str | tuple[str, str]


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


def _matmul_conv(x: jax.Array, kernel: jax.Array, stride: int, dtype: jnp.dtype) -> jax.Array:
    kh, kw, _, features = kernel.shape
    # Cast after the copy: uint8 images are a quarter of float32's memory traffic, which is
    # what the first layer's patch building is bound by.
    return patches(x, (kh, kw), stride).astype(dtype) @ kernel.reshape(-1, features)


def _lax_conv(x: jax.Array, kernel: jax.Array, stride: int, dtype: jnp.dtype) -> jax.Array:
    return jax.lax.conv_general_dilated(x.astype(dtype), kernel, (stride, stride), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


IMPLS: dict[str, Callable[..., jax.Array]] = {"matmul": _matmul_conv, "lax": _lax_conv}


def conv(x: jax.Array, kernel: jax.Array, stride: int, dtype: jnp.dtype,
         forward: str, train: str) -> jax.Array:
    """'VALID' convolution of (B, H, W, C) ``x`` (uint8 or float) with the HWIO ``kernel``
    (already ``dtype``): ``forward``'s implementation when not differentiated, ``train``'s
    forward and gradients when it is."""
    if forward == train:
        return IMPLS[forward](x, kernel, stride, dtype)
    return _mixed_conv(x, kernel, stride, dtype, forward, train)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _mixed_conv(x: jax.Array, kernel: jax.Array, stride: int, dtype: jnp.dtype,
                forward: str, train: str) -> jax.Array:
    return IMPLS[forward](x, kernel, stride, dtype)


def _mixed_fwd(x: jax.Array, kernel: jax.Array, stride: int, dtype: jnp.dtype,
               forward: str, train: str) -> tuple[jax.Array, Callable]:
    f = functools.partial(IMPLS[train], stride=stride, dtype=dtype)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return jax.vjp(f, x, kernel)
    return jax.vjp(lambda k: f(x, k), kernel)  # integer images have no gradient


def _mixed_bwd(stride: int, dtype: jnp.dtype, forward: str, train: str, vjp: Callable,
               g: jax.Array) -> tuple[jax.Array | None, jax.Array]:
    grads = vjp(g)
    return (None, *grads) if len(grads) == 1 else grads


_mixed_conv.defvjp(_mixed_fwd, _mixed_bwd)


USES = ("forward", "train")


def resolve(module: nn.Module, x: jax.Array, field: str = "impl") -> tuple[str, str]:
    """(forward, train) implementations for the convolutions of ``module``, from its ``field``:
    "matmul", "lax", a (forward, train) pair, or "auto": the faster of the two on this
    machine, timed on the whole module at ``x``'s shape (the batch rounded up to a power of
    two) once, then remembered."""
    impl = getattr(module, field)
    if impl == "auto":
        # Batches are timed at the next power of two: chunked inference (the last chunk of an
        # episode, a held-out set) would otherwise time every remainder size anew.
        bucket = 1 << max(int(x.shape[0]) - 1, 0).bit_length()
        return choose(module, field, jax.ShapeDtypeStruct((bucket, *x.shape[1:]), x.dtype))
    if isinstance(impl, str) and impl in IMPLS:
        return impl, impl
    if isinstance(impl, Sequence) and len(impl) == 2 and set(impl) <= set(IMPLS):
        return impl[0], impl[1]
    raise ValueError(f"conv impl must be 'auto', one of {sorted(IMPLS)} or a (forward, train) "
                     f"pair of them, got {impl!r}")


def choose(module: nn.Module, field: str, x: jax.ShapeDtypeStruct) -> tuple[str, str]:
    """The faster implementation for each use of ``module`` at input ``x``. The network is
    timed whole, its output returned, because that is what predicted the speed inside a
    learner's update on XLA:CPU; smaller harnesses did not. Each ResNet-10 layer timed
    alone ran faster with matmul, yet the whole ResNet-10 ran 1.5x faster with lax. The
    pixel encoder with its output summed inside the call ran 2.5x faster with lax, yet
    returning its output, or using it in an update, made matmul 2x faster."""
    def timer(impl: str, use: str) -> Callable[[], float]:
        return functools.partial(time_module, module.clone(parent=None, **{field: impl}), x, use)

    key = f"{describe(module)} at {'x'.join(map(str, x.shape))} {np.dtype(x.dtype).name}"
    return tuple(autotune.fastest(f"{key} {use}", {impl: timer(impl, use) for impl in IMPLS})
                 for use in USES)


def time_module(module: nn.Module, x: jax.ShapeDtypeStruct, use: str) -> float:
    """Seconds per call of ``module`` on random data of ``x``'s shape: "forward" (its output)
    or "train" (the gradients of the parameters)."""
    rng = np.random.default_rng(0)
    xs = (rng.integers(0, 256, x.shape) if not jnp.issubdtype(x.dtype, jnp.floating)
          else rng.standard_normal(x.shape)).astype(x.dtype)
    params = jax.jit(module.init)(jax.random.key(0), xs)

    if use == "forward":
        return autotune.seconds(jax.jit(module.apply), params, xs)

    def total(params: Any, x: jax.Array) -> jax.Array:
        return sum(jnp.sum(y) for y in jax.tree.leaves(module.apply(params, x)))

    return autotune.seconds(jax.jit(jax.grad(total)), params, xs)


def describe(module: nn.Module) -> str:
    """The module's type and settings, stable across processes (no initialiser functions,
    names or conv implementation)."""
    parts = []
    for f in dataclasses.fields(module):
        value = getattr(module, f.name)
        if f.name in ("parent", "name") or "impl" in f.name:
            continue
        if isinstance(value, type | np.dtype):  # jnp.float32, np.dtype("uint8")
            try:
                value = np.dtype(value).name
            except TypeError:
                continue
        elif callable(value):
            continue
        parts.append(f"{f.name}={value}")
    return f"{type(module).__name__}({', '.join(parts)})"


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
    # The output is conv(x * input_scale) + bias, the scale applied after the convolution
    # so that uint8 images go into the patches as uint8.
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
        y = conv(x, kernel, stride, dtype, *resolve(self, x))
        if self.input_scale != 1.0:
            y = y * jnp.asarray(self.input_scale, dtype)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(dtype)
        return y
