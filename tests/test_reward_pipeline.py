"""The learned reward as the only reward (``hilrl train-sim --reward classifier``): the
scripted person's SUCCESS button, labels through the device path, the simulator's success
kept to judging (the false-success count), and the whole pipeline on a tiny configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hilrl.config import load_task

ROOT = Path(__file__).resolve().parent.parent
FRONT = ["env.image_size=[32,32]", "env.cameras=[{name: front}]", "env.policy_cameras=[]"]


def test_the_scripted_person_holds_success_exactly_while_it_sees_the_task_done_and_device_labels_mark_it(  # noqa: E501
        tmp_path, monkeypatch):
    """Every read of the scripted person: SUCCESS is held iff the cube is clearly lifted
    (the sim's success with a person's margin) at that moment, never while the sim says it
    failed. Labels recorded with ``--source device`` are those presses, each on the frame
    the person saw, and the button never ends a labelling episode. In a boundary episode the
    person backs off after each success and does it again."""
    from actor.labels import record_labels
    from hilrl.interfaces import Button
    from hilrl.storage.dataset import read_dataset
    from robot_drivers.devices.scripted import ScriptedExpert
    from robot_drivers.sim.tasks.pick_cube import CLEAR_LIFT, CUBE_HALF_SIZE

    reads: list[tuple[bool, bool, bool]] = []  # (SUCCESS held, sim success, lifted 7 cm)
    read = ScriptedExpert.read

    def logged(self):
        success = self.world.success()
        clearly = self.world.object_position()[2] > CUBE_HALF_SIZE + 0.05 + CLEAR_LIFT
        command = read(self)
        reads.append((Button.SUCCESS in command.buttons, success, clearly))
        return command

    monkeypatch.setattr(ScriptedExpert, "read", logged)
    task = load_task(None, [*FRONT, "device.kind=scripted", "device.expert.takeover=always",
                            "env.max_episode_steps=60"])
    # steps_after_success past the time limit: held to the end (test_labels checks the end).
    counts = record_labels(task, tmp_path / "labels", 3, source="device", clumsy_fraction=0.34,
                           boundary_fraction=0.5, steps_after_success=60, progress=False)
    held, success, clearly = np.array(reads).T
    np.testing.assert_array_equal(held, clearly)  # exactly on the steps where it is clear
    assert held.any() and not held.all() and not (held & ~success).any()
    assert (success & ~held).any()  # lifted, but not yet by the margin
    episodes = read_dataset(tmp_path / "labels")
    assert [ep.length for ep in episodes] == [60, 60, 60]  # the button ended none of them
    assert [ep.meta["boundary"] for ep in episodes] == [False, True, False]
    for ep, pressed in zip(episodes, held.reshape(3, 60), strict=True):
        # Frame t is judged by the read made seeing it: step t + 1's.
        np.testing.assert_array_equal(ep.extras["success"][:-1], pressed[1:])
    assert counts["success"] > 0 and counts["failure"] > 0
    straight, boundary, clumsy = (ep.extras["success"].astype(int) for ep in episodes)
    # Done once, the cube stays lifted; in the boundary episode it goes down below the
    # success height again and again (the near misses) and back up.
    assert straight.any() and not np.diff(straight[straight.argmax():]).any()
    assert (np.diff(boundary) == -1).sum() >= 2 and (np.diff(boundary) == 1).sum() >= 3
    assert not clumsy.any()  # the random walk it only watched


@dataclass
class FakeClassifier:
    """Stands in for a trained RewardClassifier: always the same probability."""

    p: float
    cameras: tuple[str, ...] = ("front",)
    camera_settings: dict = None  # type: ignore[assignment]
    threshold: float = 0.5

    def __post_init__(self) -> None:
        self.camera_settings = {}

    def check_cameras(self, shapes) -> None:
        return None

    def probability(self, images) -> float:
        return self.p


def _classifier_stack(monkeypatch, p: float):
    from actor.env_factory import make_env
    from hilrl.learning.classifier import RewardClassifier

    monkeypatch.setattr(RewardClassifier, "load", staticmethod(lambda path: FakeClassifier(p)))
    task = load_task(None, [*FRONT, "device.kind=none", "env.reward=classifier",
                            "env.classifier.path=fake.hilrl"])
    return task, make_env(task)


def _lift_cube(world, z: float = 0.5) -> None:
    """Put the cube high in the air: the sim's success holds for the next two steps."""
    import mujoco

    from robot_drivers.sim.tasks.pick_cube import CUBE_HALF_SIZE

    joint = world.model.joint("cube")
    adr, dof = joint.qposadr[0], joint.dofadr[0]
    xy = world.object_position()[:2]
    world.data.qpos[adr:adr + 7] = [xy[0], xy[1], max(z, CUBE_HALF_SIZE), 1, 0, 0, 0]
    world.data.qvel[dof:dof + 6] = 0.0
    mujoco.mj_forward(world.model, world.data)


class _Steps:
    def __init__(self) -> None:
        self.steps = []

    def on_reset(self, obs) -> None:
        return None

    def on_step(self, step) -> None:
        self.steps.append(step)

    def on_end(self, result) -> None:
        self.result = result


def _run(stack, until_steps: int, lifted: bool):
    from actor.loop import Idle, run_episode
    from actor.node import SceneJudge

    def reset(seed: int):
        obs, _ = stack.env.reset(seed=seed)
        if lifted:
            _lift_cube(stack.world)
        return obs

    judge, steps = SceneJudge(), _Steps()
    run_episode(stack.env, Idle(stack.env.action_space), 0, [judge, steps], kind="train",
                reset=reset, until=lambda step: step.index + 1 >= until_steps)
    return judge, steps


def test_the_learner_bound_transition_is_independent_of_the_scene_success(monkeypatch,
                                                                          tmp_path):
    """A classifier that never fires: reward 0 and no termination although the sim says
    success; the transition the actor sends is the same whatever the scene says. One that
    always fires ends the episode with the cube on the table: a false success."""
    from actor.node import learner_transition
    from hilrl.envs.spec import env_spec

    task, stack = _classifier_stack(monkeypatch, p=0.0)
    try:
        judge, seen = _run(stack, 2, lifted=True)
    finally:
        stack.close()
    spec = env_spec(task)
    for step in seen.steps:
        assert step.info["scene_success"] and not step.info["success"]
        assert step.reward == 0.0 and not step.terminated and not step.success
        sent = learner_transition(step, spec)
        step.info["scene_success"] = False
        flipped = learner_transition(step, spec)
        assert sent.keys() == flipped.keys() == {"obs", "action", "reward", "terminated",
                                                 "truncated", "intervened", "next_obs",
                                                 "extras"}
        assert sent["extras"] == flipped["extras"] == {"grasp_penalty": 0.0}
        assert (sent["reward"], sent["terminated"]) == (flipped["reward"],
                                                        flipped["terminated"]) == (0.0, False)
        assert sent["obs"]["images"] == {}  # the classifier's camera is not the policy's
    assert judge.verdict() == {"judged_success": True, "false_success": False}

    task, stack = _classifier_stack(monkeypatch, p=1.0)
    try:
        judge, seen = _run(stack, 5, lifted=False)
    finally:
        stack.close()
    last = seen.steps[-1]
    assert len(seen.steps) == 1 and last.terminated and last.reward == 1.0
    assert not last.info["scene_success"] and seen.result.success
    assert judge.verdict() == {"judged_success": False, "false_success": True}

    # The frames it fired on are kept, one PNG per camera, to see what fooled it.
    import cv2

    from actor.node import Actor, _Bookkeeping

    actor = SimpleNamespace(dir=tmp_path, counts={"train_episodes": 0},
                            _record=lambda *a: None)
    actor._save_false_success = lambda *a: Actor._save_false_success(actor, *a)
    keeper = _Bookkeeping(actor, "train", 7, None)
    keeper.judge = judge
    keeper.on_end(seen.result)
    frames = last.next_obs["images"]
    assert frames and sorted(p.name for p in (tmp_path / "false_successes").iterdir()) == \
        sorted(f"train_00007_{cam}.png" for cam in frames)
    for cam, frame in frames.items():
        saved = cv2.imread(str(tmp_path / "false_successes" / f"train_00007_{cam}.png"))
        np.testing.assert_array_equal(saved[..., ::-1], frame)


def _step(index: int, *, scene: bool, success: bool = False, terminated: bool = False,
          button: bool = False):
    from actor.loop import Step

    info = {"scene_success": scene, "success": success, "success_button": button}
    return Step(index, {}, np.zeros(4), float(terminated), terminated, False, {}, info, False,
                success or button)


@pytest.mark.parametrize("steps, verdict", [
    # The classifier ends the episode, the cube is on the table: a false success.
    ([dict(scene=False), dict(scene=False, success=True, terminated=True)], (False, True)),
    # The classifier ends it once the cube is up: a true success.
    ([dict(scene=True), dict(scene=True, success=True, terminated=True)], (True, False)),
    # The person's button ended it: not the classifier's verdict.
    ([dict(scene=True, button=True, terminated=True)], (True, False)),
    # The classifier fired once without ending it, then the time limit: no false success.
    ([dict(scene=False, success=True), dict(scene=False)], (False, False)),
])
def test_scene_judge_counts_a_false_success_only_when_the_reward_ended_it(steps, verdict):
    from actor.node import SceneJudge

    judge = SceneJudge()
    for i, kwargs in enumerate(steps):
        judge.on_step(_step(i, **kwargs))
    assert judge.verdict() == {"judged_success": verdict[0], "false_success": verdict[1]}
    assert SceneJudge().verdict() == {}  # no scene (a real robot): nothing to judge with


def test_the_verdicts_go_to_episodes_jsonl_and_not_to_the_learner(tmp_path):
    from actor.loop import EpisodeResult
    from actor.node import Actor, LoopClock
    from hilrl.cli.train_sim import false_successes
    from hilrl.reporting.report import summarize

    sent = []
    actor = SimpleNamespace(
        episodes_log=tmp_path / "actors" / "actor0" / "episodes.jsonl",
        counts={"env_steps": 10}, task=SimpleNamespace(env=SimpleNamespace(hz=10.0)),
        recent=[], client=SimpleNamespace(send_stats=sent.append))
    for i, false in enumerate([False, True, False, True]):
        result = EpisodeResult("train", seed=i, steps=5, success=True, ret=1.0)
        Actor._record(actor, result, i, LoopClock(0),
                      {"judged_success": not false, "false_success": false})
    Actor._record(actor, EpisodeResult("eval", seed=9, steps=5), 0, LoopClock(0),
                  {"judged_success": False, "false_success": False})
    assert len(sent) == 4 and not any("judged_success" in s or "false_success" in s
                                      for s in sent)
    records = [json.loads(line) for line in actor.episodes_log.read_text().splitlines()]
    assert [r["false_success"] for r in records] == [False, True, False, True, False]
    assert false_successes(records) == {"train_episodes": 4, "judged_train_episodes": 4,
                                        "false_success_episodes": 2, "false_success_rate": 0.5}
    summary = summarize(tmp_path)
    assert summary["false_success_episodes"] == 2 and summary["false_success_rate"] == 0.5
    assert summary["judged_train_success_rate"] == 0.5


SMALL = ["agent.hidden_dims=[32,32]", "agent.utd=1", "learner.batch_size=32",
         "learner.min_transitions=50", "learner.publish_every=5", "learner.log_every=20",
         "learner.checkpoint_every=40"]


def test_train_sim_reward_classifier_runs_every_stage_end_to_end(tmp_path, capsys):
    """demos -> labels (device path + demos) -> classifier -> RL on the learned reward ->
    final evaluation judged by the sim, on a tiny configuration bounded by counts."""
    from hilrl.cli import main
    from hilrl.storage.dataset import read_dataset, read_dataset_info

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hilrl.cli", "train-sim", "--reward", "classifier",
           "--run-dir", str(run), "--demos", "3", "--label-episodes", "4",
           "--classifier-epochs", "3", "--max-updates", "10", "--minutes", "0",
           "--final-eval", "2", "--eval-every", "0", "--target", "1", "--no-progress",
           *SMALL, "actor.hz=50", "env.image_size=[32,32]", "learner.max_updates_per_step=1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]
    for line in ("[1/5] demos", "[2/5] labels", "[3/5] classifier", "[4/5] training",
                 "[5/5] final evaluation", "classifier validation precision",
                 "judged by the simulator's success", "false successes"):
        assert line in out.stdout, (line, out.stdout)
    summary = json.loads((run / "train_sim.json").read_text())
    assert summary["reward"] == "classifier" and summary["eval_episodes"] == 2
    assert summary["false_success_episodes"] <= summary["judged_train_episodes"]
    assert summary["judged_train_episodes"] == summary["train_episodes"] >= 1
    assert summary["false_success_rate"] == (summary["false_success_episodes"]
                                             / summary["judged_train_episodes"])
    assert {"precision", "recall", "threshold"} <= summary["classifier"].keys()
    # The demos were ended by the person's button, with no simulator reward behind them.
    assert read_dataset_info(run / "demos")["task"]["env"]["reward"] == "none"
    assert all(ep.reward[-1] == 1.0 and ep.terminated[-1] for ep in read_dataset(run / "demos"))
    assert read_dataset_info(run / "labels")["source"] == "device"
    assert (run / "classifier.hilrl").is_file()
    # Training ran on the classifier; the final evaluation on the sim's success.
    records = [json.loads(line) for line in
               (run / "actors" / "actor0" / "episodes.jsonl").read_text().splitlines()]
    assert all("false_success" in r for r in records)
    assert main(["report", str(run)]) == 0
    assert "false_success_rate" in capsys.readouterr().out
