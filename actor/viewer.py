"""A live view of the actor in Rerun (``pip install 'hilrl[viewer]'``, ``actor.viewer``).

Per step it logs what a person at the robot wants to see: each camera's frame as rendered
(``cameras/<name>``, when the task crops or resizes it) and what the policy sees
(``policy/<name>``), the action applied (``action``), who drives (``person/driving``: 1
while the person's device does), the reward and the learned reward's probability
(``reward/value``, ``reward/classifier_prob``), and the episode's events (``episode/events``:
start, first success, end). Timelines: ``env_step`` (this actor's steps) and ``episode``.

``actor.viewer`` says where it goes:

- ``file``: ``<run>/actors/<id>/view.rrd``, for ``rerun FILE`` later (or while it grows);
- ``spawn``: a viewer started on this machine;
- ``rerun+http://HOST:PORT/proxy``: a viewer already running elsewhere (``rerun`` listens
  on port 9876), for a robot PC without a screen.

The control loop only hands each step to a queue; a thread of its own logs it. When the
logging falls behind, steps are dropped (and counted), never waited for.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .loop import EpisodeResult, Obs, Observer, Step

log = logging.getLogger(__name__)

QUEUE_STEPS = 64  # steps waiting to be logged before new ones are dropped


def _rerun() -> Any:
    try:
        import rerun
    except ImportError as e:
        raise ValueError("actor.viewer needs the Rerun SDK: pip install 'hilrl[viewer]'") from e
    return rerun


class LiveView(Observer):
    """Logs the actor's episodes to Rerun from a thread of its own. One per actor, given to
    every episode; ``close()`` flushes and stops it."""

    def __init__(self, target: str, actor_id: str, actor_dir: Path,
                 frames: Callable[[], Mapping[str, np.ndarray]] = dict) -> None:
        """``frames()``: the frames as rendered of the cameras the policy sees cropped or
        resized (``EnvStack.camera_frames``)."""
        rr = _rerun()
        self._rr = rr
        self.rec = rr.RecordingStream("hilrl", recording_id=actor_id)
        if target == "file":
            actor_dir.mkdir(parents=True, exist_ok=True)
            self.where = str(actor_dir / "view.rrd")
            self.rec.save(self.where)
        elif target == "spawn":
            self.where = "a viewer on this machine"
            self.rec.spawn()
        elif target.startswith("rerun+http://"):
            self.where = target
            self.rec.connect_grpc(target)
        else:  # ActorConfig checked it
            raise ValueError(f"actor.viewer: unknown target {target!r}")
        self._frames = frames
        self._queue: queue.Queue[tuple | None] = queue.Queue(maxsize=QUEUE_STEPS)
        self.dropped = 0
        self._env_step = 0
        self._episode = 0
        self._succeeded = False
        self._thread = threading.Thread(target=self._run, name="hilrl-viewer", daemon=True)
        self._thread.start()

    # -------------------------------------------------------- the control loop's side

    def start(self, kind: str, index: int, version: int) -> None:
        """Before an episode: its kind, number and policy version name it in the view."""
        self._episode, self._succeeded = index, False
        self._put(("event", index, f"{kind} episode {index} started (policy v{version})"))

    def on_reset(self, obs: Obs) -> None:
        self._put(("frames", self._episode, dict(obs.get("images", {})), dict(self._frames())))

    def on_step(self, step: Step) -> None:
        prob = step.info.get("success_prob")
        self._put(("step", self._episode, np.asarray(step.action, np.float32), step.intervened,
                   step.reward, None if prob is None else float(prob),
                   dict(step.next_obs.get("images", {})), dict(self._frames())))
        if step.success and not self._succeeded:
            self._succeeded = True
            self._put(("event", self._episode, f"success at step {step.index + 1}"))

    def on_end(self, result: EpisodeResult) -> None:
        outcome = "success" if result.success else (result.fault or "no success")
        at = f" at step {result.steps_to_success}" if result.steps_to_success else ""
        self._put(("event", self._episode,
                   f"{result.kind} episode {self._episode} ended after {result.steps} steps: "
                   f"{outcome}{at}, {result.interventions} steps driven by the person"))

    def _put(self, item: tuple) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=10)
        except queue.Full:  # the logging thread is stuck: leave it, it is a daemon
            pass
        self._thread.join(timeout=10)
        self.rec.flush()
        self.rec.disconnect()

    # -------------------------------------------------------- the logging thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._log(*item)
            except Exception as e:  # noqa: BLE001 - the view must never stop the robot
                log.warning("viewer: could not log a %s (%s: %s)", item[0], type(e).__name__, e)

    def _log(self, kind: str, episode: int, *args: Any) -> None:
        """At env_step t: the observation the policy acted on, then its action, who drove
        and the reward; the step's next observation is at t + 1."""
        rr, rec = self._rr, self.rec
        rec.set_time("episode", sequence=episode)
        rec.set_time("env_step", sequence=self._env_step)
        if kind == "event":
            rec.log("episode/events", rr.TextLog(args[0], level=rr.TextLogLevel.INFO))
        elif kind == "frames":
            self._log_frames(*args)
        else:
            action, intervened, reward, prob, policy_view, frames = args
            rec.log("action", rr.Scalars(action))
            rec.log("person/driving", rr.Scalars(float(intervened)))
            rec.log("reward/value", rr.Scalars(float(reward)))
            if prob is not None:
                rec.log("reward/classifier_prob", rr.Scalars(prob))
            self._env_step += 1
            rec.set_time("env_step", sequence=self._env_step)
            self._log_frames(policy_view, frames)

    def _log_frames(self, policy_view: Mapping[str, np.ndarray],
                    frames: Mapping[str, np.ndarray]) -> None:
        for name, image in frames.items():
            self.rec.log(f"cameras/{name}", self._rr.Image(image))
        for name, image in policy_view.items():
            self.rec.log(f"policy/{name}", self._rr.Image(image))
