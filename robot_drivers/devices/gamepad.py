"""Gamepad teleoperation (Xbox / PlayStation style pads) through pygame's SDL joystick API.

A background daemon thread initialises SDL's joystick subsystem, opens joystick ``index`` and
polls it at ``poll_hz``. SDL only refreshes joystick state while events are pumped, and events
must be pumped by the thread that initialised SDL, so that thread does both; ``read()`` only
copies the latest sample and never blocks.

Device axes (all in [-1, 1], before ``device.axes`` / ``device.scale`` are applied)::

    x      left stick up (+) / down (-)            forward
    y      left stick left (+) / right (-)         left
    z      right trigger (+) minus left trigger    up / down
    roll   right stick right (+) / left (-)        lean the tool right
    pitch  right stick up (+) / down (-)           lean the tool forward
    yaw    LB (+, counter-clockwise) minus RB      turn

The signs follow the right-hand rule in the robot base frame (x forward, y left, z up), so with
the identity mapping the tool moves and leans the way the stick is pushed. SDL reports triggers
as -1 at rest and +1 fully pulled; they are rescaled to 0..1. A trigger counts only after it has
been seen at rest once, because some drivers report 0 (half pulled) until the first movement.

Sticks drift: a released stick rarely reads exactly 0 (often up to ~0.1 on a worn pad). This
module applies no deadzone on purpose; the env applies ``device.deadzone`` to the mapped twist,
so set it above your pad's drift or the arm creeps and every step counts as an intervention.

Button names (PlayStation: cross=a, circle=b, square=x, triangle=y, share/create=back,
options=start, L1/R1=lb/rb): "a", "b", "x", "y", "lb", "rb", "back", "start", "guide", "ls",
"rs" (stick clicks), and the d-pad as "up", "down", "left", "right". ``DEFAULT_BUTTONS`` binds
A/B to the gripper, X (held) to intervene, Y to success, d-pad down to reject (the learned
reward's success was wrong) and Back or Start to the emergency stop.
A button press shorter than the gap between two ``read()`` calls is still reported once.

Where each control sits in SDL's raw joystick numbering depends on the driver, hence two
layouts (``layout=``):

- ``"xpad"``: Linux evdev drivers (xpad for Xbox pads, most generic pads): axes LX, LY, LT,
  RX, RY, RT; buttons A, B, X, Y, LB, RB, Back, Start, Guide, LS, RS; the d-pad is hat 0.
- ``"sdl"``: SDL's own HIDAPI drivers (DualShock 4, DualSense, Switch Pro, Xbox pads when SDL
  can open /dev/hidraw*), in SDL GameController order: axes LX, LY, RX, RY, LT, RT; buttons
  A, B, X, Y, Back, Guide, Start, LS, RS, LB, RB, Up, Down, Left, Right; no hat.
- ``"auto"`` (default): "xpad" when the pad has a hat, else "sdl" (HIDAPI never reports one).

A PlayStation pad on the kernel's evdev driver has the xpad axes but its own button order; if
the buttons come out wrong, pass a ``PadLayout`` or remap names in ``buttons``.

If the pad is unplugged mid-run the device reports zero twist and no buttons (an intervention
ends cleanly), ``alive`` turns False, and the pad is reopened when SDL reports it plugged in
again. A latched ESTOP stays latched through all of this.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

from hilrl.config import TaskConfig
from hilrl.interfaces import Button, Command, DeviceError, InputDevice
from robot_drivers.devices.mapping import IDENTITY_AXES, ButtonMap, TwistMapping, device_command

log = logging.getLogger(__name__)

DEFAULT_BUTTONS: dict[str, str] = {
    "a": Button.GRIPPER_CLOSE,
    "b": Button.GRIPPER_OPEN,
    "x": Button.INTERVENE,
    "y": Button.SUCCESS,
    "down": Button.REJECT,
    "back": Button.ESTOP,
    "start": Button.ESTOP,
}
HAT_NAMES = ("up", "down", "left", "right")


@dataclass(frozen=True)
class PadLayout:
    """Where the controls sit in SDL's raw joystick numbering."""

    name: str
    axes: Mapping[str, int]  # "lx", "ly", "rx", "ry", "lt", "rt" -> axis index
    buttons: Mapping[str, int]  # button name -> button index


XPAD_LAYOUT = PadLayout(
    "xpad",
    axes={"lx": 0, "ly": 1, "lt": 2, "rx": 3, "ry": 4, "rt": 5},
    buttons={"a": 0, "b": 1, "x": 2, "y": 3, "lb": 4, "rb": 5, "back": 6, "start": 7,
             "guide": 8, "ls": 9, "rs": 10},
)
SDL_LAYOUT = PadLayout(
    "sdl",
    axes={"lx": 0, "ly": 1, "rx": 2, "ry": 3, "lt": 4, "rt": 5},
    buttons={"a": 0, "b": 1, "x": 2, "y": 3, "back": 4, "guide": 5, "start": 6, "ls": 7,
             "rs": 8, "lb": 9, "rb": 10, "up": 11, "down": 12, "left": 13, "right": 14},
)
LAYOUTS = {"xpad": XPAD_LAYOUT, "sdl": SDL_LAYOUT}
BUTTON_NAMES = frozenset(XPAD_LAYOUT.buttons) | frozenset(SDL_LAYOUT.buttons) | set(HAT_NAMES)

_PIP_HINT = "the gamepad device needs pygame: pip install 'hilrl[gamepad]'"
_NOT_FOUND = (
    "no gamepad was found by SDL at joystick index {index} ({count} joystick(s) seen). Check "
    "that the pad is plugged in (and switched on / paired), that `ls /dev/input/js*` lists it, "
    "that your user may read /dev/input/event* (usually: be in the 'input' group, then log in "
    "again), and that device.index is below the number of joysticks."
)
_STARTUP_TIMEOUT_S = 10.0
_TRIGGER_REST = -0.9  # a raw trigger reading at or below this counts as "seen at rest"
# What a failing joystick read raises: pygame.error is a RuntimeError; OSError for I/O.
_READ_ERRORS = (RuntimeError, OSError)
_JOY_EVENT_NAMES = ("JOYAXISMOTION", "JOYBALLMOTION", "JOYBUTTONDOWN", "JOYBUTTONUP",
                    "JOYHATMOTION", "JOYDEVICEADDED", "JOYDEVICEREMOVED")


def _import_pygame() -> ModuleType:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        return importlib.import_module("pygame")
    except ImportError as e:
        raise DeviceError(f"{_PIP_HINT} ({e})") from e


@dataclass(frozen=True)
class GamepadSettings:
    """``device.kind: gamepad``, section ``device.gamepad``."""

    index: int = 0  # which joystick SDL opens (0: the first one plugged in)
    layout: Literal["auto", "xpad", "sdl"] = "auto"  # auto: chosen from the pad's name

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"index must be >= 0, got {self.index}")


def make_device(task: TaskConfig, settings: GamepadSettings, *, world: Any,
                env: Any, seed: int) -> GamepadDevice:
    d = task.device
    return GamepadDevice(axes=d.axes, scale=d.scale, buttons=d.buttons or None,
                         index=settings.index, layout=settings.layout)


class GamepadDevice(InputDevice):
    """Teleoperate with a gamepad; see the module docstring for the axis and button layout.

    Args:
        axes, scale: device axis -> end-effector twist mapping (``TwistMapping``).
        buttons: ``{device button or "a+b" chord: hilrl Button}``; default ``DEFAULT_BUTTONS``.
        index: SDL joystick index of the pad (0 = the first one plugged in).
        joystick: an object with pygame ``Joystick``'s methods to poll instead of opening one
            through SDL (tests); it is never reopened after it fails.
        poll_hz: how often the thread samples the pad.
        layout: "auto", "xpad", "sdl" or a ``PadLayout``.

    Raises ``DeviceError`` when pygame is missing or no pad is found. ESTOP is latched until
    ``clear_estop()`` and the twist reads zero while it is latched. Usable as a context manager.
    """

    def __init__(
        self,
        *,
        axes: Sequence[str] = IDENTITY_AXES,
        scale: Sequence[float] = (1.0,) * 6,
        buttons: Mapping[str, str] | None = None,
        index: int = 0,
        joystick: Any = None,
        poll_hz: float = 100.0,
        layout: str | PadLayout = "auto",
    ) -> None:
        if poll_hz <= 0:
            raise ValueError(f"poll_hz must be > 0, got {poll_hz}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        if isinstance(layout, str) and layout != "auto" and layout not in LAYOUTS:
            raise ValueError(f"unknown gamepad layout {layout!r}: use auto, xpad or sdl")
        self._mapping = TwistMapping(axes, scale)
        self._buttons = ButtonMap(DEFAULT_BUTTONS if buttons is None else buttons)
        unknown = self._buttons.names - BUTTON_NAMES
        if unknown:
            raise ValueError(f"unknown gamepad button(s) {sorted(unknown)} in device.buttons: "
                             f"use {', '.join(sorted(BUTTON_NAMES))}")
        self.index = index
        self.poll_s = 1.0 / poll_hz
        self._layout_arg = layout
        self.layout: PadLayout | None = None
        self.name = ""

        self._pg: ModuleType | None = None if joystick is not None else _import_pygame()
        self._joy: Any = joystick
        self._lock = threading.Lock()
        self._raw = np.zeros(6)
        self._held: frozenset[str] = frozenset()
        self._pending: set[str] = set()  # hilrl buttons seen since the last read()
        self._estop = False
        self._connected = False
        self._trigger_seen = {"lt": False, "rt": False}
        self._counts = (0, 0, 0)  # axes, buttons, hats of the open pad
        self._instance_id: int | None = None
        self._own_display = False
        self.error: BaseException | None = None

        self._stop = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gamepad-device", daemon=True)
        self._thread.start()
        if not self._ready.wait(_STARTUP_TIMEOUT_S):
            self.close()
            raise DeviceError(f"SDL did not open the gamepad within {_STARTUP_TIMEOUT_S:.0f} s; "
                              "check the pad and that no other program holds SDL")
        if self._startup_error is not None:
            self._thread.join(timeout=1.0)
            raise self._startup_error

    # -- public API ---------------------------------------------------------------------

    def read(self) -> Command:
        with self._lock:
            raw = self._raw.copy()
            out = self._buttons.buttons(self._held) | self._pending
            self._pending = set()
            # A still-held stop button re-latches at once, even right after clear_estop().
            self._estop = estop = self._estop or Button.ESTOP in out
        return device_command(self._mapping.apply(raw), out, estop)

    def clear_estop(self) -> None:
        """Release a latched ESTOP (the person has checked the scene)."""
        with self._lock:
            self._estop = False

    @property
    def alive(self) -> bool:
        """Whether the pad is connected and being polled."""
        return self._thread.is_alive() and self._connected

    def close(self) -> None:
        """Stop the polling thread and quit SDL's joystick subsystem. Idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(1.0, 10 * self.poll_s))
            if self._thread.is_alive():
                log.warning("gamepad polling thread did not stop in time")

    def __enter__(self) -> GamepadDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- polling thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            try:
                self._start()
            except BaseException as e:  # handed to __init__, which raises it
                self._startup_error = e
                return
            finally:
                self._ready.set()
            next_t = time.monotonic()
            while not self._stop.wait(max(0.0, next_t - time.monotonic())):
                next_t = max(next_t + self.poll_s, time.monotonic() - self.poll_s)
                self._handle_events()
                if self._connected:
                    self._poll()
        finally:
            self._shutdown()

    def _start(self) -> None:
        if self._pg is None:
            self._attach(self._joy)
            return
        pg = self._pg
        # No window of ours has focus, so SDL would drop joystick input without this hint.
        os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # robot PCs often have no display
        try:
            # Pumping events (which refreshes joystick state) needs SDL's video subsystem.
            if not pg.display.get_init():
                pg.display.init()
                self._own_display = True
            pg.joystick.init()
        except pg.error as e:
            raise DeviceError(f"SDL could not start its joystick subsystem ({e}); "
                              "try SDL_VIDEODRIVER=dummy") from e
        pg.event.pump()
        count = pg.joystick.get_count()
        if self.index >= count:
            raise DeviceError(_NOT_FOUND.format(index=self.index, count=count))
        self._attach(pg.joystick.Joystick(self.index))

    def _attach(self, joy: Any) -> None:
        n_axes, n_buttons, n_hats = joy.get_numaxes(), joy.get_numbuttons(), joy.get_numhats()
        layout = self._layout_arg
        if layout == "auto":
            layout = XPAD_LAYOUT if n_hats > 0 else SDL_LAYOUT
        elif isinstance(layout, str):
            layout = LAYOUTS[layout]
        with self._lock:
            self._joy = joy
            self.layout = layout
            self.name = str(joy.get_name())
            self._counts = (n_axes, n_buttons, n_hats)
            # Kept now: after removal the Joystick object may refuse to say who it was.
            self._instance_id = joy.get_instance_id() if hasattr(joy, "get_instance_id") else None
            self._trigger_seen = {"lt": False, "rt": False}
            self._connected = True
        guid = joy.get_guid() if hasattr(joy, "get_guid") else "?"
        log.info("gamepad %d opened: %r (guid %s, %d axes, %d buttons, %d hats), layout %s",
                 self.index, self.name, guid, n_axes, n_buttons, n_hats, layout.name)
        if n_axes < 6:
            log.warning("gamepad %r has only %d axes; the missing ones read 0", self.name, n_axes)

    def _handle_events(self) -> None:
        pg = self._pg
        if pg is None:
            return
        # Only joystick events: a pygame window elsewhere in the process keeps its own events.
        types = [getattr(pg, n) for n in _JOY_EVENT_NAMES]
        for event in pg.event.get(types):
            if event.type == pg.JOYDEVICEREMOVED and self._connected:
                if event.instance_id == self._instance_id:
                    self._disconnect("unplugged")
            elif event.type == pg.JOYDEVICEADDED and not self._connected:
                self._reopen()

    def _reopen(self) -> None:
        pg = self._pg
        assert pg is not None
        if pg.joystick.get_count() <= self.index:
            return
        try:
            self._attach(pg.joystick.Joystick(self.index))
        except pg.error as e:
            log.warning("gamepad plugged in again but could not be opened (%s)", e)
            return
        log.info("gamepad %r reconnected", self.name)

    def _poll(self) -> None:
        try:
            raw, held = self._sample()
        except _READ_ERRORS as e:
            self._disconnect(f"reading it failed: {e}")
            return
        pressed = self._buttons.buttons(held)
        with self._lock:
            self._raw = raw
            self._held = held
            self._pending |= pressed - {Button.ESTOP}
            if Button.ESTOP in pressed:
                self._estop = True

    def _sample(self) -> tuple[np.ndarray, frozenset[str]]:
        joy, layout = self._joy, self.layout
        assert layout is not None
        n_axes, n_buttons, n_hats = self._counts

        def axis(name: str) -> float:
            i = layout.axes[name]
            return float(joy.get_axis(i)) if i < n_axes else 0.0

        def trigger(name: str) -> float:
            i = layout.axes[name]
            v = float(joy.get_axis(i)) if i < n_axes else -1.0
            if v <= _TRIGGER_REST:
                self._trigger_seen[name] = True
            return float(np.clip((v + 1.0) / 2.0, 0.0, 1.0)) if self._trigger_seen[name] else 0.0

        held = {name for name, i in layout.buttons.items() if i < n_buttons and joy.get_button(i)}
        if n_hats > 0:
            hx, hy = joy.get_hat(0)  # pygame: y is +1 for up
            held |= {n for n, on in zip(HAT_NAMES, (hy > 0, hy < 0, hx < 0, hx > 0), strict=True)
                     if on}
        raw = np.array([
            -axis("ly"),
            -axis("lx"),
            trigger("rt") - trigger("lt"),
            axis("rx"),
            -axis("ry"),
            float("lb" in held) - float("rb" in held),
        ])
        return np.clip(raw, -1.0, 1.0), frozenset(held)

    def _disconnect(self, why: str) -> None:
        with self._lock:
            self._connected = False
            self._raw = np.zeros(6)
            self._held = frozenset()
            self._pending = set()
        self.error = DeviceError(f"gamepad {self.name!r} lost: {why}")
        log.error("gamepad %r lost (%s): twist is zero and no buttons until it is plugged in "
                  "again", self.name, why)

    def _shutdown(self) -> None:
        with self._lock:
            self._connected = False
        pg = self._pg
        if pg is None:
            return
        try:
            pg.joystick.quit()
            if self._own_display:
                pg.display.quit()
        except pg.error as e:
            log.warning("quitting SDL's joystick subsystem failed: %s", e)
