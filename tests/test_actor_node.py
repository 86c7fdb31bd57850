"""The actor node in-process: the loop clock, holding without a learner, eval videos."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from polling import wait_for

from actor.node import Actor, LoopClock
from hilrl.config import load_task
from hilrl.learning import sac
from hilrl.reporting.metrics import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
TINY = ["agent.hidden_dims=[16,16]", "agent.latent_dim=16", "agent.proprio_hidden=[16]"]


def test_loop_clock_counts_overruns_and_restarts_the_schedule():
    clock = LoopClock(10.0)  # 100 ms period: margins far above scheduling noise
    for _ in range(2):
        clock.start_step()
        time.sleep(0.25)
        clock.end_step()
    assert clock.overruns == 2
    t0 = time.monotonic()
    for _ in range(3):
        clock.start_step()
        clock.end_step()  # no work: sleeps to the deadline, which restarted after the overrun
    assert clock.overruns == 2
    assert 0.25 < time.monotonic() - t0 < 0.6
    summary = clock.summary()
    assert summary["overrun_rate"] == pytest.approx(2 / 5)
    assert summary["overrun_ms_p99"] > 100  # the late steps were ~150 ms late


def _actor(tmp_path, overrides, **kwargs) -> Actor:
    task = load_task(ROOT / "tasks" / "sim_pick_cube.yaml", [*TINY, *overrides])
    node = Actor(task, tmp_path / "run", quiet=True, **kwargs)
    state = sac.create(task.agent, node.spec.example_observation(), node.spec.action_size)
    node.policy.set_weights(7, sac.policy(state).params)
    return node


def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("mode", ["hold", "continue"])
def test_without_a_learner_the_actor_holds_or_keeps_acting(tmp_path, mode):
    dead = _free_endpoint()
    node = _actor(tmp_path, [f"actor.learner={dead}", f"actor.weights={dead}",
                             f"actor.on_learner_lost={mode}", "actor.hz=50",
                             "device.kind=none"])
    try:
        world = node.stack.world
        thread = threading.Thread(target=node.episode, args=("train",))
        thread.start()
        # Counted steps, not seconds: a loaded machine only makes them come later.
        counter = "held_steps" if mode == "hold" else "env_steps"
        wait_for(lambda: node.counts[counter] >= 12, 60)
        tcp_mid = world.tcp_pose()[:3].copy()
        wait_for(lambda: node.counts[counter] >= 25, 60)
        node.stop()
        thread.join(10)
        assert not thread.is_alive()
        moved = np.linalg.norm(world.tcp_pose()[:3] - tcp_mid)
        if mode == "hold":
            assert node.counts["held_steps"] > 10 and node.counts["env_steps"] == 0
            assert moved < 1e-3
        else:
            assert node.counts["held_steps"] == 0 and node.counts["env_steps"] > 20
            # the transitions wait in the outbox for the learner
            assert node.client.stats()["outbox_pending_messages"] + node.client._batch.n > 0
    finally:
        node.close()


def test_eval_saves_an_mp4_per_camera_even_for_a_state_based_task(tmp_path):
    node = _actor(tmp_path, ["env.max_episode_steps=12", "device.kind=none"], learner=False,
                  video_dir=tmp_path / "videos")
    try:
        results = node.evaluate(2)
    finally:
        node.close()
    assert [r.kind for r in results] == ["eval", "eval"]
    for index, result in enumerate(results):
        for cam in ("front", "wrist"):
            video = cv2.VideoCapture(str(tmp_path / "videos" / f"eval_{index:05d}_{cam}.mp4"))
            frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
            ok, frame = video.read()
            video.release()
            assert ok and frame.shape == (128, 128, 3)
            assert frames == result.steps
    records = read_jsonl(tmp_path / "run" / "actors" / "actor0" / "episodes.jsonl")
    assert [(r["kind"], r["steps"]) for r in records] == [("eval", r.steps) for r in results]


def test_interventions_are_off_during_evaluation(tmp_path):
    dead = _free_endpoint()
    node = _actor(tmp_path, ["env.max_episode_steps=15", "device.expert.takeover=always",
                             "actor.hz=0", f"actor.learner={dead}", f"actor.weights={dead}"])
    try:
        # The scripted human drives every training step ...
        assert node.episode("train").interventions == 15
        # ... and none during evaluation, where only the policy acts.
        assert node.episode("eval").interventions == 0
    finally:
        node.close()
