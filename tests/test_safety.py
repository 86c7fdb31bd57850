"""Property tests for the workspace safety box (hilrl.envs.safety) with hypothesis.

The central property: whatever actions the policy or a person (an intervention) sends, and
whatever resets happen in between, no pose outside the safety box ever reaches the arm's
``move_to``. It is checked on the real env stack over the real MuJoCo sim, with the sim arm
replaced by a subclass that records every pose it is sent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from actor.env_factory import make_env
from hilrl.config import WorkspaceConfig, load_task
from hilrl.envs.safety import SafeDriver, WorkspaceBox
from hilrl.interfaces import Button, Command, InputDevice
from robot_drivers.sim.drivers import SimArm
from robot_drivers.sim.world import SimWorld

TOL = 1e-9

# A box only a few centimetres around the reset pose (0.5, 0, 0.2, roll=pi), with tight
# orientation limits, so a handful of full-scale actions reach every wall.
TIGHT = (
    "env.workspace.low=[0.46, -0.04, 0.16]",
    "env.workspace.high=[0.54, 0.04, 0.24]",
    "env.workspace.max_rotation=[0.15, 0.15, 0.3]",
)


class RecordingArm(SimArm):
    """The sim arm, keeping every pose it is asked to reach."""

    def __init__(self, world: SimWorld) -> None:
        super().__init__(world)
        self.poses: list[np.ndarray] = []

    def move_to(self, pose: np.ndarray) -> None:
        self.poses.append(np.array(pose, dtype=np.float64, copy=True))
        super().move_to(pose)


class Hand(InputDevice):
    """A person whose command the test sets: ``command = None`` is hands off."""

    def __init__(self) -> None:
        self.command: Command | None = None

    def read(self) -> Command:
        return self.command or Command()


class Rig:
    """An env stack whose arm records its commands, and a spy on what the box was asked."""

    def __init__(self, rotation: bool, relative: bool, tight: bool) -> None:
        overrides = [
            "device.kind=none",
            f"env.rotation_actions={str(rotation).lower()}",
            f"env.relative_frame={str(relative).lower()}",
            "env.max_episode_steps=1000",
            *(TIGHT if tight else ()),
        ]
        self.task = load_task(None, overrides)
        self.hand = Hand()
        self.stack = make_env(self.task, self.hand, images=False)
        self.env = self.stack.env
        safe = self.env.unwrapped.driver
        assert isinstance(safe, SafeDriver)
        self.arm = RecordingArm(self.stack.world)
        safe.inner = self.arm
        self.requests: list[np.ndarray] = []
        clip = safe.box.clip  # keep the env's own box; only listen to what it is asked

        def spy(p):
            self.requests.append(np.array(p, dtype=np.float64, copy=True))
            return clip(p)

        safe.box.clip = spy
        # The reference box comes from the config, independent of the env's instance.
        self.box = WorkspaceBox(self.task.env.workspace)
        self.n_actions = 7 if rotation else 4

    def clear(self) -> None:
        self.arm.poses.clear()
        self.requests.clear()

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="module")
def rigs():
    cache: dict[tuple[bool, bool, bool], Rig] = {}

    def get(rotation: bool, relative: bool, tight: bool) -> Rig:
        key = (rotation, relative, tight)
        if key not in cache:
            cache[key] = Rig(*key)
        return cache[key]

    yield get
    for rig in cache.values():
        rig.close()


def outside(box: WorkspaceBox, p: np.ndarray) -> bool:
    return not box.contains(p, tol=TOL)


# --- strategies -------------------------------------------------------------------------------

unit = st.floats(-1.0, 1.0, allow_nan=False)
extreme = st.sampled_from([-1.0, 1.0])


@st.composite
def unit_quaternions(draw):
    q = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4)))
    if np.linalg.norm(q) < 0.1:
        q = np.array([0.0, 0.0, 0.0, 1.0])
    return q / np.linalg.norm(q)


@st.composite
def workspaces(draw):
    low = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3)))
    size = np.array(draw(st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3)))
    orientation = draw(st.lists(st.floats(-math.pi, math.pi), min_size=3, max_size=3))
    max_rotation = draw(st.lists(st.floats(0.0, math.pi), min_size=3, max_size=3))
    return WorkspaceConfig(low=tuple(low), high=tuple(low + size),
                           orientation=tuple(orientation), max_rotation=tuple(max_rotation))


@st.composite
def hands(draw):
    """None (hands off) or a person's command: a full-scale twist and maybe a gripper button."""
    if draw(st.booleans()):
        return None
    twist = draw(st.lists(st.sampled_from([-1.0, 0.0, 1.0]), min_size=6, max_size=6))
    buttons = draw(st.sampled_from([(), (Button.GRIPPER_CLOSE,), (Button.GRIPPER_OPEN,)]))
    return Command(np.array(twist), frozenset({Button.INTERVENE, *buttons}))


@st.composite
def segments(draw, n_actions: int):
    """A list of ("reset", 0, None) or (action, repeat, hand); extreme runs push into the
    walls, and the hand (when not None) overrides the policy for the segment."""
    kind = draw(st.sampled_from(["extreme", "extreme", "random", "reset"]))
    if kind == "reset":
        return ("reset", 0, None)
    if kind == "extreme":
        motion = draw(st.lists(st.sampled_from([-1.0, 0.0, 1.0]), min_size=n_actions - 1,
                               max_size=n_actions - 1))
        action = [*motion, draw(extreme)]
        return (np.array(action, np.float32), draw(st.integers(3, 12)), draw(hands()))
    action = draw(st.lists(unit, min_size=n_actions, max_size=n_actions))
    return (np.array(action, np.float32), draw(st.integers(1, 3)), draw(hands()))


# --- WorkspaceBox.clip ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(workspaces(), st.lists(st.floats(-100.0, 100.0), min_size=3, max_size=3),
       unit_quaternions())
def test_clip_of_any_pose_is_inside_and_idempotent(config, position, quat):
    box = WorkspaceBox(config)
    p = np.concatenate([position, quat])
    clipped = box.clip(p)
    assert clipped.shape == (7,)
    assert np.isclose(np.linalg.norm(clipped[3:]), 1.0)
    assert box.contains(clipped, tol=TOL)
    again = box.clip(clipped)
    np.testing.assert_allclose(again[:3], clipped[:3], atol=TOL)
    assert (Rotation.from_quat(again[3:]).inv() * Rotation.from_quat(clipped[3:])).magnitude() \
        < TOL


@settings(max_examples=200, deadline=None)
@given(workspaces(), st.lists(st.floats(-100.0, 100.0), min_size=3, max_size=3),
       unit_quaternions(), st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_clipped_position_is_the_nearest_point_of_the_box(config, position, quat, fraction):
    box = WorkspaceBox(config)
    p = np.concatenate([position, quat])
    clipped = box.clip(p)
    other = box.low + np.asarray(fraction) * (box.high - box.low)  # any point in the box
    assert np.linalg.norm(clipped[:3] - p[:3]) <= np.linalg.norm(other - p[:3]) + TOL
    inside_axes = (p[:3] >= box.low) & (p[:3] <= box.high)
    np.testing.assert_array_equal(clipped[:3][inside_axes], p[:3][inside_axes])


@settings(max_examples=200, deadline=None)
@given(workspaces(), st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
       st.lists(st.floats(-0.999, 0.999), min_size=3, max_size=3))
def test_clip_leaves_a_pose_inside_the_box_unchanged(config, fraction, rot_fraction):
    box = WorkspaceBox(config)
    position = box.low + np.asarray(fraction) * (box.high - box.low)
    offset = Rotation.from_rotvec(np.asarray(rot_fraction) * box.max_rotation)
    orientation = Rotation.from_euler("xyz", config.orientation) * offset
    p = np.concatenate([position, orientation.as_quat()])
    assert box.contains(p, tol=TOL)
    clipped = box.clip(p)
    np.testing.assert_allclose(clipped[:3], p[:3], atol=TOL)
    assert (Rotation.from_quat(clipped[3:]).inv() * orientation).magnitude() < TOL


def test_clip_actually_limits_orientation():
    box = WorkspaceBox(WorkspaceConfig(max_rotation=(0.2, 0.2, 0.2)))
    center = Rotation.from_euler("xyz", (math.pi, 0.0, 0.0))
    tilted = center * Rotation.from_rotvec([0.6, -0.9, 0.1])
    p = np.concatenate([[0.5, 0.0, 0.2], tilted.as_quat()])
    assert not box.contains(p)
    offset = (center.inv() * Rotation.from_quat(box.clip(p)[3:])).as_rotvec()
    np.testing.assert_allclose(offset, [0.2, -0.2, 0.1], atol=1e-9)


# --- SafeDriver rejects malformed poses -------------------------------------------------------


@pytest.fixture(scope="module")
def world():
    w = SimWorld()
    yield w
    w.close()


@settings(max_examples=50, deadline=None)
@given(direction=unit_quaternions(),
       norm=st.one_of(st.floats(0.0, 0.99), st.floats(1.01, 1e6)),
       position=st.lists(st.floats(0.3, 0.7), min_size=3, max_size=3))
def test_safe_driver_rejects_non_unit_quaternions(world, direction, norm, position):
    arm = RecordingArm(world)
    target = world.target.copy()
    driver = SafeDriver(arm, WorkspaceBox(WorkspaceConfig()))
    with pytest.raises(ValueError, match="unit length|finite"):
        driver.move_to(np.concatenate([position, direction * norm]))
    assert arm.poses == []
    np.testing.assert_array_equal(world.target, target)


@settings(max_examples=50, deadline=None)
@given(index=st.integers(0, 6), bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_safe_driver_rejects_non_finite_poses(world, index, bad):
    arm = RecordingArm(world)
    target = world.target.copy()
    driver = SafeDriver(arm, WorkspaceBox(WorkspaceConfig()))
    p = np.array([0.5, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0])
    p[index] = bad
    with pytest.raises(ValueError, match="finite"):
        driver.move_to(p)
    assert arm.poses == []
    np.testing.assert_array_equal(world.target, target)


@pytest.mark.parametrize("bad", [np.zeros(6), np.zeros((7, 1)), np.zeros(8)])
def test_safe_driver_rejects_wrong_shapes(world, bad):
    arm = RecordingArm(world)
    with pytest.raises(ValueError):
        SafeDriver(arm, WorkspaceBox(WorkspaceConfig())).move_to(bad)
    assert arm.poses == []


# --- no action sequence leaves the box --------------------------------------------------------


@st.composite
def episodes(draw):
    rotation = draw(st.booleans())
    relative = draw(st.booleans())
    tight = draw(st.booleans())
    n_actions = 7 if rotation else 4
    plan = draw(st.lists(segments(n_actions), min_size=1, max_size=8))
    return rotation, relative, tight, draw(st.integers(0, 2**16)), plan


MAX_STEPS = 60


@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(episodes())
def test_no_action_sequence_commands_a_pose_outside_the_box(rigs, episode):
    rotation, relative, tight, seed, plan = episode
    rig = rigs(rotation, relative, tight)
    rig.clear()
    rig.env.reset(seed=seed)
    steps = 0
    for action, repeat, hand in plan:
        if isinstance(action, str):
            rig.env.reset(seed=seed + steps + 1)
            continue
        rig.hand.command = hand
        for _ in range(repeat):
            if steps >= MAX_STEPS:
                break
            _, _, terminated, truncated, _ = rig.env.step(action)
            steps += 1
            if terminated or truncated:
                rig.env.reset()
    rig.hand.command = None
    event(f"clipped: {any(outside(rig.box, p) for p in rig.requests)}")
    event(f"intervened: {any(h is not None for _, _, h in plan)}")
    assert rig.arm.poses, "the env sent no pose at all"
    assert len(rig.arm.poses) == len(rig.requests)
    for pose in rig.arm.poses:
        assert rig.box.contains(pose, tol=TOL), f"pose {pose} left the safety box"
        assert np.isclose(np.linalg.norm(pose[3:]), 1.0)


@pytest.mark.parametrize("rotation", [False, True])
@pytest.mark.parametrize("relative", [False, True])
def test_pushing_into_the_walls_is_clipped(rigs, rotation, relative):
    """The tight box is really exercised: the env asks for poses outside and the arm never
    gets one; the commands sit on the walls, and the real tcp stays (almost) inside too."""
    rig = rigs(rotation, relative, True)
    rig.clear()
    rig.env.reset(seed=3)
    n = rig.n_actions
    tcp = []
    for sign in (1.0, -1.0):
        for _ in range(12):
            rig.env.step(np.full(n, sign, np.float32))
            tcp.append(rig.stack.world.tcp_pose())
    asked_outside = [p for p in rig.requests if outside(rig.box, p)]
    assert asked_outside, "the walls were never reached, so clipping was not exercised"
    assert all(rig.box.contains(p, tol=TOL) for p in rig.arm.poses)
    commands = np.array(rig.arm.poses)
    on_high = np.isclose(commands[:, :3], rig.box.high, atol=TOL).any(axis=0)
    on_low = np.isclose(commands[:, :3], rig.box.low, atol=TOL).any(axis=0)
    # every axis reached both walls (in the EE frame with roll=pi, +y/+z are world -y/-z)
    assert on_high.all() and on_low.all()
    if rotation:
        center = Rotation.from_euler("xyz", rig.task.env.workspace.orientation)
        offsets = np.array([(center.inv() * Rotation.from_quat(p[3:])).as_rotvec()
                            for p in commands])
        at_limit = np.isclose(np.abs(offsets), rig.box.max_rotation, atol=1e-6).any(axis=0)
        assert at_limit.any(), "orientation limits were never reached"
    positions = np.array(tcp)[:, :3]
    assert np.all(positions >= rig.box.low - 0.01) and np.all(positions <= rig.box.high + 0.01)
