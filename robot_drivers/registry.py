"""Every arm, camera and input device hilrl can build, by the kind a task file names.

Three tables: arms (``env.robot``), cameras (each camera's ``driver``) and input devices
(``device.kind``). An entry names a factory and the settings dataclass of its kind, both as
lazy ``"module:name"`` strings (or the objects themselves), so importing this module imports
no driver: franky, hidapi, pygame, pyrealsense2 and mujoco load only when their kind is built.

The core keeps each kind's settings as an untyped mapping (``env.<section>``,
``device.<section>``, the extra keys of a camera entry); :func:`resolve` converts them with
the kind's dataclass, so an unknown key gets its did-you-mean and a wrong type is refused,
before anything is opened.

Factories are called with the task, the kind's settings instance and keyword context:

- arm: ``factory(task, settings, *, seed) -> Rig`` (not connected yet: the env connects it)
- camera: ``factory(task, settings, *, camera) -> Camera`` (``camera``: its CameraConfig)
- device: ``factory(task, settings, *, world, env, seed) -> InputDevice`` (``world``: the
  rig's shared world, e.g. the simulation the scripted expert reads, None on hardware;
  ``env``: the robot env, or the gymnasium env as ``gymnasium.make`` built it)

Adding hardware is one module (its driver, settings dataclass and factory) plus one
``register_*`` line below; a plug-in outside this package calls ``register_*`` itself before
the env is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hilrl.config import CameraConfig, TaskConfig
from hilrl.config.io import ConfigError, declared_keys, from_dict, unknown_key
from hilrl.interfaces import Camera, Clock, InputDevice, NullDevice, RobotDriver, Scene


@dataclass
class Rig:
    """What an arm factory builds: the arm and whatever comes with it."""

    driver: RobotDriver
    clock: Clock | None = None  # None: the wall clock at env.hz (hardware moves on its own)
    scene: Scene | None = None  # privileged scene reset + success; simulation only
    # The arm renders its own cameras (simulation): opens one by its config. None: each camera
    # is opened by its driver (the cameras table).
    camera: Callable[[CameraConfig], Camera] | None = None
    world: Any = None  # shared with devices that read it (scripted expert); closed with the env


@dataclass(frozen=True)
class NoSettings:
    """The settings of a kind that has none."""


@dataclass(frozen=True)
class Entry:
    kind: str
    factory: str | Callable[..., Any]  # "module:name" or the callable
    settings: str | type  # "module:Name" or the dataclass
    section: str  # where its settings sit in the task file (arms, devices)

    def settings_class(self) -> type:
        return _load(self.settings, self.kind)

    def build(self, task: TaskConfig, settings: Any, **context: Any) -> Any:
        return _load(self.factory, self.kind)(task, settings, **context)


class Table:
    """One kind -> Entry table; ``what`` names it in errors ("robot", "camera driver", ...)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.entries: dict[str, Entry] = {}

    def register(self, kind: str, factory: str | Callable[..., Any], *,
                 settings: str | type | None = None, section: str | None = None,
                 replace: bool = False) -> Callable[[], None]:
        """Register ``kind``; returns an undo that restores what the kind was before (tests
        register toys and undo them). A kind registered twice is refused unless ``replace``."""
        if not kind or not isinstance(kind, str):
            raise ValueError(f"a {self.what} kind must be a non-empty string, got {kind!r}")
        before = self.entries.get(kind)
        if before is not None and not replace:
            raise ValueError(f"{self.what} {kind!r} is already registered ({before.factory}); "
                             f"pass replace=True to override it")
        section = section or kind
        if clash := [e.kind for e in self.entries.values()
                     if e.section == section and e.kind != kind]:
            raise ValueError(f"{self.what} {kind!r}: its settings section {section!r} is "
                             f"already {clash[0]!r}'s; choose another section")
        self.entries[kind] = Entry(kind, factory, NoSettings if settings is None else settings,
                                   section)

        def undo() -> None:
            if before is None:
                self.entries.pop(kind, None)
            else:
                self.entries[kind] = before

        return undo

    def kinds(self) -> list[str]:
        return sorted(self.entries)

    def sections(self) -> set[str]:
        return {e.section for e in self.entries.values()}

    def get(self, kind: str, path: str, also: Sequence[str] = ()) -> Entry:
        """The entry of ``kind``; an unknown kind names the registered ones."""
        entry = self.entries.get(kind)
        if entry is None:
            known = sorted([*self.entries, *also])
            close = difflib.get_close_matches(str(kind), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown {self.what} {kind!r}; registered: "
                              f"{', '.join(known)}{hint}")
        return entry


ARMS = Table("robot")
CAMERAS = Table("camera driver")
DEVICES = Table("input device")


def register_arm(kind: str, factory: str | Callable[..., Any], *,
                 settings: str | type | None = None, section: str | None = None,
                 replace: bool = False) -> Callable[[], None]:
    """An arm for ``env.robot: kind``, its settings in ``env.<section>`` (default: kind)."""
    return ARMS.register(kind, factory, settings=settings, section=section, replace=replace)


def register_camera(kind: str, factory: str | Callable[..., Any], *,
                    settings: str | type | None = None,
                    replace: bool = False) -> Callable[[], None]:
    """A camera for ``driver: kind``; its settings are the camera entry's other keys."""
    return CAMERAS.register(kind, factory, settings=settings, replace=replace)


def register_device(kind: str, factory: str | Callable[..., Any], *,
                    settings: str | type | None = None, section: str | None = None,
                    replace: bool = False) -> Callable[[], None]:
    """An input device for ``device.kind: kind``, settings in ``device.<section>``."""
    return DEVICES.register(kind, factory, settings=settings, section=section, replace=replace)


# --- the built-in hardware: one line each ------------------------------------------------------

register_arm("sim", "robot_drivers.sim.drivers:make_rig",
             settings="robot_drivers.sim.world:SimSettings")
register_arm("franka", "robot_drivers.franka:make_rig",
             settings="robot_drivers.franka:FrankaSettings")
register_arm("hilserl_http", "robot_drivers.hilserl_http:make_rig",
             settings="robot_drivers.hilserl_http:HttpRobotSettings")

register_camera("opencv", "robot_drivers.cameras.opencv:make_camera",
                settings="robot_drivers.cameras.opencv:OpenCVSettings")
register_camera("realsense", "robot_drivers.cameras.realsense:make_camera",
                settings="robot_drivers.cameras.realsense:RealSenseSettings")

register_device("none", "robot_drivers.registry:make_null_device")
register_device("scripted", "robot_drivers.devices.scripted:make_device",
                settings="robot_drivers.devices.scripted:ExpertConfig", section="expert")
register_device("keyboard", "robot_drivers.devices.keyboard:make_device",
                settings="robot_drivers.devices.keyboard:KeyboardSettings")
register_device("spacemouse", "robot_drivers.devices.spacemouse:make_device",
                settings="robot_drivers.devices.spacemouse:SpaceMouseSettings")
register_device("gamepad", "robot_drivers.devices.gamepad:make_device",
                settings="robot_drivers.devices.gamepad:GamepadSettings")
register_device("plugin", "robot_drivers.devices.plugin:make_device",
                settings="robot_drivers.devices.plugin:PluginSettings")


def make_null_device(task: TaskConfig, settings: NoSettings, **_: Any) -> InputDevice:
    """``device.kind: none``: no person attached."""
    return NullDevice()


# --- resolving a task --------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A registered kind with its checked settings, ready to build."""

    entry: Entry
    settings: Any

    def build(self, task: TaskConfig, **context: Any) -> Any:
        return self.entry.build(task, self.settings, **context)


@dataclass(frozen=True)
class Parts:
    arm: Part | None  # None: a robot the env factory builds itself (gymnasium)
    cameras: list[Part]  # one per env.cameras entry, in order
    device: Part


def resolve(task: TaskConfig, *, own_robots: Sequence[str] = ()) -> Parts:
    """Check the task's hardware against the registry: every kind is registered, every
    settings section belongs to a registered kind, and all settings convert to their
    dataclasses. Raises ConfigError naming the dotted key; opens nothing.

    ``own_robots``: values of env.robot that are not arms (gymnasium), named in errors."""
    env, device = task.env, task.device
    _check_sections(env.sections, ARMS, "env", declared_keys(type(env)))
    _check_sections(device.sections, DEVICES, "device", declared_keys(type(device)))
    arm = None
    if env.robot not in own_robots:
        entry = ARMS.get(env.robot, "env.robot", also=own_robots)
        arm = Part(entry, _settings(entry, env.section(entry.section), f"env.{entry.section}"))
    cameras = []
    camera_keys = declared_keys(CameraConfig)
    for i, cam in enumerate(env.cameras):
        path = f"env.cameras[{i}]"
        entry = CAMERAS.get(cam.driver, f"{path}.driver")
        cameras.append(Part(entry, _settings(entry, cam.settings, path, beside=camera_keys,
                                             owner=f"a {cam.driver} camera")))
    entry = DEVICES.get(device.kind, "device.kind")
    dev = Part(entry, _settings(entry, device.section(entry.section), f"device.{entry.section}"))
    return Parts(arm, cameras, dev)


def _settings(entry: Entry, mapping: Mapping[str, Any], path: str, *,
              beside: Sequence[str] = (), owner: str = "") -> Any:
    """Convert ``mapping`` with the kind's dataclass. ``beside``: the keys of ``owner`` the
    settings share an entry with (a camera's name, size, ...), offered in the did-you-mean."""
    cls = entry.settings_class()
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"{entry.kind!r}: its settings {entry.settings!r} is not a dataclass")
    known = declared_keys(cls)
    for key in mapping:
        if beside and key not in known:
            raise unknown_key(f"{path}.{key}", [*beside, *known],
                              what=f"the keys of {owner}")
    return from_dict(cls, mapping, path)


def _check_sections(sections: Mapping[str, Mapping[str, Any]], table: Table, path: str,
                    fields: Sequence[str]) -> None:
    """Every ``name: {...}`` section in env/device must be a registered kind's settings, and
    convert to them, chosen kind or not: a typo in a section waiting for its day (the
    franka section of a task run in sim) is caught now, not on the robot. Anything else is a
    typo of a key (``workspce``) or of a kind (``frnka``)."""
    owners = {e.section: e for e in table.entries.values()}
    for name, mapping in sections.items():
        if name not in owners:
            close = difflib.get_close_matches(name, [*fields, *owners], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}.{name}: unknown key; neither a key of {path} nor the "
                              f"settings of a registered {table.what} "
                              f"({', '.join(sorted(owners))}){hint}")
        _settings(owners[name], mapping, f"{path}.{name}")


def _load(target: str | Any, kind: str) -> Any:
    """Import a lazy ``"module:name"`` target (anything else is returned as it is)."""
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"{kind!r}: registered target {target!r} must be 'module:name'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"{kind!r} is registered as {target!r}, which cannot be loaded: "
                          f"{e}") from e
