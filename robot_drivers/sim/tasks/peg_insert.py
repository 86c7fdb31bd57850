"""Peg insertion: a square peg held in the gripper goes into a square hole in a fixture.

The peg (20 mm square, 80 mm long) sits between the closed fingers with its top against the
palm, so pushing down cannot slide it up the grasp; the gripper stays closed for the whole
episode (the policy's gripper command is ignored, as the peg is never to be let go). The hole
is a 24 mm square opening (2 mm clearance a side) through a fixture of four boxes standing on
the table, 35 mm tall, at a position drawn per episode. Success (privileged, only to judge):
the peg's bottom at least ``seat_depth`` below the fixture's top and inside the opening.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import Person, Plan, SimTask

if TYPE_CHECKING:
    from ..world import SimWorld

PEG_HALF_WIDTH = 0.010
PEG_HALF_LENGTH = 0.040
HOLE_HALF_WIDTH = 0.012  # 24 mm opening: 2 mm radial clearance around the 20 mm peg
FIXTURE_HEIGHT = 0.035
FIXTURE_WALL = 0.03
# The peg's centre in the hand frame: its top 0.5 mm below the palm (the hand box ends at
# z 0.06), so it is held along 37 mm of the fingers and sticks out 28 mm below their tips.
PEG_IN_HAND = 0.0605 + PEG_HALF_LENGTH
FINGER_HOLD = PEG_HALF_WIDTH - 0.002  # finger joint position touching the peg (pad offset)
# Finger position gain while holding: the scene's 300 N/m gives ~2.4 N at the peg, too weak
# for contact at the rim; 1500 gives ~12 N a finger (the Franka hand grips with ~70 N).
GRIP_KP = 1500.0

# The scripted person's plan, in terms of the peg's bottom centre.
HOVER = 0.015  # height above the fixture's top to align at
ALIGNED = 0.002  # xy error at which the descent starts (the clearance is 2 mm)
ENTERED = 0.003  # the bottom this far below the top and inside the opening: it is in
INSERT_TO = 0.027  # how deep the plan pushes (success needs seat_depth)
CLEAR_DEPTH = 0.004  # how far past the seat depth a person waits to call it seated
JAM_STEPS = 3  # descent steps at the rim without JAM_PROGRESS lower before calling it caught
JAM_PROGRESS = 0.001
AT_RIM = 0.003  # the tip this close above the top (or lower) can be resting on the rim
BACK_OFF = 0.008  # how far above the top to lift after catching the rim


@dataclass(frozen=True)
class PegInsertSettings:
    """Peg insertion's settings (``env.sim.peg_insert``)."""

    hole_xy: tuple[float, float] = (0.55, 0.05)  # nominal centre of the opening (m, base)
    hole_range: float = 0.02  # the opening moves +-this in x and y per episode
    seat_depth: float = 0.02  # success: the peg's bottom this far below the fixture's top

    def __post_init__(self) -> None:
        if not 0.0 <= self.hole_range <= 0.05:
            raise ValueError(f"hole_range must be in [0, 0.05], got {self.hole_range}")
        if not 0.0 < self.seat_depth < FIXTURE_HEIGHT - 0.005:
            raise ValueError(f"seat_depth must be in (0, {FIXTURE_HEIGHT - 0.005}), "
                             f"got {self.seat_depth}")


class PegInsert(SimTask):
    name = "peg_insert"
    settings_class = PegInsertSettings
    settings: PegInsertSettings
    # Close to the fixture and looking down on it, so the opening is a few pixels wide at 64.
    front_camera = 'pos="0.95 0.05 0.25" xyaxes="0 1 0 -0.482 0 0.876" fovy="45"'
    # Beside the fingers, aimed past the peg's tip at the table below it.
    wrist_camera = 'pos="0.07 0 0.01" xyaxes="0 -1 0 -0.938 0 -0.346" fovy="70"'

    def objects_xml(self) -> str:
        a, t, h = HOLE_HALF_WIDTH, FIXTURE_WALL, FIXTURE_HEIGHT / 2
        # Fixture contacts take the fixture's parameters (priority): low friction and stiff,
        # so a peg on the rim slides off rather than sticks, and 2 mm is never soaked up by
        # soft penetration. The peg's own friction is for the fingers (max of the two).
        wall = ('type="box" contype="1" conaffinity="1" priority="1" condim="3" '
                'friction="0.3 0.005 0.0001" solref="0.004 1" solimp="0.95 0.99 0.001" '
                'rgba="0.2 0.45 0.75 1"')
        w = PEG_HALF_WIDTH
        return f"""
    <body name="fixture" mocap="true" pos="{self.settings.hole_xy[0]} {self.settings.hole_xy[1]} 0">
      <geom name="wall_px" {wall} pos="{a + t / 2} 0 {h}" size="{t / 2} {a + t} {h}"/>
      <geom name="wall_nx" {wall} pos="{-a - t / 2} 0 {h}" size="{t / 2} {a + t} {h}"/>
      <geom name="wall_py" {wall} pos="0 {a + t / 2} {h}" size="{a} {t / 2} {h}"/>
      <geom name="wall_ny" {wall} pos="0 {-a - t / 2} {h}" size="{a} {t / 2} {h}"/>
    </body>
    <body name="peg" pos="0.5 0 0.3">
      <freejoint name="peg"/>
      <geom name="peg" type="box" size="{w} {w} {PEG_HALF_LENGTH}" mass="0.03" contype="1"
            conaffinity="3" condim="4" friction="1.5 0.02 0.001" solref="0.004 1"
            solimp="0.95 0.99 0.001" rgba="0.9 0.6 0.1 1"/>
    </body>"""

    def bind(self, world: SimWorld) -> None:
        m = world.model
        self._qpos = m.joint("peg").qposadr[0]
        self._dof = m.joint("peg").dofadr[0]
        self._peg = m.body("peg").id
        self._hand = m.body("hand").id
        self._mocap = m.body("fixture").mocapid[0]
        self._fingers_qpos = [m.joint(f"finger_{s}").qposadr[0] for s in ("left", "right")]
        for side in ("left", "right"):
            act = m.actuator(f"finger_{side}").id
            m.actuator_gainprm[act, 0] = GRIP_KP
            m.actuator_biasprm[act, 1] = -GRIP_KP

    def gripper(self, command: float) -> float:
        return 1.0  # the peg is held throughout

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        c, d = self.settings, world.data
        offset = rng.uniform(-c.hole_range, c.hole_range, 2)
        d.mocap_pos[self._mocap] = [c.hole_xy[0] + offset[0], c.hole_xy[1] + offset[1], 0.0]
        # The arm is home (its kinematics are current): the peg goes between the fingers.
        hand_rot = d.xmat[self._hand].reshape(3, 3)
        d.qpos[self._qpos : self._qpos + 3] = d.xpos[self._hand] + hand_rot[:, 2] * PEG_IN_HAND
        d.qpos[self._qpos + 3 : self._qpos + 7] = d.xquat[self._hand]
        d.qvel[self._dof : self._dof + 6] = 0.0
        d.qpos[self._fingers_qpos] = FINGER_HOLD
        world.set_gripper(1.0)

    def hole_top(self, world: SimWorld) -> np.ndarray:
        """Centre of the opening at the fixture's top surface."""
        x, y, _ = world.data.mocap_pos[self._mocap]
        return np.array([x, y, FIXTURE_HEIGHT])

    def peg_bottom(self, world: SimWorld) -> np.ndarray:
        """Centre of the peg's bottom face (the end that goes in)."""
        d = world.data
        return d.xpos[self._peg] + d.xmat[self._peg].reshape(3, 3)[:, 2] * PEG_HALF_LENGTH

    def inserted_depth(self, world: SimWorld) -> float:
        """How far the peg's bottom is below the fixture's top (negative: above it)."""
        return float(FIXTURE_HEIGHT - self.peg_bottom(world)[2])

    def in_opening(self, world: SimWorld) -> bool:
        return self.in_opening_at(self.peg_bottom(world)[:2], world)

    def in_opening_at(self, tip_xy: np.ndarray, world: SimWorld) -> bool:
        """Whether a peg tip centred at ``tip_xy`` fits the opening (1 mm slack for the
        contacts' softness and the peg's tilt)."""
        off = np.asarray(tip_xy) - self.hole_top(world)[:2]
        return bool(np.all(np.abs(off) <= HOLE_HALF_WIDTH - PEG_HALF_WIDTH + 1e-3))

    def success(self, world: SimWorld) -> bool:
        return self.inserted_depth(world) >= self.settings.seat_depth and self.in_opening(world)

    def clearly_done(self, world: SimWorld) -> bool:
        return (self.inserted_depth(world) >= self.settings.seat_depth + CLEAR_DEPTH
                and self.in_opening(world))

    def object_position(self, world: SimWorld) -> np.ndarray:
        return self.hole_top(world)

    def jitter_geoms(self) -> tuple[str, ...]:
        return ("peg", "wall_px", "wall_nx", "wall_py", "wall_ny")

    def new_plan(self, person: Person) -> Plan:
        return InsertPlan(self, person)


class InsertPlan(Plan):
    """Carry the peg above the hole, align, descend; if it catches the rim (no progress
    down while still above the opening), lift a little, re-align and try again."""

    def __init__(self, task: PegInsert, person: Person) -> None:
        self.task = task
        self.person = person
        self._backing_off = False
        self._lowest = np.inf  # lowest bottom height seen in this descent
        self._stuck = 0  # descent steps without progress

    def plan(self, world: SimWorld) -> tuple[np.ndarray, bool, str]:
        t = self.task
        tcp = world.tcp_pose()[:3]
        bottom = t.peg_bottom(world)
        hole = t.hole_top(world)
        grip = tcp - bottom  # steer the peg's tip, wherever it sits in the hand

        def move(target_bottom: np.ndarray) -> np.ndarray:
            return self.person.toward(target_bottom + grip, tcp)

        xy_error = float(np.linalg.norm(hole[:2] - bottom[:2]))
        height = bottom[2] - hole[2]  # of the tip above the fixture's top
        if height < -ENTERED and t.in_opening(world):
            self._backing_off = False
            return move(np.array([hole[0], hole[1], hole[2] - INSERT_TO])), True, "insert"
        if self._backing_off:
            if height < BACK_OFF * 0.7:
                return move(np.array([hole[0], hole[1], hole[2] + BACK_OFF])), True, "back_off"
            self._backing_off = False
        aligned = 2 * ALIGNED if self.person.phase == "descend" else ALIGNED
        if xy_error > aligned:
            self._lowest, self._stuck = np.inf, 0
            if height < 0.005 and xy_error > 2 * ALIGNED:
                # On (or beside) the fixture: rise before sliding, or the tip drags on it.
                up = np.array([bottom[0], bottom[1], hole[2] + HOVER])
                return move(up), True, "back_off"
            # Down to the hover height on the way (the tip stays above the fixture's top).
            return move(np.array([hole[0], hole[1], hole[2] + HOVER])), True, "carry"
        # Aligned: go down; caught on the rim when the tip stops sinking at the top's height
        # (higher up it is only the person pausing).
        if bottom[2] < self._lowest - JAM_PROGRESS or height > AT_RIM:
            self._lowest, self._stuck = min(self._lowest, bottom[2]), 0
        else:
            self._stuck += 1
        if self._stuck >= JAM_STEPS and height > -ENTERED:
            self._backing_off, self._lowest, self._stuck = True, np.inf, 0
            return move(np.array([hole[0], hole[1], hole[2] + BACK_OFF])), True, "back_off"
        return move(np.array([hole[0], hole[1], hole[2] - INSERT_TO])), True, "descend"

    def remaining(self, world: SimWorld) -> float:
        t = self.task
        bottom, hole = t.peg_bottom(world), t.hole_top(world)
        depth_left = max(0.0, t.settings.seat_depth - t.inserted_depth(world))
        return float(np.linalg.norm(hole[:2] - bottom[:2]) + depth_left
                     + max(0.0, bottom[2] - hole[2]))
