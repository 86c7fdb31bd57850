"""The workspace safety box, enforced where poses leave hilrl: at the driver's move_to."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from hilrl.config import WorkspaceConfig
from hilrl.geometry import pose, rotation
from hilrl.interfaces import RobotDriver, RobotState


class WorkspaceBox:
    def __init__(self, config: WorkspaceConfig) -> None:
        self.low = np.asarray(config.low, dtype=np.float64)
        self.high = np.asarray(config.high, dtype=np.float64)
        self.center = Rotation.from_euler("xyz", config.orientation)
        self.max_rotation = np.asarray(config.max_rotation, dtype=np.float64)

    def clip(self, p: np.ndarray) -> np.ndarray:
        """The nearest pose inside the box (per axis for position and for orientation)."""
        p = np.asarray(p, dtype=np.float64)
        if p.shape != (7,) or not np.all(np.isfinite(p)):
            raise ValueError(f"a pose must be a finite (7,) array [xyz, quat xyzw], got {p!r}")
        if not np.isclose(np.linalg.norm(p[3:]), 1.0, atol=1e-3):
            raise ValueError(f"pose quaternion {p[3:]} is not unit length")
        offset = (self.center.inv() * rotation(p)).as_rotvec()
        clipped = np.clip(offset, -self.max_rotation, self.max_rotation)
        return pose(np.clip(p[:3], self.low, self.high),
                    self.center * Rotation.from_rotvec(clipped))

    def contains(self, p: np.ndarray, tol: float = 1e-6) -> bool:
        p = np.asarray(p, dtype=np.float64)
        if np.any(p[:3] < self.low - tol) or np.any(p[:3] > self.high + tol):
            return False
        offset = (self.center.inv() * rotation(p)).as_rotvec()
        return bool(np.all(np.abs(offset) <= self.max_rotation + tol))


class SafeDriver(RobotDriver):
    """Wraps a driver so that every pose it is asked to reach is first clipped to the box.

    The env only ever holds a SafeDriver, so no code path above it (policy, intervention,
    reset) can send the arm outside the workspace.
    """

    def __init__(self, driver: RobotDriver, box: WorkspaceBox) -> None:
        self.inner = driver
        self.box = box
        self.last_command: np.ndarray | None = None

    def connect(self) -> None:
        self.inner.connect()

    def state(self) -> RobotState:
        return self.inner.state()

    def move_to(self, pose: np.ndarray) -> None:
        self.last_command = self.box.clip(pose)
        self.inner.move_to(self.last_command)

    def gripper(self, command: float) -> None:
        if not np.isfinite(command):
            raise ValueError(f"gripper command must be finite, got {command}")
        self.inner.gripper(float(np.clip(command, 0.0, 1.0)))

    def home(self) -> None:
        self.inner.home()

    def recover(self) -> None:
        self.inner.recover()

    def close(self) -> None:
        self.inner.close()
