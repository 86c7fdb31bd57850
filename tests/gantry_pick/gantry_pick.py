"""GantryPick-v0: pick up a cube with a two-finger gripper on a 3-axis gantry (MuJoCo).

A self-contained gymnasium env, written as any third party would write one: its own MJCF,
its own controller and its own action convention. Importing this module registers
``GantryPick-v0``; with this directory on the Python path the id ``gantry_pick:GantryPick-v0``
imports and registers it in one go.

Scene
    A table (top at z = 0), a 4 cm cube resting on it near the origin, and a gripper hanging
    from a gantry that slides along world x, y and z. The gantry has no rotation.

Action: ``Box(low=[-2, -2, -2, -1], high=[2, 2, 2, 1], float32)``
    dims 0, 1, 2  translation of the gripper along world x, y, z (the world frame is the
                  gantry's base frame), ``TRANSLATION_SCALE`` = 0.005 m per unit, so the bound
                  (2 units) moves 1 cm per step. The action moves a position target which the
                  gantry's servos track; the target never leads the gripper by more than 2 cm
                  and stays inside the workspace box ``WORKSPACE_LOW``..``WORKSPACE_HIGH``.
    dim 3         gripper DELTA: the finger opening target changes by ``GRIPPER_DELTA`` = 0.25
                  of the full range (0.02 m of 0.08 m) per unit per step; positive closes,
                  negative opens, 0 keeps it. Four steps at +1 close a fully open gripper.

Control runs at 10 Hz (``CONTROL_DT`` = 0.1 s): each step holds the servo targets for 50
physics steps of 2 ms.

Observation: ``Dict``
    ``tcp``      float32 (3,)  xyz of the gripper centre (between the fingertips), metres, world
    ``fingers``  float32 (1,)  finger opening (gap between the pads), metres, 0 .. 0.08
    ``cube``     float32 (3,)  xyz of the cube's centre, metres, world
    ``camera``   uint8 (64, 64, 3)  the front camera (left out with ``render_camera=False``)

Reset: the cube's x, y are uniform in +-4 cm around the origin; the gripper starts open, 12 cm
above the table, within +-2 cm in x, y and +-1 cm in z of the centre. Seeded through
``reset(seed=...)``.

Success: ``info["is_success"]`` when the cube's centre is at least 4 cm above its resting
height. The env never terminates by itself (time limits come from ``gymnasium.make``); the
reward is 1.0 on a success step, else 0.0.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# Headless rendering unless the user chose a backend: EGL needs no display.
os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco  # noqa: E402

TRANSLATION_SCALE = 0.005  # metres per action unit
TRANSLATION_BOUND = 2.0  # action units
GRIPPER_DELTA = 0.25  # share of the finger range per action unit per step
FINGER_RANGE = 0.08  # metres, full opening
CUBE_HALF = 0.02
LIFT_SUCCESS = 0.04  # metres above the resting height
CONTROL_DT = 0.1
PHYSICS_DT = 0.002
MAX_LEAD = 0.02  # metres the servo target may lead the gripper
WORKSPACE_LOW = np.array([-0.12, -0.12, 0.015])
WORKSPACE_HIGH = np.array([0.12, 0.12, 0.20])
CUBE_RANGE = 0.04
START = np.array([0.0, 0.0, 0.12])
START_NOISE = np.array([0.02, 0.02, 0.01])
IMAGE_SIZE = 64

# Slide joints put the gripper centre at (qpos_x, qpos_y, qpos_z) in the world, so the servo
# targets are positions in metres. gravcomp keeps the servos from sagging under the gantry's
# weight; joint damping near critical for each servo's stiffness keeps tracking overshoot-free.
# The finger pads get torsional friction (condim 4) so a held cube does not spin out, and
# stiffer contacts (solref 0.01) than the default so the squeeze does not sink into the cube.
MJCF = f"""
<mujoco model="gantry_pick">
  <compiler angle="radian"/>
  <option timestep="{PHYSICS_DT}" integrator="implicitfast"/>
  <visual>
    <quality shadowsize="0"/>
    <global offwidth="{IMAGE_SIZE}" offheight="{IMAGE_SIZE}"/>
  </visual>
  <default>
    <geom solref="0.01 1"/>
    <default class="frame">
      <geom contype="0" conaffinity="0" rgba="0.35 0.35 0.4 1"/>
    </default>
  </default>
  <worldbody>
    <light pos="0.2 0.3 0.8" dir="-0.2 -0.3 -0.8" diffuse="0.8 0.8 0.8"/>
    <geom name="table" type="box" pos="0 0 -0.02" size="0.3 0.3 0.02" rgba="0.6 0.5 0.4 1"
          friction="0.8 0.005 0.0001"/>
    <geom class="frame" type="box" pos="0 0.2 0.28" size="0.25 0.01 0.01"/>
    <geom class="frame" type="box" pos="0 -0.2 0.28" size="0.25 0.01 0.01"/>
    <camera name="front" pos="0.3 0 0.25" xyaxes="0 1 0 -0.6 0 0.8" fovy="50"/>
    <body name="bridge">
      <joint name="x" type="slide" axis="1 0 0" range="-0.15 0.15" damping="80"/>
      <inertial pos="0 0 0.3" mass="0.5" diaginertia="0.01 0.01 0.01"/>
      <geom class="frame" type="box" pos="0 0 0.3" size="0.015 0.2 0.012"/>
      <body name="carriage">
        <joint name="y" type="slide" axis="0 1 0" range="-0.15 0.15" damping="60"/>
        <inertial pos="0 0 0.3" mass="0.2" diaginertia="0.001 0.001 0.001"/>
        <geom class="frame" type="box" pos="0 0 0.3" size="0.025 0.025 0.02"/>
        <body name="head" gravcomp="1">
          <joint name="z" type="slide" axis="0 0 1" range="0 0.25" damping="40"/>
          <inertial pos="0 0 0.06" mass="0.3" diaginertia="0.001 0.001 0.001"/>
          <site name="tcp" size="0.003" rgba="1 0 0 0"/>
          <geom class="frame" type="cylinder" pos="0 0 0.2" size="0.006 0.14"/>
          <geom name="palm" type="box" pos="0 0 0.05" size="0.015 0.05 0.008"
                rgba="0.2 0.2 0.25 1"/>
          <body name="finger_left" gravcomp="1">
            <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_RANGE / 2}"
                   damping="5"/>
            <geom name="pad_left" type="box" pos="0 0.005 0.015" size="0.012 0.005 0.025"
                  mass="0.03" condim="4" friction="1.5 0.01 0.0001" rgba="0.9 0.9 0.9 1"/>
          </body>
          <body name="finger_right" gravcomp="1">
            <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_RANGE / 2}"
                   damping="5"/>
            <geom name="pad_right" type="box" pos="0 -0.005 0.015" size="0.012 0.005 0.025"
                  mass="0.03" condim="4" friction="1.5 0.01 0.0001" rgba="0.9 0.9 0.9 1"/>
          </body>
        </body>
      </body>
    </body>
    <body name="cube" pos="0 0 {CUBE_HALF}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" mass="0.05"
            friction="1 0.005 0.0001" rgba="0.85 0.2 0.15 1"/>
    </body>
  </worldbody>
  <contact>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <actuator>
    <position name="x" joint="x" kp="3000" forcerange="-40 40"/>
    <position name="y" joint="y" kp="2000" forcerange="-40 40"/>
    <position name="z" joint="z" kp="1500" forcerange="-40 40"/>
    <position name="finger_left" joint="finger_left" kp="300" forcerange="-8 8"/>
    <position name="finger_right" joint="finger_right" kp="300" forcerange="-8 8"/>
  </actuator>
</mujoco>
"""


class GantryPickEnv(gym.Env):
    """Pick up a cube with a gantry gripper; see the module docstring for the conventions."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / CONTROL_DT))}

    def __init__(self, render_camera: bool = True, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_camera = render_camera
        self.render_mode = render_mode
        self.model = mujoco.MjModel.from_xml_string(MJCF)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._substeps = int(round(CONTROL_DT / m.opt.timestep))
        self._axes_qpos = np.array([m.joint(j).qposadr[0] for j in ("x", "y", "z")])
        self._fingers_qpos = np.array(
            [m.joint(j).qposadr[0] for j in ("finger_left", "finger_right")])
        self._cube_qpos = m.joint("cube").qposadr[0]
        self._tcp = m.site("tcp").id
        self._cube = m.body("cube").id

        high = np.array([TRANSLATION_BOUND] * 3 + [1.0], np.float32)
        self.action_space = spaces.Box(-high, high, dtype=np.float32)
        # Finite bounds wide enough for anything physical: the cube can fall off the table.
        obs = {
            "tcp": spaces.Box(-1.0, 1.0, (3,), np.float32),
            "fingers": spaces.Box(0.0, FINGER_RANGE, (1,), np.float32),
            "cube": spaces.Box(-2.0, 2.0, (3,), np.float32),
        }
        if render_camera:
            obs["camera"] = spaces.Box(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        self.observation_space = spaces.Dict(obs)

        self._renderer: mujoco.Renderer | None = None
        self._target = START.copy()
        self._finger_target = FINGER_RANGE
        self.elapsed_steps = 0  # steps since the last reset

    # --- state a person at the robot can see ----------------------------------------------

    def tcp_position(self) -> np.ndarray:
        return self.data.site_xpos[self._tcp].copy()

    def cube_position(self) -> np.ndarray:
        return self.data.xpos[self._cube].copy()

    def finger_opening(self) -> float:
        return float(np.clip(self.data.qpos[self._fingers_qpos].sum(), 0.0, FINGER_RANGE))

    def is_success(self) -> bool:
        return bool(self.cube_position()[2] >= CUBE_HALF + LIFT_SUCCESS)

    # --- gymnasium API --------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        rng = self.np_random
        cube_xy = rng.uniform(-CUBE_RANGE, CUBE_RANGE, 2)
        start = START + rng.uniform(-START_NOISE, START_NOISE)
        d.qpos[self._axes_qpos] = start
        d.qpos[self._fingers_qpos] = FINGER_RANGE / 2
        d.qpos[self._cube_qpos:self._cube_qpos + 7] = [*cube_xy, CUBE_HALF, 1, 0, 0, 0]
        self._target = start
        self._finger_target = FINGER_RANGE
        self._apply_targets()
        mujoco.mj_forward(m, d)
        self.elapsed_steps = 0
        return self._observe(), {"is_success": self.is_success()}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float64).ravel(), self.action_space.low,
                    self.action_space.high)
        tcp = self.tcp_position()
        target = np.clip(self._target + TRANSLATION_SCALE * a[:3], WORKSPACE_LOW, WORKSPACE_HIGH)
        # A target far ahead of a blocked gripper would wind up and jerk it once it is free.
        self._target = np.clip(target, tcp - MAX_LEAD, tcp + MAX_LEAD)
        self._finger_target = float(np.clip(
            self._finger_target - GRIPPER_DELTA * FINGER_RANGE * a[3], 0.0, FINGER_RANGE))
        self._apply_targets()
        mujoco.mj_step(self.model, self.data, nstep=self._substeps)
        self.elapsed_steps += 1
        success = self.is_success()
        return self._observe(), float(success), False, False, {"is_success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- helpers --------------------------------------------------------------------------

    def _apply_targets(self) -> None:
        self.data.ctrl[:3] = self._target
        self.data.ctrl[3:5] = self._finger_target / 2

    def _observe(self) -> dict[str, np.ndarray]:
        obs = {
            "tcp": np.clip(self.tcp_position(), -1.0, 1.0).astype(np.float32),
            "fingers": np.array([self.finger_opening()], np.float32),
            "cube": np.clip(self.cube_position(), -2.0, 2.0).astype(np.float32),
        }
        if self.render_camera:
            obs["camera"] = self._render()
        return obs

    def _render(self) -> np.ndarray:
        if self._renderer is None:  # created on first use: a state-only run never opens GL
            self._renderer = mujoco.Renderer(self.model, IMAGE_SIZE, IMAGE_SIZE)
        self._renderer.update_scene(self.data, camera="front")
        return self._renderer.render().copy()


if "GantryPick-v0" not in gym.registry:  # imported as a module and via "module:Id": once
    gym.register(id="GantryPick-v0", entry_point=f"{__name__}:GantryPickEnv",
                 max_episode_steps=80)
