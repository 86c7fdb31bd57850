"""Child processes that a test kills: SIGKILL, no clean-up of their own, as a crash."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def killed_on_exit(argv: list[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """Run ``argv`` with its stdin and stdout as text pipes; on leaving the block, SIGKILL it
    (if it is still running), reap it and close the pipes."""
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             **popen)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
        child.stdin.close()
