"""How a command ends on an error its user can fix: one line that says what was wrong, and an
exit code. The face (``hilrl``) and the nodes' own entry points (``python -m actor``) share it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from hilrl.config.io import ConfigError
from hilrl.interfaces import CameraError, DeviceError, RobotError
from hilrl.storage.dataset import DatasetError

USER_ERRORS = (ConfigError, DatasetError, DeviceError, CameraError, RobotError,
               FileNotFoundError)


def run_guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command, turning the errors a user can fix into one line and an exit code."""
    from hilrl.envs.wrappers import EmergencyStop

    try:
        return func(args)
    except USER_ERRORS as e:
        print(f"hilrl: error: {e}", file=sys.stderr)
        return 2
    except EmergencyStop as e:
        print(f"hilrl: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("hilrl: interrupted; everything already saved is kept", file=sys.stderr)
        return 130
