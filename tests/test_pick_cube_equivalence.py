"""Pick-cube behaves exactly as it did before the sim task layer (issue 19).

The reference, tests/pick_cube_reference.npz, holds the tcp trajectory of a 40-step rollout
(expert driving, takeover=always, seed 0) per expert style, recorded from the code *before*
pick-cube moved into robot_drivers/sim/tasks/ (``python tests/test_pick_cube_equivalence.py``
re-records it; do that only when pick-cube's behaviour is meant to change). The trajectory
covers a success and the reset after it, so it pins the reset's RNG draw order, the expert's
plan and its human style. An array file rather than a hash in this file: a hash says only
"different", the arrays say where the trajectories part and by how much.

Under the MuJoCo version that recorded the reference, the trajectory must match it to a
nanometre: float rounding differs between CPUs (~1e-15 m over these 40 steps between two AMD
EPYC machines), while a changed draw, plan or reset moves the tcp by millimetres. Under
another version (CI reruns this file under 3.x) the test is skipped with the reason, since
another version integrates contacts differently and no tolerance would mean "unchanged".
"""

from __future__ import annotations

import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest

from actor.env_factory import make_env
from hilrl.config import load_task

REFERENCE = Path(__file__).with_name("pick_cube_reference.npz")
STYLES = ("oracle", "human")
STEPS = 40
SEED = 0
TOLERANCE = 1e-9  # m: float rounding across CPUs, far below any change in behaviour


def tcp_trajectory(style: str, seed: int = SEED, steps: int = STEPS) -> np.ndarray:
    """(steps, 3) tcp positions while the scripted expert drives pick-cube; a finished
    episode is reset with a seed derived from the step, as a training run would."""
    task = load_task(None, ["device.kind=scripted", "device.expert.takeover=always",
                            f"device.expert.style={style}"])
    stack = make_env(task, images=False, seed=seed)
    try:
        stack.env.reset(seed=seed)
        tcps = []
        for t in range(steps):
            _, _, terminated, truncated, _ = stack.env.step(np.zeros(4, np.float32))
            tcps.append(stack.world.tcp_pose()[:3].copy())
            if terminated or truncated:
                stack.env.reset(seed=seed + 1000 + t)
        return np.array(tcps)
    finally:
        stack.close()


@pytest.mark.parametrize("style", STYLES)
def test_pick_cube_rollout_is_unchanged_since_before_the_task_layer(style):
    with np.load(REFERENCE, allow_pickle=False) as ref:
        recorded_on = str(ref["mujoco_version"])
        expected = ref[style]
    if mujoco.__version__ != recorded_on:
        pytest.skip(f"reference recorded under MuJoCo {recorded_on}; {mujoco.__version__} "
                    f"integrates contacts differently")
    got = tcp_trajectory(style)
    apart = np.abs(got - expected).max(axis=1)
    if apart.max() > TOLERANCE:
        first = int(np.flatnonzero(apart > TOLERANCE)[0])
        pytest.fail(f"{style}: the trajectory parts from the reference at step {first} by "
                    f"{apart[first]:.3g} m: {got[first]} != {expected[first]}")


if __name__ == "__main__":  # re-record the reference (see the module docstring)
    arrays = {style: tcp_trajectory(style) for style in STYLES}
    np.savez(REFERENCE, mujoco_version=np.array(mujoco.__version__), **arrays)
    for style, a in arrays.items():
        print(style, a[-1])
    sys.exit(0)
