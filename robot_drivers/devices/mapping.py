"""From what a hand-held device measures to hilrl's Command: axis mapping, scaling, buttons.

Every hand-held device (SpaceMouse, gamepad, keyboard) reports six normalised axes in its own
frame, named x, y, z, roll, pitch, yaw, and a set of pressed button names of its own. The task
file says how those become an end-effector twist and hilrl buttons (``device.axes``,
``device.scale``, ``device.buttons``); this module is the one place that applies it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from hilrl.interfaces import Button, Command

AXIS_NAMES = ("x", "y", "z", "roll", "pitch", "yaw")
IDENTITY_AXES = AXIS_NAMES


class TwistMapping:
    """End-effector axis i = sign * device axis ``axes[i]`` * ``scale[i]``, clipped to [-1, 1].

    ``axes`` entries are axis names with an optional leading "-" (flip) or "+".
    """

    def __init__(self, axes: Sequence[str] = IDENTITY_AXES,
                 scale: Sequence[float] = (1.0,) * 6) -> None:
        if len(axes) != 6 or len(scale) != 6:
            raise ValueError(f"axes and scale need 6 entries each, got {list(axes)}, {list(scale)}")
        index, sign = [], []
        for a in axes:
            name = a.lstrip("+-")
            if name not in AXIS_NAMES:
                raise ValueError(f"unknown device axis {a!r}: use {', '.join(AXIS_NAMES)}")
            index.append(AXIS_NAMES.index(name))
            sign.append(-1.0 if a.startswith("-") else 1.0)
        if sorted(index) != list(range(6)):
            raise ValueError(f"axes {list(axes)} must name each device axis exactly once")
        self.index = np.array(index)
        self.gain = np.array(sign) * np.asarray(scale, np.float64)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(6,) device axes in [-1, 1] -> (6,) end-effector twist in [-1, 1]."""
        return np.clip(np.asarray(raw, np.float64)[self.index] * self.gain, -1.0, 1.0)


class ButtonMap:
    """Device button names (or "a+b" chords) -> hilrl Button names.

    A chord fires while all its buttons are held, and then its members' own bindings do not:
    with "left+right: estop", squeezing both buttons stops the arm without also opening and
    closing the gripper.
    """

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.chords: list[tuple[frozenset[str], str]] = []
        for key, action in mapping.items():
            if action not in Button.ALL:
                raise ValueError(f"button {key!r} -> {action!r}: map to one of "
                                 f"{', '.join(sorted(Button.ALL))}")
            members = frozenset(k.strip() for k in key.split("+"))
            if not all(members):
                raise ValueError(f"button {key!r}: empty name in the chord")
            self.chords.append((members, action))
        # Larger chords first, so they claim their buttons before single ones.
        self.chords.sort(key=lambda c: -len(c[0]))

    def buttons(self, pressed: Iterable[str]) -> frozenset[str]:
        held = set(pressed)
        claimed: set[str] = set()
        out = set()
        for members, action in self.chords:
            if members <= held and not (len(members) == 1 and members & claimed):
                out.add(action)
                if len(members) > 1:
                    claimed |= members
        return frozenset(out)

    @property
    def names(self) -> frozenset[str]:
        """Every device button some binding mentions."""
        return frozenset().union(*(m for m, _ in self.chords)) if self.chords else frozenset()


def device_command(twist: np.ndarray, buttons: Iterable[str], estop: bool) -> Command:
    """What a hand-held device reports. While its e-stop is latched: no motion, ESTOP set,
    whatever else is held. Otherwise the twist, and never ESTOP: only the latch says stop."""
    if estop:
        return Command(twist=np.zeros(6), buttons=frozenset({*buttons, Button.ESTOP}))
    return Command(twist=twist, buttons=frozenset(set(buttons) - {Button.ESTOP}))
