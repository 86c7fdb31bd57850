"""Grad-CAM (Selvaraju et al. 2017): where in each camera's image a network looks.

For each camera, the backbone's last feature map ``A`` (h, w, C) is weighed channel by
channel by the mean gradient of the score over the map, ``relu(sum_c mean(dS/dA_c) A_c)``,
and the result is placed over the image (each cell at the centre of its receptive field,
given the backbone's grid, else stretched evenly) and scaled to [0, 1] per frame. Image
networks mark that feature map with :func:`mark` (the encoders of
``hilrl.learning.networks`` and the reward classifier do); applying them normally, it costs
nothing.

Used for the reward classifier's training report (``saliency.png``: held-out frames, its
false positives and negatives first) and the critic's (``learner/critic_saliency.png``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PERTURB, MAPS = "perturbations", "feature_maps"


def mark(module: nn.Module, name: str, fmap: jax.Array) -> jax.Array:
    """The feature map ``name`` of ``module``, made visible to :func:`grad_cam`."""
    fmap = module.perturb(name, fmap, collection=PERTURB)
    module.sow(MAPS, name, fmap)
    return fmap


def grad_cam(module: nn.Module, variables: Mapping[str, Any], inputs: Any,
             score: Callable[[jax.Array], jax.Array], image_size: Mapping[str, tuple[int, int]],
             grid: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Heat maps (B, H, W) in [0, 1] per marked feature map of ``module`` applied to
    ``inputs``; ``score(output)`` is the (B,) quantity explained (a logit, a Q value).
    ``image_size`` maps each mark's name to the (H, W) of its image; ``grid`` is the
    backbone's ``(offset, stride)`` (``hilrl.learning.networks.backbone_grid``): cell ``i``
    is centred on pixel ``offset + stride * i``. Without it the map is stretched over the
    image."""
    _, state = module.apply(variables, inputs, mutable=[PERTURB, MAPS])

    def total(perturbations: Any) -> jax.Array:
        return jnp.sum(score(module.apply({**variables, PERTURB: perturbations}, inputs)))

    grads = jax.grad(total)(state[PERTURB])
    maps = {}
    for name, (h, w) in image_size.items():
        fmap, grad = state[MAPS][name][0], grads[name]
        weights = jnp.mean(grad, axis=(1, 2), keepdims=True)  # per channel
        cam = jax.nn.relu(jnp.sum(weights * fmap, axis=-1))  # (B, h, w)
        if grid is None:
            cam = jax.image.resize(cam, (cam.shape[0], h, w), "bilinear")
        else:
            rows, cols = (_placement(n, cells, *grid) for n, cells in
                          ((h, cam.shape[1]), (w, cam.shape[2])))
            cam = jnp.einsum("yi,bij,xj->byx", rows, cam, cols)
        top = jnp.max(cam, axis=(1, 2), keepdims=True)
        maps[name] = np.asarray(jnp.where(top > 0, cam / jnp.where(top > 0, top, 1.0), 0.0))
    return maps


def _placement(pixels: int, cells: int, offset: float, stride: float) -> np.ndarray:
    """(pixels, cells) weights: each pixel interpolates linearly between the two cells whose
    receptive-field centres are nearest; pixels beyond the outermost centres take that
    cell's value."""
    u = np.clip((np.arange(pixels) - offset) / stride, 0.0, cells - 1)
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, cells - 1)
    weights = np.zeros((pixels, cells), np.float32)
    np.add.at(weights, (np.arange(pixels), lo), 1.0 - (u - lo))
    np.add.at(weights, (np.arange(pixels), hi), u - lo)
    return weights


def plot(path: Path, rows: list[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]],
         title: str) -> Path:
    """One row per frame (label, {camera: (H, W, 3) uint8 image}, {camera: (H, W) heat}),
    one column per camera: the image with its heat map over it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cams = sorted(rows[0][1])
    width = max(2.2 * len(cams), 4.0)
    fig = Figure(figsize=(width, 2.2 * len(rows) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(cams), squeeze=False)
    for r, (label, images, heat) in enumerate(rows):
        for c, cam in enumerate(cams):
            ax = axes[r, c]
            ax.imshow(images[cam])
            ax.imshow(heat[cam], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cam, fontsize="small")
            if c == 0:
                ax.set_ylabel(label, fontsize="small")
    fig.suptitle(textwrap.fill(title, int(10 * width)), fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
