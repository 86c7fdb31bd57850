"""What a simulated task is: the objects on the table and everything that knows about them.

The arm, its controller, its cameras and rendering are one thing (robot_drivers/sim/world.py);
a task adds its objects to the scene and owns what is specific to them: their randomised
reset, the privileged success that only judges, the privileged object state the env offers as
``object_pos``, and the scripted person's plan and progress measure. The generic person (when
to take over, how a human drives: robot_drivers/devices/scripted.py) asks the task's plan what
to do, so one person drives every task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from ..scene import FRONT_CAMERA, WRIST_CAMERA

if TYPE_CHECKING:
    from ..world import SimWorld


class Person(Protocol):
    """What a plan may ask of the scripted person who carries it out."""

    @property
    def phase(self) -> str | None:
        """The phase the person is driving in (human style), None before it has one."""

    def toward(self, target: np.ndarray, tcp: np.ndarray) -> np.ndarray:
        """The twist (6,) the person gives to move the tcp toward ``target`` (their gain and
        speed of the day)."""


class Plan(ABC):
    """The scripted person's plan for one episode (it may keep state across its steps)."""

    @abstractmethod
    def plan(self, world: SimWorld) -> tuple[np.ndarray, bool, str]:
        """From privileged state: the twist (6,) in [-1, 1] wanted now, whether the gripper
        should be closed, and the name of the phase asking for them."""

    @abstractmethod
    def remaining(self, world: SimWorld) -> float:
        """Distance (m) still to cover to succeed; the stall rule watches it shrink."""


class SimTask(ABC):
    """One task on the simulated arm, selected by ``env.sim.task``; its settings dataclass
    (``settings_class``) reads the section ``env.sim.<name>``."""

    name: ClassVar[str]
    settings_class: ClassVar[type]
    front_camera: ClassVar[str] = FRONT_CAMERA  # MJCF attributes of the cameras (scene.py)
    wrist_camera: ClassVar[str] = WRIST_CAMERA

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    @abstractmethod
    def objects_xml(self) -> str:
        """The task's bodies as MJCF (appended to the scene's worldbody)."""

    def bind(self, world: SimWorld) -> None:  # noqa: B027 - optional hook
        """Look up the task's ids in the compiled model (called once, before any reset)."""

    @abstractmethod
    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        """Place the objects for a new episode, drawing from ``rng`` (the arm is home)."""

    @abstractmethod
    def success(self, world: SimWorld) -> bool:
        """Privileged success, only to judge (rewards on hardware come from a classifier)."""

    def clearly_done(self, world: SimWorld) -> bool:
        """Whether the task looks done to a person: success with the margin an eye needs
        before calling it (the scripted person holds SUCCESS on it, so it is what the
        learned reward learns). A classifier's verdict blurs its labels' edge by some
        millimetres either way; labels whose edge is success's own edge teach a reward that
        fires just short of it, and a policy stops there. Success itself still judges."""
        return self.success(world)

    @abstractmethod
    def object_position(self, world: SimWorld) -> np.ndarray:
        """The privileged object state offered as ``object_pos`` (3,)."""

    def target_position(self, world: SimWorld) -> np.ndarray | None:
        """Where the object must go, offered as ``target_pos`` (3,); None: no such place."""
        return None

    def jitter_geoms(self) -> tuple[str, ...]:
        """Geoms whose colour the appearance jitter varies widely (the objects a classifier
        must recognise in any colour)."""
        return ()

    def gripper(self, command: float) -> float:
        """The gripper command (0 open .. 1 closed) the hand gets when ``command`` is asked
        for; a task whose object is held throughout overrides it to stay closed."""
        return command

    @abstractmethod
    def new_plan(self, person: Person) -> Plan:
        """The scripted person's plan for a new episode."""
