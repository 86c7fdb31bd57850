"""`hilrl report`: plots and a summary of a training run from its JSON-lines logs.

Reads ``RUN/actors/<actor id>/episodes.jsonl`` (one record per finished episode) and
``RUN/learner/metrics.jsonl`` (learner scalars) and writes ``learning_curve.png``,
``learner.png``, ``critic_saliency.png`` (the learner's Grad-CAM of its critic, for image
tasks) and ``summary.json`` (with the false-success count when a simulator judged the
episodes). Figures are drawn with matplotlib's object API on the Agg
canvas, never through pyplot, so this works headless and leaves the caller's backend alone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.reporting.metrics import read_jsonl
from hilrl.storage.fsutil import atomic_write_bytes

EPISODES = "episodes.jsonl"
METRICS = "metrics.jsonl"
DORMANT_NETWORKS = ("encoder", "actor", "critic", "gripper")
CRITIC_SALIENCY = "critic_saliency.png"  # the learner writes it at each checkpoint
RESERVED = ("time", "step", "env_steps")  # metrics.jsonl fields that are not plotted tags


@dataclass
class RunLogs:
    episodes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # actor id -> records
    metrics: list[dict[str, Any]] = field(default_factory=list)
    t0: float = 0.0  # the first record's wall-clock time


@dataclass
class EvalRound:
    actor: str
    env_steps: int
    time: float
    success_rate: float
    episodes: int


def load_run(run_dir: str | os.PathLike[str]) -> RunLogs:
    run_dir = Path(run_dir)
    episode_files = sorted(run_dir.glob(f"actors/*/{EPISODES}"))
    metrics_file = run_dir / "learner" / METRICS
    if not episode_files and not metrics_file.is_file():
        raise ValueError(f"{run_dir}: no training logs found; expected actors/<actor id>/"
                         f"{EPISODES} and/or learner/{METRICS}")
    logs = RunLogs()
    for path in episode_files:
        logs.episodes[path.parent.name] = read_jsonl(path)
    if metrics_file.is_file():
        logs.metrics = read_jsonl(metrics_file)
    times = [r["time"] for records in (*logs.episodes.values(), logs.metrics) for r in records
             if r.get("time") is not None]
    logs.t0 = min(times, default=0.0)
    return logs


def _train(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind", "train") == "train"]


def _intervention_rate(record: dict[str, Any]) -> float:
    return (record.get("interventions") or 0) / record["steps"] if record.get("steps") else 0.0


def eval_rounds(actor: str, records: list[dict[str, Any]]) -> list[EvalRound]:
    """Consecutive eval episodes at the same env_steps are one evaluation round (the policy
    did not train in between)."""
    rounds: list[list[dict[str, Any]]] = []
    previous_kind = None
    for r in records:
        if r.get("kind") == "eval":
            if previous_kind == "eval" and rounds[-1][0]["env_steps"] == r["env_steps"]:
                rounds[-1].append(r)
            else:
                rounds.append([r])
        previous_kind = r.get("kind")
    return [EvalRound(actor, group[0]["env_steps"], group[-1]["time"],
                      float(np.mean([bool(r["success"]) for r in group])), len(group))
            for group in rounds]


def rolling_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return values
    total = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (total[ends] - total[starts]) / (ends - starts)


def summarize(run_dir: str | os.PathLike[str], *, last: int = 20,
              logs: RunLogs | None = None) -> dict[str, Any]:
    """Headline numbers of a run. With several actors, eval rounds are pooled: the final eval
    success rate is that of the most recent round of any actor. Total env steps is the sum of
    each actor's latest count (the learner's count when there are no episode logs)."""
    logs = logs or load_run(run_dir)
    everything = [r for records in logs.episodes.values() for r in records]
    train = sorted(_train(everything), key=lambda r: r["time"])
    rounds = sorted((e for actor, records in logs.episodes.items()
                     for e in eval_rounds(actor, records)), key=lambda e: e.time)
    recent = train[-last:]
    recent_steps = sum(r["steps"] for r in recent)
    if logs.episodes:
        env_steps = sum(max((r["env_steps"] for r in records), default=0)
                        for records in logs.episodes.values())
    else:
        env_steps = max((r["env_steps"] for r in logs.metrics
                         if r.get("env_steps") is not None), default=0)
    rates = [r["rate/critic_updates_per_s"] for r in logs.metrics
             if r.get("rate/critic_updates_per_s") is not None]
    dormant = next((r for r in reversed(logs.metrics) if "dormant/actor" in r), {})
    return {
        "actors": sorted(logs.episodes),
        "train_episodes": len(train),
        "eval_episodes": sum(e.episodes for e in rounds),
        "final_eval_success_rate": rounds[-1].success_rate if rounds else None,
        "best_eval_success_rate": max(e.success_rate for e in rounds) if rounds else None,
        "total_env_steps": env_steps,
        "recent_intervention_rate":  # fraction of steps the human drove, last `last` episodes
            sum(r.get("interventions") or 0 for r in recent) / recent_steps
            if recent_steps else None,
        "learner_steps": max((r["step"] for r in logs.metrics), default=0),
        "critic_updates_per_s": rates[-1] if rates else None,
        # The last record's share of dormant units per network (hilrl.learning.dormant).
        "dormant_ratio": {net: dormant[f"dormant/{net}"] for net in DORMANT_NETWORKS
                          if f"dormant/{net}" in dormant} or None,
        **false_success_counts(train),
    }


def false_success_counts(train: list[dict[str, Any]]) -> dict[str, Any]:
    """With a simulator judging (records with ``false_success``, written by the actor when
    its env has a scene): training episodes the env's reward ended as a success while the
    simulator says they failed (the learned reward's false positives), and their rate. With
    a person reviewing the reward's successes (records with ``rejected``), also how many they
    rejected and how many false successes still reached the learner as successes."""
    judged = [r for r in train if "false_success" in r]
    if not judged:
        return {}
    false = sum(bool(r["false_success"]) for r in judged)
    out = {"false_success_episodes": false, "false_success_rate": false / len(judged),
           "judged_train_success_rate": float(np.mean([bool(r["judged_success"])
                                                       for r in judged]))}
    if any("rejected" in r for r in judged):
        rewarded = sum(bool(r["false_success"]) and not r.get("rejected") for r in judged)
        out.update({"rejected_episodes": sum(bool(r.get("rejected")) for r in judged),
                    "rewarded_false_success_episodes": rewarded,
                    "rewarded_false_success_rate": rewarded / len(judged)})
    return out


def _figure(rows: int, cols: int, width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_learning_curve(logs: RunLogs, path: Path, window: int = 20) -> None:
    fig, axes = _figure(2, 2, 6, 3.5)
    for i, (actor, records) in enumerate(sorted(logs.episodes.items())):
        color = f"C{i % 10}"
        train = _train(records)
        x_steps = [r["env_steps"] for r in train]
        x_minutes = [(r["time"] - logs.t0) / 60 for r in train]
        success = rolling_mean([bool(r["success"]) for r in train], window)
        intervened = rolling_mean([_intervention_rate(r) for r in train], window)
        rounds = eval_rounds(actor, records)
        for col, xs in enumerate((x_steps, x_minutes)):
            if train:
                axes[0, col].plot(xs, success, color=color, label=f"{actor} train")
                axes[1, col].plot(xs, intervened, color=color, label=f"{actor} train")
            # An evaluation-only actor (e.g. the final evaluation of a checkpoint) takes no
            # env steps of its own: it appears on the wall-clock axis only.
            if rounds and (train or col == 1):
                x_eval = ([e.env_steps for e in rounds] if col == 0
                          else [(e.time - logs.t0) / 60 for e in rounds])
                axes[0, col].plot(x_eval, [e.success_rate for e in rounds], "o--", color=color,
                                  label=f"{actor} eval")
    for col, xlabel in enumerate(("env steps (per actor)", "wall-clock minutes")):
        axes[0, col].set_ylabel(f"success rate (train: rolling {window})")
        axes[1, col].set_ylabel("intervention rate")
        axes[1, col].set_xlabel(xlabel)
        for row in range(2):
            axes[row, col].set_ylim(-0.05, 1.05)
            axes[row, col].grid(alpha=0.3)
    if logs.episodes:
        axes[0, 1].legend(fontsize="small")
    fig.savefig(path, dpi=100)


def _group(tag: str) -> str:
    return tag.split("/", 1)[0]


def plot_learner(logs: RunLogs, path: Path) -> None:
    tags = sorted({k for r in logs.metrics for k in r if k not in RESERVED})
    groups: dict[str, list[str]] = {}
    for tag in tags:
        groups.setdefault(_group(tag), []).append(tag)
    cols = min(3, max(len(groups), 1))
    rows = max(math.ceil(len(groups) / cols), 1)
    fig, axes = _figure(rows, cols, 5, 3)
    for ax, (group, members) in zip(axes.flat, groups.items(), strict=False):
        for tag in members:
            points = [(r["step"], r[tag]) for r in logs.metrics
                      if isinstance(r.get(tag), int | float) and not isinstance(r[tag], bool)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=tag.split("/", 1)[1] if "/" in tag else tag)
        ax.set_title(members[0] if len(members) == 1 else group)  # no legend names a lone tag
        ax.set_xlabel("learner step")
        ax.grid(alpha=0.3)
        if len(members) > 1:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(groups):]:
        ax.set_axis_off()
    fig.savefig(path, dpi=100)


def make_report(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                *, window: int = 20) -> list[Path]:
    """Write the plots (only those with data) and ``summary.json`` to ``out_dir`` (default
    ``run_dir/report``); returns the paths written."""
    logs = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if logs.episodes:
        written.append(out / "learning_curve.png")
        plot_learning_curve(logs, written[-1], window)
    if logs.metrics:
        written.append(out / "learner.png")
        plot_learner(logs, written[-1])
    saliency = Path(run_dir) / "learner" / CRITIC_SALIENCY
    if saliency.is_file():  # the learner's, from its last checkpoint
        written.append(out / CRITIC_SALIENCY)
        atomic_write_bytes(written[-1], saliency.read_bytes())
    summary = summarize(run_dir, logs=logs)
    written.append(out / "summary.json")
    atomic_write_bytes(written[-1], json.dumps(summary, indent=2).encode() + b"\n")
    return written
