"""Driving the robot by hand (``hilrl teleop``) and recording demos (``hilrl record-demos``).

The same env stack as training runs underneath, with a policy that outputs zero: whatever
the device commands goes through the intervention wrapper, so demos are recorded exactly as
interventions are during training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import hilrl
from hilrl.config import TaskConfig
from hilrl.config.io import to_dict
from hilrl.envs.spec import env_spec
from hilrl.envs.wrappers import EmergencyStop
from hilrl.storage.dataset import DatasetError, DatasetWriter, EpisodeRecorder

from .env_factory import EnvStack, make_env


class RecordingError(RuntimeError):
    """Recording could not reach the requested number of successful demos."""


@dataclass
class EpisodeResult:
    steps: int
    success: bool
    interventions: int


def dataset_spec(task: TaskConfig, images: bool = True) -> dict[str, Any]:
    """What a recorded episode's arrays look like; appending requires the same spec."""
    return env_spec(task, images=images, features=False).dataset_spec()


def run_episode(stack: EnvStack, seed: int, recorder: EpisodeRecorder | None = None
                ) -> EpisodeResult:
    """One episode driven only by the device (the "policy" never moves)."""
    env = stack.env
    obs, info = env.reset(seed=seed)
    if recorder is not None:
        recorder.start(obs)
    idle = np.zeros(env.action_space.shape, dtype=np.float32)
    steps = interventions = 0
    success = False
    while True:
        obs, reward, terminated, truncated, info = env.step(idle)
        steps += 1
        interventions += int(info["intervened"])
        if info["success_button"]:  # the person says it is done (no sim success on hardware)
            reward, terminated = 1.0, True
        success = bool(info.get("success", False) or info["success_button"])
        if recorder is not None:
            recorder.add(info["action"], reward, terminated, truncated, info["intervened"], obs,
                         success=success, grasp_penalty=np.float32(info["grasp_penalty"]))
        if terminated or truncated:
            return EpisodeResult(steps, success, interventions)


def record_demos(task: TaskConfig, out: str | Path, episodes: int, *, images: bool = True,
                 overwrite: bool = False, max_attempts: int | None = None,
                 progress: bool = True) -> int:
    """Record ``episodes`` successful episodes into the dataset at ``out``; returns how many
    attempts it took. Failed attempts are discarded. Ctrl-C keeps what was saved."""
    stack = make_env(task, images=images, features=False)
    try:
        spec = dataset_spec(task, images)
        info = {"kind": "demos", "task": to_dict(task), "spec": spec,
                "hilrl_version": hilrl.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        writer = DatasetWriter(out, info, overwrite=overwrite)
        if writer.info.get("spec") != spec:
            raise DatasetError(
                f"{out}: holds episodes with spec {writer.info.get('spec')}, but this task "
                f"records {spec}; use another directory or --overwrite")
        max_attempts = max_attempts or 3 * episodes
        saved = attempts = 0
        bar = tqdm(total=episodes, desc="demos", unit="ep", disable=not progress)
        with bar:
            while saved < episodes:
                if attempts >= max_attempts:
                    raise RecordingError(
                        f"only {saved} of {episodes} demos succeeded in {attempts} attempts; "
                        "check the device and the task (the saved ones are kept)")
                recorder = EpisodeRecorder()
                # Distinct for every (episode index, failures so far), so appended demos
                # never repeat a scene already recorded.
                failed = attempts - saved
                seed = int(np.random.SeedSequence(
                    (task.seed, writer.next_index, failed)).generate_state(1)[0])
                result = run_episode(stack, seed, recorder)
                attempts += 1
                if result.success:
                    writer.write(recorder.finish({"seed": seed, "success": True,
                                                  "interventions": result.interventions}))
                    saved += 1
                    bar.update(1)
                bar.set_postfix(attempts=attempts, steps=result.steps)
        return attempts
    finally:
        stack.close()


def teleop(task: TaskConfig, episodes: int | None = None) -> None:
    """Drive the robot with the configured device, printing each episode's outcome."""
    stack = make_env(task)
    try:
        n = 0
        while episodes is None or n < episodes:
            result = run_episode(stack, task.seed + n)
            n += 1
            print(f"episode {n}: {'success' if result.success else 'no success'} "
                  f"in {result.steps} steps ({result.interventions} steered)", flush=True)
    except EmergencyStop as e:
        print(f"\n{e}. Stopped.", flush=True)
        raise
    finally:
        stack.close()
