"""A scripted person for GantryPick-v0: the stand-in for someone at the robot with a 6-axis
mouse, for demos and for stepping in while a policy trains.

Contract (what hilrl's ``device.kind: plugin`` expects of ``make_person``):

- ``make_person(env, *, seed, **kwargs) -> InputDevice``. ``env`` is the env as
  ``gymnasium.make`` built it. The person reads the scene's true state through
  ``env.unwrapped``, as a person at the robot sees the scene; it never steps, resets, seeds or
  modifies the env, and ``read()`` never blocks. ``seed`` seeds the person's own randomness.
- ``read()`` is called once per control step, before the step, and returns a ``Command``.
  ``twist`` is a normalised (6,) array in [-1, 1] in the base frame (x, y, z, roll, pitch,
  yaw); full deflection (1.0) asks for the largest step the env's translation allows (for
  GantryPick-v0: the action bound, 2 units x 0.005 m = 1 cm per step). ``buttons``: the
  person holds ``Button.INTERVENE`` whenever it drives, and ``Button.GRIPPER_CLOSE`` or
  ``Button.GRIPPER_OPEN`` to close or open the gripper (holding neither keeps it as it is).
  When it lets the policy act it returns an empty ``Command()``.
- ``reset()`` is called after every env reset (a new episode) and clears the per-episode
  state. A person whose ``reset()`` is never called notices a new episode on its own, by the
  env's step counter going back.

Settings (``**kwargs``):

- ``takeover``: ``"always"`` drives every step (demos); ``"stall"`` steps in once the policy
  has made no progress toward grasping and lifting the cube for ``stall_steps`` steps, drives
  ``hold_steps`` steps, then lets go (training); ``"never"`` only watches.
- ``noise``: std of the Gaussian noise on each moving twist axis.
- ``style``: ``"oracle"`` acts at once at full speed; ``"human"`` reacts ``reaction_steps``
  steps late with a lower gain, has a top speed of the day (``speed``: [lo, hi] of full
  deflection, drawn once an episode), and pauses ``pause_steps`` (uniform [lo, hi]) on taking
  over and before approaching, descending and closing.
- ``gain`` (oracle) and ``human_gain``: twist per metre of error (100 would close the error
  in one step).

The strategy: above the cube, down to it, close, lift; a grasp that closed on nothing or lost
the cube opens the gripper, rises and tries again.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

import numpy as np

from hilrl.interfaces import Button, Command, InputDevice

MAX_STEP = 0.01  # metres per step at full deflection: the env's bound, 2 x 0.005 m
CUBE_WIDTH = 0.04
HOVER = 0.05  # approach height of the gripper centre above the cube centre
ALIGNED = 0.006  # xy error (m) at which the descent starts
GRASP_DEPTH = 0.004  # how far below the cube centre the gripper centre goes before closing
LIFT_TO = 0.12  # gripper height the lift aims for (success needs the cube at 0.06)
CLOSE_STEPS = 4  # steps of holding "close" that take the fingers from open to a firm squeeze
PROGRESS_EPS = 0.005  # an improvement smaller than this (m) does not count as progress


class GantryPerson(InputDevice):
    """Drives GantryPick-v0 from the scene's true state; see the module docstring."""

    def __init__(self, env: Any, *, seed: int,
                 takeover: Literal["always", "stall", "never"] = "always",
                 noise: float = 0.05, stall_steps: int = 10, hold_steps: int = 15,
                 style: Literal["oracle", "human"] = "oracle", gain: float = 80.0,
                 human_gain: float = 40.0, reaction_steps: int = 2,
                 pause_steps: tuple[int, int] = (1, 4),
                 speed: tuple[float, float] = (0.6, 1.0)) -> None:
        if takeover not in ("always", "stall", "never"):
            raise ValueError(f"takeover must be always, stall or never, got {takeover!r}")
        if style not in ("oracle", "human"):
            raise ValueError(f"style must be oracle or human, got {style!r}")
        if stall_steps < 1 or hold_steps < 1 or reaction_steps < 0 or noise < 0:
            raise ValueError("stall_steps and hold_steps must be >= 1, reaction_steps and "
                             "noise >= 0")
        if not 0 <= pause_steps[0] <= pause_steps[1]:
            raise ValueError(f"pause_steps must be [lo, hi] with 0 <= lo <= hi, got "
                             f"{list(pause_steps)}")
        if not 0.0 < speed[0] <= speed[1] <= 1.0:
            raise ValueError(f"speed must be [lo, hi] with 0 < lo <= hi <= 1, got {list(speed)}")
        self.scene = env.unwrapped
        self.takeover = takeover
        self.noise = noise
        self.stall_steps = stall_steps
        self.hold_steps = hold_steps
        self.style = style
        self.gain = human_gain if style == "human" else gain
        self.reaction_steps = reaction_steps
        self.pause_steps = (int(pause_steps[0]), int(pause_steps[1]))
        self.speed_range = (float(speed[0]), float(speed[1]))
        # A person lagging behind waits as much longer to see the fingers close.
        self._close_steps = CLOSE_STEPS + (reaction_steps if style == "human" else 0)
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """A new episode: forget the last one."""
        self._last_step = self.scene.elapsed_steps
        self._closing = 0
        self._best = np.inf
        self._since_progress = 0
        self._hold_left = 0
        self._speed = self.rng.uniform(*self.speed_range) if self.style == "human" else 1.0
        self._phase: str | None = None  # the phase it was last driving in
        self._pause_left = 0
        self._planned: deque[tuple[np.ndarray, bool]] = deque()  # human: not yet acted on
        self._held_grip = False

    @property
    def engaged(self) -> bool:
        return self.takeover == "always" or self._hold_left > 0

    def read(self) -> Command:
        if self.scene.elapsed_steps < self._last_step:  # reset() was not called: new episode
            self.reset()
        self._last_step = self.scene.elapsed_steps
        if self.takeover == "never":
            return Command()
        twist, close, phase = self.plan()
        if self.takeover == "stall":
            self._watch_for_stall()
        if not self.engaged:  # watching: its hands are off the buttons too
            self._phase = None
            self._closing = 0
            self._planned.clear()
            return Command()
        if self._hold_left > 0:
            self._hold_left -= 1
        if self.style == "human":
            twist, close = self._as_a_person(twist, close, phase)
        else:
            self._phase = phase
        twist = twist + self.rng.normal(0.0, self.noise, 6) * (twist != 0)
        grip = Button.GRIPPER_CLOSE if close else Button.GRIPPER_OPEN
        return Command(np.clip(twist, -1.0, 1.0), frozenset({Button.INTERVENE, grip}))

    def plan(self) -> tuple[np.ndarray, bool, str]:
        """The twist and gripper (closed or not) wanted now, and the phase asking for them."""
        tcp = self.scene.tcp_position()
        cube = self.scene.cube_position()
        opening = self.scene.finger_opening()

        near = np.linalg.norm(cube - tcp) < 0.02
        gripping = near and CUBE_WIDTH - 0.008 < opening < CUBE_WIDTH + 0.004

        if 0 < self._closing < self._close_steps:  # holding "close" while the fingers travel
            self._closing += 1
            return np.zeros(6), True, "close"
        if gripping:  # its own grasp, or one the policy made: lift
            self._closing = self._close_steps
            return self._toward(np.array([tcp[0], tcp[1], LIFT_TO]), tcp), True, "lift"
        if self._closing > 0 or opening < CUBE_WIDTH + 0.02:
            # Closed on nothing, the cube slipped out, or a half-closed gripper on taking
            # over: open, rise above the cube and try again once there is room.
            self._closing = 0
            return self._toward(np.array([tcp[0], tcp[1], cube[2] + HOVER]), tcp), False, "retry"

        xy_error = np.linalg.norm(cube[:2] - tcp[:2])
        hover = cube[2] + HOVER
        # On the way down a person corrects sideways as they go rather than climb back.
        aligned = 2 * ALIGNED if self._phase == "descend" else ALIGNED
        if xy_error > aligned:
            if tcp[2] < cube[2] + 0.5 * HOVER and xy_error > 2 * ALIGNED:
                # Too low to slide sideways without pushing the cube: rise first.
                return self._toward(np.array([tcp[0], tcp[1], hover]), tcp), False, "approach"
            target = np.array([cube[0], cube[1], max(tcp[2], hover)])
            return self._toward(target, tcp), False, "approach"
        grasp_z = cube[2] - GRASP_DEPTH
        if tcp[2] - grasp_z > 0.004:
            return self._toward(np.array([cube[0], cube[1], grasp_z]), tcp), False, "descend"
        self._closing = 1
        return np.zeros(6), True, "close"

    def _toward(self, target: np.ndarray, tcp: np.ndarray) -> np.ndarray:
        twist = np.zeros(6)
        twist[:3] = np.clip(self.gain * (target - tcp), -self._speed, self._speed)
        return twist

    def _as_a_person(self, twist: np.ndarray, close: bool, phase: str
                     ) -> tuple[np.ndarray, bool]:
        """Stop to look on taking over and when the phase changes; act a few steps late."""
        if phase != self._phase:
            if phase not in ("retry", "lift"):  # a reflex, or a continuation, not a decision
                self._pause_left = int(self.rng.integers(self.pause_steps[0],
                                                         self.pause_steps[1] + 1))
            if self._phase is None:  # taking over: it sets the gripper at once, then pauses
                self._held_grip = close
            self._phase = phase
        if self._pause_left > 0:
            self._pause_left -= 1
            twist, close = np.zeros(6), self._held_grip
            if phase == "close":  # the plan waits for this decision: do not count it
                self._closing = 1
        self._held_grip = close
        if not self._planned:  # taking over: nothing decided yet
            self._planned.extend([(np.zeros(6), close)] * self.reaction_steps)
        self._planned.append((twist, close))
        return self._planned.popleft()

    def _watch_for_stall(self) -> None:
        """Step in after ``stall_steps`` steps without progress toward a lifted cube."""
        cube = self.scene.cube_position()
        tcp = self.scene.tcp_position()
        remaining = np.linalg.norm(cube - tcp) + max(0.0, LIFT_TO - CUBE_WIDTH / 2 - cube[2])
        if remaining < self._best - PROGRESS_EPS:
            self._best = remaining
            self._since_progress = 0
        else:
            self._since_progress += 1
        if self._hold_left == 0 and self._since_progress >= self.stall_steps:
            self._hold_left = self.hold_steps
            self._since_progress = 0
            self._best = np.inf


def make_person(env: Any, *, seed: int, **kwargs: Any) -> InputDevice:
    """hilrl's plug-in factory: the scripted person for ``env`` (see the module docstring)."""
    if "pause_steps" in kwargs:  # a task file gives a list
        kwargs["pause_steps"] = tuple(kwargs["pause_steps"])
    if "speed" in kwargs:
        kwargs["speed"] = tuple(kwargs["speed"])
    return GantryPerson(env, seed=seed, **kwargs)
