"""Soak: a learner and 2 actors on the pixel task for 2 hours, watched for growth.

Real processes on loopback, the simulated arm with two 128x128 cameras, the scripted
person stepping in on stalls, the learner training from pixels the whole time and
checkpointing every 1,000 updates. Every minute it samples each process's resident memory
(RSS), open file descriptors and threads. The replay buffers are small enough to be full
before the window that is measured begins, the last hour (the last half of a run shorter
than 75 minutes), so filling them explains no growth there: what grows is a leak.

- ``soak_learner_rss_growth_mb_last_hour``, ``soak_actor_rss_growth_mb_last_hour`` (the
  worst actor): RSS at the end minus at the window's start (each the median of 3 samples);
- ``soak_learner_fds_growth_last_hour``, ``soak_learner_threads_growth_last_hour``, and the
  actors' (worst of the two);
- ``soak_learner_updates``, ``soak_transitions``: the work done, for scale.

With a window other than an hour (``--quick``: 15 minutes, window 7.5), ``last_hour`` in
the names reads ``last_<W>min``.

    python bench/soak.py [--quick] [--minutes M]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, Nodes, figure, print_machine, proc_status, read_json  # noqa: E402

TASK = ROOT / "tasks" / "sim_pick_cube_pixels.yaml"
ACTORS = 2
COMMON = ["env.image_size=[128,128]", "env.hz=10", "actor.hz=10", "learner.batch_size=32",
          "agent.encoder=conv", "agent.conv_features=[16,16,16,16]", "agent.bottleneck_dim=64",
          "agent.utd=1", "learner.min_transitions=200", "learner.checkpoint_every=1000"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 minutes instead of 120")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    args = parser.parse_args()
    minutes = args.minutes or (15.0 if args.quick else 120.0)
    window = 60.0 if minutes >= 75 else minutes / 2
    # Full halfway to the window: 2 actors at 10 Hz bring ~1,200 transitions a minute.
    capacity = int(min(20_000, 1_200 * (minutes - window) / 2))
    # The demo buffer gets the person's steps: ~1,500 in the first minutes, then a few a
    # minute. A quarter of the online buffer was still filling in the 2-hour run's last
    # hour (4,478 to 4,535 of 5,000 slots, ~6 MB); a tenth is full within minutes.
    demo = capacity // 10
    sizes = [f"learner.online_capacity={capacity}", f"learner.demo_capacity={demo}"]
    print_machine()
    print(f"learner + {ACTORS} actors at 10 Hz, two 128x128 cameras each, {minutes:g} min; "
          f"replay {capacity} online + {demo} demo slots; growth measured over the "
          f"last {window:g} min", flush=True)

    samples: list[dict] = []
    with Nodes("hilrl-soak-") as nodes:
        nodes.start("learner", ["learner", "--task", str(TASK), "--run-dir", str(nodes.run),
                                "--quiet", *COMMON, *sizes, *nodes.endpoints])
        for i in range(ACTORS):
            nodes.start(f"actor{i}", ["actor", "--task", str(TASK), "--run-dir", str(nodes.run),
                                      "--learner", nodes.learner, "--quiet", f"actor.id=actor{i}",
                                      f"seed={i}", *COMMON])
        t0 = time.monotonic()
        while time.monotonic() - t0 < minutes * 60:
            time.sleep(args.every)
            nodes.check()
            status = read_json(nodes.run / "learner" / "status.json")
            sample = {"t": (time.monotonic() - t0) / 60,
                      "step": status.get("step", 0), "env_steps": status.get("env_steps", 0),
                      "online": status.get("online", 0), "demo": status.get("demo", 0),
                      **{name: proc_status(p.pid) for name, p in nodes.procs.items()}}
            samples.append(sample)
            print(f"  {sample['t']:5.1f} min: step {sample['step']}, online "
                  f"{sample['online']}, demo {sample['demo']} | " + " | ".join(
                      f"{name} {sample[name]['rss']:.0f} MB {sample[name]['fds']:.0f} fds "
                      f"{sample[name]['threads']:.0f} threads" for name in nodes.procs),
                  flush=True)

    last = samples[-1]
    start = next(i for i, s in enumerate(samples) if s["t"] >= last["t"] - window - 1e-9)
    first = samples[start]
    # Each end of the window is the median of 3 samples: a checkpoint in progress shows as
    # a few threads more for a moment, which is no growth.
    ends = (samples[start:start + 3], samples[-3:])
    # Full: its transitions stopped growing (a full ring holds fewer transitions than slots,
    # one slot per episode being its last observation).
    full = (last["online"] - first["online"] <= 0.02 * capacity
            and last["demo"] - first["demo"] <= 0.02 * demo)
    print(f"window {first['t']:.1f} -> {last['t']:.1f} min: online buffer "
          f"{first['online']} -> {last['online']} transitions in {capacity} slots, demo "
          f"{first['demo']} -> {last['demo']} in {demo} ("
          f"{'full' if full else 'NOT full: their filling is part of the growth'})")
    suffix = "last_hour" if window == 60 else f"last_{window:g}min"
    actors = [f"actor{i}" for i in range(ACTORS)]

    def growth(name: str, key: str) -> float:
        at = [statistics.median(s[name][key] for s in end) for end in ends]
        return at[1] - at[0]

    for key, unit, label in (("rss", "MB", "rss_growth_mb"), ("fds", "count", "fds_growth"),
                             ("threads", "count", "threads_growth")):
        figure(f"soak_learner_{label}_{suffix}", growth("learner", key), unit)
        figure(f"soak_actor_{label}_{suffix}", max(growth(a, key) for a in actors), unit)
    figure("soak_learner_updates", last["step"], "update calls")
    figure("soak_transitions", last["env_steps"], "transitions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
