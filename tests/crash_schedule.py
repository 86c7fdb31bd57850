"""Crash schedule: the learner and two actors on the sim, SIGKILLed at seeded random moments.

Importable harness (no tests here): ``tests/test_crash_schedule.py`` runs a few cycles and
asserts the checks, ``bench/crash_schedule.py`` runs 20 and prints figures.

Schedule (``run_crash_schedule``)
---------------------------------
1. Record demos once (scripted expert), start the learner and actors ``actor0`` and
   ``actor1`` (the small settings of tests/test_nodes.py, 50 Hz) and wait until both act
   and the learner has committed a first checkpoint.
2. ``cycles`` times: wait a random time (``numpy.random.default_rng(seed)``), SIGKILL a
   random victim (learner or one actor), restart it with ``--resume`` (same arguments) and
   wait until it is up again (its status.json names its pid). While the learner is dead its
   committed checkpoints are restored in this process (an interrupted save must leave the
   previous one loadable).
3. SIGTERM both actors (a clean close spills what is unacked). Restart them with
   ``--resume`` in evaluation mode until ``recovered_sessions_pending`` is 0: they deliver
   the sessions left on disk and, unlike a training actor, produce none of their own, so no
   new unacked tail is left behind when they are stopped. SIGTERM them, SIGTERM the learner
   (final checkpoint), start it once more with ``--resume`` and read its status.json.
4. Check (``CrashResult.failures``); see ``analyse``.

The learner prunes log segments that its checkpoints cover (learner/learner_state.py), so the
log directory alone no longer holds every transition at the end. The harness therefore
hard-links every log segment file into ``<run>/log-archive/`` as soon as it appears (on
every poll and before each learner restart). A segment is append-only and only cut by the
learner's own recovery, which the shared inode reflects, and a stream's segment is pruned
only after a newer one exists (a learner restart or a 64 MB rollover), so the archive is
the log's whole history: every record the learner ever made durable, each file once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "tasks" / "sim_pick_cube.yaml"

# The small settings of tests/test_nodes.py: the schedule is about the plumbing.
SMALL = ["agent.hidden_dims=[32,32]", "agent.utd=1", "learner.batch_size=32",
         "learner.min_transitions=50", "learner.publish_every=5", "learner.log_every=20",
         "learner.checkpoint_every=40"]
ACTORS = ("actor0", "actor1")
VICTIMS = ("learner", *ACTORS)
DEMO_EPISODES = 3
READY_TIMEOUT_S = 240.0  # a restart imports JAX and restores on 2 busy cores
POLL_S = 0.25

Stream = tuple[str, str]  # (actor id, session id)


class HarnessError(RuntimeError):
    """The schedule could not be carried out: a node died on its own, a wait timed out."""


# ------------------------------------------------------------------------------ nodes


class Node:
    """One learner or actor process; every start appends to ``<run>/logs/<name>.out``."""

    def __init__(self, name: str, args: list[str], run: Path, env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.out = run / "logs" / f"{name}.out"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start_times: list[float] = []  # time.time() of every start

    def start(self, extra: Sequence[str] = ()) -> None:
        argv = [sys.executable, "-m", *self.args, *extra]
        with open(self.out, "ab") as f:
            f.write(f"===== start {self.starts}: {' '.join(extra)}\n".encode())
            f.flush()
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=f,
                                         stderr=subprocess.STDOUT)
        self.starts += 1
        self.start_times.append(time.time())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM and wait; SIGKILL after ``timeout`` (returns -9 then)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def tail(self, chars: int = 2500) -> str:
        try:
            return self.out.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    from hilrl.reporting.metrics import read_jsonl as read

    return read(path) if path.exists() else []


def node_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # As tests/conftest.py: headless rendering and one persistent compilation cache.
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "hilrl-jax"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return env


def record_demos(out: Path, episodes: int = DEMO_EPISODES) -> int:
    """Record scripted-expert demos into ``out`` (once); returns their transitions."""
    if not any(out.glob("episode_*.npz")):
        from actor.teleop import record_demos as record
        from hilrl.config import load_task

        record(load_task(TASK, ["device.expert.takeover=always"]), out, episodes,
               progress=False)
    return sum(len(np.load(f)["reward"]) for f in sorted(out.glob("episode_*.npz")))


# ------------------------------------------------------------------------------ result


@dataclass
class SessionCount:
    actor: str
    session: str
    produced: int | None  # from the actor's sessions.jsonl; None: the session was SIGKILLed
    held: int  # transitions of this session in the learner's log
    learner_kills: int = 0  # learner SIGKILLs while this session's process ran

    @property
    def lost(self) -> int:
        return 0 if self.produced is None else self.produced - self.held


@dataclass
class CrashResult:
    seed: int
    cycles: int
    kills: dict[str, int]
    wall_s: float
    events: list[str]
    # the learner's log (whole history: the archive)
    log_transitions: int = 0
    log_intervened: int = 0
    log_streams: int = 0
    duplicates: list[str] = field(default_factory=list)  # "actor/session seq N" seen twice
    duplicate_transitions: int = 0
    holes: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)
    kept_log_transitions: int = 0  # what the log directory still holds after pruning
    kept_not_in_archive: int = 0  # records of the log directory the archive lacks
    transitions_per_actor: dict[str, int] = field(default_factory=dict)
    # the restored learner
    demo_steps: int = 0
    restored: dict[str, Any] = field(default_factory=dict)
    restored_step: int = -1
    online: int = -1
    env_steps: int = -1
    # actor sessions
    sessions: list[SessionCount] = field(default_factory=list)
    undelivered_spills: list[str] = field(default_factory=list)
    # checkpoints
    checkpoints_checked: list[int] = field(default_factory=list)
    corrupt_checkpoints: list[str] = field(default_factory=list)
    interrupted_saves: list[int] = field(default_factory=list)  # uncommitted step dirs seen
    exit_codes: dict[str, int] = field(default_factory=dict)  # clean stops (SIGTERM)

    @property
    def clean_sessions(self) -> list[SessionCount]:
        return [s for s in self.sessions if s.produced is not None]

    @property
    def killed_sessions(self) -> list[SessionCount]:
        return [s for s in self.sessions if s.produced is None]

    @property
    def lost_from_live_sessions(self) -> int:
        """Transitions of sessions that ended cleanly which the learner does not hold."""
        return sum(abs(s.lost) for s in self.clean_sessions)

    @property
    def learner_kills_survived(self) -> int:
        """Learner SIGKILLs lived through by sessions that ended cleanly: how much the
        'nothing lost' check says about learner crashes (0: nothing)."""
        return sum(s.learner_kills for s in self.clean_sessions if s.produced)

    def failures(self) -> list[str]:
        out = []
        if self.duplicates:
            out.append(f"{self.duplicate_transitions} duplicated transitions in the log: "
                       f"{self.duplicates[:5]}")
        if self.holes:
            out.append(f"holes in the log's streams: {self.holes[:5]}")
        if self.log_problems:
            out.append(f"damaged log segments: {self.log_problems[:3]}")
        if self.kept_not_in_archive:
            out.append(f"{self.kept_not_in_archive} records of the log are missing from the "
                       "archive (harness)")
        if self.online != self.log_transitions:
            out.append(f"restored online buffer holds {self.online} transitions, the log "
                       f"{self.log_transitions}")
        if self.env_steps != self.log_transitions:
            out.append(f"restored env_steps counter is {self.env_steps}, the log holds "
                       f"{self.log_transitions}")
        want_demo = self.demo_steps + self.log_intervened
        if self.restored.get("demo") != want_demo:
            out.append(f"restored demo buffer holds {self.restored.get('demo')}, expected "
                       f"{self.demo_steps} demo + {self.log_intervened} intervened = {want_demo}")
        for s in self.clean_sessions:
            if s.lost:
                out.append(f"{s.actor} session {s.session} ended cleanly with {s.produced} "
                           f"transitions, the learner holds {s.held}")
        if self.undelivered_spills:
            out.append(f"sessions left undelivered in spill directories: "
                       f"{self.undelivered_spills}")
        if self.corrupt_checkpoints:
            out.append(f"checkpoints that do not load: {self.corrupt_checkpoints[:3]}")
        if not self.checkpoints_checked:
            out.append("no committed checkpoint was checked")
        bad_exits = {k: v for k, v in self.exit_codes.items() if v != 0}
        if bad_exits:
            out.append(f"clean stops that did not exit 0: {bad_exits}")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        kills = ", ".join(f"{k} {v}" for k, v in self.kills.items())
        per_actor = ", ".join(f"{k} {v}" for k, v in sorted(self.transitions_per_actor.items()))
        lines = [
            f"crash schedule: seed {self.seed}, {self.cycles} cycles in "
            f"{self.wall_s / 60:.1f} min; kills: {kills}",
            f"log: {self.log_transitions} transitions ({self.log_intervened} intervened) in "
            f"{self.log_streams} streams; per actor: {per_actor}; "
            f"{self.duplicate_transitions} duplicated, {len(self.holes)} holes; "
            f"{self.kept_log_transitions} still in the log directory after pruning",
            f"restored learner: step {self.restored_step}, online {self.online}, "
            f"env_steps {self.env_steps}, demo {self.restored.get('demo')} "
            f"(= {self.demo_steps} demo + {self.log_intervened} intervened?)",
            f"checkpoints: {len(self.checkpoints_checked)} committed steps restored "
            f"(steps {', '.join(map(str, self.checkpoints_checked))}), "
            f"{len(self.corrupt_checkpoints)} corrupt, {len(self.interrupted_saves)} "
            f"interrupted saves left behind",
        ]
        for s in self.clean_sessions:
            lines.append(f"  clean  {s.actor} {s.session[:8]}: produced {s.produced}, "
                         f"learner holds {s.held}; lived through {s.learner_kills} learner "
                         "kill(s)")
        for s in self.killed_sessions:
            lines.append(f"  killed {s.actor} {s.session[:8]}: learner holds {s.held}")
        failures = self.failures()
        lines.append("result: " + ("all checks passed" if not failures else
                                   "FAILED:\n  " + "\n  ".join(failures)))
        return "\n".join(lines)


# ------------------------------------------------------------------------------ harness


class CrashSchedule:
    def __init__(self, run: Path, *, cycles: int, seed: int,
                 wait_s: tuple[float, float] = (2.0, 5.0), demos: Path | None = None,
                 say: Callable[[str], None] = print) -> None:
        from hilrl.cli.train_sim import free_port_pair

        self.run = Path(run)
        self.run.mkdir(parents=True, exist_ok=True)
        self.cycles = cycles
        self.seed = seed
        self.wait_s = wait_s
        self.rng = np.random.default_rng(seed)
        self.say = say
        self.demos = demos or self.run / "demos"
        self.ldir = self.run / "learner"
        self.archive = self.run / "log-archive"
        self._archived: set[tuple[int, int]] = set()  # (st_dev, st_ino) already linked
        self._verified: dict[int, tuple[int, int]] = {}  # step -> manifest (ino, mtime_ns)
        self._template: Any = None
        self._learner_kill_times: list[float] = []
        self.t0 = time.monotonic()
        port = free_port_pair()
        env = node_env()
        learner_args = ["learner", "--task", str(TASK), "--run-dir", str(self.run), "--demos",
                        str(self.demos), *SMALL, f"learner.bind=tcp://127.0.0.1:{port}",
                        f"learner.weights_bind=tcp://127.0.0.1:{port + 1}"]
        self.nodes = {"learner": Node("learner", learner_args, self.run, env)}
        for aid in ACTORS:
            self.nodes[aid] = Node(aid, ["actor", "--task", str(TASK), "--run-dir",
                                         str(self.run), "--learner", f"tcp://127.0.0.1:{port}",
                                         "actor.hz=50", f"actor.id={aid}", *SMALL],
                                   self.run, env)
        self.expected_alive: set[str] = set()
        self.result = CrashResult(seed, cycles, dict.fromkeys(VICTIMS, 0), 0.0, [])

    # -------------------------------------------------------------- helpers

    def event(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f} s] {text}"
        self.result.events.append(line)
        self.say(line)

    def status(self, name: str) -> dict[str, Any]:
        d = self.ldir if name == "learner" else self.run / "actors" / name
        return read_json(d / "status.json")

    def is_up(self, name: str) -> bool:
        """The process started last has written its status.json (the learner serves, an
        actor acts)."""
        return self.status(name).get("pid") == self.nodes[name].pid

    def _check_alive(self) -> None:
        for name in self.expected_alive:
            node = self.nodes[name]
            if not node.running():
                raise HarnessError(f"{name} exited on its own with "
                                   f"{node.proc.returncode if node.proc else None}:\n"
                                   f"{node.tail()}")

    def poll(self) -> None:
        self._check_alive()
        self.archive_log()

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.poll()
            time.sleep(min(POLL_S, left))

    def wait_for(self, what: str, predicate: Callable[[], Any],
                 timeout: float = READY_TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            value = predicate()
            if value:
                return value
            time.sleep(POLL_S)
        outputs = "\n".join(f"--- {n}\n{self.nodes[n].tail(1500)}" for n in self.nodes)
        raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}\n{outputs}")

    def archive_log(self) -> None:
        """Hard-link log segment files not linked yet into the archive (see the module
        docstring). A name already taken by another inode (an empty segment deleted by
        recovery, then created again) gets a ``.N`` suffix."""
        root = self.ldir / "log"
        if not root.is_dir():
            return
        for path in root.glob("*/*/*.seg"):
            try:
                st = path.stat()
            except FileNotFoundError:  # pruned meanwhile: linked earlier (see docstring)
                continue
            key = (st.st_dev, st.st_ino)
            if key in self._archived:
                continue
            dest = self.archive / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            target, n = dest, 0
            while target.exists():
                n += 1
                target = dest.with_name(f"{dest.name}.{n}")
            try:
                os.link(path, target)
            except FileNotFoundError:
                continue
            self._archived.add(key)

    # -------------------------------------------------------------- checkpoints

    def template(self) -> Any:
        if self._template is None:
            from hilrl.config import load_task
            from hilrl.envs.spec import env_spec
            from hilrl.learning import sac

            task = load_task(TASK, SMALL)
            spec = env_spec(task)
            self._template = sac.create(task.agent, spec.example_observation(),
                                        spec.action_size, seed=task.seed)
        return self._template

    def check_checkpoints(self, when: str) -> None:
        """Restore every committed checkpoint (agent state with its checksums, both replay
        snapshots) while no learner is writing. A committed step never changes, so one
        already restored is skipped."""
        from hilrl.learning.replay import ReplayBuffer, ReplayFileError
        from hilrl.storage.checkpoint import Checkpointer, CheckpointError

        directory = self.ldir / "checkpoints"
        if not directory.is_dir():
            return
        ckpt = Checkpointer(directory, read_only=True)
        try:
            for step in ckpt.incomplete_steps():
                if step not in self.result.interrupted_saves:
                    self.result.interrupted_saves.append(step)
                    self.event(f"checkpoint step {step} was interrupted (not committed)")
            for step in ckpt.all_steps():
                try:
                    st = (ckpt.step_dir(step) / "hilrl_manifest.json").stat()
                    stamp = (st.st_ino, st.st_mtime_ns)
                    if self._verified.get(step) == stamp:
                        continue
                    _state, extra = ckpt.restore(self.template(), step)
                    names = {"online": f"online-{step}.json", "demo": f"demo-{step}.json"}
                    if extra.get("replay") != names:
                        raise CheckpointError(f"names replay snapshots {extra.get('replay')}")
                    for name in names.values():
                        ReplayBuffer.load(self.ldir / "replay" / name)
                except (CheckpointError, ReplayFileError, OSError, KeyError, ValueError) as e:
                    self.result.corrupt_checkpoints.append(
                        f"{when}: step {step}: {type(e).__name__}: {e}")
                    self.event(f"checkpoint step {step} does NOT load: {e}")
                    continue
                self._verified[step] = stamp
                if step not in self.result.checkpoints_checked:
                    self.result.checkpoints_checked.append(step)
        finally:
            ckpt.close()

    # -------------------------------------------------------------- the schedule

    def start(self, name: str, extra: Sequence[str] = ()) -> None:
        self.nodes[name].start(extra)
        self.expected_alive.add(name)

    def kill(self, name: str) -> None:
        self.expected_alive.discard(name)
        self.nodes[name].kill()
        self.result.kills[name] += 1
        if name == "learner":
            self._learner_kill_times.append(time.time())

    def stop(self, name: str, label: str) -> int:
        self.expected_alive.discard(name)
        code = self.nodes[name].terminate()
        self.result.exit_codes[label] = code
        return code

    def execute(self) -> CrashResult:
        try:
            self._schedule()
        finally:
            for node in self.nodes.values():
                node.kill()  # only after an error: every node is stopped by then otherwise
        self.analyse()
        self.result.wall_s = time.monotonic() - self.t0
        return self.result

    def _schedule(self) -> None:
        self.result.demo_steps = record_demos(self.demos)
        self.event(f"demos: {self.result.demo_steps} transitions")
        self.start("learner")
        for aid in ACTORS:
            self.start(aid)
        self.wait_for("the learner to serve, both actors to act and a first checkpoint",
                      lambda: all(self.is_up(n) for n in self.nodes)
                      and self.status("learner").get("last_checkpoint") is not None)
        self.event("all up")

        for cycle in range(self.cycles):
            wait = float(self.rng.uniform(*self.wait_s))
            victim = VICTIMS[int(self.rng.integers(len(VICTIMS)))]
            self.sleep(wait)
            self.kill(victim)
            self.event(f"cycle {cycle + 1}/{self.cycles}: SIGKILL {victim} after {wait:.1f} s")
            if victim == "learner":
                self.archive_log()  # before the restart's recovery and later pruning
                self.check_checkpoints(f"after kill {cycle + 1}")
            self.start(victim, ["--resume"])
            self.wait_for(f"{victim} to come back", lambda v=victim: self.is_up(v))
            self.event(f"{victim} is back (pid {self.nodes[victim].pid})")

        # A clean close spills what is unacked; evaluation-mode restarts deliver it and add
        # no training transitions of their own (see the module docstring).
        for aid in ACTORS:
            self.stop(aid, f"{aid} SIGTERM")
        self.event("actors stopped (SIGTERM)")
        for aid in ACTORS:
            self.start(aid, ["--resume", "--eval", "1000000", "--quiet"])
        self.wait_for("the actors to deliver their recovered sessions",
                      lambda: all(self.is_up(a) and self.status(a).get("transport", {})
                                  .get("recovered_sessions_pending") == 0 for a in ACTORS))
        for aid in ACTORS:
            self.stop(aid, f"{aid} delivery SIGTERM")
        self.event("recovered sessions delivered; actors stopped")
        self.stop("learner", "learner SIGTERM")
        self.archive_log()
        self.event("learner stopped (SIGTERM)")
        self.check_checkpoints("after the final stop")

        self.start("learner", ["--resume"])
        status = self.wait_for("the final learner to restore",
                               lambda: (s := self.status("learner")).get("pid")
                               == self.nodes["learner"].pid and s.get("restored") and s)
        self.result.restored = dict(status["restored"])
        self.result.restored_step = int(status["restored"]["step"])
        self.result.online = int(status["online"])
        self.result.env_steps = int(status["env_steps"])
        self.event(f"restored: {status['restored']}, env_steps {status['env_steps']}")
        self.stop("learner", "final learner SIGTERM")
        self.archive_log()
        self.check_checkpoints("after the restored learner stopped")
        for aid in ACTORS:
            spill = self.run / "actors" / aid / "spill"
            if spill.is_dir():
                self.result.undelivered_spills += [f"{aid}/{p.name}" for p in spill.iterdir()
                                                   if p.is_dir()]

    # -------------------------------------------------------------- checks

    def analyse(self) -> None:
        """The log's history: duplicates, holes, counts; the actors' sessions against it."""
        from hilrl.transport.learner_log import LearnerLog
        from hilrl.transport.outbox import read_segment
        from hilrl.transport.wire import decode

        r = self.result
        seen: dict[Stream, dict[int, int]] = {}  # stream -> {seq: count}
        intervened = 0
        for path in sorted(self.archive.glob("*/*/*.seg*")):
            stream = (path.parent.parent.name, path.parent.name)
            messages, problem = read_segment(path)
            if problem:
                r.log_problems.append(problem)
            records = seen.setdefault(stream, {})
            for m in messages:
                if m.seq in records:
                    r.duplicates.append(f"{stream[0]}/{stream[1]} seq {m.seq}")
                    r.duplicate_transitions += m.count
                    continue
                records[m.seq] = m.count
                intervened += int(np.count_nonzero(decode(list(m.frames)).arrays["intervened"]))
        held: dict[Stream, int] = {}
        for stream, records in sorted(seen.items()):
            expected = 0  # every stream was seen by this log from its first seq
            for seq in sorted(records):
                if seq > expected:
                    r.holes.append(f"{stream[0]}/{stream[1]} seqs [{expected}, {seq})")
                elif seq < expected:  # overlaps the previous record: stored twice
                    r.duplicates.append(f"{stream[0]}/{stream[1]} seq {seq} (overlap)")
                    r.duplicate_transitions += min(expected, seq + records[seq]) - seq
                expected = max(expected, seq + records[seq])
            held[stream] = sum(records.values())
        r.log_streams = len(seen)
        r.log_transitions = sum(held.values())
        r.log_intervened = intervened
        for (actor, _), n in held.items():
            r.transitions_per_actor[actor] = r.transitions_per_actor.get(actor, 0) + n

        # The log directory as the learner left it: what pruning kept must be in the archive.
        log_dir = self.ldir / "log"
        if log_dir.is_dir() and not any(n.running() for n in self.nodes.values()):
            log = LearnerLog.open(log_dir)
            try:
                for rec in log.records():
                    r.kept_log_transitions += rec.count
                    if seen.get((rec.actor, rec.session), {}).get(rec.seq) != rec.count:
                        r.kept_not_in_archive += 1
            finally:
                log.close()

        clean: set[Stream] = set()
        for aid in ACTORS:
            for rec in read_jsonl(self.run / "actors" / aid / "sessions.jsonl"):
                stream = (aid, rec["session"])
                clean.add(stream)
                # The session's process is the last start of this actor before it closed.
                began = max((t for t in self.nodes[aid].start_times if t <= rec["time"]),
                            default=rec["time"])
                kills = sum(began < t < rec["time"] for t in self._learner_kill_times)
                r.sessions.append(SessionCount(aid, rec["session"], int(rec["transitions"]),
                                               held.get(stream, 0), kills))
        for stream, n in sorted(held.items()):
            if stream not in clean:
                r.sessions.append(SessionCount(stream[0], stream[1], None, n))


def run_crash_schedule(run: Path, *, cycles: int, seed: int = 0,
                       wait_s: tuple[float, float] = (2.0, 5.0), demos: Path | None = None,
                       say: Callable[[str], None] = print) -> CrashResult:
    """Run the schedule in ``run`` (a fresh directory) and return what the checks found."""
    return CrashSchedule(run, cycles=cycles, seed=seed, wait_s=wait_s, demos=demos,
                         say=say).execute()

