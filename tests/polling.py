"""Waiting on a device's reader thread in tests: poll briefly instead of sleeping long."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from hilrl.interfaces import Command, InputDevice

DEADLINE_S = 10.0  # only a failing wait takes this long; a loaded machine needs room


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE_S) -> Any:
    """Poll until predicate() returns something truthy; return it, or fail at the deadline."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = predicate()
        if result:
            return result
        time.sleep(0.002)
    pytest.fail(f"condition not met within {timeout} s")


def read_until(dev: InputDevice, cond: Callable[[Command], bool],
               timeout: float = DEADLINE_S) -> Command:
    """read() until a command satisfies cond; returns that command."""
    def matching() -> Command | None:
        cmd = dev.read()
        return cmd if cond(cmd) else None

    return wait_for(matching, timeout)
