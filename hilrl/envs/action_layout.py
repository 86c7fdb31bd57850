"""A person's device command in a gymnasium env's own action units (``ActionLayout``).

A device reports a normalised base-frame twist and gripper buttons (``Command``). The task
file's ``env.gymnasium.action_layout`` says which of the env's action dimensions move the end
effector, in what units and frame, and how its gripper is commanded; :class:`LayoutActions`
checks that against the env's spaces once (every misfit names its setting) and turns each
command into an env action. Dimensions the layout does not name get the env's 0 (clipped to
their bounds) while the person drives.

Holding neither gripper button keeps the gripper as it is, whatever the convention: a delta
of 0, or the last value the env was sent (by the policy or the person) for binary and
absolute grippers, so taking over never opens a gripper the policy had closed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from scipy.spatial.transform import Rotation

from hilrl.config import ActionLayout
from hilrl.interfaces import Button, Command

_PATH = "env.gymnasium.action_layout"


class LayoutActions:
    """Maps commands through ``layout`` onto ``action_space`` (the env's Box, flattened)."""

    def __init__(self, layout: ActionLayout, action_space: spaces.Box,
                 observation_space: spaces.Space, env_id: str) -> None:
        self.layout = layout
        self.low = action_space.low.astype(np.float64).ravel()
        self.high = action_space.high.astype(np.float64).ravel()
        self._env = f"env {env_id!r}"
        self._check_dims()
        self._neutral = np.clip(np.zeros_like(self.low), self.low, self.high)
        self.translation_speed = self._speed("translation")
        self.rotation_speed = self._speed("rotation")
        self.gripper_close, self.gripper_open = self._gripper_values()
        if layout.frame == "end_effector":
            self._check_orientation(observation_space)
        self._gripper = self.gripper_open  # the value the env was last sent (binary, absolute)

    @property
    def active(self) -> bool:
        """Whether the layout commands anything (a device can drive this env)."""
        return bool(self.layout.dims())

    @property
    def rotates(self) -> bool:
        return any(d is not None for d in self.layout.rotation)

    # --- checks, once ------------------------------------------------------------------------

    def _check_dims(self) -> None:
        size = self.low.size
        lay = self.layout
        named = [(f"translation[{i}]", d) for i, d in enumerate(lay.translation)]
        named += [(f"rotation[{i}]", d) for i, d in enumerate(lay.rotation)]
        named.append(("gripper", lay.gripper))
        for name, dim in named:
            if dim is not None and dim >= size:
                raise ValueError(f"{_PATH}.{name}: {dim} is not an action dimension of "
                                 f"{self._env}, whose action has {size} (0..{size - 1})")

    def _speed(self, part: str) -> float:
        """Units per step at full deflection: as set, or the most every listed axis allows."""
        lay = self.layout
        dims = [d for d in getattr(lay, part) if d is not None]
        speed = getattr(lay, f"{part}_speed")
        if speed is not None or not dims:
            return speed or 0.0
        scale = getattr(lay, f"{part}_scale")
        reach = min(min(-self.low[d], self.high[d]) for d in dims) * scale
        if reach <= 0:
            raise ValueError(
                f"{_PATH}: the action bounds of {part} dimensions {dims} of {self._env} "
                f"(low {self.low[dims].tolist()}, high {self.high[dims].tolist()}) do not "
                f"span both directions around 0; set {_PATH}.{part}_speed (units per step at "
                "the device's full deflection)")
        return float(reach)

    def _gripper_values(self) -> tuple[float, float]:
        lay, dim = self.layout, self.layout.gripper
        if dim is None:
            return 0.0, 0.0
        lo, hi = self.low[dim], self.high[dim]
        defaults = {"binary": (1.0, -1.0), "absolute": (1.0, 0.0), "delta": (hi, lo)}
        close, open_ = defaults[lay.gripper_mode]
        close = close if lay.gripper_close is None else lay.gripper_close
        open_ = open_ if lay.gripper_open is None else lay.gripper_open
        for name, value in (("gripper_close", close), ("gripper_open", open_)):
            if not lo <= value <= hi:
                raise ValueError(f"{_PATH}.{name}: {value} is outside the bounds [{lo}, {hi}] "
                                 f"of action dimension {dim} of {self._env} "
                                 f"({lay.gripper_mode} gripper); set {_PATH}.{name}")
        if close == open_:
            raise ValueError(f"{_PATH}: gripper_close and gripper_open are both {close}")
        if lay.gripper_mode == "delta" and not close * open_ < 0:
            raise ValueError(f"{_PATH}: a delta gripper closes and opens by changes of "
                             f"opposite sign, got gripper_close {close}, gripper_open {open_}")
        return float(close), float(open_)

    def _check_orientation(self, space: spaces.Space) -> None:
        key = self.layout.orientation_key
        if self.layout.translation.count(None) or self.layout.rotation.count(None) not in (0, 3):
            raise ValueError(f"{_PATH}: frame end_effector rotates the device's motion, so it "
                             "needs all three translation axes (and all three rotation axes "
                             "or none)")
        if not isinstance(space, spaces.Dict) or key not in space.spaces:
            keys = list(space.spaces) if isinstance(space, spaces.Dict) else []
            raise ValueError(f"{_PATH}.orientation_key: {key!r} is not in the observation of "
                             f"{self._env} (Dict keys: {keys})")
        if getattr(space.spaces[key], "shape", None) != (4,):
            raise ValueError(f"{_PATH}.orientation_key: {key!r} is {space.spaces[key]}; it "
                             "must hold a quaternion of shape (4,)")

    # --- per step ----------------------------------------------------------------------------

    def reset(self) -> None:
        self._gripper = self.gripper_open

    def applied(self, env_action: np.ndarray) -> None:
        """The env action sent this step (anyone's): what "keep the gripper" repeats."""
        if self.layout.gripper is not None and self.layout.gripper_mode != "delta":
            self._gripper = float(env_action[self.layout.gripper])

    def __call__(self, command: Command, deadzone: float,
                 observation: Any = None) -> np.ndarray:
        """The env action (flattened, float64, within bounds) the command asks for;
        ``observation``: the env's latest raw observation (frame end_effector reads it)."""
        lay = self.layout
        twist = np.clip(np.asarray(command.twist, np.float64), -1.0, 1.0)
        twist = np.where(np.abs(twist) > deadzone, twist, 0.0)
        motion = np.concatenate([twist[:3] * self.translation_speed,
                                 twist[3:] * self.rotation_speed])
        if lay.frame == "end_effector":
            motion = self._into_end_effector(motion, observation)
        action = self._neutral.copy()
        for axis, dim in enumerate(lay.translation):
            if dim is not None:
                action[dim] = motion[axis] / lay.translation_scale
        for axis, dim in enumerate(lay.rotation):
            if dim is not None:
                action[dim] = motion[3 + axis] / lay.rotation_scale
        if lay.gripper is not None:
            action[lay.gripper] = self._gripper_action(command.buttons)
        return np.clip(action, self.low, self.high)

    def _gripper_action(self, buttons: frozenset[str]) -> float:
        if Button.GRIPPER_CLOSE in buttons:
            return self.gripper_close
        if Button.GRIPPER_OPEN in buttons:
            return self.gripper_open
        if self.layout.gripper_mode == "delta":
            return 0.0
        if self.layout.gripper_mode == "binary":  # snap what the policy sent to a command
            middle = 0.5 * (self.gripper_close + self.gripper_open)
            closing = (self._gripper - middle) * (self.gripper_close - middle) > 0
            return self.gripper_close if closing else self.gripper_open
        return self._gripper

    def _into_end_effector(self, motion: np.ndarray, observation: Any) -> np.ndarray:
        quat = np.asarray(observation[self.layout.orientation_key], np.float64)
        if self.layout.quaternion_order == "wxyz":
            quat = quat[[1, 2, 3, 0]]
        to_ee = Rotation.from_quat(quat).inv()
        return np.concatenate([to_ee.apply(motion[:3]), to_ee.apply(motion[3:])])
