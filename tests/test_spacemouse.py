"""SpaceMouseDevice against recorded HID reports and a fake hidapi module.

The fake has hidapi's module API (``enumerate()``, ``device()`` with ``open_path``,
``set_nonblocking``, ``read(size, timeout_ms)``, ``close``) and replays reports at the 8 ms
interval a real device sends them; unplugging it makes reads fail with OSError, as hidapi does.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import threading
import time
import types
from collections import deque

import numpy as np
import pytest
from polling import read_until, wait_for

from hilrl.interfaces import Button, Command, DeviceError
from robot_drivers.devices import spacemouse
from robot_drivers.devices.spacemouse import (
    PRO_BUTTONS,
    TWO_BUTTONS,
    Layout,
    SpaceMouseDevice,
    parse_report,
)

S = 1 / 350  # one HID count

# --- recorded reports (byte 0 = report id, then little-endian int16) ---------------------
# SpaceNavigator 046d:c626, hidapitester output in pyspacemouse's docs/troubleshooting.md:
# HID X = +118 (pushed right), Z = -6 (lifted a little).
NAV_RIGHT = b"\x01\x76\x00\x00\x00\xfa\xff"
# SpaceNavigator usbmon capture (AndunHH/spacemouse docs): Ry = -30, tilted right.
NAV_TILT_RIGHT = b"\x02\x00\x00\xe2\xff\x00\x00"
NAV_FORWARD = b"\x01\x00\x00\x38\xff\x00\x00"  # HID Y = -200: pushed away from the user
NAV_FORWARD_HARD = b"\x01\x00\x00\x70\xfe\x00\x00"  # HID Y = -400: beyond full scale
NAV_T_ZERO = b"\x01\x00\x00\x00\x00\x00\x00"
NAV_R_ZERO = b"\x02\x00\x00\x00\x00\x00\x00"
LEFT = b"\x03\x01\x00"  # same capture: left, right, both, released
RIGHT = b"\x03\x02\x00"
BOTH = b"\x03\x03\x00"
NONE = b"\x03\x00\x00"
RIGHT_WINDOWS = b"\x03\x02" + b"\x00" * 11  # hidapi on Windows pads to the longest report
# SpaceMouse Compact 256f:c635, CloudCompare PR #2339 log: X = 18, Z = 248 (pressed down);
# Rx = 32, Rz = 23.
COMPACT_T = b"\x01\x12\x00\x00\x00\xf8\x00"
COMPACT_R = b"\x02\x20\x00\x00\x00\x17\x00"
# SpaceMouse Wireless 256f:c62e, one 13-byte report: twisted counter-clockwise (Rz = -300).
WL_TWIST_CCW = b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xd4\xfe"
# Lifted hard (Z = -350) while tilted right (Ry = -175).
WL_UP_TILT = b"\x01\x00\x00\x00\x00\xa2\xfe\x00\x00\x51\xff\x00\x00"
WL_ZERO = b"\x01" + b"\x00" * 12
# Pro-style button reports (SpaceMouse Pro Wireless / Universal Receiver): 4 bytes of bits.
PRO_1 = b"\x03\x00\x10\x00\x00"  # button "1" = bit 12
PRO_ESC = b"\x03\x00\x00\x40\x00"  # bit 22
PRO_MENU = b"\x03\x01\x00\x00\x00"  # bit 0: MENU, answers to "left" too
BATTERY = b"\x17\x64\x00"  # report 0x17: battery level, not used


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize("data,layout,translation,rotation", [
    (NAV_FORWARD, Layout.SPLIT, (200 * S, 0, 0), None),
    (NAV_RIGHT, Layout.SPLIT, (0, -118 * S, 6 * S), None),
    (NAV_TILT_RIGHT, Layout.SPLIT, None, (30 * S, 0, 0)),
    (NAV_FORWARD_HARD, Layout.SPLIT, (1.0, 0, 0), None),
    (COMPACT_T, Layout.SPLIT, (0, -18 * S, -248 * S), None),
    (COMPACT_R, Layout.SPLIT, None, (0, -32 * S, -23 * S)),
    (WL_TWIST_CCW, Layout.COMBINED, (0, 0, 0), (0, 0, 300 * S)),
    (WL_UP_TILT, Layout.COMBINED, (0, 0, 1.0), (0.5, 0, 0)),
])
def test_axis_reports(data, layout, translation, rotation):
    update = parse_report(data, layout)
    for got, want in ((update.translation, translation), (update.rotation, rotation)):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, atol=1e-12)
    assert update.buttons is None


@pytest.mark.parametrize("data,buttons,held", [
    (LEFT, TWO_BUTTONS, {"left"}),
    (RIGHT, TWO_BUTTONS, {"right"}),
    (BOTH, TWO_BUTTONS, {"left", "right"}),
    (NONE, TWO_BUTTONS, set()),
    (RIGHT_WINDOWS, TWO_BUTTONS, {"right"}),
    (PRO_1, PRO_BUTTONS, {"1"}),
    (PRO_ESC, PRO_BUTTONS, {"esc"}),
    (PRO_MENU, PRO_BUTTONS, {"menu", "left"}),
])
def test_button_reports(data, buttons, held):
    update = parse_report(data, Layout.COMBINED, buttons)
    assert update.buttons == held
    assert update.translation is None and update.rotation is None


def test_unused_and_malformed_reports():
    assert parse_report(BATTERY, Layout.COMBINED) is None
    assert parse_report(NAV_TILT_RIGHT, Layout.COMBINED) is None  # no report 2 in that layout
    with pytest.raises(ValueError, match="13"):
        parse_report(NAV_FORWARD, Layout.COMBINED)
    with pytest.raises(ValueError, match="report 1 has 3 bytes"):
        parse_report(b"\x01\x00\x00", Layout.SPLIT)


# --- fake hidapi --------------------------------------------------------------------------


class FakeDevice:
    """One USB HID device on the fake bus, replaying queued reports at their due time."""

    def __init__(self, bus: FakeHid, vid: int, pid: int, path: bytes, product: str) -> None:
        self.bus, self.vid, self.pid, self.path, self.product = bus, vid, pid, path, product
        self.plugged = True
        self.generation = 0  # bumped on unplug: handles opened before stay dead
        self.queue: deque[tuple[float, bytes]] = deque()
        self.reads = 0

    def info(self) -> dict:
        return {"path": self.path, "vendor_id": self.vid, "product_id": self.pid,
                "product_string": self.product, "manufacturer_string": "3Dconnexion",
                "serial_number": "", "release_number": 0x0435, "usage_page": 1, "usage": 8,
                "interface_number": 0}

    def play(self, reports, interval: float = 0.008) -> None:
        with self.bus.cond:
            start = max([time.monotonic()] + [t for t, _ in self.queue])
            for i, r in enumerate(reports):
                self.queue.append((start + i * interval, r))
            self.bus.cond.notify_all()

    def drop_queued(self) -> None:
        with self.bus.cond:
            self.queue.clear()

    def unplug(self) -> None:
        with self.bus.cond:
            self.plugged = False
            self.generation += 1
            self.queue.clear()
            self.bus.cond.notify_all()

    def plug(self, path: bytes | None = None) -> None:
        with self.bus.cond:
            self.path = path or self.path
            self.plugged = True
            self.bus.cond.notify_all()

    def drained(self) -> bool:
        """All queued reports delivered, and the reader came back for more (so handled them)."""
        def delivered() -> int | None:
            with self.bus.cond:
                return None if self.queue else self.reads + 1  # +1: never falsy

        reads = wait_for(delivered) - 1
        return wait_for(lambda: self.reads > reads)


class FakeHandle:
    def __init__(self, bus: FakeHid) -> None:
        self.bus = bus
        self.dev: FakeDevice | None = None

    def open_path(self, path: bytes) -> None:
        assert isinstance(path, bytes), "hidapi takes bytes paths"
        with self.bus.cond:
            for d in self.bus.devices:
                if d.plugged and d.path == path and not self.bus.deny_open:
                    self.dev, self.generation = d, d.generation
                    return
        raise OSError("open failed")  # what cython-hidapi raises, whatever the cause

    def set_nonblocking(self, v: int) -> int:
        if self.dev is None:
            raise ValueError("not open")
        return 0

    def read(self, max_length: int, timeout_ms: int = 0) -> list[int]:
        d = self.dev
        if d is None:
            raise ValueError("not open")
        deadline = time.monotonic() + timeout_ms / 1000
        with self.bus.cond:
            d.reads += 1
            while True:
                if not d.plugged or d.generation != self.generation:
                    raise OSError("read error")
                now = time.monotonic()
                if d.queue and d.queue[0][0] <= now:
                    return list(d.queue.popleft()[1][:max_length])
                wait = deadline - now
                if d.queue:
                    wait = min(wait, d.queue[0][0] - now)
                if wait <= 0:
                    return []
                self.bus.cond.wait(wait)

    def close(self) -> None:
        self.dev = None


class FakeHid(types.SimpleNamespace):
    """hidapi's module API over a list of fake devices (plus a keyboard that never matches)."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = threading.Condition()
        self.devices: list[FakeDevice] = []
        self.deny_open = False
        self.enumerations = 0
        self.keyboard = {"path": b"/dev/hidraw0", "vendor_id": 0x046D, "product_id": 0xC31C,
                         "product_string": "USB Keyboard", "usage_page": 1, "usage": 6}

    def add(self, vid: int = 0x046D, pid: int = 0xC626, path: bytes = b"/dev/hidraw3",
            product: str = "SpaceNavigator") -> FakeDevice:
        dev = FakeDevice(self, vid, pid, path, product)
        self.devices.append(dev)
        return dev

    def enumerate(self, vendor_id: int = 0, product_id: int = 0) -> list[dict]:
        with self.cond:
            self.enumerations += 1
            infos = [self.keyboard] + [d.info() for d in self.devices if d.plugged]
        return [i for i in infos if vendor_id in (0, i["vendor_id"])
                and product_id in (0, i["product_id"])]

    def device(self) -> FakeHandle:
        return FakeHandle(self)


# --- helpers ------------------------------------------------------------------------------




def is_zero(cmd: Command) -> bool:
    return not np.any(cmd.twist)


@pytest.fixture
def hid():
    return FakeHid()


@pytest.fixture
def make(hid):
    opened: list[SpaceMouseDevice] = []

    def _make(**kwargs) -> SpaceMouseDevice:
        kwargs.setdefault("reconnect_s", 0.05)
        dev = SpaceMouseDevice(hid_module=hid, **kwargs)
        opened.append(dev)
        return dev

    yield _make
    for dev in opened:
        dev.close()


# --- the device ---------------------------------------------------------------------------


def test_identity_mapping_gives_device_axes_and_buttons(hid, make):
    nav = hid.add()
    dev = make()
    assert dev.alive and dev.name == "SpaceNavigator" and dev.path == b"/dev/hidraw3"
    nav.play([NAV_FORWARD, NAV_TILT_RIGHT] * 5)
    cmd = read_until(dev, lambda c: c.twist[0] > 0 and c.twist[3] > 0)
    np.testing.assert_allclose(cmd.twist, [200 * S, 0, 0, 30 * S, 0, 0], atol=1e-12)
    assert cmd.buttons == frozenset() and cmd.is_active()

    nav.play([NAV_T_ZERO, NAV_R_ZERO, LEFT])
    cmd = read_until(dev, lambda c: Button.GRIPPER_CLOSE in c.buttons and is_zero(c))
    nav.play([NONE, RIGHT])
    read_until(dev, lambda c: c.buttons == {Button.GRIPPER_OPEN})


def test_mapping_swaps_flips_and_scales(hid, make):
    wl = hid.add(0x256F, 0xC62E, b"/dev/hidraw5", "SpaceMouse Wireless")
    dev = make(axes=("y", "-x", "-z", "yaw", "pitch", "-roll"), scale=(1, 1, 0.5, 1, 1, 2))
    assert dev.spec.layout is Layout.COMBINED
    wl.play([WL_UP_TILT] * 5)
    cmd = read_until(dev, lambda c: not is_zero(c))
    # device: z = 1.0, roll = 0.5
    np.testing.assert_allclose(cmd.twist, [0, 0, -0.5, 0, 0, -1.0], atol=1e-12)
    wl.play([WL_TWIST_CCW] * 5)
    cmd = read_until(dev, lambda c: c.twist[3] > 0)
    np.testing.assert_allclose(cmd.twist, [0, 0, 0, 300 * S, 0, 0], atol=1e-12)


def test_chord_is_estop_only_latched_until_cleared(hid, make):
    nav = hid.add()
    dev = make()
    nav.play([NAV_FORWARD, BOTH, NAV_FORWARD])
    cmd = read_until(dev, lambda c: Button.ESTOP in c.buttons)
    assert cmd.buttons == {Button.ESTOP}  # no gripper close + open from the chord's members
    assert is_zero(cmd)  # the cap is still pushed, but the twist reads zero while latched
    nav.play([NONE] + [NAV_FORWARD] * 5)
    assert nav.drained()
    cmd = dev.read()
    assert cmd.buttons == {Button.ESTOP} and is_zero(cmd)  # released: still latched
    dev.clear_estop()
    cmd = dev.read()
    assert Button.ESTOP not in cmd.buttons and cmd.twist[0] > 0


def test_short_click_is_reported_once(hid, make):
    nav = hid.add()
    dev = make()
    nav.play([LEFT, NONE])  # 8 ms click, shorter than a 10 Hz control step
    assert nav.drained()
    assert dev.read().buttons == {Button.GRIPPER_CLOSE}
    assert dev.read().buttons == frozenset()


def test_live_stream_holds_and_lost_release_goes_to_zero(hid, make):
    nav = hid.add()
    dev = make(stale_s=0.2)
    nav.play([NAV_FORWARD, NAV_TILT_RIGHT] * 200)  # 3.2 s of steady pushing at 125 Hz
    read_until(dev, lambda c: c.twist[0] > 0 and c.twist[3] > 0)
    end = time.monotonic() + 0.4
    while time.monotonic() < end:  # never cut off while reports keep coming
        cmd = dev.read()
        assert cmd.twist[0] > 0 and cmd.twist[3] > 0
        time.sleep(0.01)
    nav.drop_queued()  # the stream stops without its final zero reports (lost packets)
    t0 = time.monotonic()
    read_until(dev, is_zero)
    assert time.monotonic() - t0 < 1.0


def test_unplug_zeroes_then_reconnects(hid, make, caplog):
    nav = hid.add()
    dev = make()
    nav.play([LEFT] + [NAV_FORWARD] * 100)
    read_until(dev, lambda c: c.twist[0] > 0 and Button.GRIPPER_CLOSE in c.buttons)

    with caplog.at_level(logging.DEBUG, logger=spacemouse.__name__):
        nav.unplug()
        cmd = read_until(dev, lambda c: is_zero(c) and not c.buttons)
        assert not cmd.is_active()  # the intervention ends; the policy drives again
        wait_for(lambda: not dev.alive)
        assert isinstance(dev.error, DeviceError) and "read error" in str(dev.error)
        tries = hid.enumerations
        wait_for(lambda: hid.enumerations >= tries + 3)  # failed reconnect attempts
        assert is_zero(dev.read()) and not dev.read().buttons

        nav.plug(b"/dev/hidraw4")  # back, under another node
        wait_for(lambda: dev.alive)
        assert dev.path == b"/dev/hidraw4"
        nav.play([NAV_FORWARD] * 5)
        read_until(dev, lambda c: c.twist[0] > 0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "lost" in errors[0].getMessage()


def test_estop_stays_latched_across_disconnect(hid, make):
    nav = hid.add()
    dev = make()
    nav.play([BOTH])
    read_until(dev, lambda c: Button.ESTOP in c.buttons)
    nav.unplug()
    wait_for(lambda: not dev.alive)
    assert dev.read().buttons == {Button.ESTOP}
    nav.plug()
    wait_for(lambda: dev.alive)
    assert dev.read().buttons == {Button.ESTOP}
    dev.clear_estop()
    assert dev.read().buttons == frozenset()


def test_device_listed_split_that_sends_combined_reports(hid, make):
    compact = hid.add(0x256F, 0xC635, b"/dev/hidraw6", "SpaceMouse Compact")
    dev = make()
    assert dev.spec.layout is Layout.SPLIT
    compact.play([COMPACT_T, COMPACT_R])
    cmd = read_until(dev, lambda c: c.twist[4] != 0)
    np.testing.assert_allclose(cmd.twist, [0, -18 * S, -248 * S, 0, -32 * S, -23 * S])
    compact.play([WL_TWIST_CCW] * 3)  # newer firmware: one 13-byte report
    cmd = read_until(dev, lambda c: c.twist[5] > 0)
    np.testing.assert_allclose(cmd.twist[5], 300 * S)


def test_choose_device_by_path_or_ids(hid, make):
    hid.add()
    hid.add(0x256F, 0xC652, b"/dev/hidraw7", "Universal Receiver")
    assert make().name == "SpaceNavigator"  # first known model found
    assert make(path="/dev/hidraw7").name == "3Dconnexion Universal Receiver"
    assert make(vendor_id=0x256F).path == b"/dev/hidraw7"
    with pytest.raises(DeviceError, match="product id 0xc62b"):
        make(product_id=0xC62B)


def test_pro_buttons_through_a_receiver(hid, make):
    rx = hid.add(0x256F, 0xC652, b"/dev/hidraw7", "Universal Receiver")
    dev = make(buttons={"1": Button.INTERVENE, "esc": Button.ESTOP, "left": "gripper_close"})
    rx.play([PRO_MENU])
    read_until(dev, lambda c: c.buttons == {Button.GRIPPER_CLOSE})
    rx.play([PRO_1])
    read_until(dev, lambda c: c.buttons == {Button.INTERVENE})
    rx.play([PRO_ESC])
    read_until(dev, lambda c: Button.ESTOP in c.buttons)


def test_no_device_lists_what_was_searched(hid):
    with pytest.raises(DeviceError) as info:
        SpaceMouseDevice(hid_module=hid)
    msg = str(info.value)
    assert "no 3Dconnexion SpaceMouse found" in msg
    assert "SpaceNavigator 046d:c626" in msg and "256f:c652" in msg
    assert "046d:c31c 'USB Keyboard'" in msg  # what was seen
    assert "99-spacemouse.rules" in msg and "udevadm" in msg


def test_open_failure_gives_the_udev_rule(hid, tmp_path, monkeypatch):
    node = tmp_path / "hidraw3"
    node.touch()
    hid.add(path=bytes(node))
    hid.deny_open = True
    with pytest.raises(DeviceError) as info:
        SpaceMouseDevice(hid_module=hid)
    msg = str(info.value)
    assert "could not open it (open failed)" in msg
    assert '/etc/udev/rules.d/99-spacemouse.rules' in msg
    assert 'KERNEL=="hidraw*", ATTRS{idVendor}=="256f", MODE="0660", GROUP="plugdev"' in msg
    assert 'KERNEL=="hidraw*", ATTRS{idVendor}=="046d", MODE="0660", GROUP="plugdev"' in msg
    assert "sudo udevadm control --reload-rules && sudo udevadm trigger" in msg
    # When the node is there but not readable (root can read anything: fake the check).
    monkeypatch.setattr(spacemouse, "_permission_denied", lambda path: True)
    with pytest.raises(DeviceError, match="permission denied"):
        SpaceMouseDevice(hid_module=hid)


class _FailingImport(importlib.abc.MetaPathFinder):
    def __init__(self, message: str) -> None:
        self.message = message

    def find_spec(self, name, path=None, target=None):
        if name in ("hid", "hidraw"):
            raise ImportError(self.message)
        return None


def _hide_hid(monkeypatch, message: str) -> None:
    for name in ("hid", "hidraw"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", [_FailingImport(message), *sys.meta_path])


def test_hidapi_missing(monkeypatch):
    _hide_hid(monkeypatch, "No module named 'hid'")
    with pytest.raises(DeviceError, match=r"pip install 'hilrl\[spacemouse\]'"):
        SpaceMouseDevice()


def test_hidapi_system_library_missing(monkeypatch):
    _hide_hid(monkeypatch, "libhidapi-hidraw.so.0: cannot open shared object file")
    with pytest.raises(DeviceError, match="libhidapi-hidraw0"):
        SpaceMouseDevice()


def test_other_hid_package_shadows_hidapi(monkeypatch):
    pyhidapi = types.ModuleType("hid")
    pyhidapi.Device = object  # pyhidapi's API: no device(), no enumerate()
    monkeypatch.setitem(sys.modules, "hid", pyhidapi)
    monkeypatch.setitem(sys.modules, "hidraw", None)  # import fails
    with pytest.raises(DeviceError, match="pip uninstall hid"):
        SpaceMouseDevice()


def test_bad_arguments(hid):
    hid.add()
    with pytest.raises(ValueError, match="unknown SpaceMouse button"):
        SpaceMouseDevice(hid_module=hid, buttons={"trigger": Button.ESTOP})
    with pytest.raises(ValueError, match="axes"):
        SpaceMouseDevice(hid_module=hid, axes=("x", "x", "z", "roll", "pitch", "yaw"))


def test_close_is_idempotent_and_stops_the_thread(hid):
    hid.add()
    with SpaceMouseDevice(hid_module=hid) as dev:
        assert dev.alive
    assert not dev.alive and not dev._thread.is_alive()
    dev.close()
    assert is_zero(dev.read())
