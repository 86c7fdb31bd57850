"""The control clock of real hardware: the world moves on its own, so a tick only waits."""

from __future__ import annotations

import time

from hilrl.interfaces import Clock


class WallClock(Clock):
    """``tick()`` returns at the start of the next period (1 / hz after the previous one).

    After an overrun it restarts the schedule from now instead of ticking in a burst to catch
    up: a burst would send the arm several targets with no time to move between them.
    """

    def __init__(self, hz: float) -> None:
        if hz <= 0:
            raise ValueError(f"hz must be > 0, got {hz}")
        self.period = 1.0 / hz
        self._next = time.monotonic() + self.period

    def reset(self) -> None:
        self._next = time.monotonic() + self.period

    def tick(self) -> None:
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
            self._next += self.period
        else:
            self._next = time.monotonic() + self.period
