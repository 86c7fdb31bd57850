"""Labelled camera frames for the reward classifier (``hilrl record-labels``).

A labels dataset is an ordinary hilrl episode dataset (see ``hilrl.storage.dataset``) whose info has
``"kind": "labels"`` and whose episodes carry the per-step extra ``success`` (T,) bool: the
label of observation t+1, the frames seen right after step t. Observation 0 (the reset
frame) has no label.

Three sources of labels:

- ``sim``: the configured device (normally the scripted expert) picks the cube and the sim's
  privileged success (cube lifted) is the label. The episode runs on past the first success,
  so each one holds the approach and grasp as negatives and the held lift as positives.
- ``device``: a person teleoperates and holds the SUCCESS button while the task is done
  (in sim the scripted person does, from what it sees: ``hilrl train-sim --reward
  classifier`` labels this way). The button marks frames; the episode runs to its time limit.
- demos (:func:`harvest_demo_labels`): the last frames of successful ``record-demos``
  episodes are positives, the rest negatives; no robot needed.

The sim and device sources record with the one episode loop (``actor.loop``): a
:class:`LabelRecorder` observer labels each step and says when enough frames past the first
success are in; the SUCCESS button marks frames and does not end the episode.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import hilrl
from hilrl.config import TaskConfig
from hilrl.config.io import to_dict
from hilrl.envs.wrappers import EmergencyStop
from hilrl.interfaces import Button, Command, InputDevice
from hilrl.storage.dataset import (
    DatasetError,
    DatasetWriter,
    Episode,
    EpisodeRecorder,
    iter_dataset,
    read_dataset_info,
)

from .env_factory import make_env
from .loop import Idle, Obs, Observer, Policy, Step, run_episode
from .teleop import dataset_spec

LABEL_SEED_STREAM = zlib.crc32(b"labels")

Source = Literal["sim", "device"]
SOURCES = ("sim", "device")


def _counts(episodes: int, labels: list[np.ndarray]) -> dict[str, int]:
    positives = int(sum(int(lab.sum()) for lab in labels))
    frames = int(sum(lab.size for lab in labels))
    return {"episodes": episodes, "frames": frames, "success": positives,
            "failure": frames - positives}


def _open_writer(out: str | Path, info: dict[str, Any], overwrite: bool) -> DatasetWriter:
    writer = DatasetWriter(out, info, overwrite=overwrite)
    if writer.info.get("kind") != "labels" or writer.info.get("spec") != info["spec"]:
        raise DatasetError(
            f"{out}: holds a {writer.info.get('kind')!r} dataset with spec "
            f"{writer.info.get('spec')}, but this writes labels with spec {info['spec']}; use "
            "another directory or --overwrite")
    return writer


def _cut(episode: Episode) -> Episode:
    # The last step was not the end of the task but where recording stopped: mark it as a
    # time-limit style cut so anyone reusing the transitions bootstraps through it.
    episode.truncated[-1] = not episode.terminated[-1]
    return episode


class LabelRecorder(Observer):
    """Records the episode with each step's label as the per-step extra ``success``: the
    sim's privileged success (source=sim) or the person's SUCCESS button (source=device).
    :meth:`enough` ends the episode ``steps_after_success`` steps after the first success
    (source=sim), or once the person held SUCCESS that many frames past the first (device),
    so it holds the approach and grasp as negatives and the lift as positives. A person who
    kept holding SUCCESS to the time limit would add dozens of copies of one done scene,
    which a classifier tells apart by where things stand in it, not by the task being done."""

    def __init__(self, source: Source, steps_after_success: int) -> None:
        self.source, self.steps_after_success = source, steps_after_success
        self.recorder = EpisodeRecorder()
        self.first_success: int | None = None
        self.successes = 0

    def on_reset(self, obs: Obs) -> None:
        self.recorder.start(obs)
        self.first_success = None
        self.successes = 0

    def on_step(self, step: Step) -> None:
        if self.source == "sim":
            if "scene_success" not in step.info:
                raise ValueError("source=sim needs an env that reports success (the simulated "
                                 "robot); use source=device to label with the SUCCESS button")
            label = bool(step.info["scene_success"])
        else:
            label = bool(step.info["success_button"])
        if label and self.first_success is None:
            self.first_success = step.index
        self.successes += label
        self.recorder.add(step.action, step.reward, step.terminated, step.truncated,
                          step.intervened, step.next_obs, success=label)

    def enough(self, step: Step) -> bool:
        if self.first_success is None:
            return False
        if self.source == "sim":
            return step.index - self.first_success >= self.steps_after_success
        # The person's presses, which a boundary episode spreads over several tries.
        return self.successes > self.steps_after_success

    def finish(self, meta: dict[str, Any]) -> Episode:
        """The episode recorded, its labels aligned with the frames they judge.

        The button read at step t+1 is the person's verdict on frame t+1, the frame on screen
        when they pressed (the sim's success after step t already is). Kept as read, every
        crossing of the success boundary would mislabel one frame, and the one it mislabels
        on the way back out is a near miss called success: the classifier's worst error. The
        last frame, with no read after it, keeps its own step's."""
        episode = self.recorder.finish(meta)
        if self.source == "device" and episode.length > 1:
            label = episode.extras["success"]
            label[:-1] = label[1:].copy()
        return episode


class BackOff(InputDevice):
    """The person's device in a boundary episode: each time the person sees the task done,
    it backs off, replaying its last 1..``max_back`` motions in reverse, pauses, and lets
    the person do it again. On the way, it stops and rests now and then (``rest_chance``
    per step, ``rest`` steps long) before the task is done.

    The frames then sit on both sides of success, close to it: a cube held just below the
    height that counts, a peg half out of its hole. A classifier that never saw those calls
    them success, and a policy finds them. Backing off undoes only what reverses: a pushed
    puck stays where it was pushed. The rests are what covers those tasks: a hand at rest
    beside a puck short of its target is, but for the target, the scene a person leaves at
    success, and without such frames "the hand rests" is what a classifier learns. The
    SUCCESS button stays the person's own reading on every step, so the labels stay true;
    only the motion is overridden. Needs a device that acts on every step (a scripted person
    taking over always)."""

    def __init__(self, device: InputDevice, rng: np.random.Generator, max_back: int = 6,
                 pause: tuple[int, int] = (2, 6), rest_chance: float = 0.01,
                 rest: tuple[int, int] = (5, 10)) -> None:
        self.device, self.rng, self.max_back, self.pause = device, rng, max_back, pause
        self.rest_chance, self.rest = rest_chance, rest
        self.reset()

    def reset(self) -> None:
        self.device.reset()
        self.history: list[np.ndarray] = []  # the person's twists since it last backed off
        self.backing: list[np.ndarray] = []  # twists still to give while backing off
        self.pause_left = 0

    def read(self) -> Command:
        command = self.device.read()  # always read: its plan and SUCCESS follow the scene
        if self.backing:
            return Command(self.backing.pop(0), command.buttons)
        if self.pause_left:
            self.pause_left -= 1
            return Command(np.zeros(6), command.buttons)
        if Button.SUCCESS in command.buttons and self.history:
            k = int(self.rng.integers(1, self.max_back + 1))
            self.backing = [-twist for twist in self.history[::-1][:k]]
            self.pause_left = int(self.rng.integers(self.pause[0], self.pause[1] + 1))
            self.history = []
            return Command(self.backing.pop(0), command.buttons)
        if Button.SUCCESS not in command.buttons and self.rng.random() < self.rest_chance:
            self.pause_left = int(self.rng.integers(self.rest[0], self.rest[1] + 1)) - 1
            return Command(np.zeros(6), command.buttons)
        self.history = [*self.history[-self.max_back + 1:], command.twist]
        return command

    def close(self) -> None:
        self.device.close()


class Clumsy:
    """A smooth random walk; the gripper closes and opens at random, mostly on nothing."""

    version = -1

    def __init__(self, action_space: gym.Space, rng: np.random.Generator) -> None:
        self.action = np.zeros(action_space.shape, dtype=np.float32)
        self.rng = rng

    def act(self, obs: Obs) -> np.ndarray:
        previous, rng = self.action, self.rng
        action = np.clip(0.8 * previous + rng.normal(0.0, 0.5, previous.shape), -1.0, 1.0)
        action[-1] = np.sign(previous[-1] or -1.0) * (-1.0 if rng.random() < 0.1 else 1.0)
        self.action = action.astype(np.float32)
        return self.action


def record_labels(task: TaskConfig, out: str | Path, episodes: int, *, source: Source = "sim",
                  steps_after_success: int = 20, clumsy_fraction: float | None = None,
                  boundary_fraction: float = 0.0, overwrite: bool = False, progress: bool = True,
                  device: InputDevice | None = None) -> dict[str, int]:
    """Record ``episodes`` labelled episodes into the dataset at ``out``.

    Returns counts: ``{"episodes", "frames", "success", "failure"}`` (frames = labelled
    observations). Every episode is kept, failed ones too: they are useful negatives. On an
    emergency stop the interrupted episode is saved as far as it got, then EmergencyStop is
    re-raised. ``device`` replaces the configured input device.

    ``clumsy_fraction`` of the episodes (default: 0.3 with source=sim, 0 with device) are
    driven by a random walk that opens and closes the gripper on nothing. Without them every
    closed gripper in the data holds a lifted cube, and a classifier learns "gripper closed"
    instead of "cube lifted". With source=device the person only watches those (the device
    cannot steer) and still labels them with the SUCCESS button.

    ``boundary_fraction`` of the other episodes (device source) are boundary episodes
    (:class:`BackOff`): the person rests now and then on the way, and backs off each time
    it sees the task done and does it again, so the near misses either side of success are
    in the labels.
    """
    if clumsy_fraction is None:
        clumsy_fraction = 0.3 if source == "sim" else 0.0
    for name, fraction in (("clumsy_fraction", clumsy_fraction),
                           ("boundary_fraction", boundary_fraction)):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {fraction}")
    if boundary_fraction and source != "device":
        raise ValueError("boundary episodes are a person's (source=device): with source=sim "
                         "the configured device's motion is not the person's to back off")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if steps_after_success < 0:
        raise ValueError(f"steps_after_success must be >= 0, got {steps_after_success}")
    # Success must not end the episode: the frames after it are the positives.
    gym_settings = task.env.gymnasium
    if task.env.robot == "gymnasium":  # its success key ends episodes, and may be the reward
        gym_settings = dataclasses.replace(gym_settings, success_key=None, reward="env")
    task = dataclasses.replace(task, env=dataclasses.replace(
        task.env, reward="none", gymnasium=gym_settings))
    spec = dataset_spec(task)
    if not spec["images"]:
        raise ValueError("labels are camera frames for the reward classifier: configure at "
                         "least one camera (env.cameras, or a gymnasium env's image_keys)")
    stack = make_env(task, device, images=True, features=False)
    person = stack.device
    labels: list[np.ndarray] = []
    try:
        info = {"kind": "labels", "task": to_dict(task), "spec": spec, "source": source,
                "steps_after_success": steps_after_success,
                "hilrl_version": hilrl.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        writer = _open_writer(out, info, overwrite)
        idle = Idle(stack.env.action_space)
        bar = tqdm(total=episodes, desc="labels", unit="ep", disable=not progress)
        with bar:
            for _ in range(episodes):
                # Distinct per episode index, so appending never repeats a recorded scene,
                # and a stream of its own: SeedSequence((s, i)) equals ((s, i, 0)), the
                # seed of demo i, so label episodes replayed the demos' scenes.
                seed = int(np.random.SeedSequence(
                    (task.seed, LABEL_SEED_STREAM, writer.next_index)).generate_state(1)[0])
                labeller = LabelRecorder(source, steps_after_success)
                policy: Policy = idle
                # Spread evenly (the first episode is never either): episode i is clumsy
                # when floor((i + 1) f) > floor(i f); the j-th of the others (j = i minus
                # the clumsy ones before it) a boundary one by the same rule.
                i = writer.next_index
                j = i - int(i * clumsy_fraction)
                boundary = False
                if _spread(i, clumsy_fraction):
                    policy = Clumsy(stack.env.action_space, np.random.default_rng(seed))
                else:
                    boundary = _spread(j, boundary_fraction)
                stack.set_interventions(policy is idle)  # a clumsy episode: the device is off
                stack.intervention_wrapper().device = (
                    BackOff(person, np.random.default_rng(seed)) if boundary else person)
                meta = {"seed": seed, "source": source, "boundary": boundary}
                try:
                    # The button marks frames here; it must not end the episode.
                    run_episode(stack.env, policy, seed, [labeller], kind="labels",
                                until=labeller.enough, button_ends=False)
                except EmergencyStop:
                    if labeller.recorder.length:
                        episode = _cut(labeller.finish({**meta, "estop": True}))
                        writer.write(episode)
                        labels.append(episode.extras["success"])
                    raise
                episode = _cut(labeller.finish(meta))
                episode.meta["success"] = bool(episode.extras["success"].any())
                writer.write(episode)
                labels.append(episode.extras["success"])
                counts = _counts(len(labels), labels)
                bar.update(1)
                bar.set_postfix(success=counts["success"], failure=counts["failure"])
        return _counts(len(labels), labels)
    finally:
        stack.intervention_wrapper().device = person
        stack.close()


def _spread(i: int, fraction: float) -> bool:
    return int((i + 1) * fraction) > int(i * fraction)


def harvest_demo_labels(demos: Sequence[str | Path], out: str | Path, *, last: int = 5,
                        overwrite: bool = False) -> dict[str, int]:
    """Labels from ``record-demos`` datasets: in each successful episode the last ``last``
    observations are positives and the rest negatives. Episodes not marked successful are
    skipped (their end says nothing about success). Returns the same counts as
    :func:`record_labels`."""
    if last < 1:
        raise ValueError(f"last must be >= 1, got {last}")
    if not demos:
        raise ValueError("give at least one demo dataset")
    infos = [read_dataset_info(path) for path in demos]
    spec = infos[0].get("spec")
    for path, demo_info in zip(demos, infos, strict=True):
        if not (demo_info.get("spec") or {}).get("images"):
            raise DatasetError(f"{path}: the demos hold no camera frames (recorded with "
                               "--no-images?); the reward classifier needs images")
        if demo_info.get("spec") != spec:
            raise DatasetError(f"{path}: spec {demo_info.get('spec')} differs from {demos[0]}'s "
                               f"{spec}; harvest datasets of one task together")
    info = {"kind": "labels", "task": infos[0].get("task"), "spec": spec, "source": "demos",
            "demos": [str(path) for path in demos], "last": last,
            "hilrl_version": hilrl.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    writer = _open_writer(out, info, overwrite)
    labels: list[np.ndarray] = []
    for path in demos:
        for index, demo in enumerate(iter_dataset(path)):
            if not demo.meta.get("success", False):
                continue
            label = np.arange(demo.length) >= demo.length - last
            writer.write(Episode(
                state=demo.state, images=demo.images, action=demo.action, reward=demo.reward,
                terminated=demo.terminated, truncated=demo.truncated,
                intervened=demo.intervened, extras={"success": label},
                meta={"source": "demos", "demo": str(path), "demo_episode": index,
                      "success": True}))
            labels.append(label)
    return _counts(len(labels), labels)
