"""The learner node (``hilrl learner``, ``python -m learner``).

One process, four threads: the transport server (receives transitions, makes them
durable, acks them), the ingestion thread (adds them to the replay buffers), a prefetcher
(samples the next batch, on the devices, while the update runs) and this main loop::

    restore or start fresh  ->  replay the log past the checkpoint  ->  start the server
    loop: once min_transitions are in: sample 50/50 demo/online -> one jitted update
          every publish_every updates: publish the policy's weights
          every log_every: metrics; every checkpoint_every: checkpoint
    SIGINT / SIGTERM: finish the update, checkpoint, close.

It imports no robot driver and never renders: it starts on a machine without GL.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.config import TaskConfig
from hilrl.config.io import to_dict
from hilrl.envs.spec import env_spec
from hilrl.learning.replay import MixedSampler, Prefetcher, ReplayBuffer
from hilrl.reporting.report import CRITIC_SALIENCY
from hilrl.storage.fsutil import atomic_write_bytes
from hilrl.transport.learner_server import LearnerServer
from hilrl.transport.wire import WireError, decode, flatten, unflatten

from .ingest import Ingestor, load_demos, residual_of
from .learner_state import RunCheckpoints

log = logging.getLogger("hilrl.learner")

STATUS_EVERY_S = 1.0
PRINT_EVERY_S = 10.0
Q_TOO_HIGH_RECORDS = 3  # metric records in a row (log_every updates apart) before warning
SALIENCY_FRAMES = 4


class RunDirError(RuntimeError):
    """The run directory holds a previous run and --resume was not given, or a run the
    task no longer fits."""


def learner_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "learner"


class Learner:
    def __init__(self, task: TaskConfig, run_dir: str | Path, *, resume: bool = False,
                 demos: list[str] | None = None, quiet: bool = False) -> None:
        from hilrl.learning import sac
        from hilrl.reporting.metrics import MetricsWriter

        self.task = task
        self.cfg = task.learner
        self.dir = learner_dir(run_dir)
        self.quiet = quiet
        self.spec = env_spec(task)
        self.schema = self.spec.wire_schema()
        self._stop = threading.Event()
        self.rng = np.random.default_rng(task.seed)

        self.store = RunCheckpoints(self.dir, keep=self.cfg.keep_checkpoints)
        log_dir = self.dir / "log"
        used = self.store.exists() or (log_dir.is_dir() and any(log_dir.iterdir()))
        if used and not resume:
            raise RunDirError(
                f"{self.dir} holds a previous run; pass --resume to continue it, or choose "
                "another --run-dir")

        template = sac.create(task.agent, self.spec.example_observation(), self.spec.action_size,
                              seed=task.seed)
        kwargs = self.spec.replay_kwargs()
        self.restored_step: int | None = None
        counters: dict[str, Any] = {}
        if resume and self.store.exists():
            r = self.store.restore(template)
            self.state, online, demo = r.state, r.online, r.demo
            self._check_buffer(online, kwargs)
            self.restored_step, counters = r.step, r.counters
            included = r.included
        else:
            self.state = template
            online = ReplayBuffer(self.cfg.online_capacity, **kwargs)
            demo = ReplayBuffer(self.cfg.demo_capacity, **kwargs)
            included = {}
            paths = list(demos if demos is not None else self.cfg.demos)
            if paths:
                encoder = None
                if task.env.frozen_encoder:
                    from hilrl.learning.pretrain import FrozenEncoder

                    encoder = FrozenEncoder(task.env.frozen_encoder)
                residual = None
                if task.residual.base:
                    from hilrl.learning.base_policy import load_base_policy

                    residual = residual_of(load_base_policy(task.residual.base, task),
                                           task.residual.scale)
                n_ep, n_steps = load_demos(paths, demo, encoder, residual)
                self._say(f"loaded {n_ep} demo episodes ({n_steps} transitions) from "
                          f"{', '.join(paths)}")
        from hilrl.learning import data_parallel

        self.parallel = data_parallel.local(self.cfg.devices, self.cfg.batch_size)
        self.state = self.parallel.replicate(self.state)
        self._say(f"training on {self.parallel.describe()}")
        self.ingest = Ingestor(online, demo, included)
        self._ingest_lock = threading.Lock()
        self._stop_ingesting = threading.Event()
        self._arrived = threading.Event()
        self._ingest_error: BaseException | None = None
        self._step = int(self.state.step)  # the update loop's, for the policy's staleness
        self.env_steps = int(counters.get("env_steps", 0))  # transitions ever received
        if int(counters.get("utd", task.agent.utd)) != task.agent.utd:  # adaptive, raised
            self._set_utd(int(counters["utd"]))
        # Updates dropped for a non-finite loss or parameter (sac.update): summed on the device
        # so the loop never waits for it, read when metrics are logged.
        self._skipped: Any = 0.0
        self.updates_skipped = 0
        self.sampler = MixedSampler(online, demo, self.cfg.demo_ratio)

        keys = None
        if self.cfg.keys:
            from hilrl.transport.security import load_server_keys

            keys = load_server_keys(self.cfg.keys)
        self.server = LearnerServer(self.cfg.bind, self.cfg.weights_bind, str(log_dir),
                                    self.schema, keys=keys, insecure=self.cfg.insecure)
        replayed = self._replay_log()
        self.restored = {"step": int(self.state.step), "online": len(online),
                         "demo": len(demo), "replayed_from_log": replayed}
        if self.restored_step is not None:
            self._say(f"resumed at step {self.restored_step}: online {len(online)}, "
                      f"demo {len(demo)} transitions ({replayed} replayed from the log)")

        wandb = None
        if self.cfg.wandb_project:
            wandb = {"project": self.cfg.wandb_project, "name": Path(run_dir).name,
                     "config": to_dict(task), "resume": "allow"}
        self.metrics = MetricsWriter(self.dir, tensorboard=self.cfg.tensorboard, wandb=wandb)
        (self.dir / "task.json").write_text(json.dumps(to_dict(task), indent=1))
        self.version = -1
        self._published: dict[str, np.ndarray] = {}
        self._actor_stats: dict[str, dict[str, Any]] = {}
        self._perturbed: dict[str, float] = {}
        self._critic_active: float | None = None  # the last adaptive-utd check's
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.checkpoint_failures = 0
        self.checkpoint_seconds: float | None = None  # the last checkpoint's
        self._last_ckpt_step = self.restored_step
        self._q_too_high = 0  # consecutive metric records with Q above the return bound

    # ---------------------------------------------------------------- setup helpers

    def _say(self, text: str) -> None:
        log.info(text)
        if not self.quiet:
            print(f"learner: {text}", flush=True)

    @staticmethod
    def _check_buffer(buffer: ReplayBuffer, kwargs: dict[str, Any]) -> None:
        spec = buffer.spec
        want = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        want["image_shapes"] = {c: list(s) for c, s in kwargs["image_shapes"].items()}
        got = {k: spec[k] for k in want}
        if got != want:
            raise RunDirError(f"the checkpoint's replay buffers hold {got}, but the task now "
                              f"makes {want}; resume with the task file of that run")

    def _replay_log(self) -> int:
        """Add the durable log's records that the restored buffers do not hold."""
        n = 0
        for record in self.server.log.records():
            if self.ingest.covers(record.actor, record.session, record.seq, record.count):
                continue  # in the restored snapshots already: not even decoded
            try:  # the disk is not trusted: validated again
                msg = decode(list(record.frames), schema=self.server.schema)
            except WireError as e:
                log.error("log record %s/%s seq %d is unreadable (%s); skipped", record.actor,
                          record.session, record.seq, e)
                continue
            n += self.ingest.add(msg)
        self.env_steps += n
        return n

    # ---------------------------------------------------------------- main loop

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        """Train until stopped or ``max_updates``; returns the final step."""
        from hilrl.learning import sac

        cfg = self.cfg
        agent = self.task.agent
        update = sac.update
        self.server.start()
        ingesting = threading.Thread(target=self._ingest_loop, name="learner-ingest",
                                     daemon=True)
        ingesting.start()
        self._publish(full=True)
        self._say(f"listening on {self.server.endpoint} (weights {self.server.weights_endpoint});"
                  f" run directory {self.dir}")
        prefetch: Prefetcher | None = None
        step = int(self.state.step)
        t_status = t_print = 0.0
        rate = _Rate(self.state.config.utd)  # critic updates/s: update calls x utd
        info: dict[str, Any] = {}
        try:
            while not self._stop.is_set():
                if self._ingest_error is not None:
                    raise RuntimeError("the ingestion thread failed") from self._ingest_error
                self._take_stats()
                now = time.monotonic()
                if now - t_status > STATUS_EVERY_S:
                    t_status = now
                    self._write_status(step, rate.value)
                if now - t_print > PRINT_EVERY_S:
                    t_print = now
                    self._print_progress(step, rate.value)
                if cfg.max_updates is not None and step >= cfg.max_updates:
                    break
                have = len(self.ingest.online) + len(self.ingest.demo)
                limited = (cfg.max_updates_per_step is not None
                           and step - (self.restored_step or 0)
                           >= cfg.max_updates_per_step * max(self.ingest.transitions, 1))
                if have < cfg.min_transitions or limited:
                    self._arrived.wait(0.05)  # new transitions may lift either limit
                    self._arrived.clear()
                    continue
                if prefetch is None:
                    batch_size = cfg.batch_size * self.state.config.utd
                    rng = np.random.default_rng(self.rng.integers(1 << 63))
                    prefetch = Prefetcher(lambda b=batch_size, r=rng: self.parallel.shard(
                        self.sampler.sample(b, r)))
                batch = prefetch.next()
                self.state, info = update(self.state, batch)
                self._skipped = self._skipped + info["update_skipped"]
                step += 1
                self._step = step
                rate.tick()
                if agent.perturb_every and step % agent.perturb_every == 0:
                    self._perturb(step, batch)
                if (agent.utd_high > self.state.config.utd
                        and step % agent.utd_check_every == 0 and self._adapt_utd(step, batch)):
                    prefetch.close()  # its batches are sized for the old utd
                    prefetch = None
                    rate.per_tick = self.state.config.utd
                if step % cfg.publish_every == 0:
                    self._publish()
                if step % cfg.log_every == 0:
                    self._log_metrics(step, info, rate.value,
                                      sac.dormant_ratios(self.state, batch))
                if step % cfg.checkpoint_every == 0:
                    self.checkpoint()
                    self._write_saliency(step, batch)
                del batch
        finally:
            if prefetch is not None:
                prefetch.close()
            self._stop_ingesting.set()
            ingesting.join()
            for msg in self.server.drain():  # what arrived after the thread's last look
                self._add(msg, step)
            self._take_stats()
            self.checkpoint()
            self._write_status(step, rate.value)
            self.close()
        return step

    def _ingest_loop(self) -> None:
        """Adds the actors' transitions to the buffers as they arrive, on a thread of its own
        so that copying frames never takes the update loop's time. A checkpoint holds the
        same lock: its snapshots and ``included`` are one consistent cut."""
        try:
            while not self._stop_ingesting.is_set():
                msg = self.server.get(timeout=0.05)
                if msg is not None:
                    with self._ingest_lock:
                        self._add(msg, self._step)
                    self._arrived.set()
        except BaseException as e:  # noqa: BLE001 - handed to the update loop, which stops
            self._ingest_error = e

    def _perturb(self, step: int, batch: Any) -> None:
        import jax

        from hilrl.learning import sac

        state, info = sac.perturb(self.state, batch)
        self.state = self.parallel.replicate(state)
        self._perturbed = {f"dormant/{k}": float(v) for k, v in jax.device_get(info).items()}
        log.info("step %d: perturbed the networks by the actor's dormant ratio %.3f (kept "
                 "%.2f of each weight)", step, self._perturbed["dormant/actor_dormant_ratio"],
                 self._perturbed["dormant/perturb_factor"])

    def _adapt_utd(self, step: int, batch: Any) -> bool:
        """Adaptive replay ratio: True when it raised the utd (see SACConfig.utd_high)."""
        from hilrl.learning import sac

        agent = self.task.agent
        active = 1.0 - float(sac.dormant_ratios(self.state, batch)["critic"])
        last, self._critic_active = self._critic_active, active
        if last is None or abs(active - last) > agent.utd_tolerance * max(last, 1e-6):
            return False
        self._set_utd(agent.utd_high)
        self._say(f"step {step}: the critic's active units held at {active:.3f} (were "
                  f"{last:.3f}): utd {agent.utd} -> {agent.utd_high}")
        return True

    def _set_utd(self, utd: int) -> None:
        self.state = self.state.replace(config=replace(self.state.config, utd=utd))

    def _take_stats(self) -> None:
        for actor, stats in self.server.stats():
            self._actor_stats[actor] = {**self._actor_stats.get(actor, {}), **stats}
            self._recent.append({"actor": actor, **stats})

    def _add(self, msg: Any, step: int) -> None:
        try:
            self.env_steps += self.ingest.add(msg, learner_step=step)
        except (ValueError, WireError) as e:
            # The server validated it against the schema; reaching here is a bug, not bad
            # input. Keep training: the message stays in the durable log.
            log.error("could not add a message of %s/%s seq %d: %s", msg.actor, msg.session,
                      msg.seq, e)

    def _publish(self, full: bool = False) -> None:
        """Publish the policy's parameters; after the first full set only the leaves that
        changed travel (a frozen encoder is sent once)."""
        import jax

        from hilrl.learning import sac

        step = int(self.state.step)
        if step <= self.version:
            return
        flat = flatten(jax.device_get(sac.policy(self.state).params))
        if full or not self._published:
            send = flat
        else:
            send = {k: v for k, v in flat.items()
                    if not np.array_equal(v, self._published.get(k))}
        if not send:
            return
        self.server.publish_weights(unflatten(send), step, full=full or not self._published)
        self._published = flat
        self.version = step

    # ---------------------------------------------------------------- persistence

    def checkpoint(self) -> None:
        step = int(self.state.step)
        if step == self._last_ckpt_step:
            return  # the log holds what arrived since; nothing new to save
        t = time.monotonic()
        try:
            with self._ingest_lock:
                self.store.save(self.state, self.ingest.online, self.ingest.demo,
                                self.ingest.included, {"env_steps": self.env_steps,
                                                       "utd": self.state.config.utd},
                                self.server)
        except Exception as e:  # noqa: BLE001 - disk full, read-only: keep training
            self.checkpoint_failures += 1
            log.error("checkpoint at step %d failed (%s: %s); training goes on and the last "
                      "good checkpoint is kept. Free disk space or fix the permissions of %s",
                      step, type(e).__name__, e, self.dir)
            if not self.quiet:
                print(f"learner: checkpoint at step {step} FAILED: {e}", file=sys.stderr,
                      flush=True)
            return
        self._last_ckpt_step = step
        self.checkpoint_seconds = time.monotonic() - t
        log.info("checkpoint at step %d in %.2f s", step, self.checkpoint_seconds)

    def _write_saliency(self, step: int, batch: Any) -> None:
        """``critic_saliency.png``: where the critic looks in the first frames of ``batch``
        (``hilrl report`` shows it)."""
        import jax

        from hilrl.learning import sac, saliency

        if not self.spec.image_shapes:
            return
        obs = jax.device_get(jax.tree.map(lambda x: x[:SALIENCY_FRAMES], batch["obs"]))
        try:
            heat = sac.critic_saliency(self.state, obs)
            saliency.plot(self.dir / CRITIC_SALIENCY, [
                (f"frame {k}", {c: v[k] for c, v in obs["images"].items()},
                 {c: v[k] for c, v in heat.items()}) for k in range(len(obs["state"]))],
                f"critic Grad-CAM (mean Q of the policy's action), learner step {step}")
        except Exception as e:  # noqa: BLE001 - a picture is never worth stopping training
            log.warning("could not write %s at step %d: %s", CRITIC_SALIENCY, step, e)

    # ---------------------------------------------------------------- reporting

    def status(self, step: int, rate: float) -> dict[str, Any]:
        actors = self.server.actors()
        return {
            "time": time.time(), "pid": os.getpid(), "step": step,
            "critic_updates_per_s": rate,
            "env_steps": self.env_steps, "online": len(self.ingest.online),
            "demo": len(self.ingest.demo), "weights_version": self.version,
            "restored": self.restored, "last_checkpoint": self._last_ckpt_step,
            "checkpoint_failures": self.checkpoint_failures,
            "checkpoint_seconds": self.checkpoint_seconds,
            "updates_skipped": self.updates_skipped, "devices": self.parallel.describe(),
            "server": self.server.counters(),
            "actors": {a: {**actors.get(a, {}), **self._actor_stats.get(a, {})}
                       for a in set(actors) | set(self._actor_stats)},
        }

    def _write_status(self, step: int, rate: float) -> None:
        try:
            atomic_write_bytes(self.dir / "status.json",
                               json.dumps(self.status(step, rate), default=float).encode())
        except OSError as e:
            log.warning("cannot write status.json: %s", e)

    def _print_progress(self, step: int, rate: float) -> None:
        if self.quiet:
            return
        alive = [a for a, s in self.server.actors().items() if s["alive"]]
        print(f"learner: step {step} | {rate:.1f} critic updates/s | env steps {self.env_steps} "
              f"(online {len(self.ingest.online)}, demo {len(self.ingest.demo)}) | weights "
              f"v{self.version} | actors {', '.join(alive) or 'none'}", flush=True)

    def _log_metrics(self, step: int, info: dict[str, Any], rate: float,
                     dormant: dict[str, Any]) -> None:
        import jax

        values: dict[str, Any] = {f"train/{k}": float(v)
                                  for k, v in jax.device_get(info).items()}
        values.update({f"dormant/{k}": float(v) for k, v in jax.device_get(dormant).items()})
        values.update(self._perturbed)  # the last perturbation's, since the last record
        self._perturbed = {}
        values["rate/critic_updates_per_s"] = rate
        skipped = int(jax.device_get(self._skipped))
        if skipped > self.updates_skipped:
            log.warning("%d update(s) dropped for a non-finite loss or parameter (%d in all); "
                        "the weights are the last finite ones. Persistent drops mean the "
                        "learning rate or reward scale is too high", skipped -
                        self.updates_skipped, skipped)
        self.updates_skipped = skipped
        values["train/updates_skipped_total"] = skipped
        self._check_q(values)
        values["train/utd"] = self.state.config.utd
        values["buffer/online"] = len(self.ingest.online)
        values["buffer/demo"] = len(self.ingest.demo)
        if self.ingest.staleness:
            values["policy/staleness"] = float(np.mean(self.ingest.staleness))
            self.ingest.staleness.clear()
        for actor, stats in self._actor_stats.items():
            for k, v in stats.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    values[f"actor/{actor}/{k}"] = v
        recent = list(self._recent)
        if recent:
            steps = sum(r.get("steps", 0) for r in recent)
            values["actor/intervention_rate"] = (
                sum(r.get("interventions", 0) for r in recent) / max(steps, 1))
            values["actor/success_rate"] = float(np.mean([r.get("success", 0) for r in recent]))
        self.metrics.scalars(step, values, env_steps=self.env_steps)

    def _check_q(self, values: dict[str, Any]) -> None:
        """Record the largest return the replay's rewards allow, and say so when the critics'
        mean Q stays far above it: overestimation feeding on itself. One run with 2 critics on
        a 0/1 success reward had Q at 2.8, where no return exceeds 1, and stayed at 0%."""
        from hilrl.learning import sac

        agent = self.task.agent
        if agent.backup_entropy or "train/q" not in values:
            return  # entropy bonuses are part of Q then: no bound from the rewards alone
        parts = [buffer.rewards() for buffer in (self.ingest.online, self.ingest.demo)]
        bound = sac.return_bound(np.concatenate([r for r, _ in parts]),
                                 np.concatenate([t for _, t in parts]), agent.discount)
        if not np.isfinite(bound):
            return
        values["train/q_bound"] = bound
        q = values["train/q"]
        self._q_too_high = self._q_too_high + 1 if q > 1.5 * bound + 0.1 else 0
        if self._q_too_high == Q_TOO_HIGH_RECORDS:
            advice = ("use RLPD's ensemble: agent.num_critics: 10" if agent.num_critics < 10
                      else "lower agent.utd or agent.critic_lr")
            text = (f"the critics' mean Q ({q:.2f}) has stayed above the largest return the "
                    f"replay's rewards allow ({bound:.2f}) for {Q_TOO_HIGH_RECORDS} metric "
                    f"records: the critics overestimate, and the policy they train is unlikely "
                    f"to learn; {advice}")
            log.warning(text)
            if not self.quiet:
                print(f"learner: WARNING: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.server.close()
        self.metrics.close()
        self.store.close()


class _Rate:
    """Critic updates per second over the last ~5 s: update calls (ticks) x ``per_tick``
    (the agent's utd: each call runs that many critic steps)."""

    def __init__(self, per_tick: int = 1) -> None:
        self.per_tick = per_tick
        self.times: collections.deque[float] = collections.deque(maxlen=1000)

    def tick(self) -> None:
        self.times.append(time.monotonic())

    @property
    def value(self) -> float:
        now = time.monotonic()
        while self.times and now - self.times[0] > 5.0:
            self.times.popleft()
        if len(self.times) < 2:
            return 0.0
        return self.per_tick * (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-9)


# -------------------------------------------------------------------------------- CLI


def run_learner(args: argparse.Namespace) -> int:
    from hilrl.config import load_task

    task = load_task(args.task, args.overrides)
    run_dir = args.run_dir or f"runs/{task.name}"
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: "
                        "%(message)s")
    if args.insecure:
        task = replace(task, learner=replace(task.learner, insecure=True))
    try:
        node = Learner(task, run_dir, resume=args.resume, demos=args.demos, quiet=args.quiet)
    except (RunDirError, ValueError) as e:  # the run dir, keys, bind address, demos, config
        print(f"hilrl learner: error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, node.stop)
    signal.signal(signal.SIGTERM, node.stop)
    step = node.run()
    if not args.quiet:
        print(f"learner: stopped at step {step}; checkpoint in {node.dir / 'checkpoints'}",
              flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from hilrl.heap import limit_fragmentation

    limit_fragmentation()  # before the server's, ingestion's and prefetch's threads start
    p = argparse.ArgumentParser(prog="python -m learner", description=__doc__.splitlines()[0])
    from .args import add_arguments

    add_arguments(p)
    from hilrl.errors import run_guarded

    return run_guarded(run_learner, p.parse_args(argv))
