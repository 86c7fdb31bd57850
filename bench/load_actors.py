"""Load: one learner and 4 actors at 10 Hz, each with two 128x128 cameras, for 10 minutes.

Real processes on loopback, the simulated arm, the scripted human stepping in on stalls.
Every 10 s the script samples each process's resident memory and the status files. What it
checks is that nothing grows without bound: a process's memory may grow by what its
configured buffers legitimately fill (the learner's replay holds every transition it
received), and no queue (actor outbox, unsent messages) keeps growing.

- ``load_actor_overrun_p99_ms``: worst actor's p99 lateness of a control step.
- ``load_actor_overrun_rate``: worst actor's fraction of steps that ended after their deadline.
- ``load_actor_rss_growth_mb``: worst actor's RSS growth from the first minute to the end.
- ``load_learner_unexplained_growth_mb``: learner RSS growth from the first minute to the
  end, minus the bytes the replay buffers' new transitions account for (online, and the
  demo buffer, which also keeps every intervened step).
- ``load_max_unacked_messages``: the largest actor outbox backlog seen after the first minute.
- ``load_transitions_per_s``: transitions the learner took in per second.

    python bench/load_actors.py [--quick] [--minutes M] [--actors N]

--quick: 2 minutes. The learner trains from pixels at batch 32 the whole time, so the
actors compete with it for the two cores, as they would on a laptop.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, Nodes, figure, print_machine, proc_status, read_json  # noqa: E402

TASK = ROOT / "tasks" / "sim_pick_cube_pixels.yaml"
COMMON = ["env.image_size=[128,128]", "env.hz=10", "actor.hz=10", "learner.batch_size=32",
          "agent.encoder=conv", "agent.conv_features=[16,16,16,16]", "agent.bottleneck_dim=64",
          "agent.utd=1", "learner.min_transitions=200", "learner.checkpoint_every=100000"]
SAMPLE_EVERY_S = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 minutes instead of 10")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--actors", type=int, default=4)
    args = parser.parse_args()
    minutes = args.minutes or (2.0 if args.quick else 10.0)
    print_machine()
    print(f"learner + {args.actors} actors at 10 Hz, two 128x128 cameras each, "
          f"{minutes:g} min", flush=True)

    samples: list[dict] = []
    t0 = time.monotonic()
    with Nodes("hilrl-load-") as nodes:
        learner = nodes.start("learner", ["learner", "--task", str(TASK), "--run-dir",
                                          str(nodes.run), "--quiet", *COMMON, *nodes.endpoints])
        actors = [nodes.start(f"actor{i}", [
            "actor", "--task", str(TASK), "--run-dir", str(nodes.run), "--learner",
            nodes.learner, "--quiet", f"actor.id=actor{i}", f"seed={i}", *COMMON])
            for i in range(args.actors)]
        while time.monotonic() - t0 < minutes * 60:
            time.sleep(SAMPLE_EVERY_S)
            nodes.check()
            ls = read_json(nodes.run / "learner" / "status.json")
            acts = [read_json(nodes.run / "actors" / f"actor{i}" / "status.json")
                    for i in range(args.actors)]
            sample = {"t": time.monotonic() - t0,
                      "learner_rss": proc_status(learner.pid)["rss"],
                      "actor_rss": [proc_status(p.pid)["rss"] for p in actors],
                      "online": ls.get("online", 0), "demo": ls.get("demo", 0),
                      "env_steps": ls.get("env_steps", 0),
                      "step": ls.get("step", 0),
                      "unacked": [a.get("transport", {}).get("outbox_pending_messages", 0)
                                  for a in acts],
                      "overrun_p99": [a.get("overrun_ms_p99", 0.0) for a in acts],
                      "overrun_rate": [a.get("overrun_rate", 0.0) for a in acts]}
            samples.append(sample)
            print(f"  {sample['t']:5.0f} s: learner {sample['learner_rss']:.0f} MB, "
                  f"step {sample['step']}, online {sample['online']}, demo "
                  f"{sample['demo']} | actors "
                  f"{', '.join(f'{r:.0f}' for r in sample['actor_rss'])} MB, unacked "
                  f"{sample['unacked']}, overrun p99 "
                  f"{', '.join(f'{v:.0f}' for v in sample['overrun_p99'])} ms", flush=True)

    warm = next((s for s in samples if s["t"] >= 60.0), samples[0])
    last = samples[-1]
    later = [s for s in samples if s["t"] >= warm["t"]]
    # Bytes per stored transition: two 128x128x3 frames, stored once per step (next_obs is
    # the next slot), plus small fields.
    per_transition_mb = (2 * 128 * 128 * 3 + 256) / 2**20
    stored = (last["online"] - warm["online"]) + (last["demo"] - warm["demo"])
    replay_growth = stored * per_transition_mb
    seconds = last["t"] - warm["t"]
    print(f"from {warm['t']:.0f} s to {last['t']:.0f} s: learner RSS "
          f"{warm['learner_rss']:.0f} -> {last['learner_rss']:.0f} MB while the replay "
          f"buffers took {stored} transitions ({replay_growth:.0f} MB)")
    figure("load_actor_overrun_p99_ms", max(last["overrun_p99"]), "ms")
    figure("load_actor_overrun_rate", max(last["overrun_rate"]), "fraction")
    figure("load_actor_rss_growth_mb",
           max(b - a for a, b in zip(warm["actor_rss"], last["actor_rss"], strict=True)), "MB")
    figure("load_learner_unexplained_growth_mb",
           last["learner_rss"] - warm["learner_rss"] - replay_growth, "MB")
    figure("load_max_unacked_messages", max(max(s["unacked"]) for s in later), "count")
    figure("load_transitions_per_s", (last["env_steps"] - warm["env_steps"]) / max(seconds, 1),
           "1/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
