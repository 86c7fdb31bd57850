"""The simulated arm's world: MuJoCo physics, an operational-space controller, rendering, and
the task on its table (robot_drivers/sim/tasks/, chosen by ``env.sim.task``).

The arm is torque-controlled by an operational-space controller that runs at the physics rate
and tracks a Cartesian pose target, the same kind of target the real Franka's impedance
controller gets, so everything above the driver sees the same interface in sim and on hardware.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

# Headless rendering: EGL works on the stock image; osmesa is the fallback users can pick.
os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco  # noqa: E402

from hilrl.config.io import from_dict, rest_field  # noqa: E402
from hilrl.geometry import quat_wxyz_from_xyzw, quat_xyzw_from_wxyz  # noqa: E402

from .mujoco_compat import full_inertia  # noqa: E402
from .scene import ARM_JOINTS, FINGER_MAX, HOME_QPOS, scene_xml  # noqa: E402
from .tasks import TASKS, SimTask, task_class  # noqa: E402


@dataclass(frozen=True)
class SimSettings:
    """The simulated arm's settings (``env.robot: sim``, section ``env.sim``). The cameras'
    render size is not here: it is the task's ``env.image_size``, as for real cameras. The
    task's own settings are its section, ``env.sim.<task>`` (e.g. ``env.sim.peg_insert``)."""

    task: str = "pick_cube"  # the objects on the table: a name in robot_drivers/sim/tasks
    physics_dt: float = 0.002
    # Operational-space gains: stiffness (1/s^2) for position and orientation, critically damped.
    kp_pos: float = 400.0
    kp_rot: float = 300.0
    kp_null: float = 10.0
    dynamics_every: int = 5  # physics steps between refreshes of the controller's model terms
    # Randomise object/table colour and lighting at every scene reset, so a reward classifier
    # trained on these frames does not latch onto one exact shade or brightness.
    jitter: bool = False
    # The tasks' settings sections by name, each checked by its task's dataclass here.
    tasks: dict[str, dict[str, Any]] = rest_field(sections=True)

    # Pick-cube's settings sat flat in env.sim before there were tasks; old files keep loading.
    __renamed_keys__: ClassVar[dict[str, str]] = {
        key: f"pick_cube.{key}" for key in ("cube_x", "cube_y", "lift_height")}

    def __post_init__(self) -> None:
        if self.physics_dt <= 0 or self.dynamics_every < 1:
            raise ValueError("physics_dt must be > 0 and dynamics_every >= 1")
        task_class(self.task)  # an unknown task names the known ones
        converted = {}
        for name in sorted({self.task, *self.tasks}):
            if name not in TASKS:
                raise ValueError(f"env.sim.{name}: unknown key; neither a key of env.sim nor "
                                 f"the settings of a sim task ({', '.join(sorted(TASKS))})")
            converted[name] = from_dict(task_class(name).settings_class,
                                        self.tasks.get(name, {}), f"env.sim.{name}")
        object.__setattr__(self, "_task_settings", converted)

    def task_settings(self, name: str | None = None) -> Any:
        """The settings of the task ``name`` (default: the chosen task), as its dataclass."""
        name = name or self.task
        if name not in self._task_settings:
            task_class(name)
            self._task_settings[name] = task_class(name).settings_class()
        return self._task_settings[name]


# Jitter ranges: wide on the task's objects (what the classifier must recognise in any colour),
# narrow on the table, brightness and a few degrees of light direction.
OBJECT_RGB_JITTER = 0.25
TABLE_RGB_JITTER = 0.05
LIGHT_SCALE = (0.6, 1.4)
LIGHT_POS_JITTER = 0.05  # metres
LIGHT_DIR_JITTER = 0.1  # added to each axis of the unit direction before renormalising


class SimWorld:
    """Owns the MuJoCo model and data. Drivers, cameras, the clock and the expert share one."""

    def __init__(self, config: SimSettings | None = None,
                 image_size: tuple[int, int] = (128, 128)) -> None:
        """``image_size``: (height, width) the cameras render."""
        self.config = c = config or SimSettings()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        height, width = self.image_size
        self.task: SimTask = task_class(c.task)(c.task_settings())
        t = self.task
        self.model = mujoco.MjModel.from_xml_string(
            scene_xml(t.objects_xml(), name=t.name, front_camera=t.front_camera,
                      wrist_camera=t.wrist_camera, render_width=width, render_height=height))
        self.model.opt.timestep = c.physics_dt
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._tcp = m.site("tcp").id
        self._arm_dofs = np.array([m.joint(j).dofadr[0] for j in ARM_JOINTS])
        self._arm_qpos = np.array([m.joint(j).qposadr[0] for j in ARM_JOINTS])
        self._fingers_qpos = np.array(
            [m.joint(f"finger_{s}").qposadr[0] for s in ("left", "right")])
        self._ctrl_lo, self._ctrl_hi = m.actuator_ctrlrange[:7].T
        self._force_adr = m.sensor("ft_force").adr[0]
        self._torque_adr = m.sensor("ft_torque").adr[0]
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self._mass = np.zeros((m.nv, m.nv))
        self._arm_block = np.ix_(self._arm_dofs, self._arm_dofs)
        self._home = np.asarray(HOME_QPOS)
        self._kd_null = 2.0 * np.sqrt(c.kp_null)
        self._kd_pos = 2.0 * np.sqrt(c.kp_pos)
        self._kd_rot = 2.0 * np.sqrt(c.kp_rot)
        self._object_geoms = [m.geom(name).id for name in t.jitter_geoms()]
        self._table_geom = m.geom("table").id
        # The model's own look, which every jittered reset starts from (so jitter never drifts).
        self._base_rgba = m.geom_rgba.copy()
        self._base_light = {name: getattr(m, name).copy()
                            for name in ("light_diffuse", "light_ambient", "light_pos",
                                         "light_dir")}
        self._base_headlight = (m.vis.headlight.ambient.copy(), m.vis.headlight.diffuse.copy())
        self._renderer: mujoco.Renderer | None = None
        self.episode = 0  # incremented on every scene reset; lets observers notice new episodes
        self.gripper_command = 0.0
        t.bind(self)
        self.reset_arm()

    # --- arm ------------------------------------------------------------------------------

    def reset_arm(self) -> None:
        d = self.data
        d.qpos[self._arm_qpos] = HOME_QPOS
        d.qvel[self._arm_dofs] = 0.0
        d.qpos[self._fingers_qpos] = FINGER_MAX
        d.qvel[:] = 0.0
        d.ctrl[7:9] = FINGER_MAX
        self.gripper_command = 0.0
        mujoco.mj_forward(self.model, d)
        self.set_target(self.tcp_pose())

    def set_target(self, pose: np.ndarray) -> None:
        self.target = np.asarray(pose, dtype=np.float64).copy()
        self._target_wxyz = quat_wxyz_from_xyzw(self.target[3:])

    def set_gripper(self, command: float) -> None:
        self.gripper_command = float(np.clip(self.task.gripper(command), 0.0, 1.0))
        self.data.ctrl[7:9] = (1.0 - self.gripper_command) * FINGER_MAX

    def tcp_pose(self) -> np.ndarray:
        q = np.empty(4)
        mujoco.mju_mat2Quat(q, self.data.site_xmat[self._tcp])
        return np.concatenate([self.data.site_xpos[self._tcp], quat_xyzw_from_wxyz(q)])

    def tcp_velocity(self) -> np.ndarray:
        vel = np.empty(6)
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_SITE, self._tcp, vel, 0)
        return np.concatenate([vel[3:], vel[:3]])  # MuJoCo gives (angular, linear)

    def gripper_width(self) -> float:
        return float(self.data.qpos[self._fingers_qpos].sum())

    def wrench(self) -> np.ndarray:
        """Force/torque measured at the wrist, rotated into the base frame."""
        s = self.data.sensordata
        rot = self.data.site_xmat[self.model.site("ft").id].reshape(3, 3)
        return np.concatenate([rot @ s[self._force_adr : self._force_adr + 3],
                               rot @ s[self._torque_adr : self._torque_adr + 3]])

    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._arm_qpos].copy()

    def _update_dynamics(self) -> None:
        """Jacobian, task-space inertia and null-space terms for the current configuration."""
        m, d = self.model, self.data
        dofs = self._arm_dofs
        mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self._tcp)
        jac = np.vstack([self._jacp[:, dofs], self._jacr[:, dofs]])
        full_inertia(m, d, self._mass)
        mass = self._mass[self._arm_block]
        mass_inv = np.linalg.inv(mass)
        task_mass = np.linalg.inv(jac @ mass_inv @ jac.T + 1e-6 * np.eye(6))
        jac_bar = mass_inv @ jac.T @ task_mass
        self._jac = jac
        self._jt_task_mass = jac.T @ task_mass
        self._null_mass = (np.eye(7) - jac.T @ jac_bar.T) @ mass

    def _control_torque(self) -> np.ndarray:
        d, c = self.data, self.config
        pos_err = self.target[:3] - d.site_xpos[self._tcp]
        current = np.empty(4)
        mujoco.mju_mat2Quat(current, d.site_xmat[self._tcp])
        rot_err_local = np.empty(3)
        mujoco.mju_subQuat(rot_err_local, self._target_wxyz, current)
        rot_err = d.site_xmat[self._tcp].reshape(3, 3) @ rot_err_local
        # Bounded errors keep the forces sane when the target jumps (e.g. right after a reset).
        pos_err *= min(1.0, 0.05 / (np.linalg.norm(pos_err) + 1e-12))
        rot_err *= min(1.0, 0.5 / (np.linalg.norm(rot_err) + 1e-12))

        qvel = d.qvel[self._arm_dofs]
        twist = self._jac @ qvel
        accel = np.concatenate([c.kp_pos * pos_err - self._kd_pos * twist[:3],
                                c.kp_rot * rot_err - self._kd_rot * twist[3:]])
        torque = self._jt_task_mass @ accel
        # Null-space posture keeps the redundant elbow near home instead of drifting.
        posture = c.kp_null * (self._home - d.qpos[self._arm_qpos]) - self._kd_null * qvel
        torque += self._null_mass @ posture
        torque += d.qfrc_bias[self._arm_dofs]
        return np.clip(torque, self._ctrl_lo, self._ctrl_hi)

    def advance(self, seconds: float) -> None:
        """Run the physics (with the controller at every physics step) for this long.

        The configuration-dependent terms (Jacobian, inertia) are refreshed every
        ``dynamics_every`` physics steps: they change slowly, and computing them dominates
        the cost of a step, while the errors and damping use the state of every step.
        """
        steps = max(1, round(seconds / self.model.opt.timestep))
        every = self.config.dynamics_every
        for i in range(steps):
            if i % every == 0:
                self._update_dynamics()
            self.data.ctrl[:7] = self._control_torque()
            mujoco.mj_step(self.model, self.data)

    # --- scene ----------------------------------------------------------------------------

    def reset_scene(self, rng: np.random.Generator) -> None:
        self.task.reset(self, rng)
        # Drawn after the task's objects, so turning jitter on does not move them.
        if self.config.jitter:
            self._jitter_appearance(rng)
        mujoco.mj_forward(self.model, self.data)
        self.episode += 1

    def _jitter_appearance(self, rng: np.random.Generator) -> None:
        """Colours and lights for this episode, drawn around the model's defaults. Only model
        parameters change, which the renderer reads every frame: no recompilation, no cost."""
        m = self.model
        m.geom_rgba[:] = self._base_rgba
        spreads = [(g, OBJECT_RGB_JITTER) for g in self._object_geoms]
        for geom, spread in (*spreads, (self._table_geom, TABLE_RGB_JITTER)):
            m.geom_rgba[geom, :3] = np.clip(
                self._base_rgba[geom, :3] + rng.uniform(-spread, spread, 3), 0.0, 1.0)
        base = self._base_light
        n = m.nlight
        m.light_diffuse[:] = base["light_diffuse"] * rng.uniform(*LIGHT_SCALE, (n, 1))
        m.light_ambient[:] = base["light_ambient"] * rng.uniform(*LIGHT_SCALE, (n, 1))
        m.light_pos[:] = base["light_pos"] + rng.uniform(-LIGHT_POS_JITTER, LIGHT_POS_JITTER,
                                                         (n, 3))
        direction = base["light_dir"] + rng.uniform(-LIGHT_DIR_JITTER, LIGHT_DIR_JITTER, (n, 3))
        m.light_dir[:] = direction / np.linalg.norm(direction, axis=1, keepdims=True)
        # The scene's only ambient light is the headlight's, so brightness varies there too.
        ambient, diffuse = self._base_headlight
        m.vis.headlight.ambient[:] = ambient * rng.uniform(*LIGHT_SCALE)
        m.vis.headlight.diffuse[:] = diffuse * rng.uniform(*LIGHT_SCALE)

    def object_position(self) -> np.ndarray:
        """The task's privileged object state (``object_pos``)."""
        return self.task.object_position(self)

    def success(self) -> bool:
        return self.task.success(self)

    # --- rendering ------------------------------------------------------------------------

    def render(self, camera: str) -> np.ndarray:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, *self.image_size)
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render()

    def camera_names(self) -> list[str]:
        return [self.model.camera(i).name for i in range(self.model.ncam)]

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
