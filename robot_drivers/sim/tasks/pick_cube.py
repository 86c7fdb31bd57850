"""Pick-cube: a cube placed at random on the table, success when it is lifted.

The scripted person's plan is a small state machine driven by what it sees each step, so it
also recovers from a grasp the policy botched: approach above the cube, descend, close, lift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import Person, Plan, SimTask

if TYPE_CHECKING:
    from ..world import SimWorld

CUBE_HALF_SIZE = 0.02

HOVER = 0.06  # approach height of the tcp above the cube centre
ALIGNED = 0.008  # xy error (m) at which the descent starts
GRASP_DEPTH = 0.004  # how far below the cube centre the tcp goes before closing
LIFT_TO = 0.17  # tcp height the lift aims for (success needs the cube ~0.07)
CLOSE_STEPS = 3  # steps to wait for the fingers to close before judging the grasp
CLEAR_LIFT = 0.02  # how far past the success height a person waits to call it lifted


@dataclass(frozen=True)
class PickCubeSettings:
    """Pick-cube's settings (``env.sim.pick_cube``; the flat ``env.sim.cube_x`` etc. of older
    files still load, see SimSettings)."""

    # Where the cube's centre may start (x, y ranges, metres, base frame).
    cube_x: tuple[float, float] = (0.42, 0.58)
    cube_y: tuple[float, float] = (-0.12, 0.12)
    lift_height: float = 0.05  # success: cube centre this far above its resting height

    def __post_init__(self) -> None:
        for name in ("cube_x", "cube_y"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be [low, high] with low <= high, got [{lo}, {hi}]")


class PickCube(SimTask):
    name = "pick_cube"
    settings_class = PickCubeSettings
    settings: PickCubeSettings

    def objects_xml(self) -> str:
        h = CUBE_HALF_SIZE
        return f"""
    <body name="cube" pos="0.5 0 {h}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{h} {h} {h}"
            mass="0.05" contype="1" conaffinity="3" friction="1.5 0.01 0.001" solref="0.005 1"
            rgba="0.85 0.15 0.15 1"/>
    </body>"""

    def bind(self, world: SimWorld) -> None:
        m = world.model
        self._qpos = m.joint("cube").qposadr[0]
        self._dof = m.joint("cube").dofadr[0]

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        c, d = self.settings, world.data
        x = rng.uniform(*c.cube_x)
        y = rng.uniform(*c.cube_y)
        d.qpos[self._qpos : self._qpos + 7] = [x, y, CUBE_HALF_SIZE, 1, 0, 0, 0]
        d.qvel[self._dof : self._dof + 6] = 0.0

    def cube_position(self, world: SimWorld) -> np.ndarray:
        return world.data.qpos[self._qpos : self._qpos + 3].copy()

    def object_position(self, world: SimWorld) -> np.ndarray:
        return self.cube_position(world)

    def success(self, world: SimWorld) -> bool:
        return bool(self.cube_position(world)[2] > CUBE_HALF_SIZE + self.settings.lift_height)

    def clearly_done(self, world: SimWorld) -> bool:
        return bool(self.cube_position(world)[2]
                    > CUBE_HALF_SIZE + self.settings.lift_height + CLEAR_LIFT)

    def jitter_geoms(self) -> tuple[str, ...]:
        return ("cube",)

    def new_plan(self, person: Person) -> Plan:
        return PickPlan(self, person)


class PickPlan(Plan):
    def __init__(self, task: PickCube, person: Person) -> None:
        self.task = task
        self.person = person
        self._closing = 0  # steps spent waiting for the fingers to close

    def plan(self, world: SimWorld) -> tuple[np.ndarray, bool, str]:
        w, toward = world, self.person.toward
        tcp = w.tcp_pose()[:3]
        cube = self.task.cube_position(w)
        closed = w.gripper_command > 0.5
        width = w.gripper_width()
        near = np.linalg.norm(cube - tcp) < 0.025
        holding = closed and near and CUBE_HALF_SIZE < width < 2 * CUBE_HALF_SIZE + 0.006

        if closed and self._closing < CLOSE_STEPS and width > 2 * CUBE_HALF_SIZE + 0.006:
            self._closing += 1
            return np.zeros(6), True, "close"  # fingers still travelling: keep still
        if holding:
            target = np.array([tcp[0], tcp[1], LIFT_TO])
            return toward(target, tcp), True, "lift"
        if closed:  # closed on nothing, or the cube slipped: let go and back off
            self._closing = 0
            return toward(np.array([tcp[0], tcp[1], cube[2] + HOVER]), tcp), False, "retry"

        xy_error = np.linalg.norm(cube[:2] - tcp[:2])
        hover = cube[2] + HOVER
        # A person on the way down corrects sideways as they go rather than climb back.
        aligned = 2 * ALIGNED if self.person.phase == "descend" else ALIGNED
        if xy_error > aligned:
            if tcp[2] < cube[2] + 0.5 * HOVER and xy_error > 2 * ALIGNED:
                # Too low to slide sideways without hitting the cube: rise first.
                return toward(np.array([tcp[0], tcp[1], hover]), tcp), False, "approach"
            target = np.array([cube[0], cube[1], max(tcp[2], hover)])
            return toward(target, tcp), False, "approach"
        grasp_z = cube[2] - GRASP_DEPTH
        if tcp[2] - grasp_z > 0.006:
            return toward(np.array([cube[0], cube[1], grasp_z]), tcp), False, "descend"
        self._closing = 0
        return np.zeros(6), True, "close"

    def remaining(self, world: SimWorld) -> float:
        # Distance still to cover: reach the cube, then lift it.
        cube = self.task.cube_position(world)
        tcp = world.tcp_pose()[:3]
        return float(np.linalg.norm(cube - tcp) + max(0.0, LIFT_TO - cube[2]))
