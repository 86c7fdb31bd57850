"""The settings of a task, as typed dataclasses loaded from a YAML task file.

A task file sets any subset of these fields; everything else keeps the defaults below, which
describe the simulated pick-cube task. Load with :func:`load_task`, which also applies
command-line overrides such as ``env.hz=20`` and names the key in every error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..learning.pretrain_config import PretrainConfig
from ..learning.sac_config import SACConfig
from .io import load_config, rest_field

Vec3 = tuple[float, float, float]

# object_pos is privileged simulation state (where the cube is): it lets the simulated task be
# learned from state alone, for quick experiments; no real robot provides it.
STATE_KEYS = (
    "tcp_pose", "tcp_vel", "gripper_width", "wrench", "joint_positions", "object_pos",
    "target_pos")


@dataclass(frozen=True)
class WorkspaceConfig:
    """The safety box: no pose outside it is ever sent to the arm.

    Positions are clipped to [low, high] (metres, base frame). Orientations are clipped to
    within ``max_rotation`` (radians, per axis of the rotation vector) of ``orientation``
    (roll, pitch, yaw).
    """

    low: Vec3 = (0.30, -0.25, 0.015)
    high: Vec3 = (0.70, 0.25, 0.35)
    orientation: Vec3 = (math.pi, 0.0, 0.0)
    max_rotation: Vec3 = (0.5, 0.5, math.pi)

    def __post_init__(self) -> None:
        if any(lo >= hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError(f"low {self.low} must be below high {self.high} on every axis")
        if any(not 0 <= r <= math.pi for r in self.max_rotation):
            raise ValueError(f"max_rotation {self.max_rotation} must be within [0, pi]")


@dataclass(frozen=True)
class CameraConfig:
    name: str
    # Pixel box (x0, y0, x1, y1) cut from the raw frame before resizing; None keeps it whole.
    crop: tuple[int, int, int, int] | None = None
    # (height, width) the policy sees; None keeps the (cropped) frame size.
    size: tuple[int, int] | None = None
    # Real cameras only (a simulated arm renders each camera by name): the kind registered in
    # robot_drivers/registry.py (opencv, realsense, ...). A camera delivers frames of
    # env.image_size; crop/size then cut and scale them for the policy.
    driver: str = "opencv"
    # Every other key of the entry (source, fps, exposure, stale_after, ...) is the driver's
    # own setting, checked by its settings dataclass when the env is built.
    settings: dict[str, Any] = rest_field()

    def __post_init__(self) -> None:
        if self.crop is not None:
            x0, y0, x1, y1 = self.crop
            if not (0 <= x0 < x1 and 0 <= y0 < y1):
                raise ValueError(f"camera {self.name!r}: crop {self.crop} must be x0<x1, y0<y1")
        if self.size is not None and min(self.size) < 1:
            raise ValueError(f"camera {self.name!r}: size {self.size} must be positive")


Axis = int | None  # an action dimension of the env, or None: that axis is not commanded


@dataclass(frozen=True)
class ActionLayout:
    """How a person's device drives a gymnasium env (``env.gymnasium.action_layout``).

    A device reports a normalised twist in the base frame and gripper buttons (a
    ``Command``); this says which of the env's action dimensions (of its own action space,
    flattened, before hilrl rescales it to [-1, 1]) take them and in which units. See
    ``hilrl.envs.action_layout``. Empty (no translation, rotation or gripper dimension): the
    env has no device path, and only ``device.kind: none`` fits it.
    """

    # Action dimensions of the end effector's x, y, z motion and of its rotation (roll,
    # pitch, yaw: a rotation vector); null leaves that axis out.
    translation: tuple[Axis, Axis, Axis] = (None, None, None)
    rotation: tuple[Axis, Axis, Axis] = (None, None, None)
    translation_scale: float = 1.0  # metres per unit of the env's action
    rotation_scale: float = 1.0  # radians per unit of the env's action
    # Metres (radians) per step at the device's full deflection. None: the most the env's
    # action bounds allow on every listed axis alike.
    translation_speed: float | None = None
    rotation_speed: float | None = None
    # The frame the env reads the motion in: base (the device's own) or end_effector, which
    # rotates the device's twist by the orientation in observation[orientation_key].
    frame: Literal["base", "end_effector"] = "base"
    orientation_key: str | None = None
    quaternion_order: Literal["xyzw", "wxyz"] = "xyzw"
    # The gripper's action dimension and convention: binary (one value closes, another
    # opens), absolute (a target between open and closed) or delta (a change per step).
    gripper: int | None = None
    gripper_mode: Literal["binary", "absolute", "delta"] = "binary"
    # The env action that closes / opens: binary +1 / -1, absolute 1 / 0, delta (per step)
    # the dimension's upper / lower bound, unless set.
    gripper_close: float | None = None
    gripper_open: float | None = None

    def dims(self) -> list[int]:
        """Every action dimension the layout commands."""
        return [d for d in (*self.translation, *self.rotation, self.gripper) if d is not None]

    def __post_init__(self) -> None:
        for name in ("translation_scale", "rotation_scale", "translation_speed",
                     "rotation_speed"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        dims = self.dims()
        if any(d < 0 for d in dims):
            raise ValueError(f"action dimensions must be >= 0, got {dims}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"an action dimension may take one role only, got translation "
                             f"{list(self.translation)}, rotation {list(self.rotation)}, "
                             f"gripper {self.gripper}")
        if self.frame == "end_effector" and not self.orientation_key:
            raise ValueError("frame: end_effector needs orientation_key: the observation key "
                             "holding the end effector's orientation quaternion")


@dataclass(frozen=True)
class EnvIntervention:
    """Interventions the env makes itself, e.g. a user's own teleop wrapper
    (``env.gymnasium.intervention``): ``info[action_key]`` holds the action the person
    applied, in the env's own action space. With ``flag_key`` it counts only while
    ``info[flag_key]`` is true; without, whenever ``action_key`` is in the info."""

    action_key: str | None = None
    flag_key: str | None = None

    def __post_init__(self) -> None:
        if self.flag_key and not self.action_key:
            raise ValueError("flag_key needs action_key: the info key of the person's action")


@dataclass(frozen=True)
class GymnasiumSettings:
    """Any registered gymnasium env standing in for the robot (``env.robot: gymnasium``).

    Its observation becomes hilrl's ``{"state", "images"}`` and its Box action space is
    rescaled to [-1, 1]; see ``hilrl.envs.gym_adapter``.
    """

    # A registered id ("Pendulum-v1"), or "module:Id-v0": gymnasium imports the module
    # first, which registers the env.
    id: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to gymnasium.make
    # Dict observations: these keys, flattened and concatenated in order, are the state.
    # A Box observation is the state itself (leave empty).
    state_keys: list[str] = field(default_factory=list)
    # camera name -> the Dict observation key holding a uint8 HxWx3 image
    image_keys: dict[str, str] = field(default_factory=dict)
    # An info key whose truthy value means the task succeeded: the episode terminates.
    success_key: str | None = None
    # "env": the env's own reward; "success": 1 on success, else 0 (sparse, like the robot).
    reward: Literal["env", "success"] = "env"
    # How a device's commands become this env's actions (interventions, teleop, demos).
    action_layout: ActionLayout = field(default_factory=ActionLayout)
    intervention: EnvIntervention = field(default_factory=EnvIntervention)


@dataclass(frozen=True)
class ClassifierSettings:
    """The learned reward (``env.reward: classifier``); see hilrl.envs.classifier_reward."""

    path: str | None = None  # a file from `hilrl train-classifier`
    threshold: float | None = None  # None: the one chosen on validation data (in the file)
    consecutive: int = 1  # success only after this many positive frames in a row
    # Also required for success: state entries within bounds, "key" (1-element keys) or
    # "key[i]" -> [low, high] (null: open), on the state the policy sees (relative frame).
    state_condition: dict[str, list[float | None]] = field(default_factory=dict)
    # The person's check (actor.reward_review): after the classifier ends a training episode
    # as a success, the arm holds this many control steps while the device may say REJECT
    # ("not done"). 0: no check.
    review_steps: int = 10
    # After this many rejections, retrain the classifier in the background on its own data
    # plus the rejected frames as failures, and judge with it once trained. 0: never.
    retrain_every: int = 5
    retrain_epochs: int = 30  # the retraining's maximum epochs (early stopping decides)

    def __post_init__(self) -> None:
        if self.consecutive < 1:
            raise ValueError(f"consecutive must be >= 1, got {self.consecutive}")
        if self.review_steps < 0 or self.retrain_every < 0 or self.retrain_epochs < 1:
            raise ValueError("review_steps and retrain_every must be >= 0, retrain_epochs "
                             f">= 1; got {self.review_steps}, {self.retrain_every}, "
                             f"{self.retrain_epochs}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        for key, bounds in self.state_condition.items():
            if len(bounds) != 2:
                raise ValueError(f"state_condition {key!r}: expected [low, high], got {bounds}")


@dataclass(frozen=True)
class EnvConfig:
    # An arm registered in robot_drivers/registry.py (sim: the MuJoCo arm; franka; hilserl_http;
    # ...), or gymnasium: any gymnasium env (env.gymnasium).
    robot: str = "sim"
    gymnasium: GymnasiumSettings = field(default_factory=GymnasiumSettings)
    hz: float = 10.0
    # Simulated arms and gymnasium envs: pace to the wall clock at hz instead of running
    # flat out (a person teleoperating needs it).
    realtime: bool = False
    cameras: list[CameraConfig] = field(
        default_factory=lambda: [CameraConfig("front"), CameraConfig("wrist")])
    image_size: tuple[int, int] = (128, 128)  # (height, width) the cameras deliver
    state_keys: list[str] = field(
        default_factory=lambda: ["tcp_pose", "tcp_vel", "gripper_width"])
    rotation_actions: bool = False  # action = dxyz + gripper, or dxyz + drot + gripper
    max_translation: float = 0.02  # metres per step at action 1
    max_rotation: float = 0.1  # radians per step at action 1
    reset_pose: tuple[float, float, float, float, float, float] = (0.5, 0.0, 0.2, math.pi, 0, 0)
    reset_noise: float = 0.02  # uniform +-metres on x and y of the reset pose
    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    relative_frame: bool = True  # actions and pose observations in the end-effector frame
    max_episode_steps: int = 100
    # sim_success: the simulator's privileged "cube lifted"; classifier: the learned reward
    # (env.classifier); none: only the device's success button.
    reward: Literal["sim_success", "classifier", "none"] = "sim_success"
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    # The cameras the policy sees (None: all of env.cameras, or of a gymnasium env's
    # image_keys); others are recorded in demos, rendered for the reward classifier or
    # videos, and never sent to the learner.
    policy_cameras: list[str] | None = None
    # A pretrained image encoder (hilrl pretrain-encoder): the policy sees its features of
    # the cameras appended to the state, instead of the images ("" = none).
    frozen_encoder: str = ""
    gripper_penalty: float = 0.0  # added to info["grasp_penalty"] on each gripper toggle
    # The arms' settings sections by name (env.sim, env.franka, ...): each is checked by its
    # arm's settings dataclass when the env is built; the core does not know them.
    sections: dict[str, dict[str, Any]] = rest_field(sections=True)

    def section(self, name: str) -> dict[str, Any]:
        """The settings section ``env.<name>`` as written in the task (empty: defaults)."""
        return self.sections.get(name, {})

    @property
    def commands_rotation(self) -> bool:
        """Whether a device's rotation reaches the env (rotation actions, or a gymnasium
        env's action layout with rotation dimensions)."""
        if self.robot == "gymnasium":
            return any(d is not None for d in self.gymnasium.action_layout.rotation)
        return self.rotation_actions

    def __post_init__(self) -> None:
        if self.hz <= 0:
            raise ValueError(f"hz must be > 0, got {self.hz}")
        unknown = [k for k in self.state_keys if k not in STATE_KEYS]
        if unknown or not self.state_keys:
            raise ValueError(f"state_keys {self.state_keys}: choose from {', '.join(STATE_KEYS)}")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        if self.robot == "gymnasium":  # a gymnasium env's cameras are its image keys
            names = list(self.gymnasium.image_keys)
        if self.policy_cameras is not None and (unknown := set(self.policy_cameras) - set(names)):
            raise ValueError(f"policy_cameras {sorted(unknown)} are not in the cameras {names}")
        if self.reward == "classifier" and not self.classifier.path:
            raise ValueError("reward: classifier needs classifier.path (hilrl train-classifier)")
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")


DEVICE_AXES = ("x", "y", "z", "roll", "pitch", "yaw")


@dataclass(frozen=True)
class DeviceConfig:
    # An input device registered in robot_drivers/registry.py: scripted (the simulated person,
    # settings in device.expert), plugin (a person scripted for any env, device.plugin),
    # spacemouse, gamepad, keyboard, none, ...
    kind: str = "scripted"
    # Twist axes (after axes/scale) below this are zero; all of them below is "hands off".
    deadzone: float = 0.05
    # Hand-held devices (spacemouse, gamepad, keyboard): end-effector axis i of the twist is
    # the device axis named axes[i], "-" in front flips it. The default is the identity.
    axes: tuple[str, str, str, str, str, str] = DEVICE_AXES
    scale: tuple[float, float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    # Device button (or "a+b" chord) -> gripper_close, gripper_open, intervene, success or
    # estop. Empty: the device's default map (see its README section).
    buttons: dict[str, str] = field(default_factory=dict)
    # The devices' settings sections by name (device.spacemouse, device.gamepad,
    # device.expert, ...), checked by each device's settings dataclass when the env is built.
    sections: dict[str, dict[str, Any]] = rest_field(sections=True)

    __moved_keys__: ClassVar[dict[str, str]] = {
        "gamepad_index": "moved: write device.gamepad.index instead (each device's own "
                         "settings now live in its section, device.<kind>)"}

    def section(self, name: str) -> dict[str, Any]:
        """The settings section ``device.<name>`` as written in the task (empty: defaults)."""
        return self.sections.get(name, {})

    def __post_init__(self) -> None:
        if not 0.0 <= self.deadzone < 1.0:
            raise ValueError(f"deadzone must be in [0, 1), got {self.deadzone}")
        names = [a.lstrip("+-") for a in self.axes]
        if sorted(names) != sorted(DEVICE_AXES):
            raise ValueError(f"axes {list(self.axes)} must name each of {', '.join(DEVICE_AXES)} "
                             f"once, optionally with a '-' in front")
        buttons = {"gripper_close", "gripper_open", "intervene", "success", "estop"}
        if bad := {k: v for k, v in self.buttons.items() if v not in buttons}:
            raise ValueError(f"buttons {bad}: map to one of {', '.join(sorted(buttons))}")


@dataclass(frozen=True)
class LearnerConfig:
    """The learner node (``hilrl learner``)."""

    bind: str = "tcp://127.0.0.1:5555"  # transitions from actors (ROUTER)
    weights_bind: str = "tcp://127.0.0.1:5556"  # weights to actors (PUB)
    keys: str | None = None  # CURVE key directory (``hilrl keys``); needed beyond loopback
    insecure: bool = False  # bind beyond loopback without keys (trusted networks only)
    demos: list[str] = field(default_factory=list)  # dataset directories (record-demos)
    batch_size: int = 256  # per critic step; one update samples utd * batch_size
    demo_ratio: float = 0.5  # share of each batch from demos + interventions
    online_capacity: int = 200_000  # transitions kept from actors
    demo_capacity: int = 100_000  # demo + intervention transitions kept
    min_transitions: int = 100  # demo + online transitions before the first update
    # Updates per env step received, at most (None: as fast as the learner can). A learner
    # far ahead of its actors only overfits the first few episodes.
    max_updates_per_step: float | None = None
    publish_every: int = 10  # updates between weight publications
    log_every: int = 100  # updates between metric records
    checkpoint_every: int = 2000  # updates between checkpoints (and one on exit)
    keep_checkpoints: int = 2
    max_updates: int | None = None  # stop after this many (None: until stopped)
    # Local devices (GPUs) to split each batch over, the parameters copied to each
    # (hilrl.learning.data_parallel). None: as many as divide batch_size evenly.
    devices: int | None = None
    tensorboard: bool = True  # event files in <run>/learner/tb (metrics.jsonl is always written)
    wandb_project: str | None = None  # also log to Weights & Biases (pip install 'hilrl[wandb]')

    def __post_init__(self) -> None:
        if not 0.0 <= self.demo_ratio <= 1.0:
            raise ValueError(f"demo_ratio must be in [0, 1], got {self.demo_ratio}")
        for name in ("batch_size", "online_capacity", "demo_capacity", "publish_every",
                     "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"devices must be >= 1 (or unset: all that fit), got {self.devices}")


@dataclass(frozen=True)
class ActorConfig:
    """The actor node (``hilrl actor``)."""

    id: str = "actor0"  # unique per actor: names its data stream at the learner
    learner: str = "tcp://127.0.0.1:5555"
    weights: str = "tcp://127.0.0.1:5556"
    keys: str | None = None  # CURVE key directory of this actor (``hilrl keys``)
    # Control loop rate; None: env.hz. Simulation only: 0 runs as fast as the CPU allows.
    hz: float | None = None
    # When the learner stops answering: keep acting with the last policy (transitions wait
    # in the outbox), or hold the arm until it is back.
    on_learner_lost: Literal["continue", "hold"] = "continue"
    compress: Literal["raw", "png", "jpeg"] = "raw"  # camera images on the wire
    # Every transition written to disk and fsynced inside the control step that made it, so
    # a killed actor loses none (hilrl.transport.outbox, "Durable puts"); costs the loop a
    # write and an fsync per step.
    durable: bool = False
    # A live view in Rerun (pip install 'hilrl[viewer]'; actor/viewer.py): "file" (an .rrd
    # in the actor's run directory), "spawn" (a viewer on this machine) or the
    # rerun+http://HOST:PORT/proxy address of a running viewer. None: off.
    viewer: str | None = None

    def __post_init__(self) -> None:
        if self.hz is not None and self.hz < 0:
            raise ValueError(f"hz must be >= 0, got {self.hz}")
        if self.viewer not in (None, "file", "spawn") and not str(self.viewer).startswith(
                "rerun+http://"):
            raise ValueError(f"viewer must be 'file', 'spawn' or a rerun+http://HOST:PORT/proxy "
                             f"address of a running viewer, got {self.viewer!r}")


@dataclass(frozen=True)
class ResidualConfig:
    """Residual RL (ResiP, Ankile et al. 2024): a frozen base policy acts, and SAC learns a
    bounded correction on top (``hilrl.envs.residual``)."""

    # "" (off), a policy file (``hilrl train-bc``), or "module:factory", a function of the
    # task returning a hilrl.learning.base_policy.BasePolicy (a policy trained elsewhere).
    base: str = ""
    # The bound, in the env's action units: the env gets clip(base + scale * residual),
    # residual in [-1, 1]. A person's correction beyond it is stored at the bound.
    scale: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.scale <= 2.0:
            raise ValueError(f"scale must be in (0, 2], got {self.scale}")


@dataclass(frozen=True)
class TaskConfig:
    name: str = "sim_pick_cube"
    env: EnvConfig = field(default_factory=EnvConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    agent: SACConfig = field(default_factory=SACConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    # How `hilrl pretrain-encoder` (and train-sim's encoder stage) trains env.frozen_encoder.
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    seed: int = 0


def load_task(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TaskConfig:
    """Read a task file (None: the defaults) and apply ``key.sub=value`` overrides."""
    return load_config(TaskConfig, path, overrides)
