"""The person's check on the learned reward (actor.reward_review): a classifier success the
scripted person sees is false is rejected through the device, reaches the learner as no
success, is kept as failure frames, and the classifier is retrained on them in the
background and swapped in; a true one is confirmed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hilrl.config import load_task

ROOT = Path(__file__).resolve().parent.parent
TINY = ["agent.hidden_dims=[16,16]", "agent.latent_dim=16", "agent.proprio_hidden=[16]",
        "agent.conv_features=[4,4]", "agent.conv_strides=[2,2]"]
FRONT = ["env.image_size=[32,32]", "env.cameras=[{name: front}]", "env.policy_cameras=[]"]


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory) -> Path:
    """A real classifier on device-path labels (tiny: its accuracy does not matter here)."""
    from actor.labels import record_labels
    from hilrl.learning.classifier import train_classifier

    root = tmp_path_factory.mktemp("review")
    task = load_task(None, [*FRONT, "device.kind=scripted", "device.expert.takeover=always"])
    record_labels(task, root / "labels", 3, source="device", steps_after_success=5,
                  progress=False)
    out = root / "clf.hilrl"
    train_classifier([root / "labels"], out, max_epochs=2, target_precision=0.5,
                     config=_config(), progress=False)
    return out


def _config():
    from hilrl.learning.classifier import ClassifierConfig

    return ClassifierConfig(pooling="max_mean", conv_features=(8, 8), conv_strides=(2, 2))


def _actor(tmp_path: Path, classifier: Path, *extra: str):
    from actor.node import Actor
    from hilrl.learning import sac

    # A threshold no frame fails: every episode ends at its first step as a "success",
    # with the cube on the table: a false success each time.
    task = load_task(None, [*TINY, *FRONT, "env.reward=classifier",
                            f"env.classifier.path={classifier}", "env.classifier.threshold=1e-30",
                            "device.kind=scripted", "device.expert.takeover=never", *extra])
    node = Actor(task, tmp_path / "run", quiet=True, learner=False)
    state = sac.create(task.agent, node.spec.example_observation(), node.spec.action_size)
    node.policy.set_weights(1, sac.policy(state).params)
    sent: list[dict] = []
    node._send = sent.append  # what would go to the learner
    return node, sent


def test_a_rejected_success_reaches_the_learner_as_none_and_retrains_the_classifier(
        tmp_path, classifier_file):
    from hilrl.learning.classifier import load_labelled_frames
    from hilrl.reporting.metrics import read_jsonl
    from hilrl.storage.dataset import read_dataset

    node, sent = _actor(tmp_path, classifier_file, "env.classifier.retrain_every=2",
                        "env.classifier.retrain_epochs=1", "env.classifier.consecutive=2")
    try:
        original = node.review.wrapper.classifier
        results = [node.episode("train") for _ in range(3)]
        # Every episode was ended by the classifier after 2 steps and rejected.
        assert [r.steps for r in results] == [2, 2, 2] and not any(r.success for r in results)
        assert [(t["reward"], t["terminated"], t["truncated"]) for t in sent] == \
            [(0.0, False, False), (0.0, False, True)] * 3
        records = read_jsonl(node.episodes_log)
        assert [(r["rejected"], r["false_success"], r["success"]) for r in records] == \
            [(True, True, False)] * 3
        assert node.status()["rejections"] == 3
        # The classifier's view of each episode's frames, all failures.
        kept = read_dataset(tmp_path / "run" / "actors" / "actor0" / "rejected_labels")
        assert len(kept) == 3
        for ep in kept:
            assert ep.images["front"].shape == (3, 32, 32, 3) and not ep.extras["success"].any()
        # The second rejection started a retrain; wait for it to end, then the next episode
        # judges with it.
        job = node.review._retrain
        job.join()
        assert job.error is None
        out = job.out
        node.episode("train")
        assert node.review.current == out and node.review.wrapper.classifier is not original
        status = node.status()
        assert status["classifier_retrains"] == 1 and status["classifier"] == out.name
        retrained = node.review.wrapper.classifier.meta
        assert str(tmp_path / "run" / "actors" / "actor0" / "rejected_labels") in \
            retrained["data"]["paths"]
        # Its data: the original frames plus at least the 2 x 2 rejected ones (a third
        # rejection may have been written before it read them).
        original_frames = len(load_labelled_frames([classifier_file.parent / "labels"]))
        seen = retrained["metrics"]["n_train_frames"] + retrained["metrics"]["n_val_frames"]
        assert original_frames + 4 <= seen <= original_frames + 6
    finally:
        node.close()


def test_a_true_success_is_confirmed_and_stands(tmp_path, classifier_file, monkeypatch):
    """The cube held up in the air: the person confirms at once (SUCCESS), the success
    stands, and nothing is kept or retrained."""
    from robot_drivers.sim.tasks.pick_cube import PickCube

    monkeypatch.setattr(PickCube, "success", lambda self, world: True)
    node, sent = _actor(tmp_path, classifier_file)
    try:
        t0 = node.clock.steps
        result = node.episode("train")
        assert result.success and result.steps == 1
        assert [(t["reward"], t["terminated"]) for t in sent] == [(1.0, True)]
        assert node.clock.steps - t0 == 2  # one env step, one held step for the verdict
        assert node.review.rejections == 0
        assert not (tmp_path / "run" / "actors" / "actor0" / "rejected_labels").exists()
    finally:
        node.close()


def test_frames_that_cannot_be_kept_lose_no_rejection(tmp_path, classifier_file):
    """A labels directory that cannot be written (here a file in its place, as a full disk
    would fail it): the rejection still reaches the learner and is counted; the actor runs
    on."""
    node, sent = _actor(tmp_path, classifier_file)
    try:
        (tmp_path / "run" / "actors" / "actor0" / "rejected_labels").write_text("in the way")
        results = [node.episode("train") for _ in range(2)]
        assert not any(r.success for r in results)
        assert [(t["reward"], t["terminated"]) for t in sent] == [(0.0, False)] * 2
        assert node.status()["rejections"] == 2 and node.review._retrain is None
    finally:
        node.close()


def test_the_emergency_stop_works_during_the_review(tmp_path, classifier_file, monkeypatch):
    """ESTOP read while the arm holds for the verdict stops the loop like ESTOP mid-episode;
    the waiting transition is sent unreviewed, as the classifier said."""
    from hilrl.envs.wrappers import EmergencyStop
    from hilrl.interfaces import Button, Command

    node, sent = _actor(tmp_path, classifier_file)
    try:
        read = type(node.stack.device).read
        monkeypatch.setattr(type(node.stack.device), "read", lambda self: (
            Command(buttons=frozenset({Button.ESTOP})) if self._review_reads >= 0
            else read(self)))
        with pytest.raises(EmergencyStop, match="review"):
            node.episode("train")
        assert [(t["reward"], t["terminated"]) for t in sent] == [(1.0, True)]
    finally:
        node.close()


def test_the_human_like_person_answers_late_and_no_person_means_no_review(
        tmp_path, classifier_file):
    from actor.env_factory import make_env
    from actor.reward_review import RewardReview
    from hilrl.interfaces import Button

    task = load_task(None, [*FRONT, "env.reward=classifier",
                            f"env.classifier.path={classifier_file}", "device.kind=scripted",
                            "device.expert.style=human", "device.expert.reaction_steps=2"])
    stack = make_env(task)
    try:
        stack.env.reset(seed=0)
        stack.device.review()
        assert [stack.device.read().buttons for _ in range(3)] == \
            [frozenset(), frozenset(), frozenset({Button.REJECT})]
        stack.env.reset(seed=1)  # a new episode: driving again, no verdict
        assert Button.REJECT not in stack.device.read().buttons
    finally:
        stack.close()
    quiet = load_task(None, [*FRONT, "env.reward=classifier", "device.kind=none",
                             f"env.classifier.path={classifier_file}"])
    stack = make_env(quiet)
    try:
        assert RewardReview.for_stack(stack, quiet.env.classifier, tmp_path, print) is None
    finally:
        stack.close()


def test_train_classifier_like_retrains_on_the_same_data_view_and_network(
        tmp_path, classifier_file):
    from hilrl.learning.classifier import RewardClassifier

    out = tmp_path / "again.hilrl"
    # The original's own data given again is not counted twice.
    labels = classifier_file.parent / "labels"
    proc = subprocess.run([sys.executable, "-m", "hilrl.cli", "train-classifier", "--like",
                           str(classifier_file), "--data", str(labels), "--out", str(out),
                           "--epochs", "1", "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    old, new = RewardClassifier.load(classifier_file), RewardClassifier.load(out)
    assert new.config == old.config and new.cameras == old.cameras
    assert new.camera_settings == old.camera_settings
    assert new.meta["data"] == old.meta["data"]
    assert new.meta["target_precision"] == old.meta["target_precision"] == 0.5
    gone = subprocess.run([sys.executable, "-m", "hilrl.cli", "train-classifier", "--like",
                           str(tmp_path / "missing.hilrl"), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert gone.returncode == 2 and "does not exist" in gone.stderr
