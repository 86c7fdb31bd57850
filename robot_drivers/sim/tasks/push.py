"""Push: slide a block across the table onto a marked target with the closed fingers.

A 45 mm square block, 40 mm tall, 100 g, rests on the table with realistic sliding friction
(0.5; the rubbery fingertips grip its faces with 1.5). A thin green disc on the table (no
collision, only seen) marks the target. Every episode the block starts within
``start_range`` of ``object_xy``, and the target lies ``distance`` from it in a direction
drawn from ``direction``, so the pushes go every way. The gripper stays closed (the policy's
gripper command is ignored): the closed fingers are the pusher, a 20 x 28 mm block whose tips
sit 9 mm below the tcp. Success (privileged, only to judge): the block's centre within
``tolerance`` of the target's in xy while it is at rest (slower than ``rest_speed``), so
pushing it across the mark does not count.

Why imitation finds it hard: reaching 1 cm needs closed-loop corrections from contact. The
block slides and turns in ways a few millimetres of contact offset decide, a small overshoot
can only be undone by walking around the block and pushing back, and a person's demos are
multimodal (which side to go round, when to stop and re-place the hand, how slowly to finish),
which a regression onto the mean of the demos averages into a pusher that goes between the
modes. ``PushPlan.corrections`` counts how often the scripted person itself has to lift and
re-place behind the block (it left the line, or overshot): in 40% of 50 seeded episodes as
``oracle``, 46% as ``human``. Replaying the oracle's actions open loop with the block's start
moved 5 mm succeeds in 16/20 (20/20 unmoved). The scripted person always comes from straight
behind, so its demos understate the multimodality of a real person's.

The target is not part of ``object_pos`` (the block's centre, 3-wide like every task's): the
state layout has no room for the target's xy next to the block's. A state-only policy cannot
see where to push; the cameras show the marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import Person, Plan, SimTask

if TYPE_CHECKING:
    from ..world import SimWorld

BLOCK_HALF = 0.0225  # 45 mm square footprint
BLOCK_HALF_HEIGHT = 0.02
BLOCK_FRICTION = 0.5  # sliding; the block's contacts take it (priority) against the table's 1
MARKER_RADIUS = 0.02  # larger than the tolerance: a few pixels wide at 64x64
MARKER_HALF_THICKNESS = 0.0005
# The closed fingers as a pusher: +-10 mm along the hand's x (the world's x at the reset
# orientation), +-14 mm along its y; the tips end 9 mm below the tcp.
PUSHER_HALF = (0.010, 0.014)

# The scripted person's plan, in terms of the tcp.
PUSH_Z = 0.027  # tcp height while pushing: the tips 18 mm up, under the block's 20 mm centre
TRAVEL_Z = 0.065  # tcp height to move over the block at (tips 16 mm above its top)
STANDOFF = 0.015  # clearance between pusher and block where the hand comes down
PLACED = 0.005  # xy error at the standoff point at which the hand comes down
DOWN = 0.005  # tcp this close above PUSH_Z: down, start pushing
# How far ahead along the line the push aims (on its longer axis): a person's twist is clipped
# per axis, so a goal far off would bend a diagonal push toward 45 degrees; at the oracle's
# gain this is full speed on that axis. Near the target it is what is left.
PUSH_AHEAD = 0.02
# The share of its offset from the line the pusher takes back each step. All of it cancels the
# push's sideways part whenever the block lags it (a flat face is pushed along its normal),
# so the block would keep lagging; part of it pushes off-centre, which turns the block back.
STEER = 0.3
STOP = 0.5  # block this close to the target (share of the tolerance): stop and let it rest
CLEAR_SHARE = 0.7  # a person calls it on target this close (share of the tolerance)
RESUME = 0.8  # ... and push again only when it is this far off again
OFF_LINE = 0.02  # the tcp this far off the block-target line: re-place behind it
BEHIND = 0.02  # the tcp at least this far behind the block's centre along the push
FREEZE = 0.03  # the block this close to the target: keep the push direction
PASSED = 0.002  # along the kept direction the block is this close to level with the target


@dataclass(frozen=True)
class PushSettings:
    """Push's settings (``env.sim.push``)."""

    object_xy: tuple[float, float] = (0.5, 0.0)  # nominal start of the block's centre
    start_range: float = 0.03  # the block starts +-this in x and y around object_xy
    distance: tuple[float, float] = (0.08, 0.15)  # target's distance from the block's start
    direction: tuple[float, float] = (-180.0, 180.0)  # degrees from +x toward +y, drawn
    tolerance: float = 0.01  # success: block centre this close to the target's (xy)
    rest_speed: float = 0.01  # ... and moving slower than this (m/s)

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_range <= 0.05:
            raise ValueError(f"start_range must be in [0, 0.05], got {self.start_range}")
        lo, hi = self.distance
        if not 2 * BLOCK_HALF < lo <= hi <= 0.2:
            raise ValueError(f"distance must be [lo, hi] with {2 * BLOCK_HALF} < lo <= hi <= "
                             f"0.2, got {list(self.distance)}")
        if self.direction[0] > self.direction[1]:
            raise ValueError(f"direction must be [lo, hi] with lo <= hi, got "
                             f"{list(self.direction)}")
        if self.tolerance <= 0 or self.rest_speed <= 0:
            raise ValueError("tolerance and rest_speed must be > 0")


def _support(half: tuple[float, float], yaw: float, u: np.ndarray) -> float:
    """How far a rectangle of half-sizes ``half`` turned by ``yaw`` reaches along ``u``."""
    c, s = np.cos(yaw), np.sin(yaw)
    return float(half[0] * abs(c * u[0] + s * u[1]) + half[1] * abs(-s * u[0] + c * u[1]))


class Push(SimTask):
    name = "push"
    settings_class = PushSettings
    settings: PushSettings
    # High above the table's far side, looking down at 70 degrees on the area the block and
    # the target are drawn in (+-18 cm around object_xy): both are in view wherever they are,
    # and steep enough that the hand hides only a few cm of table beyond the fingers.
    front_camera = 'pos="0.72 0 0.60" xyaxes="0 1 0 -0.940 0 0.342" fovy="40"'
    # Beside the fingers and aimed at their tips (as pick-cube's), but wide, so the table
    # around the contact (+-10 cm at pushing height) and often the target are in view.
    wrist_camera = 'pos="0.07 0 0.01" xyaxes="0 -1 0 -0.8 0 -0.6" fovy="75"'

    def objects_xml(self) -> str:
        h, z = BLOCK_HALF, BLOCK_HALF_HEIGHT
        x, y = self.settings.object_xy
        return f"""
    <body name="target" mocap="true" pos="{x + 0.1} {y} 0">
      <geom name="target" type="cylinder" size="{MARKER_RADIUS} {MARKER_HALF_THICKNESS}"
            pos="0 0 {MARKER_HALF_THICKNESS}" contype="0" conaffinity="0"
            rgba="0.1 0.75 0.2 1"/>
    </body>
    <body name="block" pos="{x} {y} {z}">
      <freejoint name="block"/>
      <geom name="block" type="box" size="{h} {h} {z}" mass="0.1" contype="1" conaffinity="3"
            priority="1" condim="3" friction="{BLOCK_FRICTION} 0.005 0.0001"
            rgba="0.2 0.4 0.85 1"/>
    </body>"""

    def bind(self, world: SimWorld) -> None:
        m = world.model
        self._qpos = m.joint("block").qposadr[0]
        self._dof = m.joint("block").dofadr[0]
        self._mocap = m.body("target").mocapid[0]
        self._fingers_qpos = [m.joint(f"finger_{s}").qposadr[0] for s in ("left", "right")]
        # Finger contacts take the fingers' rubbery friction (1.5), not the block's 0.5: a
        # fingertip grips the face it pushes, as a person's does, while the block slides on
        # the table.
        for side in ("left", "right"):
            body = m.body(f"{side}_finger").id
            for geom in np.flatnonzero(m.geom_bodyid == body):
                m.geom_priority[geom] = 2

    def gripper(self, command: float) -> float:
        return 1.0  # the closed fingers are the pusher throughout

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        c, d = self.settings, world.data
        start = np.asarray(c.object_xy) + rng.uniform(-c.start_range, c.start_range, 2)
        angle = np.deg2rad(rng.uniform(*c.direction))
        target = start + rng.uniform(*c.distance) * np.array([np.cos(angle), np.sin(angle)])
        d.qpos[self._qpos : self._qpos + 7] = [*start, BLOCK_HALF_HEIGHT, 1, 0, 0, 0]
        d.qvel[self._dof : self._dof + 6] = 0.0
        d.mocap_pos[self._mocap] = [target[0], target[1], 0.0]
        d.qpos[self._fingers_qpos] = 0.0  # closed from the start, not closing on the way
        world.set_gripper(1.0)

    def block_position(self, world: SimWorld) -> np.ndarray:
        return world.data.qpos[self._qpos : self._qpos + 3].copy()

    def block_yaw(self, world: SimWorld) -> float:
        w, x, y, z = world.data.qpos[self._qpos + 3 : self._qpos + 7]
        return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    def block_speed(self, world: SimWorld) -> float:
        # A free joint's first three velocities are the linear velocity in the world frame.
        return float(np.linalg.norm(world.data.qvel[self._dof : self._dof + 3]))

    def target_position(self, world: SimWorld) -> np.ndarray:
        """The target's centre on the table (z 0)."""
        return world.data.mocap_pos[self._mocap].copy()

    def place_block(self, world: SimWorld, xy: np.ndarray,
                    velocity: tuple[float, float] = (0.0, 0.0)) -> None:
        """Put the block at ``xy`` on the table, square, moving at ``velocity`` (tests)."""
        d = world.data
        d.qpos[self._qpos : self._qpos + 7] = [xy[0], xy[1], BLOCK_HALF_HEIGHT, 1, 0, 0, 0]
        d.qvel[self._dof : self._dof + 6] = [velocity[0], velocity[1], 0, 0, 0, 0]

    def target_error(self, world: SimWorld) -> float:
        """The block's centre's distance from the target's, in xy."""
        return float(np.linalg.norm(self.block_position(world)[:2]
                                    - self.target_position(world)[:2]))

    def success(self, world: SimWorld) -> bool:
        c = self.settings
        return (self.target_error(world) <= c.tolerance
                and self.block_speed(world) < c.rest_speed)

    def clearly_done(self, world: SimWorld) -> bool:
        c = self.settings
        return (self.target_error(world) <= CLEAR_SHARE * c.tolerance
                and self.block_speed(world) < c.rest_speed)

    def object_position(self, world: SimWorld) -> np.ndarray:
        return self.block_position(world)

    def jitter_geoms(self) -> tuple[str, ...]:
        return ("block", "target")

    def new_plan(self, person: Person) -> Plan:
        return PushPlan(self, person)


class PushPlan(Plan):
    """Come down behind the block on the line from the target through it, push along the
    line (steering back onto it on the way, slowing down near the target), stop when it is
    close enough. When the block has left the line (it turned or slid sideways) or gone past
    the target, lift over it, come down behind it on the new line and push again."""

    def __init__(self, task: Push, person: Person) -> None:
        self.task = task
        self.person = person
        self._u = np.array([1.0, 0.0])  # last push direction, kept when the block is on target
        self._pushing = False
        self._frozen: np.ndarray | None = None  # the push direction kept for the last cm
        self._stopped = False
        self.corrections = 0  # re-placements after pushing had started (bench measure)

    def _line(self, world: SimWorld) -> tuple[np.ndarray, np.ndarray, float]:
        """The block's xy, the push direction (block to target) and the distance left."""
        t = self.task
        block = t.block_position(world)[:2]
        to_target = t.target_position(world)[:2] - block
        dist = float(np.linalg.norm(to_target))
        if dist > 1e-4:
            self._u = to_target / dist
        return block, self._u, dist

    def _contact(self, world: SimWorld, u: np.ndarray) -> float:
        """Distance from the block's centre to the tcp when the pusher touches it along u."""
        return (_support((BLOCK_HALF, BLOCK_HALF), self.task.block_yaw(world), u)
                + _support(PUSHER_HALF, 0.0, u))

    def plan(self, world: SimWorld) -> tuple[np.ndarray, bool, str]:
        toward = self.person.toward
        tcp = world.tcp_pose()[:3]
        block, u, dist = self._line(world)
        tolerance = self.task.settings.tolerance
        if dist < STOP * tolerance or (self._stopped and dist < RESUME * tolerance):
            self._stopped = True
            return np.zeros(6), True, "rest"
        self._stopped = False
        if self._pushing:
            # Near the target the line from the block to it turns fast with every millimetre
            # the block slips sideways: keep the last direction and finish along it.
            if dist < FREEZE and self._frozen is None:
                self._frozen = u
            line = u if self._frozen is None else self._frozen
            rel = tcp[:2] - block
            along = float(rel @ line)  # negative: behind the block
            lateral = rel - along * line
            left = float((self.task.target_position(world)[:2] - block) @ line)
            if (np.linalg.norm(lateral) < OFF_LINE and along < -BEHIND and left > PASSED
                    and tcp[2] < PUSH_Z + 2 * DOWN):
                return self._push(tcp, lateral, line, left), True, "push"
            # Off the line, passed the target, or lifted: re-place behind the block.
            self._pushing, self._frozen = False, None
            self.corrections += 1
        rel = tcp[:2] - block
        standoff = block - u * (self._contact(world, u) + STANDOFF)
        placed = float(np.linalg.norm(tcp[:2] - standoff))
        aligned = 2 * PLACED if self.person.phase == "descend" else PLACED
        if placed > aligned:
            if tcp[2] < TRAVEL_Z - DOWN:
                # Low: slide to where to come down only when clear of the block and close to
                # it; otherwise up first, so the move over does not sweep the block along.
                distance = float(np.linalg.norm(rel))
                clear = distance > self._contact(world, rel / max(distance, 1e-9)) + STANDOFF / 2
                if clear and placed < 2 * STANDOFF:
                    return toward(np.array([*standoff, tcp[2]]), tcp), True, "approach"
                return toward(np.array([tcp[0], tcp[1], TRAVEL_Z]), tcp), True, "back_off"
            return toward(np.array([*standoff, TRAVEL_Z]), tcp), True, "approach"
        if tcp[2] > PUSH_Z + DOWN:
            # Aimed below the pushing height, so a person's proportional slow-down does not
            # crawl the last millimetres (the workspace box keeps the tips off the table).
            return toward(np.array([*standoff, PUSH_Z - 2 * DOWN]), tcp), True, "descend"
        self._pushing = True
        lateral = rel - float(rel @ u) * u
        return self._push(tcp, lateral, u, dist), True, "push"

    def _push(self, tcp: np.ndarray, lateral: np.ndarray, line: np.ndarray,
              left: float) -> np.ndarray:
        """Along the line by what is left (at most PUSH_AHEAD) and back onto it: the block
        goes as far as the pusher does, so the person's gain slows the push near the target,
        and the step back onto the line pushes off-centre, which turns the block back."""
        ahead = min(max(left, 0.0), PUSH_AHEAD / float(np.max(np.abs(line))))
        goal = tcp[:2] - STEER * lateral + ahead * line
        return self.person.toward(np.array([*goal, PUSH_Z]), tcp)

    def remaining(self, world: SimWorld) -> float:
        block, u, dist = self._line(world)
        tcp = world.tcp_pose()[:3]
        behind = block - u * self._contact(world, u)
        return dist + float(np.linalg.norm(tcp - np.array([*behind, PUSH_Z])))
