"""The sim task layer's table and the peg-insertion task, on the real MuJoCo sim (state only).

Bounded by counts: a few resets, 30 steps of wandering, 10 expert episodes per style.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from hilrl.config import ConfigError, load_task
from robot_drivers.registry import resolve
from robot_drivers.sim.tasks.peg_insert import FIXTURE_HEIGHT, HOLE_HALF_WIDTH

TASK = "tasks/sim_peg_insert.yaml"


@pytest.fixture
def make(build_stack):
    """``make(*overrides, seed=0)`` -> the state-only peg task's EnvStack."""
    return functools.partial(build_stack, TASK, images=False, seed=0)


def test_an_unknown_task_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown sim task 'peg_insrt'; known tasks: "
                                          "peg_insert, pick_cube"):
        resolve(load_task(None, ["env.sim.task=peg_insrt"]))
    with pytest.raises(ConfigError, match="env.sim.peg_insrt: unknown key"):
        resolve(load_task(None, ["env.sim.peg_insrt.hole_range=0.01"]))


def test_old_flat_pick_cube_keys_load_into_its_section_and_both_is_refused():
    sim = resolve(load_task(None, ["env.sim.lift_height=0.08"])).arm.settings
    assert sim.task_settings("pick_cube").lift_height == 0.08
    with pytest.raises(ConfigError, match="keep only env.sim.pick_cube.lift_height"):
        resolve(load_task(None, ["env.sim.lift_height=0.08",
                                 "env.sim.pick_cube.lift_height=0.07"]))


def test_the_hole_moves_within_two_cm_and_a_seed_repeats_it(make):
    stack = make("device.kind=none")
    nominal = np.array(stack.world.config.task_settings().hole_xy)
    holes = []
    for seed in range(8):
        stack.env.reset(seed=seed)
        holes.append(stack.world.object_position())
    holes = np.array(holes)
    assert np.all(np.abs(holes[:, :2] - nominal) <= 0.02)
    assert np.ptp(holes[:, 0]) > 0.01 and np.ptp(holes[:, 1]) > 0.01
    np.testing.assert_allclose(holes[:, 2], FIXTURE_HEIGHT)
    stack.env.reset(seed=3)
    np.testing.assert_array_equal(stack.world.object_position(), holes[3])


def test_the_peg_stays_in_the_grasp_while_the_arm_moves_around(make):
    stack = make("device.kind=none")
    world, task = stack.world, stack.world.task
    stack.env.reset(seed=0)
    held = task.peg_bottom(world) - world.tcp_pose()[:3]
    rng = np.random.default_rng(0)
    for _ in range(30):
        action = np.append(rng.uniform(-1, 1, 3), rng.choice([-1.0, 1.0]))  # tries to open too
        stack.env.step(action.astype(np.float32))
        offset = task.peg_bottom(world) - world.tcp_pose()[:3]
        assert np.linalg.norm(offset - held) < 0.004, "the peg moved in the hand"
    assert world.gripper_width() < 0.021  # still closed on the 20 mm peg


def test_success_only_when_seated_in_the_opening(make):
    stack = make("device.expert.takeover=always", "device.expert.noise=0")
    world, task = stack.world, stack.world.task
    stack.env.reset(seed=1)
    assert not world.success()  # at the start, high above
    # Beside the hole, as low as the hole's bottom would be: not in it.
    hole = task.hole_top(world)
    beside = hole + [HOLE_HALF_WIDTH + 0.05, 0.0, -0.025]
    assert not task.in_opening_at(beside[:2], world)
    # The expert seats it; success holds exactly when the tip is deep enough and inside.
    for _ in range(120):  # the task file's max_episode_steps
        above = task.inserted_depth(world) < 0
        if above:
            assert not world.success()
        _, reward, terminated, truncated, _ = stack.env.step(np.zeros(4, np.float32))
        if terminated or truncated:
            break
    assert terminated and reward == 1.0
    assert task.inserted_depth(world) >= task.settings.seat_depth and task.in_opening(world)


@pytest.mark.parametrize("style", ["oracle", "human"])
def test_the_scripted_person_inserts_the_peg(make, style):
    stack = make("device.expert.takeover=always", f"device.expert.style={style}")
    wins = 0
    for seed in range(10):
        stack.env.reset(seed=seed)
        while True:
            _, reward, terminated, truncated, info = stack.env.step(np.zeros(4, np.float32))
            assert info["intervened"]
            if terminated or truncated:
                break
        wins += bool(terminated and reward == 1.0)
    assert wins >= 8, f"{style}: {wins}/10"
