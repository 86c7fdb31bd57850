"""GamepadDevice: the real SDL path without a pad, and a fake joystick polled by the real thread."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import numpy as np
import pytest

# Before pygame is imported anywhere: no window, no sound card.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

from polling import wait_for  # noqa: E402

from hilrl.interfaces import Button, DeviceError  # noqa: E402
from robot_drivers.devices.gamepad import (  # noqa: E402
    DEFAULT_BUTTONS,
    SDL_LAYOUT,
    XPAD_LAYOUT,
    GamepadDevice,
)

POLL_HZ = 500.0


class FakeJoystick:
    """pygame.joystick.Joystick's reading methods over plain lists; counts samples taken."""

    def __init__(self, layout=XPAD_LAYOUT, n_axes=6, n_buttons=11, n_hats=1) -> None:
        self.layout = layout
        self.axes = [0.0] * n_axes
        for t in ("lt", "rt"):  # SDL triggers rest at -1
            self.axes[layout.axes[t]] = -1.0
        self.buttons = [0] * n_buttons
        self.hats = [(0, 0)] * n_hats
        self.fail: Exception | None = None
        self.samples = 0
        self.lock = threading.Lock()

    def set(self, **values: float) -> None:
        with self.lock:
            for name, v in values.items():
                self.axes[self.layout.axes[name]] = v

    def press(self, *names: str, down: bool = True) -> None:
        hat = {"up": (0, 1), "down": (0, -1), "left": (-1, 0), "right": (1, 0)}
        with self.lock:
            for n in names:
                if n in self.layout.buttons:
                    self.buttons[self.layout.buttons[n]] = int(down)
                else:  # the xpad layout's d-pad is hat 0
                    self.hats[0] = hat[n] if down else (0, 0)

    def get_name(self) -> str:
        return "Fake Pad"

    def get_guid(self) -> str:
        return "0300000000000000000000000000fake"

    def get_instance_id(self) -> int:
        return 7

    def get_numaxes(self) -> int:
        return len(self.axes)

    def get_numbuttons(self) -> int:
        return len(self.buttons)

    def get_numhats(self) -> int:
        return len(self.hats)

    def get_axis(self, i: int) -> float:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            if i == 0:
                self.samples += 1
            return self.axes[i]

    def get_button(self, i: int) -> int:
        with self.lock:
            return self.buttons[i]

    def get_hat(self, i: int) -> tuple[int, int]:
        with self.lock:
            return self.hats[i]



def settle(fake: FakeJoystick, polls: int = 3) -> None:
    """Wait until the device thread has sampled the fake a few more times."""
    start = fake.samples
    wait_for(lambda: fake.samples >= start + polls)


@pytest.fixture
def make_pad():
    devices: list[GamepadDevice] = []

    def make(fake: FakeJoystick | None = None, **kwargs) -> tuple[GamepadDevice, FakeJoystick]:
        fake = fake or FakeJoystick()
        kwargs.setdefault("poll_hz", POLL_HZ)
        dev = GamepadDevice(joystick=fake, **kwargs)
        devices.append(dev)
        settle(fake)
        return dev, fake

    yield make
    for dev in devices:
        dev.close()


# A pose of the pad and the device axes it gives: left stick up-left, right trigger fully
# pulled, right stick half right and quarter down (SDL: down is +), LB held.
POSE = {"lx": -0.5, "ly": -1.0, "rt": 1.0, "lt": -1.0, "rx": 0.5, "ry": 0.25}
POSE_DEVICE_AXES = [1.0, 0.5, 1.0, 0.5, -0.25, 1.0]


def test_no_pad_through_real_sdl_raises_with_hint():
    pygame = pytest.importorskip("pygame")
    # An index nobody has a pad at, so the test also holds on a desk with a pad plugged in.
    with pytest.raises(DeviceError, match="no gamepad was found by SDL") as info:
        GamepadDevice(index=64)
    msg = str(info.value)
    assert "ls /dev/input/js*" in msg and "input' group" in msg and "index 64" in msg
    assert not pygame.joystick.get_init()  # the failed start released SDL's joystick subsystem


def test_missing_pygame_raises_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)  # makes `import pygame` fail
    with pytest.raises(DeviceError, match=r"pip install 'hilrl\[gamepad\]'"):
        GamepadDevice()


def test_rest_reads_zero_and_no_buttons(make_pad):
    dev, _ = make_pad()
    cmd = dev.read()
    np.testing.assert_array_equal(cmd.twist, np.zeros(6))
    assert cmd.buttons == frozenset()
    assert dev.alive and dev.name == "Fake Pad" and dev.layout is XPAD_LAYOUT


@pytest.mark.parametrize("layout", [XPAD_LAYOUT, SDL_LAYOUT])
def test_sticks_triggers_bumpers_identity(make_pad, layout):
    fake = FakeJoystick(layout, n_buttons=len(layout.buttons), n_hats=0 if layout is SDL_LAYOUT
                        else 1)
    dev, fake = make_pad(fake)  # layout="auto" must pick the matching one
    assert dev.layout is layout
    fake.set(**POSE)
    fake.press("lb")
    settle(fake)
    cmd = dev.read()
    np.testing.assert_allclose(cmd.twist, POSE_DEVICE_AXES)
    assert cmd.buttons == frozenset()  # lb moves yaw, it is bound to no hilrl button


def test_each_control_sign(make_pad):
    dev, fake = make_pad()
    cases = [
        ({"ly": -1.0}, [], 0, 1.0),  # stick up = forward
        ({"lx": 1.0}, [], 1, -1.0),  # stick right = -y
        ({"lt": 1.0}, [], 2, -1.0),  # left trigger = down
        ({"rx": -1.0}, [], 3, -1.0),
        ({"ry": -1.0}, [], 4, 1.0),  # right stick up = lean forward
        ({}, ["rb"], 5, -1.0),  # right bumper = clockwise
    ]
    for axes, buttons, index, value in cases:
        fake.set(lx=0.0, ly=0.0, rx=0.0, ry=0.0, lt=-1.0, rt=-1.0)
        fake.press("lb", "rb", down=False)
        fake.set(**axes)
        fake.press(*buttons)
        settle(fake)
        expected = np.zeros(6)
        expected[index] = value
        np.testing.assert_allclose(dev.read().twist, expected, err_msg=str((axes, buttons)))


def test_flipped_swapped_scaled_mapping(make_pad):
    axes = ("-y", "x", "z", "yaw", "pitch", "-roll")
    scale = (0.5, 1.0, 0.25, 1.0, 2.0, 1.0)
    dev, fake = make_pad(axes=axes, scale=scale)
    fake.set(**POSE)
    fake.press("lb")
    settle(fake)
    x, y, z, roll, pitch, yaw = POSE_DEVICE_AXES
    expected = [-y * 0.5, x, z * 0.25, yaw, np.clip(pitch * 2.0, -1, 1), -roll]
    np.testing.assert_allclose(dev.read().twist, expected)


def test_trigger_ignored_until_seen_at_rest(make_pad):
    fake = FakeJoystick()
    fake.set(rt=0.0)  # a driver that reports 0 (= half pulled) before the first movement
    dev, fake = make_pad(fake)
    assert dev.read().twist[2] == 0.0
    fake.set(rt=-1.0)
    settle(fake)
    fake.set(rt=0.0)
    settle(fake)
    assert dev.read().twist[2] == pytest.approx(0.5)


def test_default_buttons(make_pad):
    dev, fake = make_pad()
    for name, action in DEFAULT_BUTTONS.items():
        if action == Button.ESTOP:
            continue
        fake.press(name)
        settle(fake)
        assert dev.read().buttons == {action}, name
        fake.press(name, down=False)
        settle(fake)
        dev.read()  # drains the press remembered since the last read
        assert dev.read().buttons == frozenset()
    fake.press("a", "x")
    settle(fake)
    cmd = dev.read()
    assert cmd.buttons == {Button.GRIPPER_CLOSE, Button.INTERVENE} and cmd.is_active()


def test_hat_and_chord_bindings(make_pad):
    dev, fake = make_pad(buttons={"up": Button.SUCCESS, "lb+rb": Button.ESTOP,
                                  "lb": Button.GRIPPER_OPEN})
    fake.hats[0] = (0, 1)
    settle(fake)
    assert dev.read().buttons == {Button.SUCCESS}
    fake.hats[0] = (0, 0)
    fake.press("lb")
    settle(fake)
    dev.read()
    assert dev.read().buttons == {Button.GRIPPER_OPEN}
    fake.press("rb")
    settle(fake)
    assert Button.ESTOP in dev.read().buttons


def test_short_tap_between_reads_reported_once(make_pad):
    dev, fake = make_pad()
    dev.read()
    fake.press("y")
    settle(fake)
    fake.press("y", down=False)
    settle(fake)
    assert dev.read().buttons == {Button.SUCCESS}
    assert dev.read().buttons == frozenset()


@pytest.mark.parametrize("button", ["back", "start"])
def test_estop_latched_until_cleared(make_pad, button):
    dev, fake = make_pad()
    fake.set(ly=-1.0)
    fake.press(button)
    settle(fake)
    fake.press(button, down=False)
    settle(fake)
    for _ in range(3):
        cmd = dev.read()
        assert Button.ESTOP in cmd.buttons
        np.testing.assert_array_equal(cmd.twist, np.zeros(6))  # no motion while stopped
    dev.clear_estop()
    cmd = dev.read()
    assert Button.ESTOP not in cmd.buttons
    assert cmd.twist[0] == 1.0


def test_read_error_mid_run_ends_intervention(make_pad, caplog):
    pygame = pytest.importorskip("pygame")
    dev, fake = make_pad()
    fake.set(ly=-1.0)
    fake.press("x")
    settle(fake)
    assert dev.read().is_active()
    with caplog.at_level(logging.ERROR, logger="robot_drivers.devices.gamepad"):
        fake.fail = pygame.error("Joystick not initialized")
        # The device zeroes its command first, then sets its error and logs: wait for all.
        wait_for(lambda: not dev.alive and any(r.levelno >= logging.ERROR
                                               for r in caplog.records))
        time.sleep(0.02)  # more polls: still one log line
    cmd = dev.read()
    np.testing.assert_array_equal(cmd.twist, np.zeros(6))
    assert cmd.buttons == frozenset() and not cmd.is_active()
    assert isinstance(dev.error, DeviceError)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Fake Pad" in errors[0].getMessage()


def test_close_stops_thread_idempotent(make_pad):
    dev, _ = make_pad()
    t0 = time.monotonic()
    dev.close()
    assert time.monotonic() - t0 < 1.0
    assert not dev.alive
    dev.close()
    with GamepadDevice(joystick=FakeJoystick(), poll_hz=POLL_HZ) as dev2:
        assert dev2.alive
    assert not dev2.alive


def test_bad_arguments_rejected():
    fake = FakeJoystick()
    with pytest.raises(ValueError, match="unknown gamepad button"):
        GamepadDevice(joystick=fake, buttons={"triangle": Button.SUCCESS})
    with pytest.raises(ValueError, match="map to one of"):
        GamepadDevice(joystick=fake, buttons={"a": "jump"})
    with pytest.raises(ValueError, match="poll_hz"):
        GamepadDevice(joystick=fake, poll_hz=0)
    with pytest.raises(ValueError, match="layout"):
        GamepadDevice(joystick=fake, layout="n64")
    with pytest.raises(ValueError, match="6 entries"):
        GamepadDevice(joystick=fake, axes=("x",))


class FakePygame:
    """Just enough of pygame's module surface for the SDL path: hot-plug events on demand."""

    JOYAXISMOTION, JOYBALLMOTION, JOYBUTTONDOWN, JOYBUTTONUP, JOYHATMOTION = range(1536, 1541)
    JOYDEVICEADDED, JOYDEVICEREMOVED = 1541, 1542

    class error(RuntimeError):  # noqa: N801 - pygame's name
        pass

    def __init__(self, pads: list[FakeJoystick]) -> None:
        self.pads = pads
        self.events: list[object] = []
        self.lock = threading.Lock()
        self.joystick_up = False
        outer = self

        class display:  # noqa: N801
            up = False

            @classmethod
            def get_init(cls) -> bool:
                return cls.up

            @classmethod
            def init(cls) -> None:
                cls.up = True

            @classmethod
            def quit(cls) -> None:
                cls.up = False

        class joystick:  # noqa: N801
            @staticmethod
            def init() -> None:
                outer.joystick_up = True

            @staticmethod
            def quit() -> None:
                outer.joystick_up = False

            @staticmethod
            def get_count() -> int:
                return len(outer.pads)

            @staticmethod
            def Joystick(i: int) -> FakeJoystick:  # noqa: N802
                return outer.pads[i]

        class event:  # noqa: N801
            @staticmethod
            def pump() -> None:
                pass

            @staticmethod
            def get(types) -> list[object]:
                with outer.lock:
                    out = [e for e in outer.events if e.type in types]
                    outer.events.clear()
                return out

        self.display, self.joystick, self.event = display, joystick, event

    def post(self, type_: int, **attrs: int) -> None:
        with self.lock:
            self.events.append(type("Event", (), {"type": type_, **attrs}))


def test_unplug_and_replug_through_sdl_events(monkeypatch, caplog):
    pad = FakeJoystick()
    pg = FakePygame([pad])
    monkeypatch.setitem(sys.modules, "pygame", pg)
    with GamepadDevice(poll_hz=POLL_HZ) as dev:
        assert pg.joystick_up and dev.alive
        pad.set(ly=-1.0)
        pad.press("a")
        settle(pad)
        assert dev.read().twist[0] == 1.0

        with caplog.at_level(logging.ERROR, logger="robot_drivers.devices.gamepad"):
            pg.pads.clear()
            pg.post(pg.JOYDEVICEREMOVED, instance_id=7)
            # The device zeroes its command first, then logs: wait for both.
            wait_for(lambda: not dev.alive and "unplugged" in caplog.text)
        cmd = dev.read()
        np.testing.assert_array_equal(cmd.twist, np.zeros(6))
        assert cmd.buttons == frozenset()

        pg.pads.append(pad)
        pg.post(pg.JOYDEVICEADDED, device_index=0)
        wait_for(lambda: dev.alive)
        settle(pad)
        assert dev.read().twist[0] == 1.0
    assert not pg.joystick_up and not pg.display.up  # close() released what it started
