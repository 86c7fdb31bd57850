"""What every bench script shares (see ../shared/BENCH.md): machine line, medians, figures."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
