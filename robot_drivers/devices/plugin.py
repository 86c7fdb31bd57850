"""``device.kind: plugin``: a person the user scripts for their own env, named
``module:function`` in the task file (``device.plugin.factory``).

The contract, for the factory ``make_person(env, *, seed, **kwargs) -> InputDevice``:

- ``env`` is the env as ``gymnasium.make`` built it (hilrl's robot env on an arm). The person
  may read anything of it, ``env.unwrapped``'s true scene state included, as a person at the
  robot sees the scene; it must never step, reset, seed or change the env.
- ``seed`` seeds the person's own randomness; ``kwargs`` are ``device.plugin.kwargs``.
- The device's ``read()`` is called once per control step, before the step, and must not
  block. It returns a ``Command``: a normalised base-frame twist in [-1, 1]^6 (full
  deflection is the ``action_layout``'s speed) and buttons: ``intervene`` while driving,
  ``gripper_close`` / ``gripper_open`` (neither keeps the gripper as it is), ``success``,
  ``estop``. An empty ``Command()`` lets the policy act. The layout turns it into the env's
  action, exactly as it does a SpaceMouse's.
- ``reset()``, optional, is called after every env reset; ``close()`` when the env closes.

Evaluation episodes never let the person steer (only its estop counts). ``hilrl train-sim``
records its demos with ``device.plugin.demo_kwargs`` merged over the kwargs (e.g. a person
who drives every step), then trains with the kwargs alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from hilrl.config import ConfigError, TaskConfig
from hilrl.interfaces import InputDevice


@dataclass(frozen=True)
class PluginSettings:
    """``device.kind: plugin``, section ``device.plugin``."""

    factory: str = ""  # "module:function", the module importable (on PYTHONPATH)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the factory
    # Merged over kwargs when train-sim records demos.
    demo_kwargs: dict[str, Any] = field(default_factory=dict)


def make_device(task: TaskConfig, settings: PluginSettings, *, world: Any, env: Any,
                seed: int) -> InputDevice:
    factory = load_factory(settings.factory)
    try:
        device = factory(env, seed=seed, **settings.kwargs)
    except TypeError as e:
        raise ConfigError(f"device.plugin: {settings.factory}(env, seed=..., **kwargs) refused "
                          f"device.plugin.kwargs {settings.kwargs}: {e}") from e
    if not isinstance(device, InputDevice):
        raise ConfigError(f"device.plugin.factory: {settings.factory} returned a "
                          f"{type(device).__name__}, not an InputDevice (hilrl.interfaces)")
    return device


def load_factory(target: str) -> Any:
    module, _, name = target.partition(":")
    if not module or not name:
        raise ConfigError(f"device.plugin.factory: {target!r} must name the person's factory "
                          "as 'module:function'")
    try:
        factory = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ConfigError(f"device.plugin.factory: cannot import {module!r} ({e}); put the "
                          "directory holding it on PYTHONPATH") from e
    except AttributeError as e:
        raise ConfigError(f"device.plugin.factory: {module!r} has no {name!r}") from e
    if not callable(factory):
        raise ConfigError(f"device.plugin.factory: {target} is not callable")
    return factory
