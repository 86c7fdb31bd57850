"""The push task on the real MuJoCo sim (state only).

Bounded by counts: 8 seeded resets, 30 steps of wandering, a few hundred physics steps of a
placed block, 10 scripted-person episodes per style.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from actor.env_factory import make_env
from hilrl.config import load_task
from robot_drivers.sim.tasks import TASKS, task_class
from robot_drivers.sim.tasks.push import BLOCK_HALF_HEIGHT, Push

TASK = "tasks/sim_push.yaml"


@pytest.fixture
def make(build_stack):
    """``make(*overrides, seed=0)`` -> the state-only push task's EnvStack."""
    return functools.partial(build_stack, TASK, images=False, seed=0)


def test_push_is_registered():
    assert "push" in TASKS
    assert task_class("push") is Push


def test_the_block_and_target_are_drawn_in_their_ranges_and_a_seed_repeats_them(make):
    stack = make("device.kind=none")
    world, task = stack.world, stack.world.task
    c = task.settings
    blocks, targets = [], []
    for seed in range(8):
        stack.env.reset(seed=seed)
        blocks.append(task.block_position(world))
        targets.append(task.target_position(world))
    blocks, targets = np.array(blocks), np.array(targets)
    # The reset's settling moves the block by no more than contact softness.
    assert np.all(np.abs(blocks[:, :2] - c.object_xy) <= c.start_range + 1e-3)
    np.testing.assert_allclose(blocks[:, 2], BLOCK_HALF_HEIGHT, atol=1e-3)
    offsets = targets[:, :2] - blocks[:, :2]
    distances = np.linalg.norm(offsets, axis=1)
    assert np.all((distances >= c.distance[0] - 1e-3) & (distances <= c.distance[1] + 1e-3))
    directions = np.arctan2(offsets[:, 1], offsets[:, 0])
    assert np.ptp(directions) > np.pi, "the push direction should vary widely"
    assert np.ptp(blocks[:, 0]) > 0.02 and np.ptp(blocks[:, 1]) > 0.02
    stack.env.reset(seed=3)
    np.testing.assert_array_equal(task.target_position(world), targets[3])
    np.testing.assert_allclose(task.block_position(world), blocks[3], atol=1e-9)
    # object_pos is the block; the target is only seen (by cameras).
    np.testing.assert_array_equal(world.object_position(), task.block_position(world))


def test_the_gripper_stays_closed_whatever_is_asked(make):
    stack = make("device.kind=none")
    world = stack.world
    stack.env.reset(seed=0)
    assert world.gripper_width() < 0.002
    rng = np.random.default_rng(0)
    for _ in range(30):
        action = np.append(rng.uniform(-1, 1, 3), rng.choice([-1.0, 1.0]))  # tries to open
        stack.env.step(action.astype(np.float32))
        assert world.gripper_width() < 0.002, "the fingers opened"


def _settle(world, steps: int = 100) -> None:
    world.advance(steps * world.model.opt.timestep)


def test_success_needs_the_block_on_target_and_at_rest(make):
    stack = make("device.kind=none")
    world, task = stack.world, stack.world.task
    stack.env.reset(seed=2)
    target = task.target_position(world)[:2]
    assert not world.success()  # 8-15 cm away at the start
    # 2 cm off, at rest: not there.
    task.place_block(world, target + [0.02, 0.0])
    _settle(world)
    assert task.block_speed(world) < 1e-3 and not world.success()
    # On the target but sliding across it at 5 cm/s: a fly-through does not count.
    task.place_block(world, target + [-0.001, 0.0], velocity=(0.05, 0.0))
    world.advance(world.model.opt.timestep)
    assert task.target_error(world) < 0.01 and not world.success()
    # On the target (within 1 cm) and at rest: success; a person calls it only well inside.
    task.place_block(world, target + [0.006, -0.004])
    _settle(world)
    assert task.target_error(world) < 0.01 and world.success()
    assert not task.clearly_done(world)
    task.place_block(world, target + [0.003, -0.002])
    _settle(world)
    assert world.success() and task.clearly_done(world)


@pytest.mark.parametrize("style", ["oracle", "human"])
def test_the_scripted_person_pushes_the_block_onto_the_target(make, style):
    stack = make("device.expert.takeover=always", f"device.expert.style={style}")
    world = stack.world
    wins = 0
    for seed in range(10):
        stack.env.reset(seed=seed)
        while True:
            _, reward, terminated, truncated, info = stack.env.step(np.zeros(4, np.float32))
            assert info["intervened"]
            assert world.gripper_width() < 0.002
            if terminated or truncated:
                break
        wins += bool(terminated and reward == 1.0)
    assert wins >= 8, f"{style}: {wins}/10"


def test_the_state_holds_the_block_and_the_target_in_the_reset_frame(make):
    """target_pos is privileged sim state like object_pos: both in the frame of the pose
    at reset (env.relative_frame), so a state-based reference run sees where to push."""
    from scipy.spatial.transform import Rotation

    from hilrl.envs.manipulator import state_slices

    stack = make("device.kind=none")
    world, task = stack.world, stack.world.task
    obs, _ = stack.env.reset(seed=5)
    slices = state_slices(load_task(TASK).env.state_keys)
    reference = world.tcp_pose()  # the arm has not moved since the reset
    into_reset_frame = Rotation.from_quat(reference[3:]).inv()
    for key, where in (("object_pos", task.block_position(world)),
                       ("target_pos", task.target_position(world))):
        np.testing.assert_allclose(obs["state"][slices[key]],
                                   into_reset_frame.apply(where - reference[:3]), atol=2e-3)


def test_a_task_without_a_target_refuses_target_pos():
    stack = make_env(load_task(None, ["env.cameras=[]", "device.kind=none",
                                      "env.state_keys=[tcp_pose, target_pos]"]))
    try:
        with pytest.raises(ValueError, match="target_pos only those with a target"):
            stack.env.reset(seed=0)
    finally:
        stack.close()
