"""The critic's Grad-CAM: computed from a pixel agent, written by a real learner at its
checkpoints and shown by ``hilrl report``. (The classifier's is checked against a learned
mark in test_classifier.py.)"""

from pathlib import Path

import numpy as np
import pytest

from hilrl.config import load_task
from hilrl.learning import sac
from hilrl.reporting.report import CRITIC_SALIENCY, make_report

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "tasks" / "sim_pick_cube_pixels_cpu.yaml"


def test_a_pixel_learner_writes_its_critics_saliency_and_the_report_shows_it(tmp_path):
    from hilrl.cli.train_sim import free_port_pair
    from learner.node import Learner

    port = free_port_pair()
    task = load_task(TASK, [
        f"learner.bind=tcp://127.0.0.1:{port}", f"learner.weights_bind=tcp://127.0.0.1:{port + 1}",
        "env.image_size=[32,32]", "agent.conv_features=[8,8]", "agent.conv_strides=[2,1]",
        "agent.num_critics=2", "agent.hidden_dims=[16,16]", "agent.utd=1",
        "learner.batch_size=8", "learner.min_transitions=8", "learner.max_updates=2",
        "learner.checkpoint_every=2", "learner.log_every=1"])
    node = Learner(task, tmp_path / "run", quiet=True)
    n = 10
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=(n + 1, node.spec.state_size)).astype(np.float32),
           "images": {cam: rng.integers(0, 255, (n + 1, *shape), dtype=np.uint8)
                      for cam, shape in node.spec.image_shapes.items()}}
    node.ingest.online.add_batch(
        obs, rng.uniform(-1, 1, (n, node.spec.action_size)).astype(np.float32),
        np.zeros(n, np.float32), np.arange(n) == n - 1, np.zeros(n, bool),
        extras={name: np.zeros(n, np.float32) for name in node.ingest.online.extras})

    heat = sac.critic_saliency(node.state, {"state": obs["state"][:3],
                                            "images": {c: v[:3] for c, v in
                                                       obs["images"].items()}})
    assert set(heat) == set(node.spec.image_shapes)
    for h in heat.values():
        assert h.shape == (3, 32, 32) and 0.0 <= h.min() and h.max() <= 1.0
        assert np.allclose(h.max(axis=(1, 2)), 1.0)  # each frame scaled to its own peak

    assert node.run() == 2
    png = tmp_path / "run" / "learner" / CRITIC_SALIENCY
    assert png.read_bytes()[:4] == b"\x89PNG"
    paths = make_report(tmp_path / "run")
    assert (tmp_path / "run" / "report" / CRITIC_SALIENCY) in paths
    assert (tmp_path / "run" / "report" / CRITIC_SALIENCY).read_bytes() == png.read_bytes()


@pytest.mark.parametrize("strides", [(2, 1, 1), (2, 2, 2, 2), (1, 2)])
def test_backbone_grid_centres_each_cell_on_its_receptive_field(strides):
    import jax
    import jax.numpy as jnp

    from hilrl.learning.networks import backbone_grid, make_backbone

    backbone, _ = make_backbone("conv", (4,) * len(strides), strides, conv_impl="lax")
    image = jnp.full((1, 40, 40, 3), 100.0)
    # Positive weights and input keep every unit on, so a cell's gradient reaches its whole
    # receptive field and no further.
    params = jax.tree.map(lambda p: jnp.abs(p) + 0.01,
                          backbone.init(jax.random.PRNGKey(0), image))
    cells = backbone.apply(params, image).shape[1]
    offset, stride = backbone_grid("conv", strides)
    for i in (0, cells // 2, cells - 1):
        grad = jax.grad(lambda x, i=i: backbone.apply(params, x)[0, i, i].sum())(image)
        rows = np.flatnonzero(np.abs(np.asarray(grad[0])).sum(axis=(1, 2)) > 0)
        cols = np.flatnonzero(np.abs(np.asarray(grad[0])).sum(axis=(0, 2)) > 0)
        assert (rows.min() + rows.max()) / 2 == offset + stride * i
        assert (cols.min() + cols.max()) / 2 == offset + stride * i


def test_grad_cam_puts_a_hot_cell_on_its_receptive_fields_centre():
    import flax.linen as nn
    import jax.numpy as jnp

    from hilrl.learning.saliency import grad_cam, mark

    class Marked(nn.Module):  # the feature map is the input; the score is its sum
        @nn.compact
        def __call__(self, fmap):
            return jnp.sum(mark(self, "cam", fmap), axis=(1, 2, 3))

    cells, offset, stride = 11, 5.0, 2.0  # a 32-pixel image through 3x3 VALID, strides 2, 1, 1
    fmap = np.zeros((cells, cells, cells, 1), np.float32)
    for j in range(cells):
        fmap[j, j, j] = 1.0  # frame j: cell (j, j) hot
    heat = grad_cam(Marked(), {}, jnp.asarray(fmap), lambda s: s, {"cam": (32, 32)},
                    (offset, stride))["cam"]
    for j in range(cells):
        centre = int(offset + stride * j)
        assert heat[j, centre, centre] == 1.0
        if 0 < j < cells - 1:  # the one peak, halfway down to the next centre
            assert np.sum(heat[j] == 1.0) == 1
            assert heat[j, centre + 1, centre] == 0.5 and heat[j, centre, centre - 1] == 0.5
    # Beyond the outermost centres a pixel takes the edge cell's value.
    assert np.all(heat[0, :6, :6] == 1.0) and np.all(heat[-1, 25:, 25:] == 1.0)
    # Stretched over the image instead, cell 1 would peak 3 pixels from its centre (7, 7).
    stretched = grad_cam(Marked(), {}, jnp.asarray(fmap[1:2]), lambda s: s, {"cam": (32, 32)})
    peak = np.unravel_index(np.argmax(stretched["cam"][0]), (32, 32))
    assert abs(int(peak[0]) - 7) >= 2, peak
