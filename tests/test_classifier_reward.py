"""The learned reward in the env stack: camera checks, thresholds, streaks, state conditions,
and a whole training run whose only reward is the classifier (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hilrl.config import load_task

ROOT = Path(__file__).resolve().parent.parent
CAMS = ["env.image_size=[64,64]", "env.cameras=[{name: front}, {name: wrist}]",
        "env.policy_cameras=[]", "device.kind=none"]


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory) -> Path:
    """A classifier trained on sim frames labelled by the privileged success."""
    from actor.labels import record_labels
    from hilrl.learning.classifier import train_classifier

    root = tmp_path_factory.mktemp("clf")
    task = load_task(None, [*CAMS, "device.kind=scripted", "device.expert.takeover=always"])
    record_labels(task, root / "labels", 20, steps_after_success=10, progress=False)
    out = root / "pick.hilrl"
    train_classifier([root / "labels"], out, max_epochs=30, progress=False,
                     target_precision=0.95,
                     camera_settings={c.name: {"crop": c.crop, "size": c.size}
                                      for c in task.env.cameras})
    return out


def _stack(classifier_file: Path, *extra: str):
    from actor.env_factory import make_env

    task = load_task(None, [*CAMS, "env.reward=classifier",
                            f"env.classifier.path={classifier_file}", *extra])
    return make_env(task)


def test_classifier_reward_ends_episodes_like_the_sim_success(classifier_file):
    """Driven by the scripted expert, the classifier's verdict follows the sim's."""
    stack = _stack(classifier_file, "env.classifier.consecutive=2", "device.kind=scripted",
                   "device.expert.takeover=always")
    try:
        agree = []
        for seed in range(3):
            obs, info = stack.env.reset(seed=seed)
            assert info["success"] is False
            for _ in range(100):
                obs, reward, terminated, truncated, info = stack.env.step(np.zeros(4))
                assert 0.0 <= info["success_prob"] <= 1.0
                if terminated or truncated:
                    break
            agree.append(terminated and info["scene_success"])
            assert reward == (1.0 if terminated else 0.0)
        assert sum(agree) >= 2  # the classifier says "done" once the cube is really up
    finally:
        stack.close()


def test_classifier_reward_checks_cameras_and_state_conditions(classifier_file):
    from hilrl.learning.classifier import ClassifierError

    with pytest.raises(ClassifierError, match="wrist"):
        _stack(classifier_file, "env.cameras=[{name: front}]")
    with pytest.raises(ClassifierError):
        _stack(classifier_file, "env.image_size=[48,48]")  # frames of another size
    with pytest.raises(ValueError, match="tcp_pose"):
        _stack(classifier_file, "env.classifier.state_condition={tcp_pose: [0, 1]}")
    # A condition that can never hold: no step is ever a success, however sure the net is.
    stack = _stack(classifier_file, "env.classifier.threshold=0.0001",
                   "env.classifier.state_condition={'gripper_width': [5, null]}")
    try:
        stack.env.reset(seed=0)
        for _ in range(5):
            _, reward, terminated, _, info = stack.env.step(np.zeros(4))
            assert not terminated and reward == 0.0 and info["success_prob"] >= 0.0
    finally:
        stack.close()


def test_the_classifier_keeps_its_own_view_whatever_the_policy_sees(classifier_file):
    """Trained on whole 64x64 frames, it keeps judging those while the policy's cameras are
    cropped and resized: its probability is the one of the frame as rendered."""
    from hilrl.learning.classifier import RewardClassifier

    classifier = RewardClassifier.load(classifier_file)
    stack = _stack(classifier_file, "env.cameras=[{name: front, crop: [8, 8, 56, 56], "
                                    "size: [32, 32]}, {name: wrist, size: [16, 16]}]",
                   "device.kind=scripted", "device.expert.takeover=always")
    try:
        obs, _ = stack.env.reset(seed=0)
        assert obs["images"]["front"].shape == (32, 32, 3)
        probabilities = []
        for _ in range(40):
            obs, _, terminated, truncated, info = stack.env.step(np.zeros(4))
            rendered = {cam: stack.world.render(cam) for cam in ("front", "wrist")}
            assert info["success_prob"] == pytest.approx(classifier.probability(rendered),
                                                         abs=1e-6)
            probabilities.append(info["success_prob"])
            if terminated or truncated:
                break
        assert max(probabilities) - min(probabilities) > 0.1  # it watched the scene change
    finally:
        stack.close()


def test_a_missing_or_corrupt_classifier_file_is_a_clear_error(tmp_path):
    from hilrl.learning.classifier import ClassifierError

    with pytest.raises(ClassifierError):
        _stack(tmp_path / "nothing.hilrl")
    bad = tmp_path / "bad.hilrl"
    bad.write_bytes(b"not a classifier")
    with pytest.raises(ClassifierError):
        _stack(bad)


@pytest.mark.slow
@pytest.mark.timeout(3000)  # a hang guard: the labels, the classifier and 12000 update calls
def test_training_with_only_the_classifier_as_reward_still_learns(tmp_path):
    """``train-sim --reward classifier``: labels through the scripted person's SUCCESS button
    and the demos, the classifier, then RL where the sim's success never reaches the learner
    (64x64 cameras the policy does not see); the final policy is judged by the sim's
    privileged success."""
    from actor.labels import record_labels
    from hilrl.cli.train_sim import CLASSIFIER_CAMERAS
    from hilrl.learning.classifier import (
        RewardClassifier,
        binary_metrics,
        load_labelled_frames,
    )

    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "hilrl.cli", "train-sim", "--reward", "classifier",
         "--run-dir", str(run), "--label-episodes", "25", "--classifier-epochs", "40",
         "--max-updates", "12000", "--minutes", "40",  # work in update calls; minutes: a hang
         "--final-eval", "20", "--no-progress", "env.sim.jitter=true",
         "learner.max_updates_per_step=2"],  # and at most 2 per transition the actor sent
        cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert out.returncode in (0, 1), out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads((run / "train_sim.json").read_text())
    # Precision on episodes that neither trained it nor chose its threshold, labelled by the
    # sim's truth (a judge, as everywhere).
    held = load_task(None, [*CLASSIFIER_CAMERAS, "device.expert.takeover=always",
                            "env.sim.jitter=true", "seed=1"])
    record_labels(held, tmp_path / "heldout", 8, steps_after_success=10, progress=False)
    classifier = RewardClassifier.load(run / "classifier.hilrl")
    frames = load_labelled_frames(tmp_path / "heldout", list(classifier.cameras))
    metrics = binary_metrics(classifier.probabilities(frames.images), frames.labels,
                             classifier.threshold)
    assert metrics["precision"] >= 0.9 and metrics["recall"] > 0, metrics
    first = [json.loads(line) for line in
             (run / "actors" / "actor0" / "episodes.jsonl").read_text().splitlines()][:10]
    # 12000 update calls is a short run for a learned reward: "learns" here means clearly
    # above what the untrained policy did on its own.
    untrained = np.mean([e["judged_success"] and not e["interventions"] for e in first])
    assert summary["eval_episodes"] == 20
    assert summary["success_rate"] >= max(0.3, untrained + 0.2), (summary, untrained)
    assert summary["false_success_rate"] is not None, summary


def test_train_sim_labels_a_resized_pixel_task_as_its_classifier_sees_it(tmp_path):
    """Push's CPU pixel task renders at 128x128 and gives the policy 64x64: the learned-reward
    pipeline records labels as rendered, and in RL the classifier judges 128x128 frames
    while the policy gets 64x64 ones from the same render."""
    from actor.env_factory import make_env
    from actor.labels import record_labels
    from hilrl.cli.train_sim import _classifier_defaults, _classifier_view
    from hilrl.envs.spec import env_spec
    from hilrl.learning.classifier import RewardClassifier, train_classifier

    task_file = ROOT / "tasks" / "sim_push_pixels_cpu.yaml"
    overrides = _classifier_defaults(task_file, [])
    task = load_task(task_file, overrides)
    assert task.env.image_size == (128, 128)
    assert env_spec(task, features=False).image_shapes == {c.name: (64, 64, 3)
                                                           for c in task.env.cameras}
    view = _classifier_view(task_file, overrides)
    labels = load_task(task_file, [*overrides, "device.expert.takeover=always", *view])
    record_labels(labels, tmp_path / "labels", 2, steps_after_success=5, progress=False)
    train_classifier([tmp_path / "labels"], tmp_path / "clf.hilrl", max_epochs=1,
                     target_precision=0.5, progress=False)
    assert RewardClassifier.load(tmp_path / "clf.hilrl").cameras == {
        c.name: (128, 128, 3) for c in task.env.cameras}

    rl = load_task(task_file, [*overrides, "env.reward=classifier", "device.kind=none",
                               f"env.classifier.path={tmp_path / 'clf.hilrl'}"])
    stack = make_env(rl)
    try:
        obs, _ = stack.env.reset(seed=0)
        obs, _, _, _, info = stack.env.step(np.zeros(4))
        assert {img.shape for img in obs["images"].values()} == {(64, 64, 3)}
        assert 0.0 <= info["success_prob"] <= 1.0
    finally:
        stack.close()
    # A task whose cameras the policy sees as rendered keeps one view, and its demos.
    unresized = ROOT / "tasks" / "sim_peg_insert_pixels_cpu.yaml"
    assert _classifier_view(unresized, _classifier_defaults(unresized, [])) == []
    cropped = ["env.cameras=[{name: front, crop: [0, 0, 96, 96], size: [48, 48]}]"]
    assert _classifier_view(task_file, cropped) == [
        "env.cameras=[{name: front, crop: [0, 0, 96, 96]}]"]
