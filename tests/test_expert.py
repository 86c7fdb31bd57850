"""The ScriptedExpert through the real intervention path.

Every test builds the normal env stack with ``actor.env_factory.make_env`` (device.kind=scripted,
state only for speed) and steps it with a stand-in "policy"; the expert can only act by being
read by the InterventionWrapper, exactly as a SpaceMouse would be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from actor.env_factory import EnvStack, make_env
from hilrl.config import load_task
from robot_drivers.registry import resolve
from robot_drivers.sim.tasks.pick_cube import CUBE_HALF_SIZE

Policy = Callable[[int], np.ndarray]  # step index -> action in the policy's action space
OPEN, CLOSE = -1.0, 1.0  # the gripper entry of an applied action


def zero_policy(t: int) -> np.ndarray:
    return np.zeros(4, np.float32)


@dataclass
class Rollout:
    actions: np.ndarray  # (T, 4) applied actions, info["action"]
    intervened: np.ndarray  # (T,) bool
    rewards: np.ndarray  # (T,)
    terminated: bool
    truncated: bool
    cube_start: np.ndarray  # (3,) cube centre right after reset
    cube_end: np.ndarray  # (3,) cube centre at the end

    @property
    def success(self) -> bool:
        return self.terminated and self.rewards[-1] == 1.0

    @property
    def steps(self) -> int:
        return len(self.intervened)


def rollout(stack: EnvStack, seed: int, policy: Policy = zero_policy,
            on_step: Callable[[EnvStack, int, dict], None] | None = None) -> Rollout:
    env = stack.env
    env.reset(seed=seed)
    cube_start = stack.world.object_position()
    actions, intervened, rewards = [], [], []
    t = 0
    while True:
        _, reward, terminated, truncated, info = env.step(policy(t))
        actions.append(info["action"])
        intervened.append(info["intervened"])
        rewards.append(reward)
        t += 1
        if on_step is not None:
            on_step(stack, t, info)
        if terminated or truncated:
            return Rollout(np.array(actions), np.array(intervened, bool), np.array(rewards),
                           bool(terminated), bool(truncated), cube_start,
                           stack.world.object_position())


@pytest.fixture
def make():
    """make(*overrides) -> a fresh state-only EnvStack with the scripted expert; closed after."""
    stacks: list[EnvStack] = []

    def _make(*overrides: str, seed: int = 0) -> EnvStack:
        task = load_task(None, ["device.kind=scripted", *overrides])
        stack = make_env(task, images=False, seed=seed)
        stacks.append(stack)
        return stack

    yield _make
    for stack in stacks:
        stack.close()


def lifted(r: Rollout, lift_height: float) -> bool:
    """Ground truth from the physics: the cube really is up in the air at the end."""
    return bool(r.cube_end[2] - r.cube_start[2] > lift_height)


def blocks(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of True in flags."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)]


# --- the expert alone -------------------------------------------------------------------------


def test_scripted_expert_alone_solves_random_cubes(make):
    n = 50
    task = load_task(None, [])
    sim = resolve(task).arm.settings
    assert resolve(task).device.settings.noise > 0  # the default expert is a noisy one
    stack = make("device.expert.takeover=always")
    results = [rollout(stack, seed) for seed in range(n)]

    rate = np.mean([r.success for r in results])
    print(f"scripted expert success: {rate:.0%} of {n}")

    for r in results:
        assert r.intervened.all(), "takeover=always must drive every step"
        if r.success:
            assert not r.truncated
            assert lifted(r, sim.task_settings("pick_cube").lift_height)
            assert (r.rewards[:-1] == 0).all()
        else:
            assert r.truncated and r.steps == task.env.max_episode_steps

    # The randomisation is real: every episode's cube is elsewhere, spread over the range.
    starts = np.array([r.cube_start for r in results])
    assert len({tuple(p) for p in starts[:, :2].round(4)}) == n
    np.testing.assert_allclose(starts[:, 2], CUBE_HALF_SIZE, atol=1e-3)  # resting on the table
    cube = sim.task_settings("pick_cube")
    for axis, (lo, hi) in enumerate((cube.cube_x, cube.cube_y)):
        assert (starts[:, axis] >= lo).all() and (starts[:, axis] <= hi).all()
        assert np.ptp(starts[:, axis]) > 0.6 * (hi - lo), f"axis {axis} barely varies"

    assert rate >= 0.9


def test_never_leaves_the_policy_alone(make):
    stack = make("device.expert.takeover=never")
    limit = load_task(None, []).env.max_episode_steps
    for seed in range(3):
        r = rollout(stack, seed)
        assert not r.intervened.any()
        assert not (r.actions != 0).any()  # what ran was the zero policy's action
        assert r.truncated and not r.terminated and r.steps == limit
        assert not r.success and r.rewards.sum() == 0
        np.testing.assert_allclose(r.cube_end, r.cube_start, atol=1e-3)  # nobody touched it

    # A moving policy's own action is what gets applied and recorded.
    action = np.array([0.5, -0.3, 0.2, 0.0], np.float32)
    r = rollout(stack, 7, policy=lambda t: action)
    assert not r.intervened.any()
    np.testing.assert_allclose(r.actions, np.tile(action, (r.steps, 1)), atol=1e-5)


# --- takeover rules -------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_probability_zero_and_one_are_never_and_always(make, p):
    stack = make("device.expert.takeover=probability", f"device.expert.probability={p}",
                 "env.max_episode_steps=60")
    results = [rollout(stack, seed) for seed in range(6)]
    if p == 1.0:
        assert all(r.intervened.all() and r.success for r in results)
    else:
        assert not any(r.intervened.any() or r.success for r in results)


def test_probability_half_takes_over_whole_episodes(make):
    stack = make("device.expert.takeover=probability", "device.expert.probability=0.5",
                 "env.max_episode_steps=60")
    results = [rollout(stack, seed) for seed in range(20)]
    driven = []
    for r in results:
        # All or nothing within an episode; the expert's episodes succeed, the others cannot.
        assert r.intervened.all() or not r.intervened.any()
        driven.append(bool(r.intervened.all()))
        assert r.success == driven[-1]
    print(f"probability 0.5: expert drove {sum(driven)} of {len(driven)} episodes")
    assert 3 <= sum(driven) <= 17


@pytest.mark.parametrize("stall_steps, hold_steps", [(10, 15), (6, 8)])
@pytest.mark.parametrize("policy_name", ["zero", "open_gripper"])
def test_stall_steps_in_after_no_progress(make, stall_steps, hold_steps, policy_name):
    action = np.zeros(4, np.float32)
    if policy_name == "open_gripper":  # useless too, and it drops whatever it is handed
        action[-1] = OPEN
    overrides = ("device.expert.takeover=stall", f"device.expert.stall_steps={stall_steps}",
                 f"device.expert.hold_steps={hold_steps}")
    limit = load_task(None, []).env.max_episode_steps
    for seed in (0, 1):
        r = rollout(make(*overrides), seed, policy=lambda t: action)
        assert r.intervened.any()
        first = int(np.argmax(r.intervened))
        # Hands off while the policy gets its chance, then it steps in promptly.
        assert not r.intervened[:stall_steps].any()
        assert first in (stall_steps, stall_steps + 1)
        # It drives hold_steps in a row, then gives control back (more than once if needed).
        runs = blocks(r.intervened)
        assert runs[0] == (first, hold_steps)
        assert all(length <= hold_steps for _, length in runs)
        assert len(runs) >= 2 and not r.intervened.all()
        # Before the first takeover the policy's own action ran.
        np.testing.assert_allclose(r.actions[:first], np.tile(action, (first, 1)), atol=1e-6)
        assert r.success and r.steps < limit

        # Control: the same policy without the expert gets nowhere.
        alone = rollout(make("device.expert.takeover=never"), seed, policy=lambda t: action)
        assert not alone.success and alone.truncated


# --- noise --------------------------------------------------------------------------------


def test_noise_free_expert_is_deterministic_and_noise_perturbs_it(make):
    seed = 3
    a = rollout(make("device.expert.noise=0"), seed)
    b = rollout(make("device.expert.noise=0"), seed)
    assert a.success and b.success
    np.testing.assert_array_equal(a.actions, b.actions)

    for noise in (0.1, 0.3):
        noisy = rollout(make(f"device.expert.noise={noise}"), seed)
        assert noisy.success, f"noise={noise} broke the expert"
        k = min(a.steps, noisy.steps)
        diff = np.abs(noisy.actions[:k, :3] - a.actions[:k, :3])
        assert diff.max() > noise / 2, f"noise={noise} did not change the actions"
        # Same seed for env and expert: the noisy run is reproducible too.
        again = rollout(make(f"device.expert.noise={noise}"), seed)
        np.testing.assert_array_equal(again.actions, noisy.actions)


# --- recovery -----------------------------------------------------------------------------


def _teleport_cube(world, xy) -> None:
    """Put the cube at rest on the table at xy, as if someone moved it by hand."""
    # Imported here, not at the top: importing mujoco before robot_drivers.sim.world has set
    # MUJOCO_GL=egl would pick a GL backend without a display and break rendering for every
    # later test in the session.
    import mujoco

    joint = world.model.joint("cube")
    adr, dof = joint.qposadr[0], joint.dofadr[0]
    world.data.qpos[adr:adr + 7] = [xy[0], xy[1], CUBE_HALF_SIZE, 1, 0, 0, 0]
    world.data.qvel[dof:dof + 6] = 0.0
    mujoco.mj_forward(world.model, world.data)


def _elsewhere(cube: np.ndarray) -> np.ndarray:
    """A spot on the table ~10 cm from the cube, still inside the workspace."""
    return np.array([0.5 + (0.07 if cube[0] < 0.5 else -0.07),
                     -0.07 if cube[1] > 0 else 0.07])


@pytest.mark.parametrize("when", ["closing", "lifting"])
def test_expert_recovers_when_the_cube_is_snatched(make, when):
    """The cube is moved away just as the expert closes on it (or while it is lifting it):
    the fingers close on nothing, so the expert must re-open, go to the cube's new place,
    grasp again and lift."""
    lift_height = resolve(load_task(None, [])).arm.settings.task_settings("pick_cube").lift_height
    for seed in (0, 5):
        state: dict = {"moved_at": None, "to": None, "widths": []}

        def snatch(stack, t, info, state=state):
            world = stack.world
            if state["moved_at"] is None:
                trigger = (info["action"][-1] == CLOSE if when == "closing"
                           else world.object_position()[2] > CUBE_HALF_SIZE + 0.015)
                if trigger:
                    state["to"] = _elsewhere(world.object_position())
                    _teleport_cube(world, state["to"])
                    state["moved_at"] = t
            else:
                state["widths"].append(world.gripper_width())

        r = rollout(make("device.expert.takeover=always"), seed, on_step=snatch)
        moved = state["moved_at"]
        assert moved is not None, "the expert never got to the grasp"
        after = r.actions[moved:, -1]
        assert r.actions[moved - 1, -1] == CLOSE  # it had closed (or was holding)
        reopened = int(np.argmax(after == OPEN))
        assert after[reopened] == OPEN, "the expert never let go of the empty gripper"
        # Physically re-opened wider than the cube, then closed on it again.
        assert max(state["widths"]) > 2 * CUBE_HALF_SIZE + 0.01
        assert (after[reopened:] == CLOSE).any()
        assert r.success and r.intervened.all()
        # It is the moved cube that ends up in the air, at its new place.
        assert r.cube_end[2] > CUBE_HALF_SIZE + lift_height
        np.testing.assert_allclose(r.cube_end[:2], state["to"], atol=0.03)


def test_expert_recovers_from_a_grasp_the_policy_botched(make):
    """Under takeover=stall the policy closes the gripper on nothing at the start and then
    stalls: when the expert steps in, its first gripper command opens the hand again."""
    def policy(t: int) -> np.ndarray:
        return np.array([0, 0, 0, CLOSE if t == 0 else 0], np.float32)

    for seed in (0, 2):
        stack = make("device.expert.takeover=stall")
        widths: list[float] = []

        def record_width(stack, t, info, widths=widths):
            widths.append(stack.world.gripper_width())

        r = rollout(stack, seed, policy=policy, on_step=record_width)
        first = int(np.argmax(r.intervened))
        assert r.intervened[first] and not r.intervened[:first].any()
        assert widths[first - 1] < 0.01  # closed on nothing before the expert came
        assert r.actions[first, -1] == OPEN
        assert max(widths[first:]) > 2 * CUBE_HALF_SIZE + 0.01
        assert r.success


# --- a person rather than a controller ----------------------------------------------------


def test_human_style_hesitates_reacts_late_and_still_succeeds(make):
    """style=human drives like a person: it stops before it acts on taking over and before
    it presses the gripper button, and so it is slower than the oracle on the same scenes,
    yet it still grasps and lifts."""
    expert = resolve(load_task(None, [])).device.settings
    still_at_start = expert.reaction_steps + expert.pause_steps[0]
    lo = expert.pause_steps[0]
    assert lo >= 2 and expert.reaction_steps >= 1
    seeds = range(6)
    human = [rollout(make("device.expert.takeover=always", "device.expert.style=human"), s)
             for s in seeds]
    oracle = [rollout(make("device.expert.takeover=always"), s) for s in seeds]
    assert all(r.success for r in human)

    for h, o in zip(human, oracle, strict=True):
        h_still = (h.actions[:, :3] == 0).all(axis=1)
        assert h_still[:still_at_start].all()
        assert not (o.actions[0, :3] == 0).all()  # the oracle moves at once
        close = int(np.argmax(h.actions[:, -1] == CLOSE))
        assert h.actions[close, -1] == CLOSE
        # It stopped, open, for at least the shortest pause before pressing "close".
        assert h_still[close - lo:close].all()
        assert (h.actions[close - lo:close, -1] == OPEN).all()
    print("steps, human:", [r.steps for r in human], "oracle:", [r.steps for r in oracle])
    assert np.mean([r.steps for r in human]) > 1.5 * np.mean([r.steps for r in oracle])


def test_human_style_takes_over_a_stall_after_a_pause(make):
    expert = resolve(load_task(None, [])).device.settings
    # A person keeps the mouse until the job is done; hold_steps=30 stands for that here.
    stack = make("device.expert.takeover=stall", "device.expert.style=human",
                 "device.expert.hold_steps=30")
    r = rollout(stack, 0)
    first = int(np.argmax(r.intervened))
    assert first > 0 and r.intervened[first]
    # The hand is on the mouse (the robot holds still) before it moves anything.
    waited = expert.reaction_steps + expert.pause_steps[0]
    assert (r.actions[first:first + waited, :3] == 0).all()
    assert r.success
