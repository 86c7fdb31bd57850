"""3Dconnexion SpaceMouse teleoperation over raw HID (hidapi), with no 3DxWare or spacenavd.

A background daemon thread reads the device's HID input reports and keeps the latest axes and
buttons; ``read()`` only copies them and never blocks.

Device axes (before ``device.axes`` / ``device.scale``), each the HID value divided by the
device's full scale of 350 (the logical range its report descriptor declares) and clipped to
[-1, 1]::

    x      push the cap forward, away from you (+) / pull it back (-)
    y      push it left (+) / right (-)
    z      lift it (+) / press it down (-)
    roll   tilt it to the right (+, right edge down): rotation about x
    pitch  tilt it forward (+, far edge down): rotation about y
    yaw    twist it counter-clockwise seen from above (+): rotation about z

This is the frame the keyboard and gamepad devices use (x forward, y left, z up, right-hand
rule), so with the identity mapping a person standing behind the robot, facing the way its base
x axis points, moves the tool the way they push the cap. The HID report itself is in the USB HID
frame (x right, y towards the user, z down); the conversion is
``x = -Y, y = -X, z = -Z, roll = -Ry, pitch = -Rx, yaw = -Rz``. Signs follow pyspacemouse's
documented HID and Z_UP conventions (pyspacemouse/types.py ``AxisConvention``). HIL-SERL's
SpaceMouseExpert, whose operator faces the robot, maps pyspacemouse's legacy state as
``[-y, x, z, -roll, -pitch, -yaw]``; in this module's terms that is
``axes: [-x, -y, z, -roll, -pitch, yaw]``. These signs come from those sources, not from a
bench test of every model: if an axis comes out flipped on yours, flip it in ``device.axes``.

Reports (byte 0 is the report id, values are little-endian int16):

- ``Layout.SPLIT`` (SpaceNavigator, SpaceMouse Pro, Compact and the other older models):
  id 1 = X Y Z (7 bytes), id 2 = Rx Ry Rz (7 bytes), id 3 = button bits.
- ``Layout.COMBINED`` (SpaceMouse Wireless, Pro Wireless, Enterprise, Universal Receiver):
  id 1 = X Y Z Rx Ry Rz (13 bytes), id 3 = button bits.

The layout a model sends has not always matched its table entry (firmware revisions), so the
length of a report 1 decides, as in OpenSCAD's HID driver; the table entry is the first guess.

Buttons: bit i of report 3 (byte 1 bit 0 = bit 0). Every model answers to "left" and "right"
for bits 0 and 1: the two side buttons of the SpaceNavigator / Compact / Wireless, MENU and FIT
on the Pro-style models, so ``DEFAULT_BUTTONS`` works on all of them (and on a Universal
Receiver, whichever mouse is paired). The other buttons carry their labels, see ``SPECS``.

Released without a final zero report? The axes are absolute deflections, so the last report
holds until the next one. A SpaceNavigator reports every 8 ms while deflected and sends three
zero reports once the cap is back at rest (usbmon captures in the AndunHH/spacemouse docs), but
a wireless link can lose those, and the last push would then drive the arm on its own;
pyspacemouse and HIL-SERL keep the last value forever. Here an axis group (translation or
rotation) reads zero when no report carried it for ``stale_s`` (0.2 s, a dozen missed reports).
A device that went silent while held perfectly still would stutter to zero instead: the safe
side of the trade.

If the device is unplugged (or the receiver loses it) mid-run, ``read()`` returns zero twist and
no buttons (an intervention ends cleanly and the policy drives again), ``alive`` turns False,
one error is logged, and the thread tries to reopen it about once a second. A latched ESTOP
stays latched through all of this.
"""

from __future__ import annotations

import enum
import importlib
import logging
import os
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hilrl.config import TaskConfig
from hilrl.interfaces import Button, Command, DeviceError, InputDevice
from robot_drivers.devices.mapping import IDENTITY_AXES, ButtonMap, TwistMapping, device_command

log = logging.getLogger(__name__)

DEFAULT_BUTTONS: dict[str, str] = {
    "left": Button.GRIPPER_CLOSE,
    "right": Button.GRIPPER_OPEN,
    "left+right": Button.ESTOP,
}
FULL_SCALE = 350.0  # logical min/max (+-350) in every 3Dconnexion report descriptor
VENDOR_LOGITECH = 0x046D  # 3Dconnexion devices made while it was a Logitech company
VENDOR_3DCONNEXION = 0x256F


class Layout(enum.Enum):
    SPLIT = "split"  # id 1: translation, id 2: rotation, id 3: buttons
    COMBINED = "combined"  # id 1: translation + rotation, id 3: buttons


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    vendor_id: int
    product_id: int
    layout: Layout
    buttons: tuple[tuple[str, ...], ...]  # names of bit i of report 3 (bit 0 = byte 1 bit 0)


@dataclass(frozen=True)
class ReportUpdate:
    """What one HID report says; None for the parts it does not carry."""

    translation: tuple[float, float, float] | None = None  # x y z, device frame, [-1, 1]
    rotation: tuple[float, float, float] | None = None  # roll pitch yaw, device frame, [-1, 1]
    buttons: frozenset[str] | None = None  # names of the buttons held


def _bits(*names: tuple[int, tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
    table: list[tuple[str, ...]] = [()] * (max(b for b, _ in names) + 1)
    for bit, label in names:
        table[bit] = label
    return tuple(table)


TWO_BUTTONS = _bits((0, ("left",)), (1, ("right",)))
# 3Dconnexion's button numbering (button n = bit n-1), as pyspacemouse's devices.toml has it
# for the SpaceMouse Pro, Pro Wireless, Enterprise and Universal Receiver (it names bit 4 REAR
# on the Pro and RIGHT on the Enterprise: the key of the right-side view, printed "R").
PRO_BUTTONS = _bits(
    (0, ("menu", "left")), (1, ("fit", "right")), (2, ("view_top",)), (4, ("view_right",)),
    (5, ("view_front",)), (8, ("roll",)), (10, ("iso",)),
    *((12 + i, (str(i + 1),)) for i in range(10)),  # "1".."4" (Pro), "1".."10" (Enterprise)
    (22, ("esc",)), (23, ("alt",)), (24, ("shift",)), (25, ("ctrl",)), (26, ("lock",)),
)
EXPLORER_BUTTONS = _bits(  # pyspacemouse devices.toml [SpaceExplorer.buttons]
    (0, ("1", "left")), (1, ("2", "right")), (2, ("view_top",)), (3, ("view_left",)),
    (4, ("view_right",)), (5, ("view_front",)), (6, ("esc",)), (7, ("alt",)), (8, ("shift",)),
    (9, ("ctrl",)), (10, ("fit",)), (11, ("panel",)), (12, ("plus",)), (13, ("minus",)),
    (14, ("2d",)),
)
PILOT_PRO_BUTTONS = _bits(  # pyspacemouse devices.toml [SpacePilotPro.buttons]
    (0, ("menu", "left")), (1, ("fit", "right")), (2, ("view_top",)), (4, ("view_right",)),
    (5, ("view_front",)), (8, ("roll",)), (10, ("iso",)), (14, ("3",)), (15, ("4",)),
    (16, ("5",)), (17, ("1",)), (18, ("2",)), (22, ("esc",)), (23, ("alt",)), (24, ("shift",)),
    (25, ("ctrl",)), (26, ("lock",)), (27, ("pan_zoom",)), (28, ("dominant",)), (29, ("plus",)),
    (30, ("minus",)),
)
# For a device opened by explicit ids that is not in SPECS: HID button numbers.
GENERIC_BUTTONS = ((("left", "btn1"), ("right", "btn2"))
                   + tuple((f"btn{i + 1}",) for i in range(2, 32)))

_S, _C = Layout.SPLIT, Layout.COMBINED
# Ids and layouts: pyspacemouse devices.toml (JakubAndrysek/PySpaceMouse) and OpenSCAD's
# HidApiInputDriver.cpp device list; 0xc62f and 0xc631 (receiver / cable variants of models
# pyspacemouse lists as combined) are assumed combined, and are auto-detected anyway.
SPECS: tuple[DeviceSpec, ...] = (
    DeviceSpec("SpaceNavigator", VENDOR_LOGITECH, 0xC626, _S, TWO_BUTTONS),
    DeviceSpec("SpaceNavigator for Notebooks", VENDOR_LOGITECH, 0xC628, _S, TWO_BUTTONS),
    DeviceSpec("SpaceExplorer", VENDOR_LOGITECH, 0xC627, _S, EXPLORER_BUTTONS),
    DeviceSpec("SpacePilot Pro", VENDOR_LOGITECH, 0xC629, _S, PILOT_PRO_BUTTONS),
    DeviceSpec("SpaceMouse Pro", VENDOR_LOGITECH, 0xC62B, _S, PRO_BUTTONS),
    DeviceSpec("SpaceMouse Wireless (cable)", VENDOR_3DCONNEXION, 0xC62E, _C, TWO_BUTTONS),
    DeviceSpec("SpaceMouse Wireless (receiver)", VENDOR_3DCONNEXION, 0xC62F, _C, TWO_BUTTONS),
    DeviceSpec("SpaceMouse Pro Wireless (cable)", VENDOR_3DCONNEXION, 0xC631, _C, PRO_BUTTONS),
    DeviceSpec("SpaceMouse Pro Wireless (receiver)", VENDOR_3DCONNEXION, 0xC632, _C,
               PRO_BUTTONS),
    DeviceSpec("SpaceMouse Enterprise", VENDOR_3DCONNEXION, 0xC633, _C, PRO_BUTTONS),
    DeviceSpec("SpaceMouse Compact", VENDOR_3DCONNEXION, 0xC635, _S, TWO_BUTTONS),
    DeviceSpec("SpaceMouse Pro Wireless (Bluetooth)", VENDOR_3DCONNEXION, 0xC638, _C,
               PRO_BUTTONS),
    DeviceSpec("SpaceMouse Wireless (Bluetooth)", VENDOR_3DCONNEXION, 0xC63A, _C, TWO_BUTTONS),
    DeviceSpec("3Dconnexion Universal Receiver", VENDOR_3DCONNEXION, 0xC652, _C, PRO_BUTTONS),
)
_BY_ID = {(s.vendor_id, s.product_id): s for s in SPECS}
BUTTON_NAMES = frozenset(n for t in (*(s.buttons for s in SPECS), GENERIC_BUTTONS)
                         for names in t for n in names)

_PIP_HINT = "the SpaceMouse device needs hidapi: pip install 'hilrl[spacemouse]'"
UDEV_RULES = (
    'KERNEL=="hidraw*", ATTRS{idVendor}=="256f", MODE="0660", GROUP="plugdev"\n'
    'KERNEL=="hidraw*", ATTRS{idVendor}=="046d", MODE="0660", GROUP="plugdev"\n'
)
UDEV_HINT = (
    "On Linux your user needs read/write access to the SpaceMouse's /dev/hidraw* node: create "
    "/etc/udev/rules.d/99-spacemouse.rules containing\n" + UDEV_RULES
    + "(046d is Logitech's vendor id: add ATTRS{idProduct}==\"c626\" (your model's id) to "
    "that line to cover only the SpaceMouse), then run "
    "`sudo udevadm control --reload-rules && sudo udevadm trigger`, unplug and replug the "
    "SpaceMouse (or its receiver), and check that you are in the plugdev group (`groups`; "
    "`sudo usermod -aG plugdev $USER`, then log in again)."
)
_READ_SIZE = 64  # more than any 3Dconnexion input report, padding included (Windows)


# -- parsing ----------------------------------------------------------------------------


def _axes(data: bytes, offset: int) -> np.ndarray:
    return np.array(struct.unpack_from("<3h", data, offset), np.float64) / FULL_SCALE


def parse_report(data: bytes | Sequence[int], layout: Layout,
                 buttons: Sequence[Sequence[str]] = TWO_BUTTONS) -> ReportUpdate | None:
    """One HID input report -> what it updates, in this module's device frame.

    ``buttons`` names the bits of report 3 (``DeviceSpec.buttons``). Returns None for reports
    that carry nothing used here (battery level, LEDs, the other layout's rotation report).
    Raises ValueError for a report too short for its id.
    """
    data = bytes(data)
    if not data:
        raise ValueError("empty HID report")
    rid, n = data[0], len(data)
    split = layout is Layout.SPLIT
    need = {1: 7 if split else 13, 2: 7 if split else None, 3: 2}.get(rid)
    if need is not None and n < need:
        raise ValueError(f"HID report {rid} has {n} bytes; the {layout.value} layout needs "
                         f">= {need}: is this a 3Dconnexion device with that layout?")
    if rid == 1 or (rid == 2 and split):
        hid = _axes(data, 1)
        if rid == 2:
            return ReportUpdate(rotation=_rotation(hid))
        rotation = None if split else _rotation(_axes(data, 7))
        return ReportUpdate(translation=_translation(hid), rotation=rotation)
    if rid == 3:
        bits = int.from_bytes(data[1:], "little")
        held = {name for bit, names in enumerate(buttons) if bits >> bit & 1 for name in names}
        return ReportUpdate(buttons=frozenset(held))
    return None


def _translation(hid: np.ndarray) -> tuple[float, float, float]:
    # HID frame x right, y towards the user, z down -> x forward, y left, z up.
    x, y, z = np.clip([-hid[1], -hid[0], -hid[2]], -1.0, 1.0) + 0.0  # + 0.0: no -0.0
    return float(x), float(y), float(z)


def _rotation(hid: np.ndarray) -> tuple[float, float, float]:
    # The same proper rotation applied to the angular axes: roll = -Ry, pitch = -Rx, yaw = -Rz.
    roll, pitch, yaw = np.clip([-hid[1], -hid[0], -hid[2]], -1.0, 1.0) + 0.0
    return float(roll), float(pitch), float(yaw)


# -- hidapi -----------------------------------------------------------------------------


def _import_hid() -> Any:
    # cython-hidapi (PyPI "hidapi") ships "hidraw" (kernel hidraw backend: /dev/hidrawN paths,
    # which the udev rule covers) and "hid" (libusb backend) on Linux; elsewhere only "hid".
    names = ("hidraw", "hid") if sys.platform.startswith("linux") else ("hid",)
    errors: list[str] = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            errors.append(f"import {name}: {e}")
            continue
        if hasattr(module, "device") and hasattr(module, "enumerate"):
            return module
        # pyhidapi (PyPI "hid") also installs a module named hid, with another API.
        raise DeviceError(f"the '{name}' module at {getattr(module, '__file__', '?')} is not "
                          "cython-hidapi; run `pip uninstall hid`, then "
                          "pip install 'hilrl[spacemouse]'")
    detail = "; ".join(errors)
    msg = f"{_PIP_HINT} ({detail})"
    if "libhidapi" in detail or ".so" in detail:
        msg += (". The system hidapi library failed to load: install it "
                "(Debian/Ubuntu: sudo apt install libhidapi-hidraw0)")
    raise DeviceError(msg)


def _describe(info: Mapping[str, Any]) -> str:
    product = info.get("product_string") or "?"
    return f"{info.get('vendor_id', 0):04x}:{info.get('product_id', 0):04x} {product!r}"


def _permission_denied(path: bytes) -> bool:
    p = os.fsdecode(path)
    return os.path.exists(p) and not os.access(p, os.R_OK | os.W_OK)


@dataclass(frozen=True)
class SpaceMouseSettings:
    """``device.kind: spacemouse``, section ``device.spacemouse``. A hidraw path
    (/dev/hidraw3) or vendor/product ids; all None: the first 3Dconnexion device found."""

    path: str | None = None
    vendor_id: int | None = None
    product_id: int | None = None


def make_device(task: TaskConfig, settings: SpaceMouseSettings, *, world: Any,
                env: Any, seed: int) -> SpaceMouseDevice:
    d, s = task.device, settings
    return SpaceMouseDevice(axes=d.axes, scale=d.scale, buttons=d.buttons or None,
                            path=s.path, vendor_id=s.vendor_id, product_id=s.product_id)


class SpaceMouseDevice(InputDevice):
    """Teleoperate with a 3Dconnexion SpaceMouse; see the module docstring for axes and buttons.

    Args:
        axes, scale: device axis -> end-effector twist mapping (``TwistMapping``).
        buttons: ``{device button or "a+b" chord: hilrl Button}``; default ``DEFAULT_BUTTONS``.
        path: open this HID path (``/dev/hidraw3``) instead of searching.
        vendor_id, product_id: open the first device with these ids (either may be given
            alone); a device that is not in ``SPECS`` gets button names "left"/"right"/"btnN".
        hid_module: a module with hidapi's API (``enumerate()``, ``device()``); default: the
            installed cython-hidapi (tests inject a fake).
        stale_s: an axis group with no report for this long reads zero (lost release).
        reconnect_s: how often the thread tries to reopen a lost device.
        read_timeout_ms: the reader's HID read timeout, bounding how long close() waits.

    Raises ``DeviceError`` when hidapi is missing, no device is found or it cannot be opened.
    ESTOP is latched until ``clear_estop()`` and the twist reads zero while it is latched.
    Usable as a context manager.
    """

    def __init__(
        self,
        *,
        axes: Sequence[str] = IDENTITY_AXES,
        scale: Sequence[float] = (1.0,) * 6,
        buttons: Mapping[str, str] | None = None,
        path: str | None = None,
        vendor_id: int | None = None,
        product_id: int | None = None,
        hid_module: Any = None,
        stale_s: float = 0.2,
        reconnect_s: float = 1.0,
        read_timeout_ms: int = 50,
    ) -> None:
        if stale_s <= 0 or reconnect_s <= 0 or read_timeout_ms <= 0:
            raise ValueError(f"stale_s, reconnect_s and read_timeout_ms must be > 0, got "
                             f"{stale_s}, {reconnect_s}, {read_timeout_ms}")
        self._mapping = TwistMapping(axes, scale)
        self._buttons = ButtonMap(DEFAULT_BUTTONS if buttons is None else buttons)
        unknown = self._buttons.names - BUTTON_NAMES
        if unknown:
            raise ValueError(f"unknown SpaceMouse button(s) {sorted(unknown)} in device.buttons: "
                             f"use {', '.join(sorted(BUTTON_NAMES))}")
        self.stale_s = float(stale_s)
        self.reconnect_s = float(reconnect_s)
        self._timeout_ms = int(read_timeout_ms)
        self._want_path = None if path is None else os.fsencode(path)
        self._want_ids = (vendor_id, product_id)
        self._hid = hid_module if hid_module is not None else _import_hid()

        self._lock = threading.Lock()
        self._trans = np.zeros(3)
        self._rot = np.zeros(3)
        self._t_trans = self._t_rot = -np.inf
        self._held: frozenset[str] = frozenset()
        self._pending: set[str] = set()  # hilrl buttons seen since the last read()
        self._estop = False
        self._connected = False
        self.error: BaseException | None = None
        self.spec: DeviceSpec | None = None
        self.path: bytes | None = None
        self._layout = Layout.SPLIT
        self._bad_report_logged = False

        self._handle = self._open()  # raises DeviceError: no thread to clean up yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spacemouse-device", daemon=True)
        self._thread.start()

    # -- public API ---------------------------------------------------------------------

    def read(self) -> Command:
        with self._lock:
            now = time.monotonic()
            raw = np.zeros(6)
            if now - self._t_trans <= self.stale_s:
                raw[:3] = self._trans
            if now - self._t_rot <= self.stale_s:
                raw[3:] = self._rot
            out = self._buttons.buttons(self._held) | self._pending
            self._pending = set()
            estop = self._estop
        return device_command(self._mapping.apply(raw), out, estop)

    def clear_estop(self) -> None:
        """Release a latched ESTOP (the person has checked the scene)."""
        with self._lock:
            self._estop = False

    @property
    def alive(self) -> bool:
        """Whether the device is connected and being read."""
        return self._thread.is_alive() and self._connected

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else "SpaceMouse"

    def close(self) -> None:
        """Stop the reader thread and close the HID handle. Idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(1.0, 10 * self._timeout_ms / 1000))
        if self._thread.is_alive():
            # Closing the handle under a read in progress would free memory hidapi is using.
            log.warning("SpaceMouse reader thread did not stop in time; leaving its handle open")
            return
        self._close_handle()
        with self._lock:
            self._connected = False

    def __enter__(self) -> SpaceMouseDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- finding and opening ------------------------------------------------------------

    def _candidates(self, infos: list[dict[str, Any]]) -> list[tuple[dict[str, Any], DeviceSpec]]:
        want_vid, want_pid = self._want_ids
        found: dict[bytes, tuple[dict[str, Any], DeviceSpec]] = {}
        for info in infos:
            vid, pid, path = info.get("vendor_id"), info.get("product_id"), info.get("path")
            if self._want_path is not None:
                if path != self._want_path:
                    continue
            elif want_vid is None and want_pid is None:
                if (vid, pid) not in _BY_ID:
                    continue
            elif (want_vid is not None and vid != want_vid) or (
                    want_pid is not None and pid != want_pid):
                continue
            spec = _BY_ID.get((vid, pid)) or DeviceSpec(
                f"HID device {vid:04x}:{pid:04x}", vid, pid, Layout.SPLIT, GENERIC_BUTTONS)
            # One device can be listed once per top-level collection (same path); keep the
            # multi-axis controller one (usage page 1, usage 8) when there is one.
            multi_axis = (info.get("usage_page"), info.get("usage")) == (1, 8)
            if path not in found or multi_axis:
                found[path] = (info, spec)
        return list(found.values())

    def _searched(self) -> str:
        if self._want_path is not None:
            return f"the HID path {os.fsdecode(self._want_path)}"
        vid, pid = self._want_ids
        if vid is not None or pid is not None:
            v = "any" if vid is None else f"0x{vid:04x}"
            p = "any" if pid is None else f"0x{pid:04x}"
            return f"vendor id {v}, product id {p}"
        models = ", ".join(f"{s.name} {s.vendor_id:04x}:{s.product_id:04x}" for s in SPECS)
        return f"the known 3Dconnexion models ({models})"

    def _open(self) -> Any:
        try:
            infos = list(self._hid.enumerate())
        except OSError as e:
            raise DeviceError(f"hidapi could not list HID devices ({e}); is the hidraw kernel "
                              "module loaded?") from e
        candidates = self._candidates(infos)
        if not candidates:
            seen = ", ".join(_describe(i) for i in infos[:12]) or "none"
            raise DeviceError(
                f"no 3Dconnexion SpaceMouse found: searched {self._searched()} among "
                f"{len(infos)} HID device(s) (seen: {seen}). Check that it is plugged in "
                "(wireless: receiver or cable plugged in, mouse switched on) and that "
                "`ls /dev/hidraw*` lists it, or set device.spacemouse.path / vendor_id / "
                f"product_id. {UDEV_HINT}")
        failures = []
        for info, spec in candidates:
            handle = self._hid.device()
            try:
                handle.open_path(info["path"])
                handle.set_nonblocking(0)  # reads wait up to read_timeout_ms, not spin
            except OSError as e:
                failures.append((info, spec, e))
                continue
            self._attach(handle, info, spec)
            return handle
        info, spec, e = failures[0]
        where = os.fsdecode(info["path"])
        denied = isinstance(e, PermissionError) or _permission_denied(info["path"])
        cause = ("your user may not read and write it (permission denied)" if denied else
                 "the usual cause is missing permission on the hidraw node")
        raise DeviceError(f"found {spec.name} ({_describe(info)}) at {where} but could not open "
                          f"it ({e}): {cause}. {UDEV_HINT}") from e

    def _attach(self, handle: Any, info: Mapping[str, Any], spec: DeviceSpec) -> None:
        with self._lock:
            self.spec, self.path, self._layout = spec, info["path"], spec.layout
            self._connected = True
        missing = self._buttons.names - {n for names in spec.buttons for n in names}
        if missing:
            log.warning("%s has no button(s) %s; those bindings will never fire",
                        spec.name, sorted(missing))
        log.info("SpaceMouse opened: %s (%s) at %s, %s reports", spec.name, _describe(info),
                 os.fsdecode(info["path"]), spec.layout.value)

    def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except (OSError, ValueError) as e:
                log.debug("closing the SpaceMouse handle failed: %s", e)

    # -- reader thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._handle is None:
                    if self._stop.wait(self.reconnect_s):
                        break
                    self._reopen()
                    continue
                try:
                    data = self._handle.read(_READ_SIZE, self._timeout_ms)
                    if data:
                        self._handle_report(bytes(data))
                except (OSError, ValueError) as e:  # ValueError: hidapi's "not open"
                    self._disconnect(f"reading it failed: {e}")
                except Exception as e:  # a bug must not leave a stale push driving the arm
                    log.exception("SpaceMouse reader failed")
                    self._disconnect(f"unexpected {type(e).__name__}: {e}")
        finally:
            self._close_handle()

    def _reopen(self) -> None:
        try:
            self._handle = self._open()
        except DeviceError as e:
            log.debug("SpaceMouse still unavailable: %s", e)
            return
        log.info("SpaceMouse %s reconnected", self.name)

    def _handle_report(self, data: bytes) -> None:
        if data[0] == 1 and len(data) >= 7:
            # Firmware differs from the table now and then: trust what the device sends.
            layout = Layout.COMBINED if len(data) >= 13 else Layout.SPLIT
            if layout is not self._layout:
                log.warning("%s sends %s reports; parsing them so", self.name, layout.value)
                self._layout = layout
        assert self.spec is not None
        try:
            update = parse_report(data, self._layout, self.spec.buttons)
        except ValueError as e:
            if not self._bad_report_logged:  # once: a broken stream would flood the log
                log.warning("ignoring malformed SpaceMouse report %s: %s", data.hex(" "), e)
                self._bad_report_logged = True
            return
        if update is None:
            return
        now = time.monotonic()
        pressed = self._buttons.buttons(update.buttons) if update.buttons is not None else None
        with self._lock:
            if update.translation is not None:
                self._trans, self._t_trans = np.array(update.translation), now
            if update.rotation is not None:
                self._rot, self._t_rot = np.array(update.rotation), now
            if update.buttons is not None and pressed is not None:
                self._held = update.buttons
                # Kept until the next read(): a click shorter than a control step still counts.
                self._pending |= pressed - {Button.ESTOP}
                if Button.ESTOP in pressed:
                    self._estop = True

    def _disconnect(self, why: str) -> None:
        with self._lock:
            self._connected = False
            self._trans, self._rot = np.zeros(3), np.zeros(3)
            self._t_trans = self._t_rot = -np.inf
            self._held = frozenset()
            self._pending = set()
        self._close_handle()
        self.error = DeviceError(f"{self.name} lost: {why}")
        log.error("SpaceMouse %s lost (%s): twist is zero and no buttons until it is back; "
                  "retrying every %.1f s", self.name, why, self.reconnect_s)
