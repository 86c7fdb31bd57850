"""A task's settings: the typed dataclasses (``task``) and the YAML/override loader (``io``)."""

from hilrl.config.io import ConfigError, dump_config, from_dict, load_config, to_dict
from hilrl.config.task import (
    DEVICE_AXES,
    STATE_KEYS,
    ActorConfig,
    CameraConfig,
    ClassifierSettings,
    DeviceConfig,
    EnvConfig,
    ExpertConfig,
    FrankaSettings,
    GymnasiumSettings,
    HttpRobotSettings,
    LearnerConfig,
    SimSettings,
    SpaceMouseSettings,
    TaskConfig,
    WorkspaceConfig,
    load_task,
)

__all__ = [
    "DEVICE_AXES", "STATE_KEYS", "ActorConfig", "CameraConfig", "ClassifierSettings",
    "ConfigError", "DeviceConfig", "EnvConfig", "ExpertConfig", "FrankaSettings",
    "GymnasiumSettings", "HttpRobotSettings", "LearnerConfig", "SimSettings",
    "SpaceMouseSettings", "TaskConfig", "WorkspaceConfig", "dump_config", "from_dict",
    "load_config", "load_task", "to_dict",
]
