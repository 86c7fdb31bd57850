"""Learner update speed: critic updates/s and achieved GFLOP/s of the jitted SAC/RLPD update.

Each configuration builds an agent, compiles ``sac.update`` once (compile time printed),
then times whole ``update`` calls on a fixed random batch; updates/s counts critic updates
(``utd`` per call). GFLOP per call comes from XLA's cost analysis of the compiled update.
Replay sampling figures come from the same buffer code the learner uses.

    python bench/learner_speed.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import figure, median_of, print_machine  # noqa: E402

from hilrl.agents import sac  # noqa: E402

STATE, ACTION = 14, 4
CAMERAS = ("front", "wrist")


@dataclass(frozen=True)
class Case:
    name: str
    image: int | None = 128  # square image side; None: state only
    batch: int = 256
    ensemble: int = 2
    utd: int = 1
    encoder: str = "conv"
    freeze: bool = False
    features: tuple[int, ...] | None = None  # cached per-camera feature shape


CASES = [
    Case("pix128_b256_e2_u1"),
    Case("pix128_b256_e10_u1", ensemble=10),
    Case("pix128_b256_e2_u4", utd=4),
    Case("pix64_b256_e2_u1", image=64),
    Case("cached_b256_e2_u1", image=None, encoder="features", features=(512,)),
    Case("state_b256_e2_u1", image=None),
    Case("resnet10_frozen_b256_e2_u1", encoder="resnet10", freeze=True),
    Case("resnet10_cached_b256_e2_u1", image=None, encoder="features", features=(4, 4, 512)),
]


def make_obs(case: Case, n: int, rng: np.random.Generator) -> dict:
    obs: dict = {"state": rng.standard_normal((n, STATE)).astype(np.float32)}
    if case.image is not None:
        obs["images"] = {c: rng.integers(0, 256, (n, case.image, case.image, 3), np.uint8)
                         for c in CAMERAS}
    if case.features is not None:
        obs["features"] = {c: rng.standard_normal((n, *case.features)).astype(np.float32)
                           for c in CAMERAS}
    return obs


def make_batch(case: Case, rng: np.random.Generator) -> dict:
    n = case.batch * case.utd
    return {
        "obs": make_obs(case, n, rng),
        "next_obs": make_obs(case, n, rng),
        "action": rng.uniform(-1, 1, (n, ACTION)).astype(np.float32),
        "reward": (rng.random(n) < 0.1).astype(np.float32),
        "mask": np.ones(n, np.float32),
    }


def measure(case: Case, repeats: int, calls: int) -> tuple[float, float]:
    """(critic updates/s median, GFLOP per update call)."""
    rng = np.random.default_rng(0)
    config = sac.SACConfig(num_critics=case.ensemble, num_min_critics=2, utd=case.utd,
                           encoder=case.encoder, freeze_backbone=case.freeze)
    state = sac.create(config, make_obs(case, 1, rng), ACTION, seed=0)
    batch = jax.device_put(make_batch(case, rng))
    start = time.perf_counter()
    compiled = sac.update.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    gflop = float(cost.get("flops", 0.0)) / 1e9
    state, _ = jax.block_until_ready(compiled(state, batch))  # warm-up
    print(f"{case.name}: compiled in {time.perf_counter() - start:.1f} s, "
          f"{gflop:.1f} GFLOP per update call", flush=True)

    def run() -> float:
        nonlocal state
        t = time.perf_counter()
        for _ in range(calls):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        return calls * case.utd / (time.perf_counter() - t)

    return median_of(repeats, run, case.name, "updates/s"), gflop


def replay_figures(quick: bool) -> None:
    from replay_speed import BATCH, CAMERAS as REPLAY_CAMERAS, EPISODE, filled_buffer, \
        ms_per_call  # noqa: I001

    rng = np.random.default_rng(0)
    buf = filled_buffer(2_000 if quick else 10_000, rng)
    sample_rng = np.random.default_rng(1)
    ms = median_of(3, lambda: ms_per_call(lambda: buf.sample(BATCH, sample_rng), 20),
                   "replay sample", "ms")
    frame_set = sum(int(np.prod(s)) for s in REPLAY_CAMERAS.values())
    per_slot = buf.nbytes / buf.capacity
    small = per_slot - frame_set  # state, action, reward, flags, extras, valid
    print(f"replay: {per_slot:.0f} bytes per slot = frame set {frame_set} + small fields "
          f"{small:.0f}; {EPISODE}-step episodes use {(EPISODE + 1) / EPISODE:.3f} slots each")
    figure(f"replay_sample_ms.b{BATCH}_pix128x2", ms, "ms")
    figure("replay_bytes_ratio", per_slot / (frame_set + small), "ratio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed calls")
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    args = parser.parse_args()
    print_machine()
    repeats, calls = (3, 1) if args.quick else (3, 3)
    print(f"timing {calls} update call(s) per run, median of {repeats} runs per configuration")
    results = {}
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        rate, gflop = measure(case, repeats, calls)
        results[case.name] = (rate, gflop * rate / case.utd)  # GFLOP/s achieved
    for name, (rate, achieved) in results.items():
        print(f"  {name}: {rate:.3g} critic updates/s, {achieved:.1f} GFLOP/s achieved")
    if not args.only:
        replay_figures(args.quick)
    for name, (rate, achieved) in results.items():
        figure(f"updates_per_s.{name}", rate, "updates/s")
        figure(f"gflops.{name}", achieved, "GFLOP/s")

if __name__ == "__main__":
    main()
