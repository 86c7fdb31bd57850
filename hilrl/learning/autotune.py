"""Pick the fastest of several implementations of one computation by timing them once on this
machine, and remember the answer on disk.

Which implementation wins depends on the machine, the library versions and the shapes (a
convolution as a patches-matmul beats XLA:CPU's own at the small pixel encoder's shapes and
may lose at a ResNet's), so no fixed rule holds. ``fastest`` times each candidate the first
time a key is seen and stores the seconds in ``<cache dir>/autotune.json`` under a
fingerprint of the machine; later processes read the answer instead of timing again.

The cache directory is ``$HILRL_CACHE_DIR``, else ``~/.cache/hilrl``. Deleting the file
makes the next run time again. A file that cannot be read or written costs only time: the
choice is then made (and kept) in memory, with a warning.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax

log = logging.getLogger(__name__)

_lock = threading.Lock()
_memory: dict[str, dict[str, float]] = {}
_loaded_from: Path | None = None
_seen: dict[str, tuple[str, dict[str, float]]] = {}  # every key asked for in this process


def cache_path() -> Path:
    root = os.environ.get("HILRL_CACHE_DIR") or Path.home() / ".cache" / "hilrl"
    return Path(root) / "autotune.json"


@functools.cache
def machine() -> str:
    """What a timing is valid for: the CPU, its core count, the backend, JAX's version and
    XLA's flags (they can hand convolutions to another library)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    device = jax.devices()[0]
    flags = os.environ.get("XLA_FLAGS", "").strip()
    return (f"{cpu} x{os.cpu_count()} | {device.platform} {device.device_kind} | "
            f"jax {jax.__version__}" + (f" | XLA_FLAGS {flags}" if flags else ""))


def seconds(fn: Callable, *args: object, repeats: int = 3, budget: float = 2.0) -> float:
    """Best of up to ``repeats`` timed calls after one untimed (compiling) call, stopping
    once ``budget`` seconds are spent: the minimum is what the implementation costs, the
    rest is other processes' load, and a call of seconds needs no second opinion."""
    jax.block_until_ready(fn(*args))
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        took = time.perf_counter() - t
        best, spent = min(best, took), spent + took
        if spent > budget:
            break
    return best


def _read(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{machine: {key: {candidate: seconds}}}, keeping only entries of that form."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("autotune: ignoring unreadable %s (%s); timing again", path, e)
        return {}
    if not isinstance(data, dict):
        return {}
    return {here: {key: times for key, times in entries.items()
                   if isinstance(times, dict) and all(
                       isinstance(t, int | float) for t in times.values())}
            for here, entries in data.items() if isinstance(entries, dict)}


def _write(path: Path, here: str, entries: Mapping[str, dict[str, float]]) -> None:
    # Merge with what other processes wrote meanwhile, then replace atomically.
    from hilrl.storage.fsutil import atomic_write_bytes

    try:
        data = _read(path)
        data[here] = {**data.get(here, {}), **entries}
        atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())
    except OSError as e:
        log.warning("autotune: cannot write %s (%s); the choice is kept for this process only",
                    path, e)


def fastest(key: str, candidates: Mapping[str, Callable[[], float]]) -> str:
    """The name of the fastest candidate for ``key``; each candidate, called, returns its
    seconds (see ``seconds``). Timed once per machine and key, then read from the cache.

    Safe to call while JAX traces a function: the timing runs in a thread of its own, where
    no trace is active, so its computations execute instead of being staged into the trace.
    """
    global _loaded_from
    path = cache_path()
    with _lock:
        if _loaded_from != path:
            _memory.clear()
            _memory.update(_read(path).get(machine(), {}))
            _loaded_from = path
        times = _memory.get(key)
    if times is None or not set(candidates) <= set(times):
        # Timed without the lock: a candidate may itself ask for another key.
        log.info("autotune: timing %s for %s (once on this machine)", sorted(candidates), key)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            times = {name: pool.submit(run).result() for name, run in candidates.items()}
        with _lock:
            _memory[key] = times
            _write(path, machine(), {key: times})
    pick = min(candidates, key=lambda name: times[name])
    with _lock:
        _seen[key] = pick, times
    return pick


def seen() -> dict[str, tuple[str, dict[str, float]]]:
    """Every key this process asked for: (the pick, each candidate's seconds)."""
    with _lock:
        return dict(_seen)
