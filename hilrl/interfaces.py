"""The small types every driver implements and everything above the drivers relies on.

Conventions, shared by all drivers:
- Poses are 7-vectors in the robot base frame: position xyz in metres, then an orientation
  quaternion in scipy's (x, y, z, w) order.
- Twists are 6-vectors: linear xyz then angular xyz. Input devices report them normalised
  to [-1, 1] per axis, in the robot base frame.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RobotState:
    """One reading of the arm. Arrays are float64 and in the base frame."""

    tcp_pose: np.ndarray  # (7,) xyz + quaternion xyzw
    tcp_vel: np.ndarray  # (6,) linear m/s + angular rad/s
    gripper_width: float  # metres between the fingers
    wrench: np.ndarray | None = None  # (6,) force N + torque Nm at the tcp, when measured
    joint_positions: np.ndarray | None = None


class RobotDriver(abc.ABC):
    """A robot arm with a gripper, commanded by Cartesian pose targets."""

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def state(self) -> RobotState: ...

    @abc.abstractmethod
    def move_to(self, pose: np.ndarray) -> None:
        """Set a new Cartesian target (7,). Returns at once; the arm's controller tracks it."""

    @abc.abstractmethod
    def gripper(self, command: float) -> None:
        """0 = fully open, 1 = closed (grasp). Returns at once."""

    @abc.abstractmethod
    def home(self) -> None:
        """Move to the home configuration and wait until it is reached."""

    @abc.abstractmethod
    def recover(self) -> None:
        """Clear errors (reflexes, limits) so the arm accepts commands again."""

    def close(self) -> None:  # noqa: B027 - optional for drivers with nothing to release
        pass


class Camera(abc.ABC):
    name: str

    @abc.abstractmethod
    def read(self) -> np.ndarray:
        """The newest frame, uint8 HxWx3 RGB. Raises CameraError on a stale or dead camera."""

    def close(self) -> None:  # noqa: B027
        pass


class CameraError(RuntimeError):
    pass


class RobotError(RuntimeError):
    """The arm refused or failed a command, or its controller stopped answering. The message
    says what happened and what to do; ``recover()`` may clear it."""


class Button:
    """Names of the buttons an InputDevice can report; every device maps its own keys to these."""

    GRIPPER_CLOSE = "gripper_close"
    GRIPPER_OPEN = "gripper_open"
    INTERVENE = "intervene"  # "I am in control", even while the twist is zero
    SUCCESS = "success"  # the person marks the task as done (reward on real robots)
    # "That was not a success": the person overrules the learned reward, which just ended an
    # episode as one (read while the arm holds for their verdict; see actor.reward_review).
    REJECT = "reject"
    ESTOP = "estop"  # stop the loop and hold the arm where it is
    ALL = frozenset({GRIPPER_CLOSE, GRIPPER_OPEN, INTERVENE, SUCCESS, REJECT, ESTOP})


@dataclass(frozen=True)
class Command:
    twist: np.ndarray = field(default_factory=lambda: np.zeros(6))  # (6,) in [-1, 1], base frame
    buttons: frozenset[str] = frozenset()

    def is_active(self, deadzone: float = 1e-3) -> bool:
        """Whether the person is steering: any motion beyond the deadzone or a control button."""
        steering = {Button.GRIPPER_CLOSE, Button.GRIPPER_OPEN, Button.INTERVENE}
        return bool(np.any(np.abs(self.twist) > deadzone) or (self.buttons & steering))


class InputDevice(abc.ABC):
    """A hand on the robot: SpaceMouse, keyboard, gamepad or the scripted expert."""

    @abc.abstractmethod
    def read(self) -> Command:
        """The current command; never blocks."""

    def reset(self) -> None:  # noqa: B027 - only scripted persons keep per-episode state
        """A new episode has begun (called after every env reset)."""

    def review(self) -> None:  # noqa: B027 - a person at the robot sees the arm stop
        """The learned reward has just ended an episode as a success, and the arm holds
        for the person's verdict: REJECT in the reads that follow overrules it. A scripted
        person looks at the scene here; hand-held devices need nothing."""

    def close(self) -> None:  # noqa: B027
        pass


class NullDevice(InputDevice):
    """No person attached: never intervenes."""

    def read(self) -> Command:
        return Command()


class Clock(abc.ABC):
    """Advances time between control steps: sleeps on hardware, steps physics in simulation."""

    @abc.abstractmethod
    def tick(self) -> None:
        """Return at the start of the next control period."""

    def reset(self) -> None:  # noqa: B027
        pass


class Scene(abc.ABC):
    """What the env cannot know from the arm: resetting the objects and privileged success.

    Simulation implements both; on hardware the person resets the scene and the reward comes
    from a classifier or a button, so a real setup has no Scene.
    """

    @abc.abstractmethod
    def reset(self, rng: np.random.Generator) -> None: ...

    @abc.abstractmethod
    def success(self) -> bool: ...

    def state(self) -> dict[str, np.ndarray]:
        """Privileged object state by state key (simulation only), e.g. {"object_pos": xyz}."""
        return {}


class DeviceError(RuntimeError):
    """An input device is missing, unplugged or not permitted; the message says what to do."""
