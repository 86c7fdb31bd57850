"""Pose math shared by the env, the wrappers and the drivers.

Poses are (7,) arrays: xyz then a quaternion in scipy's (x, y, z, w) order. MuJoCo's (w, x, y, z)
order is converted only at the MuJoCo boundary.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def pose(position: np.ndarray, rotation: Rotation) -> np.ndarray:
    position = np.asarray(position, dtype=np.float64)
    return np.concatenate([position, canonical_quat(rotation.as_quat())])


def pose_from_euler(xyz_rpy: np.ndarray) -> np.ndarray:
    """A pose from [x, y, z, roll, pitch, yaw] (extrinsic xyz Euler angles, radians)."""
    xyz_rpy = np.asarray(xyz_rpy, dtype=np.float64)
    return pose(xyz_rpy[:3], Rotation.from_euler("xyz", xyz_rpy[3:]))


def rotation(p: np.ndarray) -> Rotation:
    return Rotation.from_quat(p[3:7])


def canonical_quat(q: np.ndarray) -> np.ndarray:
    """q and -q are the same rotation; pick w >= 0 so observations do not jump."""
    q = np.asarray(q, dtype=np.float64)
    return -q if q[3] < 0 else q


def quat_xyzw_from_wxyz(q: np.ndarray) -> np.ndarray:
    return np.array([q[1], q[2], q[3], q[0]])


def quat_wxyz_from_xyzw(q: np.ndarray) -> np.ndarray:
    return np.array([q[3], q[0], q[1], q[2]])


def apply_delta(p: np.ndarray, dpos: np.ndarray, drot: np.ndarray) -> np.ndarray:
    """Translate by dpos and rotate by the rotation vector drot, both in the base frame."""
    return pose(p[:3] + dpos, Rotation.from_rotvec(drot) * rotation(p))


def relative_pose(reference: np.ndarray, p: np.ndarray) -> np.ndarray:
    """p expressed in the frame of reference (both in the base frame)."""
    r_ref = rotation(reference)
    return pose(r_ref.inv().apply(p[:3] - reference[:3]), r_ref.inv() * rotation(p))


def orientation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotation vector (base frame) that turns current into target."""
    return (rotation(target) * rotation(current).inv()).as_rotvec()
