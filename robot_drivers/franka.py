"""A Franka FR3/Panda arm and hand through franky (``pip install 'hilrl[franka]'``).

franky runs libfranka's 1 kHz control loop in its own thread. ``move_to`` hands it an
absolute Cartesian target as an asynchronous motion, which replaces the running one, so the
loop never waits on the arm; franky's trajectory generator keeps every motion within the
configured fraction (``dynamics_factor``) of the robot's velocity, acceleration and jerk
limits. The hand is slow and its commands block inside libfranka, so one background thread
owns it: ``gripper`` only records the wish, and the width is read there too.

Tested against franky-sim, a MuJoCo simulation that speaks libfranka's network protocol
(``franky-sim --simulator mujoco``; connect with ``realtime: false``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hilrl.config import TaskConfig
from hilrl.interfaces import RobotDriver, RobotError, RobotState
from robot_drivers.registry import Rig

log = logging.getLogger(__name__)

GRIPPER_PERIOD = 0.05  # seconds between the hand thread's width reads / command checks
JOIN_TIMEOUT = 0.5  # seconds recover() waits for the last motion to end (refused ones: at once)

ADVICE = ("check that FCI is activated in Desk, the brakes are unlocked, the external "
          "activation device is released, and the robot answers `ping {host}`")


@contextlib.contextmanager
def _keep_scheduling() -> Iterator[None]:
    """Undo what libfranka does to the calling thread: it raises it to SCHED_FIFO 99 (where
    permitted, even with RealtimeConfig.Ignore) and never lowers it, and every thread started
    from it afterwards (JAX's, ZeroMQ's I/O threads) would inherit a priority that can starve
    the machine; a ZeroMQ context created after it hung a CURVE handshake. franky's own
    control thread keeps its realtime priority.

    The restore goes through pthread_setschedparam, not os.sched_setscheduler: glibc caches
    a thread's scheduling in its pthread struct and new threads inherit the cached value, so
    the syscall alone leaves the cache (and every later thread) at FIFO 99."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        _set_thread_scheduling(policy, param.sched_priority)


def _set_thread_scheduling(policy: int, priority: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.pthread_self.restype = ctypes.c_ulong
    libc.pthread_setschedparam.argtypes = [ctypes.c_ulong, ctypes.c_int,
                                          ctypes.POINTER(ctypes.c_int)]
    err = libc.pthread_setschedparam(libc.pthread_self(), policy,
                                     ctypes.byref(ctypes.c_int(priority)))
    if err:
        log.warning("could not restore this thread's scheduling: %s", os.strerror(err))


def _import_franky() -> Any:
    try:
        import franky
    except ImportError as e:
        raise RobotError(f"env.robot=franka needs franky: pip install 'hilrl[franka]' ({e})"
                         ) from e
    return franky


@dataclass(frozen=True)
class FrankaSettings:
    """A Franka FR3/Panda through franky (``env.robot: franka``, section ``env.franka``)."""

    host: str = "172.16.0.2"  # the robot's (or franky-sim's) address
    # False: no realtime kernel needed (franky-sim, or trying out on a plain PC).
    realtime: bool = True
    # Fraction of the robot's velocity/acceleration/jerk limits used by every motion.
    dynamics_factor: float = 0.25
    # Joint configuration of home(); the Cartesian reset pose is reached from there.
    home_joints: tuple[float, float, float, float, float, float, float] = (
        0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)
    gripper_speed: float = 0.1  # m/s
    gripper_force: float = 20.0  # N when grasping
    gripper_max_width: float = 0.08  # m, fully open

    def __post_init__(self) -> None:
        if not 0.0 < self.dynamics_factor <= 1.0:
            raise ValueError(f"dynamics_factor must be in (0, 1], got {self.dynamics_factor}")


def make_rig(task: TaskConfig, settings: FrankaSettings, *, seed: int) -> Rig:
    """``env.robot: franka``: the driver alone (the wall clock, cameras by their drivers)."""
    s = settings
    return Rig(FrankaDriver(s.host, realtime=s.realtime, dynamics_factor=s.dynamics_factor,
                            home_joints=s.home_joints, gripper_speed=s.gripper_speed,
                            gripper_force=s.gripper_force,
                            gripper_max_width=s.gripper_max_width))


class FrankaDriver(RobotDriver):
    def __init__(self, host: str, *, realtime: bool = True, dynamics_factor: float = 0.25,
                 home_joints: Sequence[float] = (0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0,
                                                 np.pi / 2, np.pi / 4),
                 gripper_speed: float = 0.1, gripper_force: float = 20.0,
                 gripper_max_width: float = 0.08) -> None:
        if len(home_joints) != 7:
            raise ValueError(f"home_joints needs 7 joint angles, got {len(home_joints)}")
        self.host = host
        self.realtime = realtime
        self.dynamics_factor = dynamics_factor
        self.home_joints = [float(q) for q in home_joints]
        self.gripper_speed = gripper_speed
        self.gripper_force = gripper_force
        self.gripper_max_width = gripper_max_width
        self._franky: Any = None
        self._robot: Any = None
        self._hand: Any = None
        self._hand_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._want_closed: bool | None = None
        self._width = gripper_max_width
        self._hand_error: str | None = None

    # --- RobotDriver ------------------------------------------------------------------------

    def connect(self) -> None:
        franky = self._franky = _import_franky()
        config = franky.RealtimeConfig.Enforce if self.realtime else franky.RealtimeConfig.Ignore
        try:
            with _keep_scheduling():
                self._robot = franky.Robot(self.host, realtime_config=config)
            self._robot.relative_dynamics_factor = self.dynamics_factor
            self._robot.recover_from_errors()
            self._hand = franky.Gripper(self.host)
            self._width = float(self._hand.width)
        except Exception as e:
            hint = ("; without a realtime kernel set env.franka.realtime: false"
                    if self.realtime and "realtime" in str(e).lower() else "")
            raise RobotError(f"could not connect to the Franka at {self.host}: {e}{hint}. "
                             + ADVICE.format(host=self.host)) from e
        self._stop.clear()
        self._hand_thread = threading.Thread(target=self._run_hand, name="franka-hand",
                                             daemon=True)
        self._hand_thread.start()

    def state(self) -> RobotState:
        robot = self._connected()
        try:
            s = robot.state
        except Exception as e:
            raise RobotError(f"Franka at {self.host}: reading the state failed: {e}") from e
        if s.robot_mode == self._franky.RobotMode.Reflex:
            raise RobotError(f"Franka at {self.host} stopped on a reflex "
                             f"({s.last_motion_errors}); the arm holds where it stopped. "
                             f"recover() (a new episode) clears it")
        pose = s.O_T_EE
        twist = s.O_dP_EE_est if s.O_dP_EE_est is not None else s.O_dP_EE_d
        with self._lock:
            width = self._width
        return RobotState(
            tcp_pose=np.concatenate([pose.translation, pose.quaternion]).astype(np.float64),
            tcp_vel=np.concatenate([twist.linear, twist.angular]).astype(np.float64),
            gripper_width=width,
            wrench=np.asarray(s.O_F_ext_hat_K, np.float64),
            joint_positions=np.asarray(s.q, np.float64),
        )

    def move_to(self, pose: np.ndarray) -> None:
        robot = self._connected()
        franky = self._franky
        pose = np.asarray(pose, np.float64)
        motion = franky.CartesianMotion(franky.Affine(pose[:3], pose[3:7]),
                                        franky.ReferenceType.Absolute)
        try:
            robot.poll_motion()  # raises what ended the last motion, e.g. a reflex
            robot.move(motion, asynchronous=True)
        except Exception as e:
            # A reflex (collision, limit) aborted the running motion: the arm has stopped and
            # holds; nothing moves until recover().
            raise RobotError(f"Franka at {self.host} refused the motion: {e}. The arm holds "
                             f"where it stopped; recover() (a new episode) clears it") from e

    def gripper(self, command: float) -> None:
        self._connected()
        with self._lock:
            if self._hand_error is not None:
                error, self._hand_error = self._hand_error, None
                raise RobotError(f"Franka hand at {self.host}: {error}")
            self._want_closed = command >= 0.5

    def home(self) -> None:
        robot = self._connected()
        try:
            with _keep_scheduling():
                robot.move(self._franky.JointMotion(self.home_joints))
        except Exception as e:
            raise RobotError(f"Franka at {self.host}: moving home failed: {e}") from e

    def recover(self) -> None:
        robot = self._connected()
        try:
            # Let a motion sent during the reflex fail now, not in the next episode's move.
            robot.join_motion(timeout=JOIN_TIMEOUT)
        except Exception as e:  # the error that ended the last motion; recovery clears it
            log.warning("Franka at %s: last motion ended with: %s", self.host, e)
        try:
            recovered = robot.recover_from_errors()
        except Exception as e:
            raise RobotError(f"Franka at {self.host}: error recovery failed: {e}. "
                             + ADVICE.format(host=self.host)) from e
        # The verdict can rest on a state read just before the recovery took effect.
        deadline = time.monotonic() + JOIN_TIMEOUT
        while not recovered and time.monotonic() < deadline:
            time.sleep(0.02)
            recovered = not robot.has_errors
        if not recovered:
            raise RobotError(f"Franka at {self.host} needs manual error recovery (in Desk, or "
                             f"press and release the external activation device)")

    def close(self) -> None:
        self._stop.set()
        if self._hand_thread is not None:
            self._hand_thread.join(timeout=2.0)
            self._hand_thread = None
        if self._robot is not None:
            try:
                self._robot.stop()
            except Exception as e:  # closing must not fail on a robot already in error
                log.warning("Franka at %s: stop on close: %s", self.host, e)
            self._robot = None

    # --- internals --------------------------------------------------------------------------

    def _connected(self) -> Any:
        if self._robot is None:
            raise RobotError(f"Franka at {self.host} is not connected: call connect() first")
        return self._robot

    def _run_hand(self) -> None:
        done_closed: bool | None = None
        while not self._stop.is_set():
            with self._lock:
                want = self._want_closed
            try:
                if want is not None and want != done_closed:
                    # Blocking calls, in this thread only: franky's async hand commands queue
                    # behind one that has not finished and then never run (seen on franky-sim).
                    if want:  # grasp anything between fully closed and fully open
                        self._hand.grasp(0.0, self.gripper_speed, self.gripper_force,
                                         epsilon_outer=self.gripper_max_width)
                    else:
                        self._hand.move(self.gripper_max_width, self.gripper_speed)
                    done_closed = want
                width = float(self._hand.width)
                with self._lock:
                    self._width = width
            except Exception as e:
                log.error("Franka hand at %s: %s", self.host, e)
                with self._lock:
                    self._hand_error = str(e)
                done_closed = None  # try the command again
                time.sleep(1.0)
            self._stop.wait(GRIPPER_PERIOD)
