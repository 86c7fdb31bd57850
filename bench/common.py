"""What every bench script shares (see ../shared/BENCH.md): machine line, medians, figures."""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# train-sim with the frozen pretrained encoder as its published runs had it (the CPU task
# files' settings before the encoder trained online became their default): RLPD's batch,
# the actor at twice the env's rate. Overrides: they go after every other argument.
FROZEN_ENCODER = ["--encoder", "pretrained"]
FROZEN_SETTINGS = ["learner.batch_size=256", "actor.hz=20"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def jax_backend() -> str:
    try:
        import jax
    except ImportError:
        return "not installed"
    return f"{jax.default_backend()} (jax {jax.__version__})"


def print_machine() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # XLA's flags change what runs (XLA_FLAGS can route convolutions to another library).
    flags = f", XLA_FLAGS={os.environ['XLA_FLAGS']}" if os.environ.get("XLA_FLAGS") else ""
    print(f"machine: {cpu_model()}, {cores} cores, python {platform.python_version()}, "
          f"jax backend: {jax_backend()}{flags}", flush=True)


def median_of(repeats: int, measure: Callable[[], float], label: str, unit: str) -> float:
    """Run ``measure`` ``repeats`` times, print each value and return the median."""
    values = []
    for i in range(repeats):
        values.append(measure())
        print(f"  {label} run {i + 1}/{repeats}: {values[-1]:.3g} {unit}", flush=True)
    return statistics.median(values)


def figure(name: str, value: float, unit: str) -> None:
    print(f"figure {name} {value:.6g} {unit}", flush=True)


def completed_summary(run: Path, returncode: int, started: float) -> dict[str, Any]:
    """RUN/train_sim.json of the ``hilrl train-sim`` that just ran in RUN, or exit.

    train-sim exits 0 (target reached) or 1 (not reached) after a completed run, having
    written the summary last; any other exit, no summary, or a summary from before
    ``started`` (a time.time()) is a run that did not complete: no figure may come from it.
    """
    path = Path(run) / "train_sim.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = None
    if returncode not in (0, 1) or summary is None or summary.get("started", 0) < started:
        state = "no" if summary is None else "a stale"
        raise SystemExit(f"train-sim in {run} did not complete (exit {returncode}, {state} "
                         f"{path.name}): no figures from it")
    return summary


class Nodes:
    """Learner and actor processes of one run on loopback, in a temporary run directory:
    ``start`` launches ``python -m <argv>`` with its output in RUN/<name>.out, ``check``
    stops the bench if one has exited, ``close`` stops them all (SIGTERM, then SIGKILL)."""

    def __init__(self, prefix: str) -> None:
        import tempfile

        from hilrl.cli.train_sim import free_port_pair

        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.run = Path(self._tmp.name)
        self.port = free_port_pair()
        self.learner = f"tcp://127.0.0.1:{self.port}"
        # Overrides that put the learner on this run's ports.
        self.endpoints = [f"learner.bind={self.learner}",
                          f"learner.weights_bind=tcp://127.0.0.1:{self.port + 1}"]
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[Any] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.run / f"{name}.out", "wb")  # noqa: SIM115 - closed in close()
        self._logs.append(out)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", *argv], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out, stderr=subprocess.STDOUT)
        return self.procs[name]

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                print((self.run / f"{name}.out").read_text()[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} exited with {p.returncode}")

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in self._logs:
            f.close()
        self._tmp.cleanup()

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def proc_status(pid: int) -> dict[str, float]:
    """RSS (MB), open file descriptors and threads of a live process (NaN once gone)."""
    out = {"rss": float("nan"), "fds": float("nan"), "threads": float("nan")}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def read_json(path: Path) -> dict:
    """A status file as it is now ({} while it is missing or half written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
