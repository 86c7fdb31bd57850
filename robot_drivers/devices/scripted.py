"""ScriptedExpert: a stand-in for the person with the SpaceMouse, for simulation and CI.

It reads privileged state from the SimWorld (where the object really is) and answers
``read()`` with the same Command a SpaceMouse would give: a base-frame twist in [-1, 1] and
gripper/intervene buttons, and SUCCESS while it drives and sees the task done. When it is
not "holding the mouse" it returns an empty command, so the intervention wrapper lets the
policy act. The takeover rule decides when it steps in.

What to do is the task's: each sim task (robot_drivers/sim/tasks/) gives a plan, a small
state machine driven by what it sees each step (so it also recovers from what the policy
botched), and a progress distance for the stall rule. What is here is the person's and holds
for every task: when to take over, and how a human drives.

When the learned reward ends an episode as a success, the actor asks the person for a verdict
(``review()``, then reads): it answers SUCCESS or REJECT by the simulator's success, as it
decides SUCCESS by what it sees (actor.reward_review).

``style: human`` drives like a person at a SpaceMouse rather than a controller: it reacts a
few steps late (with the lower gain that keeps a lagging loop stable), has a top speed of
the day, and pauses to look on taking over and before each phase. Pauses are what make a
cloned policy stall: at the same state a person says "wait" several times and "go" once,
and a regression onto the mean waits for ever (Zhao et al. 2023, "ACT", sec. 3.2).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hilrl.config import ConfigError, TaskConfig
from hilrl.interfaces import Button, Command, InputDevice
from robot_drivers.sim.tasks import Plan
from robot_drivers.sim.world import SimWorld

PROGRESS_EPS = 0.005  # an improvement smaller than this (m) does not count as progress


@dataclass(frozen=True)
class ExpertConfig:
    """How the scripted "person" behaves (``device.kind: scripted``, section
    ``device.expert``)."""

    # always: drives every step (demos). probability: takes over whole episodes with
    # probability p. stall: steps in after the policy makes no progress for stall_steps.
    takeover: Literal["always", "probability", "stall", "never"] = "always"
    probability: float = 0.5
    stall_steps: int = 10
    hold_steps: int = 15  # after stepping in on a stall, drive this many steps, then let go
    noise: float = 0.1  # std of Gaussian noise on each normalised twist axis
    gain: float = 50.0  # twist per metre of error (1 / max_translation moves at full speed)
    # oracle: acts at once, at full speed, never hesitates. human: drives like a person at a
    # SpaceMouse (the settings below), for testing what imperfect human data does.
    style: Literal["oracle", "human"] = "oracle"
    reaction_steps: int = 2  # human: acts on what it saw this many control steps ago
    human_gain: float = 20.0  # human: lower, as people lower their gain when they lag
    # human: a pause of [lo, hi] steps (uniform) on taking over and before each phase of the
    # task's plan (e.g. descend, close, lift): the person stops to check before going on.
    pause_steps: tuple[int, int] = (2, 6)
    speed: tuple[float, float] = (0.6, 1.0)  # human: top speed, drawn once an episode

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")
        if self.stall_steps < 1 or self.hold_steps < 1:
            raise ValueError("stall_steps and hold_steps must be >= 1")
        if self.reaction_steps < 0:
            raise ValueError(f"reaction_steps must be >= 0, got {self.reaction_steps}")
        if not 0 <= self.pause_steps[0] <= self.pause_steps[1]:
            raise ValueError("pause_steps must be [lo, hi] with 0 <= lo <= hi, got "
                             f"{list(self.pause_steps)}")
        if not 0.0 < self.speed[0] <= self.speed[1] <= 1.0:
            raise ValueError("speed must be [lo, hi] with 0 < lo <= hi <= 1, got "
                             f"{list(self.speed)}")


def make_device(task: TaskConfig, settings: ExpertConfig, *, world: Any,
                env: Any, seed: int) -> ScriptedExpert:
    """``device.kind: scripted``: reads the simulated world, so it needs the simulated arm."""
    if not isinstance(world, SimWorld):
        raise ConfigError(f"device.kind=scripted needs the simulated robot (env.robot=sim); "
                          f"with env.robot={task.env.robot} use device.kind=none, spacemouse, "
                          f"gamepad, keyboard or plugin (a person scripted for your env)")
    return ScriptedExpert(world, settings, seed=seed)


class ScriptedExpert(InputDevice):
    def __init__(self, world: SimWorld, config: ExpertConfig | None = None, seed: int = 0) -> None:
        self.world = world
        self.config = config or ExpertConfig()
        self.rng = np.random.default_rng(seed)
        self._episode = -1
        self._new_episode()

    def _new_episode(self) -> None:
        c = self.config
        self._episode = self.world.episode
        self._plan: Plan = self.world.task.new_plan(self)
        self._best = np.inf
        self._since_progress = 0
        self._hold_left = 0
        self._speed = self.rng.uniform(*c.speed) if c.style == "human" else 1.0
        self._phase: str | None = None  # human: the phase it was last driving in
        self._pause_left = 0
        self._planned: deque[tuple[np.ndarray, bool]] = deque()  # human: not yet acted on
        self._held_grip = False  # human: the gripper button it holds during a pause
        self._review_reads = -1  # reads since review() began (-1: not reviewing)
        if c.takeover == "always":
            self._engaged_episode = True
        elif c.takeover == "probability":
            self._engaged_episode = bool(self.rng.random() < c.probability)
        else:
            self._engaged_episode = False

    @property
    def engaged(self) -> bool:
        return self._engaged_episode or self._hold_left > 0

    def review(self) -> None:
        if self.world.episode != self._episode:
            self._new_episode()
        self._review_reads = 0

    def read(self) -> Command:
        if self.world.episode != self._episode:
            self._new_episode()
        if self._review_reads >= 0:
            return self._verdict()
        twist, gripper_closed, phase = self.plan()
        if self.config.takeover == "stall" and not self._engaged_episode:
            self._watch_for_stall()
        if not self.engaged:
            self._phase = None
            self._planned.clear()
            return Command()
        if self._hold_left > 0:
            self._hold_left -= 1
        if self.config.style == "human":
            twist, gripper_closed = self._as_a_person(twist, gripper_closed, phase)
        twist = twist + self.rng.normal(0.0, self.config.noise, 6) * (twist != 0)
        grip = Button.GRIPPER_CLOSE if gripper_closed else Button.GRIPPER_OPEN
        buttons = {Button.INTERVENE, grip}
        if self.sees_success():
            buttons.add(Button.SUCCESS)
        return Command(np.clip(twist, -1.0, 1.0), frozenset(buttons))

    def _verdict(self) -> Command:
        """While the arm holds after the learned reward called success: REJECT when the scene
        is not a success, SUCCESS (confirmed) when it is, ``reaction_steps`` reads late in
        the human style."""
        self._review_reads += 1
        delay = self.config.reaction_steps if self.config.style == "human" else 0
        if self._review_reads <= delay:
            return Command()
        done = self.world.task.success(self.world)
        return Command(buttons=frozenset({Button.SUCCESS if done else Button.REJECT}))

    @property
    def phase(self) -> str | None:
        """The phase of the plan the person is driving in (human style; None otherwise)."""
        return self._phase

    def sees_success(self) -> bool:
        """Whether the task looks done to the person now. In sim its eyes are the privileged
        state it plans from; like a person at the robot, it holds the SUCCESS button while it
        drives and the task is clearly done (the task's ``clearly_done``: success with a
        margin). Demos end on it and ``record-labels --source device`` labels frames with it,
        so the learned-reward pipeline gets its labels the way a real robot does."""
        return self.world.task.clearly_done(self.world)

    def plan(self) -> tuple[np.ndarray, bool, str]:
        """The twist and gripper state the task's plan wants now, from privileged state, and
        the phase that asks for them."""
        return self._plan.plan(self.world)

    def toward(self, target: np.ndarray, tcp: np.ndarray) -> np.ndarray:
        """The twist that moves the tcp toward ``target``, at this person's gain and speed."""
        c = self.config
        gain = c.human_gain if c.style == "human" else c.gain
        twist = np.zeros(6)
        twist[:3] = np.clip(gain * (target - tcp), -self._speed, self._speed)
        return twist

    def _as_a_person(self, twist: np.ndarray, closed: bool, phase: str
                     ) -> tuple[np.ndarray, bool]:
        """What a person does with the plan: stop to look when taking over or when the
        phase changes, and act ``reaction_steps`` late."""
        c = self.config
        if phase != self._phase:
            if phase != "retry":  # backing off a missed grasp is a reflex, not a decision
                self._pause_left = int(self.rng.integers(c.pause_steps[0], c.pause_steps[1] + 1))
            if self._phase is None:  # taking over: it sets the gripper at once, then pauses
                self._held_grip = closed
            self._phase = phase
        if self._pause_left > 0:
            self._pause_left -= 1
            twist, closed = np.zeros(6), self._held_grip
        self._held_grip = closed
        if not self._planned:  # taking over: nothing decided yet
            self._planned.extend([(np.zeros(6), closed)] * c.reaction_steps)
        self._planned.append((twist, closed))
        return self._planned.popleft()

    def _watch_for_stall(self) -> None:
        """Step in after ``stall_steps`` without progress toward the task's success."""
        remaining = self._plan.remaining(self.world)
        if remaining < self._best - PROGRESS_EPS:
            self._best = remaining
            self._since_progress = 0
        else:
            self._since_progress += 1
        if self._hold_left == 0 and self._since_progress >= self.config.stall_steps:
            self._hold_left = self.config.hold_steps
            self._since_progress = 0
            self._best = np.inf
