"""The live view (actor.viewer, Rerun): what a real actor episode logs, read back from the
.rrd file with Rerun's own reader; and the control loop never waits for it."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from hilrl.config import load_task

rerun = pytest.importorskip("rerun")

TINY = ["agent.hidden_dims=[16,16]", "agent.latent_dim=16", "agent.proprio_hidden=[16]",
        "agent.conv_features=[4,4]", "agent.conv_strides=[2,2]"]


def _read(path: Path) -> dict[str, dict[str, list]]:
    """{entity path: {component or timeline: values in logged order}} of an .rrd file."""
    from rerun.chunk import RrdReader

    rows: dict[str, list] = defaultdict(list)
    for chunk in RrdReader(path).stream():
        batch = chunk.to_record_batch()
        if "log_time" in batch.schema.names:  # nanoseconds, which pyarrow cannot give Python
            batch = batch.drop_columns(["log_time"])
        rows[chunk.entity_path] += batch.to_pylist()
    out: dict[str, dict[str, list]] = {}
    for entity, entity_rows in rows.items():
        entity_rows.sort(key=lambda r: r["rerun.controls.RowId"])  # time-ordered ids (TUIDs)
        out[entity] = {k: [r[k] for r in entity_rows] for k in entity_rows[0]}
    return out


def test_a_training_episode_is_logged_and_reads_back(tmp_path):
    from actor.node import Actor
    from hilrl.learning import sac

    # The front camera is resized for the policy (both views logged), the wrist one is not;
    # the scripted person drives the whole episode.
    task = load_task(None, [*TINY, "env.image_size=[48,48]",
                            "env.cameras=[{name: front, size: [24, 24]}, {name: wrist}]",
                            "env.policy_cameras=[]", "device.kind=scripted",
                            "device.expert.takeover=always", "env.max_episode_steps=12",
                            "actor.viewer=file"])
    node = Actor(task, tmp_path / "run", quiet=True, learner=False)
    try:
        state = sac.create(task.agent, node.spec.example_observation(), node.spec.action_size)
        node.policy.set_weights(3, sac.policy(state).params)
        node._send = lambda transition: None  # no learner here
        result = node.episode("train")
        assert node.status()["viewer_dropped_steps"] == 0
    finally:
        node.close()
    view = _read(node.dir / "view.rrd")
    steps = result.steps
    assert steps > 0 and result.interventions > 0
    for entity in ("/action", "/person/driving", "/reward/value"):
        assert len(view[entity]["Scalars:scalars"]) == steps, entity
    assert len(view["/action"]["Scalars:scalars"][0]) == node.spec.action_size
    driving = [v[0] for v in view["/person/driving"]["Scalars:scalars"]]
    assert sum(driving) == result.interventions
    assert view["/action"]["env_step"] == list(range(steps))
    # Every frame of the episode, from the reset on: the policy's view of both cameras, the
    # rendered frame of the one that is resized.
    size = {e: (f[0]["width"], f[0]["height"]) for e in view if e.startswith(("/policy",
                                                                           "/cameras"))
            for f in view[e]["Image:format"][:1]}
    assert size == {"/policy/front": (24, 24), "/policy/wrist": (48, 48),
                    "/cameras/front": (48, 48)}
    for entity in size:  # at env_step t the observation step t acted on, t = 0 the reset's
        assert view[entity]["env_step"] == list(range(steps + 1)), entity
    events = [t[0] for t in view["/episode/events"]["TextLog:text"]]
    assert events[0] == "train episode 0 started (policy v3)"
    assert events[-1].startswith(f"train episode 0 ended after {steps} steps")
    assert any(e.startswith("success at step") for e in events) == result.success
    assert "/reward/classifier_prob" not in view  # no learned reward in this task


def _step(index: int, prob: float | None = None):
    from actor.loop import Step

    obs = {"state": np.zeros(3, np.float32), "images": {}}
    info = {} if prob is None else {"success_prob": prob}
    return Step(index, obs, np.zeros(2, np.float32), 0.0, False, False, obs, info, False, False)


def test_the_learned_rewards_probability_is_logged(tmp_path):
    from actor.viewer import LiveView

    view = LiveView("file", "a0", tmp_path)
    view.start("train", 0, 1)
    for i, p in enumerate([0.1, 0.75]):
        view.on_step(_step(i, p))
    view.close()
    logged = _read(tmp_path / "view.rrd")["/reward/classifier_prob"]["Scalars:scalars"]
    assert logged == [[pytest.approx(0.1)], [0.75]]


def test_the_control_loop_never_waits_for_the_view(tmp_path, monkeypatch):
    from actor import viewer

    blocked, release = threading.Event(), threading.Event()

    def stuck(self, *args):  # a viewer that has stopped answering
        blocked.set()
        release.wait()

    monkeypatch.setattr(viewer.LiveView, "_log", stuck)
    view = viewer.LiveView("file", "a0", tmp_path)
    view.start("train", 0, 1)
    assert blocked.wait(30)  # the logging thread holds the first item
    n = 3 * viewer.QUEUE_STEPS
    for i in range(n):  # returns at once every time, however full the queue is
        view.on_step(_step(i))
    assert view.dropped == n - viewer.QUEUE_STEPS
    release.set()
    view.close()


def test_an_unknown_viewer_target_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="'file', 'spawn' or a rerun"):
        load_task(None, ["actor.viewer=screen"])
