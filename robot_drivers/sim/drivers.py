"""The simulated world behind the same interfaces real hardware implements.

One SimWorld is shared by the arm, the cameras, the clock, the scene and the scripted expert,
the way one physical lab is shared by the Franka, the RealSenses and the person at the desk.
"""

from __future__ import annotations

import time

import numpy as np

from hilrl.config import TaskConfig
from hilrl.interfaces import Camera, CameraError, Clock, RobotDriver, RobotState, Scene
from robot_drivers.registry import Rig

from .world import SimSettings, SimWorld


class SimArm(RobotDriver):
    def __init__(self, world: SimWorld) -> None:
        self.world = world

    def connect(self) -> None:
        pass

    def state(self) -> RobotState:
        w = self.world
        return RobotState(
            tcp_pose=w.tcp_pose(),
            tcp_vel=w.tcp_velocity(),
            gripper_width=w.gripper_width(),
            wrench=w.wrench(),
            joint_positions=w.joint_positions(),
        )

    def move_to(self, pose: np.ndarray) -> None:
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (7,) or not np.all(np.isfinite(pose)):
            raise ValueError(f"move_to needs a finite (7,) pose [xyz, quat xyzw], got {pose!r}")
        self.world.set_target(pose)

    def gripper(self, command: float) -> None:
        self.world.set_gripper(command)

    def home(self) -> None:
        # A simulated arm can be put back exactly; a real one drives there (see the Franka driver).
        self.world.reset_arm()

    def recover(self) -> None:
        pass  # the simulated controller has no reflexes to clear


class SimCamera(Camera):
    def __init__(self, world: SimWorld, name: str) -> None:
        if name not in world.camera_names():
            raise CameraError(
                f"the sim has no camera {name!r}; it has {', '.join(world.camera_names())}")
        self.world = world
        self.name = name

    def read(self) -> np.ndarray:
        return self.world.render(self.name)


class SimClock(Clock):
    """Steps the physics one control period per tick; optionally paces it to the wall clock."""

    def __init__(self, world: SimWorld, hz: float, realtime: bool = False) -> None:
        self.world = world
        self.period = 1.0 / hz
        self.realtime = realtime
        self._next = time.monotonic()

    def reset(self) -> None:
        self._next = time.monotonic()

    def tick(self) -> None:
        self.world.advance(self.period)
        if self.realtime:
            self._next += self.period
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self._next = time.monotonic()  # fell behind: do not try to catch up in a burst


class SimScene(Scene):
    def __init__(self, world: SimWorld) -> None:
        self.world = world

    def reset(self, rng: np.random.Generator) -> None:
        self.world.reset_scene(rng)

    def success(self) -> bool:
        return self.world.success()

    def state(self) -> dict[str, np.ndarray]:
        state = {"object_pos": self.world.object_position()}
        target = self.world.task.target_position(self.world)
        if target is not None:
            state["target_pos"] = target
        return state


def make_rig(task: TaskConfig, settings: SimSettings, *, seed: int) -> Rig:
    """``env.robot: sim``: one SimWorld behind the arm, its rendered cameras, the clock that
    steps its physics and its scene; the world is shared with the scripted expert."""
    cfg = task.env
    world = SimWorld(settings, image_size=cfg.image_size)
    return Rig(SimArm(world), clock=SimClock(world, cfg.hz, cfg.realtime),
               scene=SimScene(world), camera=lambda c: SimCamera(world, c.name), world=world)
