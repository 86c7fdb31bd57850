"""Learner update speed: critic updates/s and achieved GFLOP/s of the jitted SAC/RLPD update.

Each configuration builds an agent, compiles ``sac.update`` once (compile time printed),
then times whole ``update`` calls on a fixed random batch; updates/s counts critic updates
(``utd`` per call). GFLOP per call comes from XLA's cost analysis of the compiled update.
The ``.conv_lax`` / ``.conv_matmul`` cases time the same update with each convolution
implementation of ``hilrl.learning.conv`` forced everywhere; the plain case runs ``auto``,
which picks per network, input shape and use whichever was faster on this machine. The
table at the end lists every network the cases met, each implementation's seconds (forward
only and parameter gradients) and the pick. Replay figures are bench/replay_speed.py's.

Frozen encoders have one path in hilrl (``env.frozen_encoder``): the actor runs the encoder
once per frame and its features travel as state, so the learner trains a state-only agent.
The ``*cached*`` cases measure exactly that update, over the state plus a feature vector of
the encoder's size. ``resnet10_frozen`` measures the alternative the one path avoids: the
same update with a frozen ResNet-10 run on the batch's (randomly shifted) frames inside the
jitted call, its flattened maps appended to the state.

    python bench/learner_speed.py [--quick] [--only NAME ...] [--breakdown]
    python bench/learner_speed.py --devices N [--quick] [--only NAME]

``--devices N`` times one case (``pix128_b256_e2_u1`` unless ``--only`` names another) with
its batch on 1 device and split over N (``learner.devices``): figures
``learner_updates_per_s.devices_1`` and ``_N``. On a CPU with one device it runs with N
forced host devices, which share the same cores: the figure then shows what the split path
costs, not what N GPUs gain.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import figure, median_of, print_machine  # noqa: E402

from hilrl.learning import data_parallel, sac  # noqa: E402

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
    # A frozen encoder's per-camera output shape: its features, flattened, ride in the state
    # (what env.frozen_encoder gives the learner). None: no frozen encoder.
    features: tuple[int, ...] | None = None
    frozen_in_update: bool = False  # run the frozen ResNet-10 on the frames in the update
    conv_impl: str = "auto"  # hilrl.learning.conv: "auto" (timed per network) | "lax" | "matmul"
    devices: int = 1  # the batch split over this many devices (hilrl.learning.data_parallel)


CASES = [
    Case("pix128_b256_e2_u1"),
    Case("pix128_b256_e10_u1", ensemble=10),
    Case("pix128_b256_e2_u4", utd=4),
    Case("pix128_b256_e2_u1.conv_lax", conv_impl="lax"),
    Case("pix128_b256_e2_u1.conv_matmul", conv_impl="matmul"),
    Case("pix64_b256_e2_u1", image=64),
    Case("cached_b256_e2_u1", image=None, features=(512,)),
    Case("state_b256_e2_u1", image=None),
    # ResNet-10 at 128x128 gives a 4x4x512 map per camera.
    Case("resnet10_frozen_b256_e2_u1", features=(4, 4, 512), frozen_in_update=True),
    Case("resnet10_frozen_b256_e2_u1.conv_lax", features=(4, 4, 512), frozen_in_update=True,
         conv_impl="lax"),
    Case("resnet10_frozen_b256_e2_u1.conv_matmul", features=(4, 4, 512),
         frozen_in_update=True, conv_impl="matmul"),
    Case("resnet10_cached_b256_e2_u1", image=None, features=(4, 4, 512)),
]


def state_size(case: Case) -> int:
    """The agent's state: proprio plus every camera's flattened frozen features."""
    per_camera = int(np.prod(case.features)) if case.features is not None else 0
    return STATE + len(CAMERAS) * per_camera


def make_obs(case: Case, n: int, rng: np.random.Generator) -> dict:
    """A batch as the replay buffer gives it (for ``frozen_in_update``: proprio + frames)."""
    size = STATE if case.frozen_in_update else state_size(case)
    obs: dict = {"state": rng.standard_normal((n, size)).astype(np.float32)}
    if case.image is not None:
        obs["images"] = {c: rng.integers(0, 256, (n, case.image, case.image, 3), np.uint8)
                         for c in CAMERAS}
    return obs


def agent_obs(case: Case, n: int, rng: np.random.Generator) -> dict:
    """What the agent reads: with a frozen encoder, the state alone (features inside)."""
    if case.features is None:
        return make_obs(case, n, rng)
    return {"state": rng.standard_normal((n, state_size(case))).astype(np.float32)}


def frozen_resnet10_update(conv_impl: str) -> tuple[Callable, object]:
    """``(update(state, batch, params), params)``: DrQ shifts and a frozen ResNet-10 on the
    frames of obs and next_obs, flattened maps appended to the state, then ``sac.update`` of
    the state-only agent -- one jitted call."""
    from hilrl.learning.networks import make_backbone

    backbone, preprocess = make_backbone("resnet10", conv_impl=conv_impl)
    params = backbone.init(jax.random.PRNGKey(0), preprocess(jnp.zeros((1, 128, 128, 3),
                                                                        jnp.uint8)))

    def encode(obs: dict, key: jax.Array, params: object) -> dict:
        parts = [obs["state"]]
        for i, cam in enumerate(CAMERAS):
            images = sac.random_shift(obs["images"][cam], jax.random.fold_in(key, i), 4)
            fmap = jax.lax.stop_gradient(backbone.apply(params, preprocess(images)))
            parts.append(fmap.reshape(fmap.shape[0], -1))
        return {"state": jnp.concatenate(parts, axis=-1)}

    @jax.jit
    def update(state: sac.SACState, batch: dict, params: object) -> tuple:
        k_obs, k_next = jax.random.split(jax.random.fold_in(state.rng, 1))
        batch = {**batch, "obs": encode(batch["obs"], k_obs, params),
                 "next_obs": encode(batch["next_obs"], k_next, params)}
        return sac.update(state, batch)

    return update, params


def make_batch(case: Case, rng: np.random.Generator) -> dict:
    n = case.batch * case.utd
    return {
        "obs": make_obs(case, n, rng),
        "next_obs": make_obs(case, n, rng),
        "action": rng.uniform(-1, 1, (n, ACTION)).astype(np.float32),
        "reward": (rng.random(n) < 0.1).astype(np.float32),
        "mask": np.ones(n, np.float32),
    }


def measure(case: Case, repeats: int, calls: int, min_seconds: float) -> tuple[float, float]:
    """(critic updates/s median, GFLOP per update call)."""
    rng = np.random.default_rng(0)
    config = sac.SACConfig(num_critics=case.ensemble, num_min_critics=2, utd=case.utd,
                           encoder=case.encoder, conv_impl=case.conv_impl)
    parallel = data_parallel.local(case.devices, case.batch)
    state = parallel.replicate(sac.create(config, agent_obs(case, 1, rng), ACTION, seed=0))
    batch = parallel.shard(make_batch(case, rng))
    update, extra = sac.update, ()
    if case.frozen_in_update:
        fn, params = frozen_resnet10_update(case.conv_impl)
        update, extra = fn, (parallel.replicate(params),)
    start = time.perf_counter()
    compiled = update.lower(state, batch, *extra).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    gflop = float(cost.get("flops", 0.0)) / 1e9
    state, _ = jax.block_until_ready(compiled(state, batch, *extra))  # warm-up
    print(f"{case.name}: compiled in {time.perf_counter() - start:.1f} s, "
          f"{gflop:.1f} GFLOP per update call", flush=True)

    def run() -> float:
        # At least `calls` calls and at least min_seconds: a fast update (state-only, ~10 ms)
        # timed over one call measures mostly noise.
        nonlocal state
        t, n = time.perf_counter(), 0
        while n < calls or time.perf_counter() - t < min_seconds:
            state, metrics = compiled(state, batch, *extra)
            jax.block_until_ready(metrics)
            n += 1
        return n * case.utd / (time.perf_counter() - t)

    return median_of(repeats, run, case.name, "updates/s"), gflop


def matmul_gflops(n: int = 2048) -> float:
    """The reference rate: a square float32 matmul, the best this CPU does."""
    a = jax.device_put(np.ones((n, n), np.float32))
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))

    def run() -> float:
        t = time.perf_counter()
        for _ in range(5):
            out = f(a)
        jax.block_until_ready(out)
        return 5 * 2 * n**3 / (time.perf_counter() - t) / 1e9

    return median_of(3, run, f"float32 matmul {n}x{n}", "GFLOP/s")


def breakdown(batch: int = 256) -> None:
    """Where a 128x128 pixel update's time goes: per conv layer of the default encoder
    over one batch of both cameras, building the patches vs the matmul, forward only."""
    from hilrl.learning.conv import patches

    enc = sac.make_nets(sac.SACConfig(), ACTION).encoder
    x = jax.device_put(np.random.default_rng(0).integers(
        0, 256, (2 * batch, 128, 128, 3), np.uint8))
    print(f"encoder forward over {2 * batch} images of 128x128 (2 cameras x batch {batch}):")
    for i, (feats, stride) in enumerate(zip(enc.conv_features, enc.conv_strides, strict=True)):
        k = x.shape[-1] * 9
        make = jax.jit(lambda x, s=stride: patches(x, (3, 3), s).astype(np.float32))
        cols = jax.block_until_ready(make(x))
        w = jax.device_put(np.ones((k, feats), np.float32))
        mm = jax.jit(lambda c, w: c.reshape(-1, c.shape[-1]) @ w)
        t_patch = median_of(3, partial(_seconds, make, x), f"layer {i + 1} patches", "s")
        t_mm = median_of(3, partial(_seconds, mm, cols, w), f"layer {i + 1} matmul", "s")
        flop = 2 * cols.size * feats
        print(f"layer {i + 1}: {x.shape[1]}x{x.shape[2]}x{x.shape[3]} -> "
              f"{cols.shape[1]}x{cols.shape[2]}x{feats}: patches {1e3 * t_patch:.0f} ms "
              f"({cols.nbytes / 1e6:.0f} MB), matmul {1e3 * t_mm:.0f} ms "
              f"({flop / t_mm / 1e9:.0f} GFLOP/s)", flush=True)
        x = jax.block_until_ready(jax.nn.relu(mm(cols, w).reshape(*cols.shape[:3], feats)))


def _seconds(f, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed calls")
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the pixel encoder's layers (patches vs matmul)")
    parser.add_argument("--devices", type=int, metavar="N",
                        help="instead of the table: one case (--only, default "
                        f"{DEVICES_CASE}) on 1 device and with its batch split over N")
    args = parser.parse_args()
    if args.devices:
        force_host_devices(args.devices)
    # Compiling the pixel updates takes 5-35 s each; later runs reuse them from disk.
    jax.config.update("jax_compilation_cache_dir", os.environ.get(
        "JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "hilrl-jax")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    print_machine()
    if args.breakdown:
        breakdown()
    repeats, calls = (3, 1) if args.quick else (3, 3)
    print(f"timing at least {calls} update call(s) and {1 if args.quick else 3} s per run, "
          f"median of {repeats} runs per configuration")
    if args.devices:
        name = (args.only or [DEVICES_CASE])[0]
        case = next(c for c in CASES if c.name == name)
        rates = {n: measure(replace(case, name=f"{name} on {n} device(s)", devices=n), repeats,
                            calls, 1.0 if args.quick else 3.0)[0] for n in (1, args.devices)}
        platform = jax.devices()[0].platform
        kind = " (forced host devices sharing this CPU's cores)" if platform == "cpu" else ""
        print(f"{name}, batch split over {args.devices} {platform} devices{kind}")
        for n, rate in rates.items():
            figure(f"learner_updates_per_s.devices_{n}", rate, "critic updates/s")
        figure(f"learner_devices_speedup.devices_{args.devices}",
               rates[args.devices] / rates[1], f"x (devices_{args.devices} / devices_1)")
        return
    reference = matmul_gflops()
    results = {}
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        rate, gflop = measure(case, repeats, calls, 1.0 if args.quick else 3.0)
        results[case.name] = (rate, gflop * rate / case.utd)  # GFLOP/s achieved
    for name, (rate, achieved) in results.items():
        print(f"  {name}: {rate:.3g} critic updates/s, {achieved:.1f} GFLOP/s achieved = "
              f"{100 * achieved / reference:.0f}% of the matmul rate")
    figure("matmul_gflops.f32_2048", reference, "GFLOP/s")
    for name, (rate, achieved) in results.items():
        figure(f"updates_per_s.{name}", rate, "updates/s")
        figure(f"gflops.{name}", achieved, "GFLOP/s")
        figure(f"matmul_fraction.{name}", achieved / reference, "ratio")
    lax, mm = (results.get(f"pix128_b256_e2_u1.conv_{i}") for i in ("lax", "matmul"))
    if lax and mm:
        figure("conv_matmul_speedup.pix128_b256_e2_u1", mm[0] / lax[0],
               "x (critic updates/s, conv as matmuls / XLA's lax.conv)")
    print_conv_choices()


DEVICES_CASE = "pix128_b256_e2_u1"


def force_host_devices(n: int) -> None:
    """On a CPU with fewer than ``n`` devices, run this script again with XLA splitting the
    CPU into ``n`` host devices (it must know before JAX starts), so the multi-device path
    runs; they share the same cores, so the figure shows the path's cost, not a speedup."""
    if len(jax.devices()) >= n:
        return
    if jax.default_backend() != "cpu":
        raise SystemExit(f"--devices {n}: only {len(jax.devices())} {jax.default_backend()} "
                         "device(s) here")
    flag = f"--xla_force_host_platform_device_count={n}"
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def print_conv_choices() -> None:
    """Each conv network and input shape the cases met: ms per call of each implementation,
    forward only and parameter gradients, and the pick of ``conv_impl="auto"``."""
    from hilrl.learning import autotune

    rows = sorted(autotune.seen().items())
    if not rows:
        return
    print("conv networks (settings at input shape, use): ms per call by implementation -> pick")
    for key, (pick, times) in rows:
        ms = ", ".join(f"{impl} {1e3 * t:.1f}" for impl, t in sorted(times.items()))
        print(f"  {key}: {ms} -> {pick}")

if __name__ == "__main__":
    main()
