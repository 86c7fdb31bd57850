"""`hilrl report` on synthetic logs: plots that read back, a summary that matches the data."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from hilrl.cli import main
from hilrl.reporting.metrics import append_jsonl
from hilrl.reporting.report import make_report, summarize

T0 = 1_700_000_000.0
EVAL_EVERY = 10  # train episodes between eval rounds
EVAL_ROUND = 4  # episodes per eval round


def _episodes(actor: int, n_train: int, rng: np.random.Generator) -> list[dict]:
    records, env_steps, t = [], 0, T0 + 7 * actor  # actors finish at distinct times
    for i in range(n_train):
        steps = int(rng.integers(20, 60))
        env_steps += steps
        t += steps / 10
        success = bool(rng.random() < i / n_train)
        records.append({"kind": "train", "episode": i, "env_steps": env_steps, "steps": steps,
                        "success": success, "return": float(success),
                        "interventions": int(rng.integers(0, steps // 2)),
                        "policy_version": i, "time": t,
                        "time_to_success_s": steps / 10 if success else None})
        if (i + 1) % EVAL_EVERY == 0:
            for j in range(EVAL_ROUND):
                t += 3
                success = bool(rng.random() < i / n_train)
                records.append({"kind": "eval", "episode": j, "env_steps": env_steps,
                                "steps": 30, "success": success, "return": float(success),
                                "interventions": 0, "policy_version": i, "time": t,
                                "time_to_success_s": 3.0 if success else None})
    return records


def _metrics(n: int) -> list[dict]:
    return [{"time": T0 + 5 * i, "step": 100 * i, "env_steps": 300 * i,
             "loss/critic": 1 / (i + 1), "loss/actor": -0.1 * i, "q/mean": 0.2 * i,
             "temperature": None if i == 0 else 0.1, "rate/critic_updates_per_s": 40.0 + i,
             "buffer/online": 100 * i, "actor/actor0/intervention_rate": 0.5,
             "dormant/actor": 0.3 - 0.01 * i, "dormant/critic": 0.01 * i,
             "dormant/encoder": 0.05}
            for i in range(n)]


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, dict[str, list[dict]], list[dict]]:
    rng = np.random.default_rng(0)
    episodes = {"actor0": _episodes(0, 45, rng), "actor1": _episodes(1, 33, rng)}
    metrics = _metrics(25)
    run_dir = tmp_path / "run"
    for actor, records in episodes.items():
        for r in records:
            append_jsonl(run_dir / "actors" / actor / "episodes.jsonl", r)
    for r in metrics:
        append_jsonl(run_dir / "learner" / "metrics.jsonl", r)
    return run_dir, episodes, metrics


def _expected_summary(episodes: dict[str, list[dict]], metrics: list[dict]) -> dict:
    train = sorted((r for rs in episodes.values() for r in rs if r["kind"] == "train"),
                   key=lambda r: r["time"])
    rounds = []  # (time of the round's last episode, success rate)
    for records in episodes.values():
        evals = [r for r in records if r["kind"] == "eval"]
        for k in range(0, len(evals), EVAL_ROUND):
            group = evals[k:k + EVAL_ROUND]
            assert len({r["env_steps"] for r in group}) == 1
            rounds.append((group[-1]["time"], np.mean([r["success"] for r in group])))
    rounds.sort()
    last20 = train[-20:]
    return {
        "actors": sorted(episodes),
        "train_episodes": len(train),
        "eval_episodes": sum(r["kind"] == "eval" for rs in episodes.values() for r in rs),
        "final_eval_success_rate": rounds[-1][1],
        "best_eval_success_rate": max(rate for _, rate in rounds),
        "total_env_steps": sum(rs[-1]["env_steps"] for rs in episodes.values()),
        "recent_intervention_rate":
            sum(r["interventions"] for r in last20) / sum(r["steps"] for r in last20),
        "learner_steps": metrics[-1]["step"],
        "critic_updates_per_s": metrics[-1]["rate/critic_updates_per_s"],
        "dormant_ratio": {net: metrics[-1][f"dormant/{net}"]
                          for net in ("actor", "critic", "encoder")},
    }


def _check_png(path: Path) -> None:
    assert path.stat().st_size > 0
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_report_plots_and_summary(run, tmp_path: Path) -> None:
    run_dir, episodes, metrics = run
    paths = make_report(run_dir)
    out = run_dir / "report"
    assert paths == [out / "learning_curve.png", out / "learner.png", out / "summary.json"]
    for path in paths[:2]:
        _check_png(path)
    expected = _expected_summary(episodes, metrics)
    summary = json.loads(paths[-1].read_text())
    assert summary.keys() == expected.keys()
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value), key
    assert summarize(run_dir) == summary


def test_report_with_only_one_kind_of_log(run, tmp_path: Path) -> None:
    run_dir, episodes, _ = run
    (run_dir / "learner" / "metrics.jsonl").unlink()
    paths = make_report(run_dir, tmp_path / "only_episodes")
    assert [p.name for p in paths] == ["learning_curve.png", "summary.json"]
    summary = json.loads(paths[-1].read_text())
    assert summary["learner_steps"] == 0 and summary["critic_updates_per_s"] is None
    assert summary["dormant_ratio"] is None

    learner_only = tmp_path / "learner_only"
    for r in _metrics(3):
        append_jsonl(learner_only / "learner" / "metrics.jsonl", r)
    paths = make_report(learner_only)
    assert [p.name for p in paths] == ["learner.png", "summary.json"]
    _check_png(paths[0])
    summary = json.loads(paths[-1].read_text())
    assert summary["train_episodes"] == 0 and summary["final_eval_success_rate"] is None
    assert summary["total_env_steps"] == _metrics(3)[-1]["env_steps"]


def test_missing_logs_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"episodes\.jsonl and/or learner/metrics\.jsonl"):
        make_report(tmp_path)
    with pytest.raises(ValueError, match="no training logs"):
        make_report(tmp_path / "does-not-exist")


def test_cli_report(run, tmp_path: Path, capsys) -> None:
    run_dir, episodes, metrics = run
    out = tmp_path / "out"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("learning_curve.png", "learner.png", "summary.json"):
        assert str(out / name) in printed
    assert f"train_episodes: {_expected_summary(episodes, metrics)['train_episodes']}" in printed

    assert main(["report", str(tmp_path / "empty")]) == 2
    captured = capsys.readouterr()
    assert "hilrl: error:" in captured.err and "Traceback" not in captured.err
