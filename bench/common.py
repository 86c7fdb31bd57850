"""What every bench script shares (see ../shared/BENCH.md): machine line, medians, figures."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable


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
    print(f"machine: {cpu_model()}, {cores} cores, python {platform.python_version()}, "
          f"jax backend: {jax_backend()}", flush=True)


def median_of(repeats: int, measure: Callable[[], float], label: str, unit: str) -> float:
    """Run ``measure`` ``repeats`` times, print each value and return the median."""
    values = []
    for i in range(repeats):
        values.append(measure())
        print(f"  {label} run {i + 1}/{repeats}: {values[-1]:.3g} {unit}", flush=True)
    return statistics.median(values)


def figure(name: str, value: float, unit: str) -> None:
    print(f"figure {name} {value:.6g} {unit}", flush=True)
