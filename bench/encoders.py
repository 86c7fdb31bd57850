"""Encoder recipes compared on the suite's tasks (issue 20): does an encoder see the task, on
scenes it never trained on?

    python bench/encoders.py [--quick] [--tasks pick_cube,peg_insert,push]
                             [--candidates final_pose,grasp_point,none,tcn] [--seeds N]
                             [--first-seed K]
                             [--human oracle|human] [--rl] [--out DIR]
    python bench/encoders.py --probe RUN [RUN ...] [--probe-episodes N]

Per task and seed: the scripted person records the demos through the device path (ended by
its SUCCESS button, as ``train-sim --reward classifier`` does) and, on other scenes,
labelled episodes (``record-labels --source device``). Each candidate recipe (``CANDIDATES``:
the hindsight label of the encoder's read-out, ``pretrain.readout``, or the label-free
time-contrastive loss) is pretrained on the demos; its success head is then scored on the
labelled episodes' frames (ROC-AUC), the issue's sign that the features see the task and not
the demos. ``--rl`` also runs ``train-sim --pixels --reward classifier`` with each
candidate (30 minutes each; long).

The default encoder, trained online by the critic, has nothing to pretrain and no success
head: its RL runs are ``bench/learning_curves.py --configs pixels_learned_online``
(``online.<task>_success``), and ``--probe`` scores finished runs of it instead. From each
RUN's newest checkpoint the critic's encoder gives per-camera image features
(``hilrl.learning.probe``; the proprio is not in them). A linear probe is fitted on the run's
own labelled episodes (``labels/``, the classifier's data: frames the critic never trained
on) and scored by ROC-AUC on ``--probe-episodes`` labelled episodes of new scenes, recorded
as train-sim records its labels and kept in ``RUN/probe_labels``. The same probe on the
proprio alone is the control: what the hand's pose tells without the cameras.

Figures: ``<candidate>.<task>_heldout_auc`` per candidate, and with ``--rl``
``<candidate>.<task>_success`` and ``<candidate>.<task>_minutes``; with ``--probe``
``encoder_heldout_auc.<task>`` (the default encoder) and ``proprio_heldout_auc.<task>``.
Medians over seeds or runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    FROZEN_ENCODER,
    FROZEN_SETTINGS,
    completed_summary,
    figure,
    print_machine,
)

from hilrl.learning.pretrain_config import READOUTS  # noqa: E402

TASKS = ("pick_cube", "peg_insert", "push")
# Each recipe's pretrain overrides. Every one also has the BC and success heads.
CANDIDATES = {**{r: [f"pretrain.readout={r}"] for r in READOUTS},
              "tcn": ["pretrain.readout=none", "pretrain.contrastive_weight=1"]}


def hilrl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "hilrl.cli", *args], cwd=ROOT, check=True)


def record(task: Path, seed: int, human: str, demos: int, labels: int, out: Path) -> None:
    person = [f"seed={seed}", f"device.expert.style={human}"]
    hilrl("record-demos", "--task", str(task), "--episodes", str(demos), "--out",
          str(out / "demos"), *person, "env.reward=none", "device.expert.takeover=always")
    hilrl("record-labels", "--task", str(task), "--source", "device", "--episodes", str(labels),
          "--clumsy-fraction", "0.3", "--boundary-fraction", "0.5", "--quiet", "--out",
          str(out / "labels"), *person, "device.expert.takeover=always")


def heldout_auc(task: Path, candidate: str, seed: int, data: Path, steps: int | None) -> float:
    from hilrl.config import load_task
    from hilrl.learning.pretrain import pretrain_from_demos

    cfg = load_task(task, [*CANDIDATES[candidate], f"pretrain.seed={seed}",
                           *([f"pretrain.steps={steps}"] if steps else [])])
    t0 = time.monotonic()
    m = pretrain_from_demos(cfg, [data / "demos"], data / f"encoder_{candidate}.hilrl",
                            progress=False, heldout=[data / "labels"])
    fit = "" if m["readout"] == "none" else f", read-out fit {100 * m['object_rmse_m']:.1f} cm"
    print(f"  {candidate}: held-out success ROC-AUC {m['heldout_success_auc']:.3f} on "
          f"{m['heldout_frames']:.0f} frames{fit}, BC MSE {m['bc_mse']:.4f}, "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    return float(m["heldout_success_auc"])


def rl_run(task: Path, candidate: str, seed: int, human: str, data: Path) -> dict:
    """train-sim with this candidate on the demos recorded above, in a run of its own; its
    summary (``train_minutes``: from its start, labels and classifier included)."""
    import shutil

    run = data / f"rl_{candidate}"
    shutil.copytree(data / "demos", run / "demos")
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "hilrl.cli", "train-sim", "--pixels", "--task",
                           str(task), *FROZEN_ENCODER, "--reward", "classifier", "--minutes",
                           "30", "--target", "0.95", "--stop-rounds", "3", "--no-progress",
                           "--run-dir", str(run), f"seed={seed}", f"device.expert.style={human}",
                           *CANDIDATES[candidate], *FROZEN_SETTINGS], cwd=ROOT)
    return completed_summary(run, proc.returncode, started)


# Far from train-sim's seeds (a run's seed and the scenes its seed derives).
HELDOUT_SEED = 90_000


def task_label(name: str) -> str:
    """sim_pick_cube_pixels_cpu -> pick_cube, as the other benches name tasks."""
    for part in ("_pixels_cpu", "_pixels"):
        name = name.removesuffix(part)
    return name.removeprefix("sim_")


def record_heldout(run: Path, episodes: int, seed: int) -> Path:
    out = run / "probe_labels"
    if not (out / "meta.json").exists():
        subprocess.run([sys.executable, "-m", "hilrl.cli", "record-labels", "--task",
                        str(run / "learner" / "task.json"), "--source", "device", "--episodes",
                        str(episodes), "--clumsy-fraction", "0.3", "--boundary-fraction", "0.5",
                        "--quiet", "--out", str(out), f"seed={seed}",
                        "device.expert.takeover=always"], cwd=ROOT, check=True)
    return out


def probe_run(run: Path, episodes: int) -> tuple[str, float, float]:
    """(task, image-feature AUC, proprio AUC) for one run."""
    from actor.policy import find_checkpoints
    from hilrl.config import load_task
    from hilrl.envs.spec import env_spec
    from hilrl.learning import sac
    from hilrl.learning.classifier import roc_auc
    from hilrl.learning.pretrain import heldout_frames
    from hilrl.learning.probe import fit_logistic, image_features, probe_scores
    from hilrl.storage.checkpoint import Checkpointer
    from hilrl.storage.dataset import iter_dataset

    if not (run / "labels" / "meta.json").exists():
        raise SystemExit(f"{run}: no labels/ to fit the probe on; probe runs of train-sim "
                         "--pixels --reward classifier")
    task = load_task(run / "learner" / "task.json")
    spec = env_spec(task)
    template = sac.create(task.agent, spec.example_observation(), spec.action_size, seed=0)
    with Checkpointer(find_checkpoints(run), read_only=True) as ckpt:
        step, state, _ = ckpt.restore_latest_valid(template)

    cameras, shape = sorted(spec.image_shapes), next(iter(spec.image_shapes.values()))
    train_eps = list(iter_dataset(run / "labels"))
    seen = {ep.meta.get("seed") for path in ("demos", "labels")
            for ep in iter_dataset(run / path)}
    held_eps = list(iter_dataset(record_heldout(run, episodes, HELDOUT_SEED + task.seed)))
    train = heldout_frames(train_eps, cameras, shape)
    test = heldout_frames(held_eps, cameras, shape, skip_seeds=seen)

    def features(data: Any) -> np.ndarray:
        return image_features(state, {"state": data.proprio, "images": data.images})

    auc = {}
    for name, fx in (("images", features), ("proprio", lambda d: d.proprio)):
        fit = fit_logistic(fx(train), train.success > 0.5)
        auc[name] = roc_auc(probe_scores(fit, fx(test)), test.success > 0.5)
    print(f"{run}: checkpoint {step}; probe fitted on {train.size} frames of "
          f"{len(train_eps)} labelled episodes, scored on {test.size} frames "
          f"({int(test.success.sum())} success) of {len(held_eps)} new scenes: ROC-AUC "
          f"{auc['images']:.3f} from the image features, {auc['proprio']:.3f} from the "
          f"proprio alone", flush=True)
    return task_label(task.name), auc["images"], auc["proprio"]


def probe(runs: list[Path], episodes: int) -> None:
    results = defaultdict(list)
    for run in runs:
        name, images, proprio = probe_run(run, episodes)
        results[name].append((images, proprio))
    for name, rows in results.items():
        n = len(rows)
        figure(f"encoder_heldout_auc.{name}", statistics.median(r[0] for r in rows),
               f"ROC-AUC, linear probe on the online encoder's image features (median of {n})")
        figure(f"proprio_heldout_auc.{name}", statistics.median(r[1] for r in rows),
               f"ROC-AUC, the same probe on the proprio alone (median of {n})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one task, fewer demos and steps")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds K, K+1, ... (to add seeds)")
    p.add_argument("--human", default="oracle", choices=("oracle", "human"))
    p.add_argument("--rl", action="store_true", help="also train-sim each candidate (long)")
    p.add_argument("--out", default=None, help="keep the data here (default: a temp dir)")
    p.add_argument("--probe", nargs="+", type=Path, metavar="RUN",
                   help="instead: probe these finished train-sim runs of the default encoder")
    p.add_argument("--probe-episodes", type=int, default=10, metavar="N",
                   help="held-out labelled episodes to record per probed run (default: 10)")
    args = p.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    print_machine()
    if args.probe:
        probe(args.probe, args.probe_episodes)
        return
    tasks = ["peg_insert"] if args.quick else args.tasks.split(",")
    candidates = args.candidates.split(",")
    unknown = sorted(set(candidates) - set(CANDIDATES))
    if unknown:
        p.error(f"unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    seeds = 1 if args.quick else args.seeds
    demos, labels, steps = (4, 4, 200) if args.quick else (10, 10, None)
    root = Path(args.out or tempfile.mkdtemp(prefix="hilrl-encoders-"))
    for task_name in tasks:
        task = ROOT / "tasks" / f"sim_{task_name}_pixels_cpu.yaml"
        auc: dict[str, list[float]] = {c: [] for c in candidates}
        rl: dict[str, list[dict]] = {c: [] for c in candidates}
        for seed in range(args.first_seed, args.first_seed + seeds):
            data = root / f"{task_name}_{args.human}_seed{seed}"
            print(f"{task_name}, seed {seed}, {args.human} person: {demos} demos and {labels} "
                  f"labelled episodes of other scenes in {data}", flush=True)
            record(task, seed, args.human, demos, labels, data)
            for c in candidates:
                auc[c].append(heldout_auc(task, c, seed, data, steps))
                if args.rl:
                    rl[c].append(rl_run(task, c, seed, args.human, data))
        for c in candidates:
            figure(f"{c}.{task_name}_heldout_auc", statistics.median(auc[c]),
                   f"ROC-AUC (median of {seeds})")
            if args.rl:
                figure(f"{c}.{task_name}_success",
                       statistics.median(s["success_rate"] for s in rl[c]), "fraction")
                figure(f"{c}.{task_name}_minutes",
                       statistics.median(s["train_minutes"] for s in rl[c]),
                       "min (from train-sim's start, labels and classifier included; the "
                       "demos are shared and not)")


if __name__ == "__main__":
    main()
