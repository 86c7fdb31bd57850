"""Hardware faults in the actor loop: a camera that freezes mid-episode and an arm that stops
on a reflex each end the episode with the arm held; the next reset reopens the cameras or
recovers the arm, and acting goes on. Real drivers throughout: an OpenCV camera playing a
video file, the HTTP driver against the HIL-SERL test server, franky against franky-sim."""

from __future__ import annotations

import importlib.util
import signal
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from actor.node import Actor
from hilrl.config import load_task
from hilrl.learning import sac
from hilrl.reporting.metrics import read_jsonl

TINY = ["agent.hidden_dims=[16,16]", "agent.latent_dim=16", "agent.proprio_hidden=[16]",
        "agent.conv_features=[4,4]", "agent.conv_strides=[2,2]"]


def _actor(tmp_path: Path, overrides: list[str]) -> Actor:
    task = load_task(None, [*TINY, "env.reward=none", "device.kind=none", *overrides])
    node = Actor(task, tmp_path / "run", quiet=True, learner=False)
    state = sac.create(task.agent, node.spec.example_observation(), node.spec.action_size)
    node.policy.set_weights(1, sac.policy(state).params)
    return node


def _video(path: Path, frames: int, fps: float = 20.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), (i * 7) % 255, np.uint8))
    writer.release()
    return path


def test_a_frozen_camera_ends_the_episode_and_is_reopened(tmp_path):
    from hilserl_server import FakeHilSerlServer

    # 4 s of video at 20 fps, episodes of up to 20 s: the camera freezes in every episode.
    video = _video(tmp_path / "front.avi", 80)
    with FakeHilSerlServer() as server:
        node = _actor(tmp_path, [
            "env.robot=hilserl_http", f"env.hilserl_http.url={server.url}",
            f"env.cameras=[{{name: front, driver: opencv, source: '{video}', "
            "stale_after: 0.3}]", "env.image_size=[48,64]", "env.hz=20",
            "env.max_episode_steps=400"])
        try:
            node.stack.reopen_cameras()  # the video plays from now, not from the actor's start
            results = [node.episode("eval") for _ in range(2)]
        finally:
            node.close()
        for r in results:
            assert r.fault is not None and "CameraError" in r.fault and "stale" in r.fault
            assert 5 < r.steps < 400  # the second episode ran on the reopened camera
        assert node.counts["camera_errors"] == 2
        # The arm was told to hold where it was when the camera froze.
        assert server.routes().count("/pose") > 0
    log = read_jsonl(node.episodes_log)
    assert [e["fault"].split(":")[0] for e in log] == ["CameraError", "CameraError"]


@pytest.mark.skipif(not (importlib.util.find_spec("franky")
                         and importlib.util.find_spec("franky_sim")),
                    reason="needs franky-control and franky-sim (the dev extra)")
def test_a_reflex_ends_the_episode_and_the_next_reset_recovers(tmp_path):
    from robot_drivers.franky_sim_server import start_server

    host, proc = start_server()
    try:
        node = _actor(tmp_path, [
            "env.robot=franka", f"env.franka.host={host}", "env.franka.realtime=false",
            "env.franka.dynamics_factor=0.5", "env.cameras=[]", "env.hz=10",
            "env.max_episode_steps=25"])
        try:
            # A reflex 1.5 s into the first episode's steps (its reset takes a few seconds).
            original = node.stack.env.step
            timer = threading.Timer(1.5, proc.send_signal, args=(signal.SIGUSR1,))

            def step(action):
                if not timer.is_alive() and not timer.finished.is_set():
                    timer.start()
                return original(action)

            node.stack.env.step = step
            hit = node.episode("eval")
            node.stack.env.step = original
            clean = node.episode("eval")
        finally:
            node.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert hit.fault is not None and "reflex" in hit.fault and hit.steps < 25
    assert node.counts["robot_errors"] == 1
    assert clean.fault is None and clean.steps == 25  # recovered at reset, ran to the limit
