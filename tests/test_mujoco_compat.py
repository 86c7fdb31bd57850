"""The MuJoCo compatibility layer, run under every MuJoCo version CI tests (4.x in the main run,
3.x in .ci/mujoco3)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest

from robot_drivers.sim.mujoco_compat import full_inertia
from robot_drivers.sim.world import SimWorld


@pytest.fixture(scope="module")
def world():
    w = SimWorld(image_size=(64, 64))
    # Off home and moving, so every joint's inertia coupling is non-trivial.
    rng = np.random.default_rng(3)
    w.data.qpos[w._arm_qpos] += rng.uniform(-0.3, 0.3, 7)
    w.data.qvel[:] = rng.normal(0.0, 0.5, w.model.nv)
    mujoco.mj_forward(w.model, w.data)
    yield w
    w.close()


def test_full_inertia_matches_the_inertia_applied_to_unit_vectors(world):
    m, d = world.model, world.data
    dense = np.zeros((m.nv, m.nv))
    column = np.zeros(m.nv)
    for i in range(m.nv):
        unit = np.zeros(m.nv)
        unit[i] = 1.0
        mujoco.mj_mulM(m, d, column, unit)
        dense[:, i] = column

    out = np.full((m.nv, m.nv), np.nan)
    returned = full_inertia(m, d, out)

    assert returned is out
    np.testing.assert_allclose(out, dense, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, out.T, atol=1e-12)
    assert np.linalg.eigvalsh(out).min() > 0.0


def test_full_inertia_follows_the_configuration(world):
    m = world.model
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    home = full_inertia(m, d, np.zeros((m.nv, m.nv))).copy()
    d.qpos[world._arm_qpos[1]] += 0.8  # the shoulder: moves everything outboard of it
    mujoco.mj_forward(m, d)
    bent = full_inertia(m, d, np.zeros((m.nv, m.nv)))
    assert not np.allclose(home, bent)


@pytest.mark.skipif("HILRL_EXPECT_MUJOCO" not in os.environ,
                    reason="set by .ci/mujoco3 to the MuJoCo version it installed")
def test_runs_under_the_mujoco_version_ci_installed(world):
    """The 3.x runs must really be on 3.x, and on nothing but it: mujoco extends its package
    path with every other ``mujoco`` directory importable, so a leftover 4.x could supply
    submodules to a 3.x."""
    world.render("front")  # loads the renderer's modules too
    assert mujoco.__version__ == os.environ["HILRL_EXPECT_MUJOCO"]
    root = Path(mujoco.__file__).parent
    foreign = {name: module.__file__ for name, module in sys.modules.items()
               if name.split(".")[0] == "mujoco" and getattr(module, "__file__", None)
               and not Path(module.__file__).is_relative_to(root)}
    assert not foreign
