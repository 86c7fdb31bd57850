"""The actor node (``hilrl actor``, ``python -m actor``).

The one episode loop (``actor.loop``) at a fixed rate (``actor.hz``, default ``env.hz``) over
the env stack the task describes. Each step: take the newest weights if any arrived (between
steps, never during one: the loop's ``before_step`` hook), act with the policy, let the
device's intervention replace the action, step the env, queue the transition for the
learner (non-blocking, an observer), then sleep to the next deadline (the loop's clock). A
step that ends after its deadline is an *overrun*: counted, reported, and the schedule
restarts from now rather than rushing to catch up.

Nothing in the loop waits on the network. When the learner is gone the actor keeps
acting (``actor.on_learner_lost: continue``: transitions wait in the outbox) or holds the
arm until it is back (``hold``). When the outbox refuses (memory and spill limits reached)
the arm holds until it accepts again. The estop button raises EmergencyStop after the arm
was told to hold; the transitions already queued are kept. A robot error (a reflex, a robot
server that stops answering) or a camera error (frozen, unplugged) ends the episode with
the arm held; the next reset recovers the arm and reopens the cameras, retrying until the
hardware answers.

``--eval N`` runs N episodes with the deterministic policy, interventions off, no
learning, and prints the success rate and time to success; videos per camera with
``--video DIR``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import signal
import sys
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hilrl.config import CameraConfig, TaskConfig
from hilrl.envs.spec import env_spec
from hilrl.envs.wrappers import EmergencyStop
from hilrl.interfaces import CameraError, RobotError
from hilrl.reporting.metrics import append_jsonl
from hilrl.storage.fsutil import atomic_write_bytes
from hilrl.transport.outbox import OutboxFull

from .env_factory import EnvStack, make_env
from .loop import EpisodeResult, Obs, Observer, Step, run_episode
from .reward_review import RewardReview

if TYPE_CHECKING:
    from .policy import PolicyRunner

log = logging.getLogger("hilrl.actor")

FAULT_RETRY_S = 1.0  # between reset attempts while the arm or a camera does not answer

STATUS_EVERY_S = 1.0
PRINT_EVERY_S = 10.0
WAIT_NOTICE_S = 10.0


def actor_dir(run_dir: str | Path, actor_id: str) -> Path:
    return Path(run_dir) / "actors" / actor_id


class LoopClock:
    """Fixed-rate deadlines with overrun accounting (hz 0: no pacing, still timed)."""

    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz if hz > 0 else 0.0
        self.overruns = 0
        self.steps = 0
        self.step_times: collections.deque[float] = collections.deque(maxlen=2000)
        self.lateness: collections.deque[float] = collections.deque(maxlen=2000)  # past deadline
        self._deadline: float | None = None
        self._start = 0.0

    def start_step(self) -> None:
        self._start = time.monotonic()
        if self._deadline is None:
            self._deadline = self._start + self.period

    def end_step(self) -> None:
        """Sleep until the deadline; count an overrun when it has already passed."""
        now = time.monotonic()
        self.step_times.append(now - self._start)
        self.steps += 1
        if self.period == 0.0:
            return
        if self._deadline is None:  # restarted during the step (the arm held): no overrun
            self._deadline = now + self.period
            return
        self.lateness.append(max(now - self._deadline, 0.0))
        if now > self._deadline:
            self.overruns += 1
            self._deadline = now + self.period
            return
        time.sleep(self._deadline - now)
        self._deadline += self.period

    def restart(self) -> None:
        """After a reset or a pause: the next step starts a fresh schedule."""
        self._deadline = None

    def summary(self) -> dict[str, float]:
        def p(values: collections.deque[float], q: float) -> float:
            return float(np.percentile(values, q)) * 1e3 if values else 0.0

        return {"overruns": self.overruns, "overrun_rate": self.overruns / max(self.steps, 1),
                "loop_ms_p50": p(self.step_times, 50), "loop_ms_p99": p(self.step_times, 99),
                "overrun_ms_p99": p(self.lateness, 99)}


class Actor:
    def __init__(self, task: TaskConfig, run_dir: str | Path, *, learner: bool = True,
                 video_dir: str | Path | None = None, quiet: bool = False) -> None:
        self.task = task
        self.cfg = task.actor
        self.dir = actor_dir(run_dir, self.cfg.id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        self.spec = env_spec(task)
        self.video_dir = Path(video_dir) if video_dir else None
        env_task = task
        if self.video_dir and not task.env.cameras and task.env.robot == "sim":
            # A state-based task has no cameras; render the sim's two for the videos only.
            env_task = replace(task, env=replace(task.env, cameras=[CameraConfig("front"),
                                                                   CameraConfig("wrist")]))
        self.stack: EnvStack = make_env(env_task, residual=True)
        self.hz = self.cfg.hz if self.cfg.hz is not None else task.env.hz
        self.clock = LoopClock(self.hz)
        # Simulated evaluation feeds nothing to the learner: no reason to pace it. On a
        # robot the loop rate is the controller's, evaluation or not.
        self.eval_clock = LoopClock(0) if self.stack.simulated else self.clock
        from .policy import PolicyRunner  # JAX: imported once the node really starts

        self.policy = PolicyRunner(task.agent, self.spec, seed=task.seed)
        self.review = RewardReview.for_stack(self.stack, task.env.classifier, self.dir, self._say)
        self._stop = threading.Event()
        self._cameras_failed = False
        self.client = None
        if learner:
            from hilrl.transport.actor_client import ActorClient

            keys = None
            if self.cfg.keys:
                from hilrl.transport.security import load_client_keys

                keys = load_client_keys(self.cfg.keys)
            self.client = ActorClient(
                self.cfg.id, self.cfg.learner, self.cfg.weights, self.spec.wire_schema(),
                spill_dir=str(self.dir / "spill"), keys=keys,
                compress=None if self.cfg.compress == "raw" else self.cfg.compress,
                durable=self.cfg.durable)
        self.episodes_log = self.dir / "episodes.jsonl"
        self.counts = collections.Counter({"train_episodes": 0, "eval_episodes": 0, "env_steps": 0,
                                          **self._previous_counts()})
        self.recent: collections.deque[EpisodeResult] = collections.deque(maxlen=20)
        self._t_status = self._t_print = 0.0
        self._held_for_outbox = False
        self.view = None
        if self.cfg.viewer:
            from .viewer import LiveView

            self.view = LiveView(self.cfg.viewer, self.cfg.id, self.dir, self.stack.camera_frames)
            self._say(f"live view (Rerun): {self.view.where}")

    def _previous_counts(self) -> dict[str, int]:
        """Continue the episode and step numbering of an earlier run in this directory."""
        from hilrl.reporting.metrics import read_jsonl

        if not self.episodes_log.exists():
            return {}
        records = read_jsonl(self.episodes_log)
        train = [r for r in records if r.get("kind") == "train"]
        return {"train_episodes": len(train),
                "eval_episodes": len(records) - len(train),
                "env_steps": int(train[-1]["env_steps"]) if train else 0}

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def _say(self, text: str) -> None:
        log.info(text)
        if not self.quiet:
            print(f"{self.cfg.id}: {text}", flush=True)

    # ---------------------------------------------------------------- weights

    def _pull_weights(self) -> None:
        if self.client is None:
            return
        latest = self.client.latest_weights()
        if latest is not None and latest[0] != self.policy.version:
            self.policy.set_weights(*latest)

    def wait_for_weights(self, timeout: float | None = None) -> bool:
        """Block (before the loop starts) until the learner's first weights arrive."""
        t0 = last = time.monotonic()
        while not self._stop.is_set():
            self._pull_weights()
            if self.policy.ready:
                return True
            now = time.monotonic()
            if timeout is not None and now - t0 > timeout:
                return False
            if now - last > WAIT_NOTICE_S:
                last = now
                self._say(f"waiting for weights from the learner at {self.cfg.learner} "
                          f"({now - t0:.0f} s)")
            time.sleep(0.05)
        return False

    # ---------------------------------------------------------------- episodes

    def run(self, max_steps: int | None = None, eval_every: int = 0,
            eval_episodes: int = 10) -> None:
        """Train until stopped (or ``max_steps`` env steps); every ``eval_every`` training
        episodes, ``eval_episodes`` evaluation episodes."""
        if not self.wait_for_weights():
            return
        self._say(f"acting at {self.hz:g} Hz with policy v{self.policy.version}")
        while not self._stop.is_set():
            if max_steps is not None and self.counts["env_steps"] >= max_steps:
                break
            self.episode("train")
            n = self.counts["train_episodes"]
            if eval_every and n % eval_every == 0:
                self.evaluate(eval_episodes)

    def evaluate(self, episodes: int) -> list[EpisodeResult]:
        results = []
        for _ in range(episodes):
            if self._stop.is_set():
                break
            results.append(self.episode("eval"))
        return results

    def episode(self, kind: str) -> EpisodeResult:
        """One training (policy explores, the person may step in, transitions go to the
        learner) or evaluation episode (deterministic policy, interventions off)."""
        train = kind == "train"
        if self.review is not None:
            self.review.poll()
        self.stack.set_interventions(train)
        index = self.counts[f"{kind}_episodes"]
        seed = int(np.random.SeedSequence((self.task.seed, zlib.crc32(self.cfg.id.encode()),
                                           int(train), index)).generate_state(1)[0])
        clock = self.clock if train else self.eval_clock
        observers: list[Observer] = [_Bookkeeping(self, kind, index, clock)]
        if self.video_dir and not train:
            observers.append(_VideoRecorder(self.video_dir, kind, index, self.task.env.hz))
        if self.view is not None:
            self.view.start(kind, index, self.policy.version)
            observers.append(self.view)

        def before_step() -> bool:
            self._pull_weights()  # between steps, never during one
            return not (train and self._must_hold())

        return run_episode(self.stack.env, _Acting(self.policy, deterministic=not train), seed,
                           observers, kind=kind, clock=clock, reset=self._reset,
                           before_step=before_step, on_fault=self._fault,
                           stopped=self._stop.is_set)

    def _fault(self, error: RobotError | CameraError) -> str:
        """A robot or camera failed mid-episode: hold the arm (if it still answers), count it,
        and say what happened. The next reset recovers the arm and reopens the cameras."""
        kind = "robot_errors" if isinstance(error, RobotError) else "camera_errors"
        self.counts[kind] += 1
        self._say(f"episode ended by a {kind[:-1].replace('_', ' ')}: {error}")
        try:
            self.stack.hold()
        except (RobotError, CameraError) as e:  # the controller already stopped the arm
            log.warning("could not command a hold after the fault: %s", e)
        return f"{type(error).__name__}: {error}"

    def _reset(self, seed: int) -> dict[str, Any] | None:
        """env.reset(), which recovers the arm; after a camera error the cameras are opened
        anew first. Failures are retried every FAULT_RETRY_S with the arm held, until the
        hardware answers or the actor is stopped (then None)."""
        attempt = 0
        while not self._stop.is_set():
            try:
                if self._cameras_failed:
                    self.stack.reopen_cameras()
                    self._cameras_failed = False
                obs, _ = self.stack.env.reset(seed=seed)
                if attempt:
                    self._say(f"the hardware answers again after {attempt} failed reset(s)")
                return obs
            except (RobotError, CameraError) as e:
                self._cameras_failed = self._cameras_failed or isinstance(e, CameraError)
                if attempt % 10 == 0:
                    self._say(f"reset failed ({e}); the arm holds, retrying every "
                              f"{FAULT_RETRY_S:g} s (Ctrl-C stops)")
                attempt += 1
                self.counts["failed_resets"] += 1
                self._stop.wait(FAULT_RETRY_S)
        return None

    def _must_hold(self) -> bool:
        """Learner gone and configured to hold: keep the arm still, wait a period."""
        if (self.client is None or self.cfg.on_learner_lost != "hold"
                or self.client.learner_alive):
            return False
        self.stack.hold()
        self.counts["held_steps"] += 1
        time.sleep(self.clock.period or 0.05)
        return True

    def _send(self, transition: dict[str, Any]) -> None:
        """Queue a transition; while the outbox refuses, hold the arm and retry."""
        while True:
            try:
                self.client.send_transition(transition, policy_version=self.policy.version)
                if self._held_for_outbox:
                    self._held_for_outbox = False
                    self._say("the outbox accepts transitions again; moving on")
                return
            except OutboxFull:
                if not self._held_for_outbox:
                    self._held_for_outbox = True
                    self._say("outbox full (learner unreachable for long, spill limit "
                              "reached): holding the arm until it drains")
                self.stack.hold()
                self.counts["outbox_full_waits"] += 1
                if self._stop.is_set():
                    return  # the transition is lost; the loop is stopping anyway
                time.sleep(self.clock.period or 0.05)
                self.clock.restart()

    # ---------------------------------------------------------------- reporting

    def _record(self, r: EpisodeResult, index: int, clock: LoopClock,
                judged: dict[str, bool] | None = None) -> None:
        record = {"kind": r.kind, "episode": index, "env_steps": self.counts["env_steps"],
                  "steps": r.steps, "success": r.success, "return": r.ret,
                  "interventions": r.interventions, "policy_version": r.policy_version,
                  "time": time.time(), "time_to_success_s": r.time_to_success_s(self.task.env.hz),
                  **({"fault": r.fault} if r.fault else {}), **clock.summary(),
                  **(judged or {})}
        append_jsonl(self.episodes_log, record)
        if r.kind == "train":
            self.recent.append(r)
            if self.client is not None:
                # The scene's verdicts (JUDGED_KEYS) stay in this file: the learner never
                # hears the simulator's truth, not even as a statistic.
                self.client.send_stats({k: v for k, v in record.items()
                                        if k not in ("kind", "time_to_success_s", "fault",
                                                     *JUDGED_KEYS)})

    def _save_false_success(self, index: int, images: dict[str, np.ndarray]) -> None:
        """The last frames of an episode the reward called a success while the scene says it
        failed, one PNG per camera as the actor's observation holds it (the policy's view,
        which a task may have resized from the classifier's): what fooled the classifier."""
        import cv2

        directory = self.dir / "false_successes"
        try:
            directory.mkdir(exist_ok=True)
            for cam, frame in images.items():
                ok, png = cv2.imencode(".png", np.ascontiguousarray(frame[..., ::-1]))
                if ok:
                    atomic_write_bytes(directory / f"train_{index:05d}_{cam}.png",
                                       png.tobytes())
        except OSError as e:  # a full disk must not stop the actor for a debugging aid
            log.warning("could not save the false success's frames in %s: %s", directory, e)

    def status(self) -> dict[str, Any]:
        recent = list(self.recent)
        out: dict[str, Any] = {
            "time": time.time(), "pid": os.getpid(), "actor": self.cfg.id, "hz": self.hz,
            **self.counts,
            **self.clock.summary(), "policy_version": self.policy.version,
            "recent_success_rate": float(np.mean([r.success for r in recent])) if recent else None,
            "recent_intervention_rate": (sum(r.interventions for r in recent)
                                         / max(sum(r.steps for r in recent), 1)),
        }
        if self.client is not None:
            out["learner_alive"] = self.client.learner_alive
            out["transport"] = self.client.stats()
        if self.review is not None:
            out.update(self.review.status())
        if self.view is not None:
            out["viewer_dropped_steps"] = self.view.dropped
        return out

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._t_status > STATUS_EVERY_S:
            self._t_status = now
            try:
                atomic_write_bytes(self.dir / "status.json",
                                   json.dumps(self.status(), default=float).encode())
            except OSError as e:
                log.warning("cannot write status.json: %s", e)
        if not self.quiet and now - self._t_print > PRINT_EVERY_S:
            self._t_print = now
            s = self.status()
            rate = s["recent_success_rate"]
            print(f"{self.cfg.id}: {s['env_steps']} steps, {s['train_episodes']} episodes, "
                  f"success {'-' if rate is None else f'{rate:.0%}'} (last 20), interventions "
                  f"{s['recent_intervention_rate']:.0%} | loop p99 {s['loop_ms_p99']:.1f} ms, "
                  f"{s['overruns']} overruns ({s['overrun_rate']:.1%}) | policy "
                  f"v{s['policy_version']} | learner "
                  f"{'alive' if s.get('learner_alive') else 'unreachable'}", flush=True)

    def close(self) -> None:
        if self.review is not None:
            self.review.close()
        if self.view is not None:
            self.view.close()
        if self.client is not None:
            self.client.close()
            # What this session produced (after close() flushed its open batch: seqs
            # [0, next_seq)), so the learner's holdings can be accounted against it.
            append_jsonl(self.dir / "sessions.jsonl",
                         {"session": self.client.session,
                          "transitions": self.client.outbox.next_seq, "time": time.time()})
        self.stack.close()


def _policy_obs(obs: Obs, spec: Any) -> Obs:
    return {"state": obs["state"], "images": {c: obs["images"][c] for c in spec.image_shapes}}


class _Acting:
    """The actor's policy as the loop sees it: stochastic while training, deterministic in
    evaluation; its version follows the weights pulled between steps."""

    def __init__(self, runner: PolicyRunner, deterministic: bool) -> None:
        self.runner, self.deterministic = runner, deterministic

    @property
    def version(self) -> int:
        return self.runner.version

    def act(self, obs: Obs) -> np.ndarray:
        return self.runner.act(obs, deterministic=self.deterministic)


def learner_transition(step: Step, spec: Any) -> dict[str, Any]:
    """What the learner receives of a step: the policy's view of the observations, the
    action, the reward and ends as the env stack decided them (the reward wrapper, or the
    person's SUCCESS button), and the grasp penalty. Nothing else of ``step.info`` (in
    particular not the scene's ``scene_success``) goes into it."""
    return {"obs": _policy_obs(step.obs, spec), "action": step.action,
            "reward": step.reward, "terminated": step.terminated,
            "truncated": step.truncated, "intervened": step.intervened,
            "next_obs": _policy_obs(step.next_obs, spec),
            "extras": {"grasp_penalty": float(step.info.get("grasp_penalty", 0.0))}}


JUDGED_KEYS = ("judged_success", "false_success")  # episodes.jsonl only, never sent


class SceneJudge(Observer):
    """The simulator's verdict on an episode, for judging only: ``judged_success`` (the
    scene reported success at some step, the rule env.reward=sim_success ends episodes by)
    and ``false_success`` (the env's reward ended the episode as a success, e.g. the reward
    classifier, and the scene says it failed). It reads ``info["scene_success"]``, which only
    a simulated scene reports; :meth:`verdict` is empty without one (a real robot)."""

    def __init__(self) -> None:
        self.seen = self.judged = self.reward_ended = False
        self.last_images: dict[str, np.ndarray] = {}

    def on_step(self, step: Step) -> None:
        if "scene_success" not in step.info:
            return
        self.seen = True
        self.last_images = step.next_obs.get("images", {})
        self.judged = self.judged or bool(step.info["scene_success"])
        self.reward_ended = ended_by_reward(step)

    def verdict(self) -> dict[str, bool]:
        if not self.seen:
            return {}
        return {"judged_success": self.judged,
                "false_success": self.reward_ended and not self.judged}


def ended_by_reward(step: Step) -> bool:
    """The env's own success verdict (the reward wrapper's ``info["success"]``) ended the
    episode, not the person's button or a time limit."""
    return (step.terminated and bool(step.info.get("success", False))
            and not step.info.get("success_button", False))


class _Bookkeeping(Observer):
    """The actor's part in every episode: training transitions to the learner (counted as
    env steps), status.json and progress lines as it goes, the person's review of a learned
    reward's success (the last transition waits for it), the episodes.jsonl record (with
    the scene's verdict when there is a scene) and the episode count at the end."""

    def __init__(self, actor: Actor, kind: str, index: int, clock: LoopClock) -> None:
        self.actor, self.train, self.index, self.clock = actor, kind == "train", index, clock
        self.judge = SceneJudge()
        self.awaiting_review: dict[str, Any] | None = None

    def on_step(self, step: Step) -> None:
        actor = self.actor
        self.judge.on_step(step)
        if self.train:
            transition = learner_transition(step, actor.spec)
            if actor.review is not None and ended_by_reward(step):
                self.awaiting_review = transition
            else:
                actor._send(transition)
            actor.counts["env_steps"] += 1
        actor._report()

    def on_end(self, result: EpisodeResult) -> None:
        actor = self.actor
        rejected = None
        if self.awaiting_review is not None:
            transition, self.awaiting_review = self.awaiting_review, None
            try:
                rejected = actor.review.ask(self.clock)
            except EmergencyStop:
                actor._send(transition)  # unreviewed: as the classifier said
                raise
            if rejected:
                # Not a success: no reward, and not the task's end (cut, as by a time limit).
                transition.update(reward=0.0, terminated=False, truncated=True)
                result.success, result.steps_to_success = False, None
                result.ret -= 1.0
                actor.review.reject(self.index)
            actor._send(transition)
        actor.counts[f"{result.kind}_episodes"] += 1
        verdict = self.judge.verdict()
        if rejected is not None:
            verdict["rejected"] = rejected
        actor._record(result, self.index, self.clock, verdict)
        if verdict.get("false_success"):
            actor._save_false_success(self.index, self.judge.last_images)


class _VideoRecorder(Observer):
    """One mp4 per camera per episode (OpenCV's mp4v codec, in opencv-python-headless)."""

    def __init__(self, directory: Path, kind: str, index: int, fps: float) -> None:
        self.directory, self.name, self.fps = directory, f"{kind}_{index:05d}", fps
        self.writers: dict[str, Any] = {}

    def on_step(self, step: Step) -> None:
        import cv2

        for cam, frame in step.next_obs["images"].items():
            w = self.writers.get(cam)
            if w is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                h, wd = frame.shape[:2]
                path = self.directory / f"{self.name}_{cam}.mp4"
                w = self.writers[cam] = cv2.VideoWriter(
                    str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (wd, h))
            w.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR

    def on_end(self, result: EpisodeResult) -> None:
        for w in self.writers.values():
            w.release()


# -------------------------------------------------------------------------------- CLI


def _with_endpoints(task: TaskConfig, learner: str | None) -> TaskConfig:
    if not learner:
        return task
    host, _, port = learner.rpartition(":")
    weights = f"{host}:{int(port) + 1}" if port.isdigit() else task.actor.weights
    return replace(task, actor=replace(task.actor, learner=learner, weights=weights))


def run_actor(args: argparse.Namespace) -> int:
    from hilrl.config import load_task

    task = _with_endpoints(load_task(args.task, args.overrides), args.learner)
    run_dir = args.run_dir or f"runs/{task.name}"
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    evaluating = args.eval is not None
    episodes_log = actor_dir(run_dir, task.actor.id) / "episodes.jsonl"
    if not evaluating and not args.resume and episodes_log.exists():
        print(f"hilrl actor: error: {episodes_log.parent} holds a previous run of actor "
              f"{task.actor.id!r}; pass --resume to continue it (its undelivered transitions "
              "are sent first), or choose another --run-dir or actor.id", file=sys.stderr)
        return 2
    try:
        node = Actor(task, run_dir, learner=not (evaluating and args.checkpoint),
                     video_dir=args.video if evaluating else None, quiet=args.quiet)
    except ValueError as e:  # the env, keys or config
        print(f"hilrl actor: error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, node.stop)
    signal.signal(signal.SIGTERM, node.stop)
    try:
        if not evaluating:
            node.run(args.max_steps, args.eval_every, args.eval_episodes)
            return 0
        if args.checkpoint:
            from hilrl.storage.checkpoint import CheckpointError

            try:
                step = node.policy.load_checkpoint(args.checkpoint, seed=task.seed)
            except CheckpointError as e:
                print(f"hilrl actor: error: {e}", file=sys.stderr)
                return 2
            node._say(f"evaluating the checkpoint at step {step}")
        elif not node.wait_for_weights():
            return 130
        results = node.evaluate(args.eval)
        summary = eval_summary(results, task.env.hz)
        append_jsonl(node.dir / "eval.jsonl", {"time": time.time(), **summary})
        ttl = summary["time_to_success_s"]
        print(f"result: eval success {summary['success_rate']:.0%} "
              f"({summary['successes']}/{summary['episodes']}), time to success "
              f"{'-' if ttl is None else f'{ttl:.1f} s'} (policy v{node.policy.version})",
              flush=True)
        return 0
    finally:
        node.close()


def eval_summary(results: list[EpisodeResult], hz: float) -> dict[str, Any]:
    wins = [r for r in results if r.success]
    return {"episodes": len(results), "successes": len(wins),
            "success_rate": len(wins) / max(len(results), 1),
            "time_to_success_s": (float(np.mean([r.time_to_success_s(hz) for r in wins]))
                                  if wins else None),
            "policy_version": results[-1].policy_version if results else -1}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actor", description=__doc__.splitlines()[0])
    from .args import add_arguments

    add_arguments(p)
    from hilrl.errors import run_guarded

    return run_guarded(run_actor, p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
