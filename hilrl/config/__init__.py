"""A task's settings: the typed dataclasses (``task``) and the YAML/override loader (``io``).

Hardware settings (an arm's, a camera driver's, an input device's) are not here: each lives
beside its driver in robot_drivers/ and is checked when the env is built."""

from hilrl.config.io import ConfigError, dump_config, from_dict, load_config, to_dict
from hilrl.config.task import (
    DEVICE_AXES,
    STATE_KEYS,
    ActionLayout,
    ActorConfig,
    CameraConfig,
    ClassifierSettings,
    DeviceConfig,
    EnvConfig,
    EnvIntervention,
    GymnasiumSettings,
    LearnerConfig,
    TaskConfig,
    WorkspaceConfig,
    load_task,
)

__all__ = [
    "DEVICE_AXES", "STATE_KEYS", "ActionLayout", "ActorConfig", "CameraConfig",
    "ClassifierSettings", "ConfigError", "DeviceConfig", "EnvConfig", "EnvIntervention",
    "GymnasiumSettings", "LearnerConfig", "TaskConfig", "WorkspaceConfig", "dump_config",
    "from_dict", "load_config", "load_task", "to_dict",
]
