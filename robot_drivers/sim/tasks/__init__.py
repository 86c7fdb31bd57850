"""The tasks of the simulated arm, by the name ``env.sim.task`` gives.

Adding a task is one module here (its objects, reset, success, object state and the scripted
person's plan, with its settings dataclass) plus one line in ``TASKS``. Entries are lazy
``"module:Class"`` strings, so naming a task imports only that task.
"""

from __future__ import annotations

import difflib
import importlib

from .base import Person, Plan, SimTask

TASKS: dict[str, str] = {
    "pick_cube": "robot_drivers.sim.tasks.pick_cube:PickCube",
    "peg_insert": "robot_drivers.sim.tasks.peg_insert:PegInsert",
    "push": "robot_drivers.sim.tasks.push:Push",
}


def task_class(name: str) -> type[SimTask]:
    """The task registered as ``name``; an unknown name lists the known ones."""
    target = TASKS.get(name)
    if target is None:
        close = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown sim task {name!r}; known tasks: {', '.join(sorted(TASKS))}"
                         f"{hint}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["TASKS", "Person", "Plan", "SimTask", "task_class"]
