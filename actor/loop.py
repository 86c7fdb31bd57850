"""The one episode loop (Acme's EnvironmentLoop as the model).

Training, evaluation, teleoperation, demo and label recording and the imitation baselines
all run :func:`run_episode`::

    obs = reset(seed)
    repeat:  [clock.start_step]  [before_step]  action = policy.act(obs)
             env.step(action)  ->  success decided (decide_success)  ->  observers.on_step
             [clock.end_step]
    until terminated, truncated, ``until(step)`` or ``stopped()``  ->  observers.on_end

What differs between the callers is an :class:`Observer` (sending to the learner, writing
a dataset, writing labels, episode records, video, collecting intervened steps) and a few
hooks for the actor node's real-time needs: a clock that paces the steps, a ``before_step``
that pulls new weights between steps and may hold the arm instead of stepping, a fault
handler that ends the episode on a robot or camera error, a reset that retries until the
hardware answers, and a stop flag.

An EmergencyStop (the device's estop button, raised by the intervention wrapper with the arm
already held) is never caught here: it propagates out of the loop to the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from hilrl.interfaces import CameraError, RobotError

Obs = dict[str, Any]


@dataclass(slots=True)
class Step:
    """One env step as the observers see it."""

    index: int  # 0 for the episode's first step
    obs: Obs  # what the policy acted on
    # What the env applied: the person's when intervened (info["action"]); in residual RL, the
    # correction to the base policy that applied it (hilrl.envs.residual).
    action: np.ndarray
    reward: float  # 1.0 when the success button ended the episode
    terminated: bool
    truncated: bool
    next_obs: Obs
    info: dict[str, Any]
    intervened: bool
    success: bool  # this step's success, as decide_success() says


@dataclass
class EpisodeResult:
    """What an episode came to, for every kind of caller."""

    kind: str  # "train", "eval", "teleop", "demo", "labels"
    seed: int
    steps: int = 0
    success: bool = False  # success was decided at some step
    ret: float = 0.0
    interventions: int = 0  # steps where the person's command replaced the policy's
    policy_version: int = -1  # of the policy at the end (-1: no learned policy)
    steps_to_success: int | None = None  # steps taken when success was first decided
    fault: str | None = None  # a robot or camera error (or a stop during reset) ended it

    def time_to_success_s(self, hz: float) -> float | None:
        return None if self.steps_to_success is None else self.steps_to_success / hz


class Policy(Protocol):
    """What acts in the loop: a learned policy, a person's device alone (Idle), a script."""

    version: int  # names the parameters acting (-1: none learned)

    def act(self, obs: Obs) -> np.ndarray: ...


class Observer(Protocol):
    """Told about every episode's reset, each of its steps in order, and its end. Subclass
    it and override what you need; the rest do nothing."""

    def on_reset(self, obs: Obs) -> None:
        return None

    def on_step(self, step: Step) -> None:
        return None

    def on_end(self, result: EpisodeResult) -> None:
        return None


class Pacer(Protocol):
    """Paces the steps (the actor's LoopClock); the loop restarts it whenever it did not step
    on schedule (after the reset, after a tick spent holding)."""

    def start_step(self) -> None: ...

    def end_step(self) -> None: ...

    def restart(self) -> None: ...


class Unpaced:
    """No pacing: steps follow each other as fast as the env steps (sim, recording)."""

    def start_step(self) -> None:
        return None

    def end_step(self) -> None:
        return None

    def restart(self) -> None:
        return None


class Idle:
    """A policy that never moves: the person's device drives through the intervention
    wrapper, so teleoperated steps are recorded exactly as interventions are in training."""

    version = -1

    def __init__(self, action_space: gym.Space) -> None:
        self.action = np.zeros(action_space.shape, dtype=np.float32)

    def act(self, obs: Obs) -> np.ndarray:
        return self.action


def decide_success(reward: float, terminated: bool, info: dict[str, Any],
                   button_ends: bool = True) -> tuple[float, bool, bool]:
    """The one place success is decided: the env's ``info["success"]`` (the sim's privileged
    check, or the reward classifier's), or the person's SUCCESS button. The button also ends
    the episode with reward 1, since on hardware nobody else can say the task is done, unless
    ``button_ends`` is off (labels: the button marks frames, the episode runs on).
    Returns (reward, terminated, success)."""
    button = bool(info.get("success_button", False))
    if button and button_ends:
        reward, terminated = 1.0, True
    return reward, terminated, button or bool(info.get("success", False))


def run_episode(
    env: gym.Env,
    policy: Policy,
    seed: int,
    observers: Sequence[Observer] = (),
    *,
    kind: str,
    clock: Pacer | None = None,
    reset: Callable[[int], Obs | None] | None = None,
    before_step: Callable[[], bool] | None = None,
    on_fault: Callable[[RobotError | CameraError], str] | None = None,
    until: Callable[[Step], bool] | None = None,
    stopped: Callable[[], bool] | None = None,
    button_ends: bool = True,
) -> EpisodeResult:
    """One episode of ``policy`` on ``env`` from ``reset(seed)``, told to ``observers``.

    Hooks (all optional):
    - ``clock``: paces the steps (default: unpaced).
    - ``reset(seed)``: the first observation (default ``env.reset(seed=seed)``); None means the
      caller was stopped before the episode began: nothing is told, the result says so.
    - ``before_step()``: runs at the start of every tick; False holds this tick (no step) and
      restarts the clock. The actor pulls new weights here and holds the arm while the
      learner is lost.
    - ``on_fault(error)``: a RobotError or CameraError from ``env.step`` ends the episode with
      the fault this returns; without a handler the error propagates.
    - ``until(step)``: end the episode after this step (labels: enough frames past success).
    - ``stopped()``: end the episode now (checked after each step and while holding).
    """
    clock = clock or Unpaced()
    stopped = stopped or (lambda: False)
    result = EpisodeResult(kind, seed, policy_version=policy.version)
    obs = reset(seed) if reset is not None else env.reset(seed=seed)[0]
    if obs is None:
        result.fault = "stopped during reset"
        return result
    for observer in observers:
        observer.on_reset(obs)
    clock.restart()
    while True:
        clock.start_step()
        if before_step is not None and not before_step():
            if stopped():
                break
            clock.restart()  # a held tick is no overrun; the schedule starts anew
            continue
        action = policy.act(obs)
        try:
            next_obs, reward, terminated, truncated, info = env.step(action)
        except (RobotError, CameraError) as e:
            if on_fault is None:
                raise
            # This step is lost (it has no next observation); the steps before stay valid.
            result.fault = on_fault(e)
            break
        reward, terminated, success = decide_success(float(reward), terminated, info,
                                                     button_ends)
        intervened = bool(info.get("intervened", False))
        step = Step(result.steps, obs, info.get("action", action), reward, terminated,
                    truncated, next_obs, info, intervened, success)
        result.steps += 1
        result.ret += reward
        result.interventions += intervened
        if success and not result.success:
            result.success, result.steps_to_success = True, result.steps
        for observer in observers:
            observer.on_step(step)
        obs = next_obs
        clock.end_step()
        if terminated or truncated or stopped() or (until is not None and until(step)):
            break
    result.policy_version = policy.version  # new weights may have arrived between steps
    for observer in observers:
        observer.on_end(result)
    return result
