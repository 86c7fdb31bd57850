"""Terminal keyboard teleoperation: an InputDevice that needs no X display.

The device puts a terminal (by default the one on stdin) into cbreak mode (no echo, no line
buffering; Ctrl-C still interrupts) and reads key presses in a background daemon thread. It
works over SSH and in a bare console, where pynput and pygame cannot.

A terminal reports key presses and auto-repeats, never key releases. Each motion key press
therefore drives its axis for ``hold_s`` seconds (long enough to bridge the terminal's
initial auto-repeat delay), and every repeat extends it: holding a key moves steadily, and
the motion stops about ``hold_s`` after the key is let go. Terminals repeat only the last key
held, so two motion keys held together move diagonally for at most ``hold_s``; tap them
alternately (or remap) for sustained diagonal motion.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import select
import sys
import termios
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hilrl.config import TaskConfig
from hilrl.interfaces import Button, Command, DeviceError, InputDevice
from robot_drivers.devices.mapping import IDENTITY_AXES, TwistMapping, device_command

log = logging.getLogger(__name__)


# Actions a key can be bound to: a signed twist axis, or one of the Button names.
AXES: dict[str, int] = {"x": 0, "y": 1, "z": 2, "roll": 3, "pitch": 4, "yaw": 5}
MOTION_ACTIONS: dict[str, tuple[int, float]] = {
    f"{sign}{name}": (axis, 1.0 if sign == "+" else -1.0)
    for name, axis in AXES.items()
    for sign in "+-"
}
BUTTON_ACTIONS = frozenset(Button.ALL)

# Keys that have names (the rest are bound by their single printable character).
KEY_NAMES = frozenset({"space", "enter", "esc", "tab", "backspace", "up", "down", "left", "right"})
_CHAR_NAMES = {
    " ": "space",
    "\r": "enter",
    "\n": "enter",
    "\x1b": "esc",
    "\t": "tab",
    "\x7f": "backspace",
    "\x08": "backspace",
}
_ARROWS = {ord("A"): "up", ord("B"): "down", ord("C"): "right", ord("D"): "left"}

DEFAULT_KEY_MAP: dict[str, str] = {
    "w": "+x",
    "s": "-x",
    "a": "+y",
    "d": "-y",
    "r": "+z",
    "f": "-z",
    "up": "+x",
    "down": "-x",
    "left": "+y",
    "right": "-y",
    "c": Button.GRIPPER_CLOSE,
    "v": Button.GRIPPER_OPEN,
    "space": Button.INTERVENE,
    "enter": Button.SUCCESS,
    "backspace": Button.REJECT,
    "esc": Button.ESTOP,
    "x": Button.ESTOP,
}
ROTATION_KEY_MAP: dict[str, str] = {
    "i": "+roll",
    "k": "-roll",
    "j": "+pitch",
    "l": "-pitch",
    "u": "+yaw",
    "o": "-yaw",
}

_NOT_A_TERMINAL = (
    "the keyboard input device needs an interactive terminal, but {what} is not a TTY "
    "(running under a pipe, a service, docker without -it, or pytest?). Use "
    "device.kind=scripted for an unattended run, or a SpaceMouse."
)


def _normalise_key(key: str) -> str:
    if key in _CHAR_NAMES:
        return _CHAR_NAMES[key]
    if key.lower() in KEY_NAMES:
        return key.lower()
    if len(key) == 1 and key.isprintable():
        return key
    raise ValueError(
        f"unknown key {key!r}: use one printable character or one of {sorted(KEY_NAMES)}"
    )


def _parse_keys(buf: bytes, final: bool) -> tuple[list[str], bytes]:
    """Split terminal input into key names; returns (keys, unparsed tail).

    Printable characters come back as themselves, control keys by name (``_CHAR_NAMES``),
    arrow keys (CSI ``ESC [ ... A-D`` and SS3 ``ESC O A-D``) as "up"/"down"/"left"/"right";
    other escape sequences (function keys, Home, PageUp, ...) are dropped. An ESC at the end
    of ``buf`` may be the start of a sequence split across reads: it is kept as the tail
    unless ``final``, in which case it counts as a lone Esc key. An ESC followed by anything
    other than a sequence introducer (Alt+key, or Esc typed fast before another key) is an
    Esc key too, and the next byte is parsed on its own. Bytes >= 0x80 (non-ASCII) are dropped.
    """
    keys: list[str] = []
    i, n = 0, len(buf)
    while i < n:
        b = buf[i]
        if b != 0x1B:
            if b < 0x80:
                ch = chr(b)
                keys.append(_CHAR_NAMES.get(ch, ch))
            i += 1
            continue
        if i + 1 >= n:  # lone ESC so far
            if not final:
                break
            keys.append("esc")
            i += 1
            continue
        intro = buf[i + 1]
        if intro == ord("["):  # CSI: ESC [ params(0x30-0x3F)* intermediates(0x20-0x2F)* final
            j = i + 2
            while j < n and 0x20 <= buf[j] <= 0x3F:
                j += 1
            if j >= n:  # incomplete
                if not final:
                    break
                keys.append("esc")  # timed out: take it as Esc, parse the rest as keys
                i += 1
                continue
            if 0x40 <= buf[j] <= 0x7E:
                if buf[j] in _ARROWS:
                    keys.append(_ARROWS[buf[j]])
                i = j + 1
            else:  # malformed: drop what we have and go on from the odd byte
                i = j
            continue
        if intro == ord("O"):  # SS3: ESC O final
            if i + 2 >= n:
                if not final:
                    break
                keys.append("esc")
                i += 1
                continue
            if buf[i + 2] in _ARROWS:
                keys.append(_ARROWS[buf[i + 2]])
            i += 3
            continue
        keys.append("esc")
        i += 1
    return keys, buf[i:]


@dataclass(frozen=True)
class KeyboardSettings:
    """``device.kind: keyboard``, section ``device.keyboard``."""

    speed: float = 1.0  # each pressed axis reads +-speed (before device.scale)
    hold_s: float = 0.5  # how long one press (or auto-repeat) keeps an axis active

    def __post_init__(self) -> None:
        if self.speed <= 0 or self.hold_s <= 0:
            raise ValueError(f"speed and hold_s must be > 0, got {self.speed}, {self.hold_s}")


def make_device(task: TaskConfig, settings: KeyboardSettings, *, world: Any,
                env: Any, seed: int) -> KeyboardDevice:
    """The terminal's keyboard; the rotation keys only when the task's actions rotate."""
    d = task.device
    return KeyboardDevice(rotation=task.env.commands_rotation, speed=settings.speed,
                          hold_s=settings.hold_s, axes=d.axes, scale=d.scale)


class KeyboardDevice(InputDevice):
    """Teleoperate from a terminal's keyboard.

    Args:
        fd: file descriptor of the terminal to read; default ``sys.stdin``. It must be a TTY,
            otherwise ``DeviceError`` is raised. The device never closes it.
        key_map: ``{key: action}``. A key is one printable character (letters also match their
            upper case unless the upper case is bound itself) or one of ``KEY_NAMES``
            ("space", "enter", "esc", "tab", "backspace", "up", "down", "left", "right").
            An action is a signed axis ("+x", "-x", "+y", "-y", "+z", "-z", "+roll", "-roll",
            "+pitch", "-pitch", "+yaw", "-yaw") or a ``Button`` name ("gripper_close",
            "gripper_open", "intervene", "success", "reject", "estop"). Default:
            ``DEFAULT_KEY_MAP``, plus ``ROTATION_KEY_MAP`` when ``rotation`` is set::

                w / s        +x / -x   (away from / towards the robot base)
                a / d        +y / -y   (left / right)
                r / f        +z / -z   (up / down)
                arrow keys   up/down = +x/-x, left/right = +y/-y
                i / k        +roll / -roll     (rotation=True only)
                j / l        +pitch / -pitch   (rotation=True only)
                u / o        +yaw / -yaw       (rotation=True only)
                c / v        gripper close / open (reported for hold_s after the press)
                space        toggle INTERVENE (sticky: take over while keeping still)
                Enter        SUCCESS (reported by the next read() only)
                Backspace    REJECT: the learned reward's success was wrong (next read only)
                Esc or x     ESTOP (latched until clear_estop())

        rotation: enable the rotation axes; when False, rotation bindings are ignored and
            the angular twist stays zero.
        hold_s: how long one press (or auto-repeat) keeps an axis or gripper button active.
        speed: scale of the twist; each axis reads ``+-speed`` clipped to [-1, 1].
        axes, scale: device axis -> end-effector twist mapping (``TwistMapping``), applied
            after ``speed``, so the task file can flip, swap and scale axes as for any device.
            The key map above names the keyboard's own (device) axes.
        clock: time source for ``hold_s`` (default ``time.monotonic``); tests inject one.
        escape_timeout_s: how long a lone ESC waits for the rest of an escape sequence
            before it counts as the Esc key (real time, not ``clock``).
        poll_s: the reader thread's select() timeout, bounding how long close() waits.

    Esc or x also cancels any motion and gripper press in progress. If the terminal goes
    away (hang-up, read error) the device latches ESTOP, ``alive`` turns False and
    ``error`` holds the cause. Terminal settings are restored by close(), by the reader
    thread when it ends, and at interpreter exit. Usable as a context manager.
    """

    def __init__(
        self,
        fd: int | None = None,
        *,
        key_map: Mapping[str, str] | None = None,
        rotation: bool = False,
        hold_s: float = 0.5,
        speed: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        escape_timeout_s: float = 0.02,
        poll_s: float = 0.05,
        axes: Sequence[str] = IDENTITY_AXES,
        scale: Sequence[float] = (1.0,) * 6,
    ) -> None:
        if hold_s <= 0:
            raise ValueError(f"hold_s must be > 0, got {hold_s}")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self._mapping = TwistMapping(axes, scale)
        if key_map is None:
            key_map = {**DEFAULT_KEY_MAP, **(ROTATION_KEY_MAP if rotation else {})}
        self._bindings: dict[str, str] = {}
        for key, action in key_map.items():
            if action not in MOTION_ACTIONS and action not in BUTTON_ACTIONS:
                raise ValueError(
                    f"unknown action {action!r} for key {key!r}: use one of "
                    f"{sorted(MOTION_ACTIONS)} or {sorted(BUTTON_ACTIONS)}"
                )
            if action in MOTION_ACTIONS and MOTION_ACTIONS[action][0] >= 3 and not rotation:
                continue
            self._bindings[_normalise_key(key)] = action

        self.rotation = rotation
        self.hold_s = float(hold_s)
        self.speed = float(speed)
        self._clock = clock
        self._escape_timeout_s = float(escape_timeout_s)
        self._poll_s = float(poll_s)

        self._fd = self._resolve_fd(fd)
        try:
            self._saved_attrs = termios.tcgetattr(self._fd)
        except termios.error as e:
            raise DeviceError(_NOT_A_TERMINAL.format(what=f"fd {self._fd}") + f" ({e})") from e

        self._lock = threading.Lock()
        self._axis_until = np.full(6, -np.inf)
        self._axis_sign = np.zeros(6)
        self._gripper: str | None = None
        self._gripper_until = -np.inf
        self._intervene = False
        self._success = False
        self._reject = False
        self._estop = False
        self.error: BaseException | None = None

        self._restore_lock = threading.Lock()
        self._restored = False
        self._stop = threading.Event()
        self._enter_cbreak()
        atexit.register(self._restore_terminal)
        self._thread = threading.Thread(target=self._run, name="keyboard-device", daemon=True)
        self._thread.start()

    # -- public API ---------------------------------------------------------------------

    def read(self) -> Command:
        with self._lock:
            now = self._clock()
            twist = np.where(self._axis_until > now, self._axis_sign, 0.0) * self.speed
            buttons: set[str] = set()
            if self._gripper is not None and self._gripper_until > now:
                buttons.add(self._gripper)
            if self._intervene:
                buttons.add(Button.INTERVENE)
            if self._success:
                buttons.add(Button.SUCCESS)
                self._success = False
            if self._reject:
                buttons.add(Button.REJECT)
                self._reject = False
            estop = self._estop
        return device_command(self._mapping.apply(np.clip(twist, -1.0, 1.0)), buttons, estop)

    def clear_estop(self) -> None:
        """Release a latched ESTOP (the person has checked the scene)."""
        with self._lock:
            self._estop = False

    @property
    def alive(self) -> bool:
        """Whether the reader thread is still reading the terminal."""
        return self._thread.is_alive()

    @property
    def bindings(self) -> dict[str, str]:
        """The active ``{key: action}`` map, keys normalised (rotation keys dropped if off)."""
        return dict(self._bindings)

    def help_text(self) -> str:
        """One line per binding, for printing at start-up."""
        return "\n".join(f"{key:>9}  {action}" for key, action in self._bindings.items())

    def close(self) -> None:
        """Stop the reader thread (within ~poll_s) and restore the terminal. Idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(1.0, 10 * self._poll_s))
            if self._thread.is_alive():
                log.warning("keyboard reader thread did not stop in time")
        self._restore_terminal()
        atexit.unregister(self._restore_terminal)

    def __enter__(self) -> KeyboardDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- terminal -----------------------------------------------------------------------

    @staticmethod
    def _resolve_fd(fd: int | None) -> int:
        if fd is None:
            try:
                fd = sys.stdin.fileno()
            except (AttributeError, ValueError, io.UnsupportedOperation) as e:
                raise DeviceError(_NOT_A_TERMINAL.format(what="stdin")) from e
            what = "stdin"
        else:
            what = f"fd {fd}"
        if not os.isatty(fd):
            raise DeviceError(_NOT_A_TERMINAL.format(what=what))
        return fd

    def _enter_cbreak(self) -> None:
        attrs = termios.tcgetattr(self._fd)
        attrs[3] &= ~(termios.ECHO | termios.ICANON)  # lflags; ISIG stays, so Ctrl-C works
        attrs[6] = list(attrs[6])
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        # TCSAFLUSH drops keys typed before the device opened: stale presses must not move the arm.
        termios.tcsetattr(self._fd, termios.TCSAFLUSH, attrs)

    def _restore_terminal(self) -> None:
        with self._restore_lock:
            if self._restored:
                return
            self._restored = True
            try:
                # TCSANOW, not TCSADRAIN: never hang at exit on output nobody is reading.
                termios.tcsetattr(self._fd, termios.TCSANOW, self._saved_attrs)
            except (termios.error, OSError) as e:
                log.debug("could not restore terminal settings on fd %d: %s", self._fd, e)

    # -- reader thread ------------------------------------------------------------------

    def _run(self) -> None:
        pending = b""
        pending_since = 0.0
        try:
            while not self._stop.is_set():
                if pending:
                    timeout = max(0.0, pending_since + self._escape_timeout_s - time.monotonic())
                else:
                    timeout = self._poll_s
                ready, _, _ = select.select([self._fd], [], [], timeout)
                if ready:
                    data = os.read(self._fd, 1024)
                    if not data:
                        raise DeviceError("the terminal was closed (end of input)")
                    if not pending:
                        pending_since = time.monotonic()
                    keys, pending = _parse_keys(pending + data, final=False)
                elif pending and time.monotonic() >= pending_since + self._escape_timeout_s:
                    keys, pending = _parse_keys(pending, final=True)
                else:
                    continue
                for key in keys:
                    self._press(key)
        except Exception as e:  # the terminal went away: nobody can stop the arm from here
            if not self._stop.is_set():
                log.error("keyboard device stopped reading (%s); latching ESTOP", e)
                with self._lock:
                    self.error = e
                    self._estop = True
        finally:
            self._restore_terminal()

    def _press(self, key: str) -> None:
        action = self._bindings.get(key)
        if action is None and len(key) == 1:
            action = self._bindings.get(key.lower())
        if action is None:
            return
        with self._lock:
            now = self._clock()
            if action in MOTION_ACTIONS:
                axis, sign = MOTION_ACTIONS[action]
                self._axis_sign[axis] = sign
                self._axis_until[axis] = now + self.hold_s
            elif action in (Button.GRIPPER_CLOSE, Button.GRIPPER_OPEN):
                self._gripper = action
                self._gripper_until = now + self.hold_s
            elif action == Button.INTERVENE:
                self._intervene = not self._intervene
            elif action == Button.SUCCESS:
                self._success = True
            elif action == Button.REJECT:
                self._reject = True
            elif action == Button.ESTOP:
                self._estop = True
                self._axis_until[:] = -np.inf
                self._gripper = None
