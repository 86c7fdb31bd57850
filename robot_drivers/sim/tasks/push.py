"""Push: slide a puck across the table onto a marked target with the closed fingers.

A puck (50 mm across, 40 mm tall, 100 g) rests on the table with realistic sliding friction
(0.5; the rubbery fingertips grip it with 1.5). A thin green disc on the table (no collision,
only seen) marks the target. Every episode the puck starts within ``start_range`` of
``object_xy``, and the target lies ``distance`` from it in a direction drawn from
``direction``, so the pushes go every way. The gripper stays closed (the policy's gripper
command is ignored): the closed fingers are the pusher, a 20 x 28 mm block whose tips sit
9 mm below the tcp. Success (privileged, only to judge): the puck's centre within
``tolerance`` of the target's in xy.

What a camera can see decides the shapes. The marker is a disc smaller than the puck by
``CLEAR_SHARE * tolerance`` (7 of the 10 mm), so it is hidden under the puck exactly when the
puck is that close, and a sliver of it shows from there on: "on target" is "no green left"
to an eye or a classifier, not a millimetre read off a few pixels. A round puck hides it the
same way whichever way it turned (a square block's corners would hide it 16 mm off). There
is no "at rest" condition: a single frame cannot show speed, and it is not needed, because a
pushed 100 g puck on this friction stops within about 1 mm (v^2 / 2 mu g at 10 cm/s) when the
pusher does, so the episode ending on a verdict leaves the puck where it was judged.

Why imitation finds it hard: reaching 1 cm needs closed-loop corrections from contact. The
puck slips sideways along the pusher in ways a few millimetres of contact offset decide, a
small overshoot can only be undone by walking around the puck and pushing back, and a
person's demos are multimodal (which side to go round, when to stop and re-place the hand,
how slowly to finish), which a regression onto the mean of the demos averages into a pusher
that goes between the modes. ``PushPlan.corrections`` counts how often the scripted person
itself has to lift and re-place behind the puck (it left the line, or overshot): in 60% of
50 seeded episodes as ``oracle``, 70% as ``human``. Replaying the oracle's actions open loop
succeeds in 18/20 episodes as recorded, 15/20 with the puck's start moved 2 mm and 3/20
moved 5 mm. The scripted person always comes from straight behind, so its demos understate
the multimodality of a real person's.

The target is not part of ``object_pos`` (the puck's centre, 3-wide like every task's): the
state layout has no room for the target's xy next to the puck's; ``target_pos`` offers it to
state-based reference runs. A pixel policy sees the marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import Person, Plan, SimTask

if TYPE_CHECKING:
    from ..world import SimWorld

PUCK_RADIUS = 0.025
PUCK_HALF_HEIGHT = 0.02
PUCK_FRICTION = 0.5  # sliding; the puck's contacts take it (priority) against the table's 1
# The marker is a green ghost of the puck, a little narrower and 1 mm lower at each end,
# standing where the puck must go (seen, never touched). On target it is inside the puck;
# off target the part beyond the puck's rim shows, from above beside the puck's top face at
# its height (so no parallax hides it behind the puck, as a disc on the table would from a
# wrist camera 10 cm above a 40 mm puck) and from the side as a green band. A flat disc
# was a 2-pixel dot seen from the side, which a classifier learnt to ignore.
MARKER_HALF_HEIGHT = PUCK_HALF_HEIGHT - 0.001
# The closed fingers as a pusher: +-10 mm along the hand's x (the world's x at the reset
# orientation), +-14 mm along its y; the tips end 9 mm below the tcp.
PUSHER_HALF = (0.010, 0.014)

MAX_TOLERANCE = 0.03  # the marker is then 4 mm across

# The scripted person's plan, in terms of the tcp.
PUSH_Z = 0.027  # tcp height while pushing: the tips 18 mm up, under the puck's 20 mm centre
TRAVEL_Z = 0.065  # tcp height to move over the puck at (tips 16 mm above its top)
STANDOFF = 0.015  # clearance between pusher and puck where the hand comes down
PLACED = 0.005  # xy error at the standoff point at which the hand comes down
DOWN = 0.005  # tcp this close above PUSH_Z: down, start pushing
# How far ahead along the line the push aims (on its longer axis): a person's twist is clipped
# per axis, so a goal far off would bend a diagonal push toward 45 degrees; at the oracle's
# gain this is full speed on that axis. Near the target it is what is left.
PUSH_AHEAD = 0.02
# The share of its offset from the line the pusher takes back each step. All of it cancels the
# push's sideways part whenever the puck lags it (a flat face is pushed along its normal),
# so the puck would keep lagging; part of it drags the puck back with the fingertips' grip.
STEER = 0.3
STOP = 0.3  # puck this close to the target (share of the tolerance): stop and let it rest
# A person calls it on target this close (share of the tolerance): where the marker, smaller
# than the puck by this much, disappears under it.
CLEAR_SHARE = 0.5
RESUME = 0.45  # ... and push again only when it is this far off again
OFF_LINE = 0.02  # the tcp this far off the puck-target line: re-place behind it
BEHIND = 0.02  # the tcp at least this far behind the puck's centre along the push
FREEZE = 0.03  # the puck this close to the target: keep the push direction
PASSED = 0.002  # along the kept direction the puck is this close to level with the target


@dataclass(frozen=True)
class PushSettings:
    """Push's settings (``env.sim.push``)."""

    object_xy: tuple[float, float] = (0.5, 0.0)  # nominal start of the puck's centre
    start_range: float = 0.03  # the puck starts +-this in x and y around object_xy
    distance: tuple[float, float] = (0.08, 0.15)  # target's distance from the puck's start
    direction: tuple[float, float] = (-180.0, 180.0)  # degrees from +x toward +y, drawn
    tolerance: float = 0.01  # success: the puck's centre this close to the target's (xy)

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_range <= 0.05:
            raise ValueError(f"start_range must be in [0, 0.05], got {self.start_range}")
        lo, hi = self.distance
        if not 2 * PUCK_RADIUS < lo <= hi <= 0.2:
            raise ValueError(f"distance must be [lo, hi] with {2 * PUCK_RADIUS} < lo <= hi <= "
                             f"0.2, got {list(self.distance)}")
        if self.direction[0] > self.direction[1]:
            raise ValueError(f"direction must be [lo, hi] with lo <= hi, got "
                             f"{list(self.direction)}")
        if not 0 < self.tolerance <= MAX_TOLERANCE:
            # The marker is the puck less CLEAR_SHARE * tolerance; it must stay a disc.
            raise ValueError(f"tolerance must be in (0, {MAX_TOLERANCE}], got {self.tolerance}")

    @property
    def marker_radius(self) -> float:
        return PUCK_RADIUS - CLEAR_SHARE * self.tolerance


def _support(half: tuple[float, float], u: np.ndarray) -> float:
    """How far an axis-aligned rectangle of half-sizes ``half`` reaches along ``u``."""
    return float(half[0] * abs(u[0]) + half[1] * abs(u[1]))


class Push(SimTask):
    name = "push"
    settings_class = PushSettings
    settings: PushSettings
    # Beside the table (+y), 30 degrees down from 50 cm, framing the +-20 cm the puck and
    # the target are drawn in. A 1 cm miss, the hand where the person left it, 128x128:
    # ~36 marker pixels (median of 48 poses; 12% hidden by the hand, never from the wrist
    # camera too), where the camera before, 75 cm away, showed 8.
    front_camera = 'pos="0.5 0.433 0.25" xyaxes="-1 0 0 0 -0.5 0.866" fovy="45"'
    # Straight down from the hand's base between the fingers, wide (+-13 cm of table at
    # pushing height): the puck beside the fingers on whichever side they push it, and its
    # rim against the marker, seen from above (on target none of the marker shows; 1 cm off
    # about 90 of 128x128 pixels do, and the fingers hide it only on the side they touch).
    wrist_camera = 'pos="0 0 0" xyaxes="1 0 0 0 -1 0" fovy="90"'

    def objects_xml(self) -> str:
        r, z = PUCK_RADIUS, PUCK_HALF_HEIGHT
        x, y = self.settings.object_xy
        return f"""
    <body name="target" mocap="true" pos="{x + 0.1} {y} 0">
      <geom name="target" type="cylinder"
            size="{self.settings.marker_radius} {MARKER_HALF_HEIGHT}"
            pos="0 0 {PUCK_HALF_HEIGHT}" contype="0" conaffinity="0"
            rgba="0.1 0.75 0.2 1"/>
    </body>
    <!-- The puck stands on this plane, not on the table's box: cylinder-plane contacts are
         exact in every MuJoCo, while cylinder-box goes through the general convex
         collider, which in MuJoCo 3.2 let the puck sink 3.5 mm and creep. Collision bits:
         the puck (4/2) touches this plane (0/4) and the fingers and hand (2/1), not the
         table (1/1); group 3 is not rendered. -->
    <geom name="puck_floor" type="plane" size="0 0 1" contype="0" conaffinity="4" group="3"/>
    <body name="puck" pos="{x} {y} {z}">
      <freejoint name="puck"/>
      <geom name="puck" type="cylinder" size="{r} {z}" mass="0.1" contype="4" conaffinity="2"
            priority="1" condim="3" friction="{PUCK_FRICTION} 0.005 0.0001"
            rgba="0.2 0.4 0.85 1"/>
    </body>"""

    def bind(self, world: SimWorld) -> None:
        m = world.model
        self._qpos = m.joint("puck").qposadr[0]
        self._dof = m.joint("puck").dofadr[0]
        self._mocap = m.body("target").mocapid[0]
        self._fingers_qpos = [m.joint(f"finger_{s}").qposadr[0] for s in ("left", "right")]
        # Finger contacts take the fingers' rubbery friction (1.5), not the puck's 0.5: a
        # fingertip grips the face it pushes, as a person's does, while the puck slides on
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
        d.qpos[self._qpos : self._qpos + 7] = [*start, PUCK_HALF_HEIGHT, 1, 0, 0, 0]
        d.qvel[self._dof : self._dof + 6] = 0.0
        d.mocap_pos[self._mocap] = [target[0], target[1], 0.0]
        d.qpos[self._fingers_qpos] = 0.0  # closed from the start, not closing on the way
        world.set_gripper(1.0)

    def puck_position(self, world: SimWorld) -> np.ndarray:
        return world.data.qpos[self._qpos : self._qpos + 3].copy()

    def puck_speed(self, world: SimWorld) -> float:
        # A free joint's first three velocities are the linear velocity in the world frame.
        return float(np.linalg.norm(world.data.qvel[self._dof : self._dof + 3]))

    def target_position(self, world: SimWorld) -> np.ndarray:
        """The target's centre on the table (z 0)."""
        return world.data.mocap_pos[self._mocap].copy()

    def place_puck(self, world: SimWorld, xy: np.ndarray,
                    velocity: tuple[float, float] = (0.0, 0.0)) -> None:
        """Put the puck at ``xy`` on the table, upright, moving at ``velocity`` (tests)."""
        d = world.data
        d.qpos[self._qpos : self._qpos + 7] = [xy[0], xy[1], PUCK_HALF_HEIGHT, 1, 0, 0, 0]
        d.qvel[self._dof : self._dof + 6] = [velocity[0], velocity[1], 0, 0, 0, 0]

    def target_error(self, world: SimWorld) -> float:
        """The puck's centre's distance from the target's, in xy."""
        return float(np.linalg.norm(self.puck_position(world)[:2]
                                    - self.target_position(world)[:2]))

    def success(self, world: SimWorld) -> bool:
        return self.target_error(world) <= self.settings.tolerance

    def clearly_done(self, world: SimWorld) -> bool:
        # The marker is hidden under the puck: what a person sees as on target.
        return self.target_error(world) <= CLEAR_SHARE * self.settings.tolerance

    def object_position(self, world: SimWorld) -> np.ndarray:
        return self.puck_position(world)

    def jitter_geoms(self) -> tuple[str, ...]:
        return ("puck", "target")

    def new_plan(self, person: Person) -> Plan:
        return PushPlan(self, person)


class PushPlan(Plan):
    """Come down behind the puck on the line from the target through it, push along the
    line (steering back onto it on the way, slowing down near the target), stop when it is
    close enough. When the puck has left the line (it slid sideways) or gone past
    the target, lift over it, come down behind it on the new line and push again."""

    def __init__(self, task: Push, person: Person) -> None:
        self.task = task
        self.person = person
        self._u = np.array([1.0, 0.0])  # last push direction, kept when the puck is on target
        self._pushing = False
        self._frozen: np.ndarray | None = None  # the push direction kept for the last cm
        self._stopped = False
        self.corrections = 0  # re-placements after pushing had started (bench measure)

    def _line(self, world: SimWorld) -> tuple[np.ndarray, np.ndarray, float]:
        """The puck's xy, the push direction (puck to target) and the distance left."""
        t = self.task
        puck = t.puck_position(world)[:2]
        to_target = t.target_position(world)[:2] - puck
        dist = float(np.linalg.norm(to_target))
        if dist > 1e-4:
            self._u = to_target / dist
        return puck, self._u, dist

    def _contact(self, world: SimWorld, u: np.ndarray) -> float:
        """Distance from the puck's centre to the tcp when the pusher touches it along u."""
        return PUCK_RADIUS + _support(PUSHER_HALF, u)

    def plan(self, world: SimWorld) -> tuple[np.ndarray, bool, str]:
        toward = self.person.toward
        tcp = world.tcp_pose()[:3]
        puck, u, dist = self._line(world)
        tolerance = self.task.settings.tolerance
        if dist < STOP * tolerance or (self._stopped and dist < RESUME * tolerance):
            self._stopped = True
            return np.zeros(6), True, "rest"
        self._stopped = False
        if self._pushing:
            # Near the target the line from the puck to it turns fast with every millimetre
            # the puck slips sideways: keep the last direction and finish along it.
            if dist < FREEZE and self._frozen is None:
                self._frozen = u
            line = u if self._frozen is None else self._frozen
            rel = tcp[:2] - puck
            along = float(rel @ line)  # negative: behind the puck
            lateral = rel - along * line
            left = float((self.task.target_position(world)[:2] - puck) @ line)
            if (np.linalg.norm(lateral) < OFF_LINE and along < -BEHIND and left > PASSED
                    and tcp[2] < PUSH_Z + 2 * DOWN):
                return self._push(tcp, lateral, line, left), True, "push"
            # Off the line, passed the target, or lifted: re-place behind the puck.
            self._pushing, self._frozen = False, None
            self.corrections += 1
        rel = tcp[:2] - puck
        standoff = puck - u * (self._contact(world, u) + STANDOFF)
        placed = float(np.linalg.norm(tcp[:2] - standoff))
        aligned = 2 * PLACED if self.person.phase == "descend" else PLACED
        if placed > aligned:
            if tcp[2] < TRAVEL_Z - DOWN:
                # Low: slide to where to come down only when clear of the puck and close to
                # it; otherwise up first, so the move over does not sweep the puck along.
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
        """Along the line by what is left (at most PUSH_AHEAD) and back onto it: the puck
        goes as far as the pusher does, so the person's gain slows the push near the target,
        and the step back onto the line drags the puck back with the fingertips' grip."""
        ahead = min(max(left, 0.0), PUSH_AHEAD / float(np.max(np.abs(line))))
        goal = tcp[:2] - STEER * lateral + ahead * line
        return self.person.toward(np.array([*goal, PUSH_Z]), tcp)

    def remaining(self, world: SimWorld) -> float:
        puck, u, dist = self._line(world)
        tcp = world.tcp_pose()[:3]
        behind = puck - u * self._contact(world, u)
        return dist + float(np.linalg.norm(tcp - np.array([*behind, PUSH_Z])))
