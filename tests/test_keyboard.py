"""KeyboardDevice against a real pseudo-terminal: bytes go into the master, the device reads the
slave, exactly as it would read a person's terminal."""

from __future__ import annotations

import io
import os
import sys
import termios
import time

import numpy as np
import pytest
from polling import read_until, wait_for

from hilrl.interfaces import Button
from robot_drivers.devices.keyboard import (
    DEFAULT_KEY_MAP,
    DeviceError,
    KeyboardDevice,
    _parse_keys,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t




def has(button: str):
    return lambda cmd: button in cmd.buttons


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    yield master, slave
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def make_device(pty_pair):
    master, slave = pty_pair
    clock = FakeClock()
    devices: list[KeyboardDevice] = []

    def make(**kwargs) -> tuple[KeyboardDevice, FakeClock]:
        kwargs.setdefault("clock", clock)
        dev = KeyboardDevice(fd=slave, **kwargs)
        devices.append(dev)
        return dev, clock

    make.master = master
    make.slave = slave
    yield make
    for dev in devices:
        dev.close()


def type_(master: int, data: bytes) -> None:
    os.write(master, data)


AXIS_KEYS = [
    ("w", 0, 1.0),
    ("s", 0, -1.0),
    ("a", 1, 1.0),
    ("d", 1, -1.0),
    ("r", 2, 1.0),
    ("f", 2, -1.0),
    ("i", 3, 1.0),
    ("k", 3, -1.0),
    ("j", 4, 1.0),
    ("l", 4, -1.0),
    ("u", 5, 1.0),
    ("o", 5, -1.0),
]


@pytest.mark.parametrize(("key", "axis", "sign"), AXIS_KEYS)
def test_motion_key_sets_one_axis_with_sign(make_device, key, axis, sign):
    dev, _ = make_device(rotation=True)
    assert np.all(dev.read().twist == 0)
    type_(make_device.master, key.encode())
    cmd = read_until(dev, lambda c: np.any(c.twist != 0))
    expected = np.zeros(6)
    expected[axis] = sign
    np.testing.assert_array_equal(cmd.twist, expected)
    assert cmd.twist.shape == (6,)
    assert cmd.buttons == frozenset()


@pytest.mark.parametrize(
    ("seq", "axis", "sign"),
    [(b"\x1b[A", 0, 1.0), (b"\x1b[B", 0, -1.0), (b"\x1b[D", 1, 1.0), (b"\x1bOC", 1, -1.0)],
)
def test_arrow_keys_move_in_the_plane_and_do_not_estop(make_device, seq, axis, sign):
    dev, _ = make_device()
    type_(make_device.master, seq + b"c")  # c: a marker that comes after the sequence
    cmd = read_until(dev, has(Button.GRIPPER_CLOSE))
    assert cmd.twist[axis] == sign
    assert np.count_nonzero(cmd.twist) == 1
    assert Button.ESTOP not in cmd.buttons
    time.sleep(0.05)  # longer than the escape timeout: no late Esc may appear
    assert Button.ESTOP not in dev.read().buttons


def test_motion_expires_after_hold_and_repeats_extend_it(make_device):
    dev, clock = make_device(hold_s=0.5)
    t0 = clock.t
    type_(make_device.master, b"w")
    read_until(dev, lambda c: c.twist[0] == 1.0)
    clock.t = t0 + 0.49
    assert dev.read().twist[0] == 1.0
    clock.t = t0 + 0.51
    np.testing.assert_array_equal(dev.read().twist, np.zeros(6))

    # an auto-repeat at t0+0.4 keeps the axis on until t0+0.9
    clock.t = t0 + 0.4
    type_(make_device.master, b"w ")  # space (intervene) marks that "w" has been handled
    read_until(dev, has(Button.INTERVENE))
    clock.t = t0 + 0.8
    assert dev.read().twist[0] == 1.0
    clock.t = t0 + 0.91
    assert dev.read().twist[0] == 0.0


def test_opposite_key_on_same_axis_wins_and_axes_combine(make_device):
    dev, _ = make_device()
    type_(make_device.master, b"wsa")
    cmd = read_until(dev, lambda c: c.twist[1] != 0)
    np.testing.assert_array_equal(cmd.twist, [-1.0, 1.0, 0, 0, 0, 0])


def test_speed_scales_twist(make_device):
    dev, _ = make_device(speed=0.3)
    type_(make_device.master, b"f")
    cmd = read_until(dev, lambda c: c.twist[2] != 0)
    assert cmd.twist[2] == pytest.approx(-0.3)


def test_uppercase_letters_work_like_lowercase(make_device):
    dev, _ = make_device()
    type_(make_device.master, b"D")
    cmd = read_until(dev, lambda c: c.twist[1] != 0)
    assert cmd.twist[1] == -1.0


def test_rotation_keys_ignored_unless_enabled(make_device):
    dev, _ = make_device()  # rotation=False by default
    assert "i" not in dev.bindings
    type_(make_device.master, b"ikjluo" + b"c")
    cmd = read_until(dev, has(Button.GRIPPER_CLOSE))
    np.testing.assert_array_equal(cmd.twist, np.zeros(6))


def test_gripper_buttons_held_for_hold_s(make_device):
    dev, clock = make_device(hold_s=0.5)
    t0 = clock.t
    type_(make_device.master, b"c")
    cmd = read_until(dev, has(Button.GRIPPER_CLOSE))
    assert cmd.buttons == {Button.GRIPPER_CLOSE}
    assert cmd.is_active()
    clock.t = t0 + 0.3
    assert dev.read().buttons == {Button.GRIPPER_CLOSE}
    clock.t = t0 + 0.6
    assert dev.read().buttons == frozenset()

    type_(make_device.master, b"v")
    cmd = read_until(dev, has(Button.GRIPPER_OPEN))
    assert cmd.buttons == {Button.GRIPPER_OPEN}
    # close then open: the later press replaces the earlier one
    type_(make_device.master, b"cv")
    wait_for(lambda: dev.read().buttons == {Button.GRIPPER_OPEN})
    time.sleep(0.02)
    assert dev.read().buttons == {Button.GRIPPER_OPEN}


def test_space_toggles_intervene_sticky(make_device):
    dev, clock = make_device()
    type_(make_device.master, b" ")
    cmd = read_until(dev, has(Button.INTERVENE))
    np.testing.assert_array_equal(cmd.twist, np.zeros(6))
    assert cmd.is_active()  # taking over while keeping still
    clock.t += 60.0  # sticky: no hold time applies
    assert Button.INTERVENE in dev.read().buttons
    assert Button.INTERVENE in dev.read().buttons
    type_(make_device.master, b" ")
    cmd = read_until(dev, lambda c: Button.INTERVENE not in c.buttons)
    assert not cmd.is_active()


@pytest.mark.parametrize("key, button", [(b"\r", Button.SUCCESS), (b"\n", Button.SUCCESS),
                                         (b"\x7f", Button.REJECT), (b"\x08", Button.REJECT)])
def test_success_and_reject_reported_by_one_read(make_device, key, button):
    dev, _ = make_device()
    type_(make_device.master, key)
    read_until(dev, has(button))
    assert button not in dev.read().buttons
    assert button not in dev.read().buttons


@pytest.mark.parametrize("key", [b"\x1b", b"x", b"X"])
def test_estop_latched_until_cleared(make_device, key):
    dev, clock = make_device()
    type_(make_device.master, b"w")
    read_until(dev, lambda c: c.twist[0] != 0)
    type_(make_device.master, key)
    cmd = read_until(dev, has(Button.ESTOP))
    np.testing.assert_array_equal(cmd.twist, np.zeros(6))  # estop cancels motion in progress
    for _ in range(3):
        clock.t += 10.0
        assert Button.ESTOP in dev.read().buttons
    dev.clear_estop()
    assert Button.ESTOP not in dev.read().buttons
    assert dev.alive


def test_lone_esc_split_from_a_following_key_is_still_estop(make_device):
    dev, _ = make_device()
    type_(make_device.master, b"\x1b")
    time.sleep(0.1)  # well past the escape timeout
    type_(make_device.master, b"[")
    read_until(dev, has(Button.ESTOP))


def test_unknown_keys_and_sequences_ignored(make_device):
    dev, _ = make_device()
    # letters, digits, punctuation, Tab, Ctrl-A, PageUp/F5 sequences, a UTF-8 "é"
    junk = b"zqbnm1234567890-=[];'/.,\t\x01" + b"\x1b[5~\x1b[15~\x1bOP" + "é".encode()
    type_(make_device.master, junk + b"c")
    cmd = read_until(dev, has(Button.GRIPPER_CLOSE))
    assert cmd.buttons == {Button.GRIPPER_CLOSE}
    np.testing.assert_array_equal(cmd.twist, np.zeros(6))
    time.sleep(0.05)
    assert Button.ESTOP not in dev.read().buttons


def test_custom_key_map_replaces_default(make_device):
    dev, _ = make_device(key_map={"q": "+z", "space": Button.ESTOP, "enter": "-yaw"})
    type_(make_device.master, b"wq")  # w is no longer bound
    cmd = read_until(dev, lambda c: np.any(c.twist != 0))
    np.testing.assert_array_equal(cmd.twist, [0, 0, 1.0, 0, 0, 0])
    type_(make_device.master, b" ")
    read_until(dev, has(Button.ESTOP))
    assert "enter" not in dev.bindings  # rotation binding dropped while rotation=False


def test_bad_arguments_rejected(pty_pair):
    _, slave = pty_pair
    with pytest.raises(ValueError, match="unknown action"):
        KeyboardDevice(fd=slave, key_map={"w": "+w"})
    with pytest.raises(ValueError, match="unknown key"):
        KeyboardDevice(fd=slave, key_map={"shift": "+x"})
    with pytest.raises(ValueError, match="hold_s"):
        KeyboardDevice(fd=slave, hold_s=0)
    with pytest.raises(ValueError, match="speed"):
        KeyboardDevice(fd=slave, speed=-1)


def test_default_key_map_documented_bindings():
    assert DEFAULT_KEY_MAP["w"] == "+x" and DEFAULT_KEY_MAP["d"] == "-y"
    assert DEFAULT_KEY_MAP["esc"] == DEFAULT_KEY_MAP["x"] == Button.ESTOP
    assert set(DEFAULT_KEY_MAP.values()) >= set(Button.ALL)


def test_non_tty_fd_raises_clear_error():
    r, w = os.pipe()
    try:
        with pytest.raises(DeviceError, match="interactive terminal") as info:
            KeyboardDevice(fd=r)
        assert isinstance(info.value, RuntimeError)
        assert "device.kind=scripted" in str(info.value)
        assert "SpaceMouse" in str(info.value)
    finally:
        os.close(r)
        os.close(w)


def test_default_stdin_without_fileno_raises_clear_error(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(DeviceError, match="interactive terminal"):
        KeyboardDevice()


def test_close_restores_terminal_and_stops_thread_promptly(pty_pair):
    master, slave = pty_pair
    before = termios.tcgetattr(slave)
    dev = KeyboardDevice(fd=slave)
    during = termios.tcgetattr(slave)
    assert during != before
    assert not during[3] & termios.ECHO
    assert not during[3] & termios.ICANON
    assert during[3] & termios.ISIG  # Ctrl-C still interrupts
    assert dev.alive

    t0 = time.monotonic()
    dev.close()
    assert time.monotonic() - t0 < 1.0
    assert not dev.alive
    assert termios.tcgetattr(slave) == before
    dev.close()  # idempotent
    assert termios.tcgetattr(slave) == before


def test_context_manager_closes(pty_pair):
    _, slave = pty_pair
    before = termios.tcgetattr(slave)
    with KeyboardDevice(fd=slave) as dev:
        assert dev.alive
    assert not dev.alive
    assert termios.tcgetattr(slave) == before


def test_terminal_hangup_latches_estop(pty_pair):
    master, slave = pty_pair
    dev = KeyboardDevice(fd=slave)
    try:
        os.close(master)
        read_until(dev, has(Button.ESTOP))
        wait_for(lambda: not dev.alive)
        assert dev.error is not None
    finally:
        dev.close()


def test_parse_keys_waits_for_split_escape_sequences():
    assert _parse_keys(b"\x1b", final=False) == ([], b"\x1b")
    assert _parse_keys(b"w\x1b[", final=False) == (["w"], b"\x1b[")
    assert _parse_keys(b"\x1b[", final=True) == (["esc", "["], b"")
    assert _parse_keys(b"\x1b[1;5A", final=False) == (["up"], b"")
    assert _parse_keys(b"\x1bw", final=False) == (["esc", "w"], b"")
    assert _parse_keys(b"\x1b\x1b", final=True) == (["esc", "esc"], b"")
    assert _parse_keys(b" \r\n", final=False) == (["space", "enter", "enter"], b"")


def test_axes_and_scale_map_the_twist(make_device):
    # y flipped and swapped with x, z at half scale: the task file's mapping, as for any device
    dev, _ = make_device(axes=("-y", "x", "z", "roll", "pitch", "yaw"),
                         scale=(1.0, 1.0, 0.5, 1.0, 1.0, 1.0))
    type_(make_device.master, b"wr")  # device +x and +z
    cmd = read_until(dev, lambda c: c.twist[2] != 0 and c.twist[1] != 0)
    np.testing.assert_array_equal(cmd.twist, [0, 1.0, 0.5, 0, 0, 0])
    type_(make_device.master, b"a")  # device +y -> end-effector -x
    cmd = read_until(dev, lambda c: c.twist[0] != 0)
    assert cmd.twist[0] == -1.0
    with pytest.raises(ValueError, match="6 entries"):
        KeyboardDevice(fd=make_device.slave, axes=("x", "y"))
