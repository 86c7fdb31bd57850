"""The learner and actor as separate processes, over real sockets, the sim and real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hilrl.cli.train_sim import free_port_pair
from hilrl.config import load_task
from hilrl.learning.replay import ReplayBuffer
from hilrl.transport.learner_log import LearnerLog

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "tasks" / "sim_pick_cube.yaml"

# Small networks and batches: the test is about the plumbing, not the learning speed.
SMALL = ["agent.hidden_dims=[32,32]", "agent.utd=1", "learner.batch_size=32",
         "learner.min_transitions=50", "learner.publish_every=5", "learner.log_every=20",
         "learner.checkpoint_every=40"]


class Node:
    def __init__(self, name: str, args: list[str], run: Path, env: dict[str, str]) -> None:
        self.name = name
        self.out = run / f"{name}.out"
        with open(self.out, "ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env,
                                         stdout=f, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_for(what: str, predicate, nodes: list[Node], timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            node.check_alive()
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    outputs = "\n".join(f"--- {n.name}\n{n.output()[-2000:]}" for n in nodes)
    pytest.fail(f"timed out waiting for {what}\n{outputs}")


def node_env(extra_path: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    return env


def committed_steps(learner_dir: Path) -> list[int]:
    from hilrl.storage.checkpoint import Checkpointer

    ckpt = Checkpointer(learner_dir / "checkpoints", read_only=True)
    try:
        return ckpt.all_steps()
    finally:
        ckpt.close()


def log_counts(log_dir: Path) -> tuple[int, int]:
    """(transitions, intervened transitions) in the learner's durable log."""
    from hilrl.transport.wire import decode

    log = LearnerLog.open(log_dir)
    try:
        total = intervened = 0
        for record in log.records():
            msg = decode(list(record.frames))
            total += msg.batch_size
            intervened += int(np.count_nonzero(msg.arrays["intervened"]))
        return total, intervened
    finally:
        log.close()


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    from actor.teleop import record_demos

    out = tmp_path_factory.mktemp("demos") / "pick"
    record_demos(load_task(TASK, ["device.expert.takeover=always"]), out, 3, progress=False)
    return out


def test_learner_and_actor_train_checkpoint_and_resume(tmp_path, demos):
    run = tmp_path / "run"
    run.mkdir()
    port = free_port_pair()
    endpoints = [f"learner.bind=tcp://127.0.0.1:{port}",
                 f"learner.weights_bind=tcp://127.0.0.1:{port + 1}"]
    learner_args = ["learner", "--task", str(TASK), "--run-dir", str(run), "--demos",
                    str(demos), *SMALL, *endpoints]
    # 50 Hz: faster than the robot's 10 Hz so the test is short, slow enough that the
    # learner keeps up on 2 cores. The scripted human steps in on stalls (the task file).
    actor_args = ["actor", "--task", str(TASK), "--run-dir", str(run), "--learner",
                  f"tcp://127.0.0.1:{port}", "actor.hz=50", *SMALL]
    env = node_env()
    ldir = run / "learner"
    adir = run / "actors" / "actor0"
    demo_steps = sum(len(np.load(f)["reward"]) for f in sorted(demos.glob("episode_*.npz")))

    learner = Node("learner", learner_args, run, env)
    actor = Node("actor", actor_args, run, env)
    nodes = [learner, actor]
    try:
        first = wait_for("the actor to get weights newer than v0",
                         lambda: read_json(adir / "status.json").get("policy_version", -1) > 0,
                         nodes)
        assert first
        v1 = read_json(adir / "status.json")["policy_version"]
        wait_for("a checkpoint past step 80 and weights newer than the first",
                 lambda: (read_json(ldir / "status.json").get("last_checkpoint") or 0) >= 80
                 and read_json(adir / "status.json").get("policy_version", -1) > v1, nodes)
        status = read_json(ldir / "status.json")
        assert status["online"] > 0 and status["env_steps"] > 0
        assert status["critic_updates_per_s"] > 0
        actor_status = read_json(adir / "status.json")
        assert "overruns" in actor_status and "loop_ms_p99" in actor_status
    finally:
        for node in nodes:
            node.kill()  # SIGKILL: nothing gets to save anything

    # What the learner had made durable is what it must hold after the restart.
    logged, logged_intervened = log_counts(ldir / "log")
    assert logged_intervened > 0, "the scripted human never stepped in"
    # Committed checkpoints only: SIGKILL may have cut a save short, which resume must skip.
    steps = committed_steps(ldir)
    assert steps and steps[-1] >= 80
    snapshot = ReplayBuffer.load(ldir / "replay" / f"online-{steps[-1]}.json")
    valid = snapshot.valid_indices()
    assert snapshot._flags["intervened"][valid].any()  # interventions in the online buffer
    demo_snapshot = ReplayBuffer.load(ldir / "replay" / f"demo-{steps[-1]}.json")
    assert len(demo_snapshot) > demo_steps  # ... and in the demo buffer

    learner = Node("learner", [*learner_args, "--resume"], run, env)
    actor = Node("actor", [*actor_args, "--resume"], run, env)
    nodes = [learner, actor]
    try:
        def restored_status():
            status = read_json(ldir / "status.json")
            return status.get("pid") == learner.proc.pid and status.get("restored")

        restored = wait_for("the learner to resume", restored_status, [learner])
        assert restored["step"] == steps[-1]
        assert restored["online"] == logged
        assert restored["demo"] == demo_steps + logged_intervened
        wait_for("training to continue past the restored step, with new transitions",
                 lambda: read_json(ldir / "status.json").get("step", 0) > steps[-1] + 20
                 and read_json(ldir / "status.json").get("online", 0) > logged
                 and read_json(adir / "status.json").get("policy_version", -1) > steps[-1],
                 nodes)
        assert actor.terminate() == 0
        assert learner.terminate() == 0  # SIGTERM: a final checkpoint, then exit 0
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.kill()
    final = read_json(ldir / "status.json")
    saved = committed_steps(ldir)
    assert saved[-1] == final["step"] > steps[-1]
    episodes = [json.loads(line) for line in (adir / "episodes.jsonl").read_text().splitlines()]
    assert episodes and all(e["kind"] == "train" for e in episodes)
    # The second actor run continued the episode numbering of the first.
    assert [e["episode"] for e in episodes] == list(range(len(episodes)))


GYM_TASK = """
name: point_reach
env:
  robot: gymnasium
  gymnasium:
    id: gym_point_env:PointReach-v0
    state_keys: [position, goal, velocity]
    success_key: is_success
    reward: env
  max_episode_steps: 40
device: {kind: none}
agent: {num_critics: 2, utd: 1, hidden_dims: [64, 64], discount: 0.9}
learner: {batch_size: 64, min_transitions: 200, publish_every: 5, checkpoint_every: 500}
actor: {hz: 100}
"""


def test_training_over_a_gymnasium_env_named_in_a_task_file(tmp_path):
    task = tmp_path / "point.yaml"
    task.write_text(GYM_TASK)
    run = tmp_path / "run"
    run.mkdir()
    port = free_port_pair()
    env = node_env(str(ROOT / "tests"))
    # Work in counts on both sides: 2400 env steps, 5000 update calls (at most 2.5 per
    # transition received, so the updates follow the data however loaded the machine is).
    learner = Node("learner", ["learner", "--task", str(task), "--run-dir", str(run),
                               f"learner.bind=tcp://127.0.0.1:{port}",
                               f"learner.weights_bind=tcp://127.0.0.1:{port + 1}",
                               "learner.max_updates=5000", "learner.max_updates_per_step=2.5"],
                   run, env)
    actor = Node("actor", ["actor", "--task", str(task), "--run-dir", str(run), "--learner",
                           f"tcp://127.0.0.1:{port}", "--max-steps", "2400"], run, env)
    try:
        assert actor.proc.wait(600) == 0, actor.output()
        assert learner.proc.wait(600) == 0, learner.output()  # it stops at max_updates
        status = read_json(run / "learner" / "status.json")
        assert status["step"] == 5000 and status["env_steps"] >= 2000, status
    finally:
        for node in (learner, actor):
            if node.proc.poll() is None:
                node.kill()
    episodes = [json.loads(line) for line in
                (run / "actors" / "actor0" / "episodes.jsonl").read_text().splitlines()]
    early = np.mean([e["success"] for e in episodes[:10]])
    out = subprocess.run([sys.executable, "-m", "actor", "--task", str(task), "--run-dir",
                          str(run), "--eval", "20", "--checkpoint", str(run / "learner"),
                          "actor.id=eval", "actor.hz=0"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((run / "actors" / "eval" / "eval.jsonl").read_text().splitlines()[-1])
    assert result["episodes"] == 20 and result["policy_version"] == 5000  # the last update's
    assert result["success_rate"] >= 0.7 > early, (early, result, out.stdout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_train_sim_from_pixels_with_an_online_encoder_runs_end_to_end_and_reports(tmp_path):
    """Cameras all the way: rendered, sent over the wire, stored, encoded by the conv net,
    here tiny (the CPU task's own encoder learning pick-cube is tests/test_pixels_learning.py).
    The training is bounded by update calls, not minutes: compiling on a loaded machine only
    makes it slower. Then train-sim refuses to run again in the used directory."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hilrl.cli", "train-sim", "--pixels", "--run-dir", str(run),
           "--max-updates", "10", "--minutes", "6",  # the minutes only catch a hang
           "--demos", "2", "--eval-every", "2", "--eval-episodes", "2", "--final-eval", "3",
           "--target", "1", "--no-progress", "--encoder", "online",
           "--task", str(ROOT / "tasks" / "sim_pick_cube_pixels_cpu.yaml"), *SMALL,
           "agent.conv_features=[8,8]", "agent.conv_strides=[2,2]",  # overrides come last
           "actor.hz=50", "env.image_size=[32,32]",
           "learner.max_updates_per_step=1"]  # no more update calls than actor transitions
    out = subprocess.run(cmd, cwd=ROOT, env=node_env(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]  # 1: below target
    assert "pretraining the image encoder" not in out.stdout
    summary = json.loads((run / "train_sim.json").read_text())
    assert summary["outcome"] == "update budget spent (10 update calls)", summary
    assert summary["update_calls"] >= 10 and summary["learner_updates_per_s"] > 0
    # The learner stored transitions the actor took: at least one per update call, and no
    # more than the actor's count at its last finished episode plus the one it was in.
    logged = read_jsonl(run / "actors" / "actor0" / "episodes.jsonl")
    assert 10 <= summary["env_steps"] <= (logged[-1]["env_steps"] if logged else 0) + 100
    # The final evaluation: 3 episodes of the saved checkpoint, and the summary's success
    # rate is what its episodes say.
    final = read_jsonl(run / "actors" / "eval" / "eval.jsonl")[-1]
    episodes = [e for e in read_jsonl(run / "actors" / "eval" / "episodes.jsonl")
                if e["kind"] == "eval"]
    assert summary["eval_episodes"] == final["episodes"] == len(episodes) == 3
    assert final["successes"] == sum(bool(e["success"]) for e in episodes)
    assert summary["success_rate"] == final["successes"] / 3
    assert all(e["policy_version"] >= 10 for e in episodes)  # the trained weights, not v0
    assert f"{final['successes']}/3 episodes" in out.stdout
    png = run / "report" / "learning_curve.png"
    assert png.stat().st_size > 10_000
    assert (run / "learner" / "checkpoints").is_dir()

    # A used directory is refused: the run fails (exit 2) and the completed run's summary
    # stays as it was, so nothing reads it as the new run's.
    before = (run / "train_sim.json").read_bytes()
    again = subprocess.run(cmd, cwd=ROOT, env=node_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 2, again.stdout[-2000:] + again.stderr[-2000:]
    assert "holds an earlier run" in again.stderr
    assert (run / "train_sim.json").read_bytes() == before
