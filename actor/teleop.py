"""Driving the robot by hand (``hilrl teleop``) and recording demos (``hilrl record-demos``).

The one episode loop (``actor.loop``) and the same env stack as training run underneath, with
a policy that outputs zero (``Idle``): whatever the device commands goes through the
intervention wrapper, so demos are recorded exactly as interventions are during training.
The SUCCESS button ends an episode as a success, as it does in training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import hilrl
from hilrl.config import TaskConfig
from hilrl.config.io import to_dict
from hilrl.envs.spec import env_spec
from hilrl.envs.wrappers import EmergencyStop
from hilrl.interfaces import InputDevice
from hilrl.storage.dataset import DatasetError, DatasetWriter, EpisodeRecorder

from .env_factory import make_env
from .loop import Idle, Obs, Observer, Step, run_episode


class RecordingError(RuntimeError):
    """Recording could not reach the requested number of successful demos."""


def dataset_spec(task: TaskConfig, images: bool = True) -> dict[str, Any]:
    """What a recorded episode's arrays look like; appending requires the same spec."""
    return env_spec(task, images=images, features=False).dataset_spec()


class DemoRecorder(Observer):
    """Records the episode into an EpisodeRecorder: the applied (device's) actions, with each
    step's success and grasp penalty as per-step extras."""

    def __init__(self) -> None:
        self.recorder = EpisodeRecorder()

    def on_reset(self, obs: Obs) -> None:
        self.recorder.start(obs)

    def on_step(self, step: Step) -> None:
        self.recorder.add(step.action, step.reward, step.terminated, step.truncated,
                          step.intervened, step.next_obs, success=step.success,
                          grasp_penalty=np.float32(step.info["grasp_penalty"]))


def record_demos(task: TaskConfig, out: str | Path, episodes: int, *, images: bool = True,
                 overwrite: bool = False, max_attempts: int | None = None,
                 progress: bool = True, device: InputDevice | None = None) -> int:
    """Record ``episodes`` successful episodes into the dataset at ``out``; returns how many
    attempts it took. Failed attempts are discarded. Ctrl-C keeps what was saved.
    ``device`` replaces the configured input device."""
    stack = make_env(task, device, images=images, features=False)
    try:
        _show_keys(stack.device)
        spec = dataset_spec(task, images)
        info = {"kind": "demos", "task": to_dict(task), "spec": spec,
                "hilrl_version": hilrl.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        writer = DatasetWriter(out, info, overwrite=overwrite)
        if writer.info.get("spec") != spec:
            raise DatasetError(
                f"{out}: holds episodes with spec {writer.info.get('spec')}, but this task "
                f"records {spec}; use another directory or --overwrite")
        max_attempts = max_attempts or 3 * episodes
        idle = Idle(stack.env.action_space)
        saved = attempts = 0
        bar = tqdm(total=episodes, desc="demos", unit="ep", disable=not progress)
        with bar:
            while saved < episodes:
                if attempts >= max_attempts:
                    raise RecordingError(
                        f"only {saved} of {episodes} demos succeeded in {attempts} attempts; "
                        "check the device and the task (the saved ones are kept)")
                demo = DemoRecorder()
                # Distinct for every (episode index, failures so far), so appended demos
                # never repeat a scene already recorded.
                failed = attempts - saved
                seed = int(np.random.SeedSequence(
                    (task.seed, writer.next_index, failed)).generate_state(1)[0])
                result = run_episode(stack.env, idle, seed, [demo], kind="demo")
                attempts += 1
                if result.success:
                    writer.write(demo.recorder.finish({"seed": seed, "success": True,
                                                  "interventions": result.interventions}))
                    saved += 1
                    bar.update(1)
                bar.set_postfix(attempts=attempts, steps=result.steps)
        return attempts
    finally:
        stack.close()


def _show_keys(device: InputDevice) -> None:
    """A keyboard's bindings, before the person starts (other devices have none to show)."""
    help_text = getattr(device, "help_text", None)
    if callable(help_text):
        print(f"keys:\n{help_text()}", flush=True)


def teleop(task: TaskConfig, episodes: int | None = None) -> None:
    """Drive the robot with the configured device, printing each episode's outcome."""
    stack = make_env(task)
    try:
        _show_keys(stack.device)
        idle = Idle(stack.env.action_space)
        n = 0
        while episodes is None or n < episodes:
            result = run_episode(stack.env, idle, task.seed + n, kind="teleop")
            n += 1
            print(f"episode {n}: {'success' if result.success else 'no success'} "
                  f"in {result.steps} steps ({result.interventions} steered)", flush=True)
    except EmergencyStop as e:
        print(f"\n{e}. Stopped.", flush=True)
        raise
    finally:
        stack.close()
