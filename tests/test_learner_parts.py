"""The learner's pieces on their own: env spec, ingestion, checkpoints, imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hilrl.config import load_task
from hilrl.envs.spec import env_spec
from hilrl.learning.replay import ReplayBuffer
from hilrl.transport.wire import decode, encode
from learner.ingest import Ingestor, _runs

ROOT = Path(__file__).resolve().parent.parent


SMALL = ["env.image_size=[32,32]"]
CROPS = ["env.cameras=[{name: front, crop: [10, 20, 110, 100], size: [32, 48]}, {name: wrist}]",
         "env.image_size=[120, 128]", "env.rotation_actions=true",
         "env.state_keys=[tcp_pose, gripper_width, joint_positions, object_pos]"]
# front: cropped to 32x24, then resized to 24x24; wrist: resized from 32x48 to 24x24.
ENCODED = ["env.cameras=[{name: front, crop: [8, 0, 40, 24], size: [24, 24]}, "
           "{name: wrist, size: [24, 24]}]", "env.image_size=[32, 48]",
           "env.frozen_encoder=ENCODER"]
GYM = ["env.robot=gymnasium", "device.kind=none", "env.gymnasium.id=gym_point_env:PointReach-v0",
       "env.gymnasium.state_keys=[position, goal, velocity]",
       "env.gymnasium.kwargs={render_camera: true}", "env.gymnasium.image_keys={front: camera}"]


def _encoder_file(path: Path, cameras: tuple[str, ...], shape: tuple[int, int, int]) -> Path:
    """An untrained keypoint encoder file: its layout is all the spec needs."""
    import jax

    from hilrl.learning.pretrain import EncoderSpec, KeypointEncoder, save_encoder

    spec = EncoderSpec(cameras, shape)
    example = {c: np.zeros((1, *shape), np.uint8) for c in cameras}
    save_encoder(path, KeypointEncoder(spec).init(jax.random.PRNGKey(0), example)["params"],
                 spec)
    return path


@pytest.mark.parametrize(("overrides", "policy_cameras"), [
    ([*SMALL], {"front", "wrist"}),
    (CROPS, {"front", "wrist"}),
    ([*CROPS, "env.policy_cameras=[wrist]"], {"wrist"}),
    (ENCODED, set()),
    (GYM, {"front"}),
    ([*GYM, "env.policy_cameras=[]"], set()),
], ids=["default", "crops", "policy_cameras", "frozen_encoder", "gymnasium",
        "gymnasium_policy_cameras"])
def test_env_spec_matches_the_env_the_actor_builds(overrides, policy_cameras, tmp_path):
    """The one calculation of the layout (EnvSpec) against the env make_env builds, and a real
    transition through the spec's wire schema into the spec's replay buffers."""
    from actor.env_factory import make_env
    from hilrl.learning.pretrain import FrozenEncoder

    if ENCODED == overrides:
        path = _encoder_file(tmp_path / "enc.hilrl", ("front", "wrist"), (24, 24, 3))
        overrides = [o.replace("ENCODER", str(path)) for o in overrides]
    task = load_task(ROOT / "tasks" / "sim_pick_cube_pixels.yaml", overrides)
    spec = env_spec(task)
    stack = make_env(task)
    try:
        env = stack.env
        space = env.observation_space
        env_images = {k: tuple(s.shape) for k, s in space["images"].spaces.items()}
        assert spec.state_size == space["state"].shape[0]
        assert spec.action_size == env.action_space.shape[0]
        assert set(spec.image_shapes) == policy_cameras
        assert spec.image_shapes == {c: env_images[c] for c in policy_cameras}
        if task.env.frozen_encoder:
            assert spec.feature_size == FrozenEncoder(task.env.frozen_encoder).feature_size > 0
        # Datasets record every camera and the state without features, whatever the encoder.
        dataset = {"state_size": spec.state_size - spec.feature_size,
                   "images": {c: list(s) for c, s in env_images.items()},
                   "action_size": spec.action_size}
        assert spec.dataset_spec() == dataset
        assert env_spec(task, features=False).dataset_spec() == dataset
        obs, _ = env.reset(seed=0)
        next_obs, reward, _, _, info = env.step(np.zeros(spec.action_size, np.float32))
        for o in (obs, next_obs):
            assert o["state"].shape == (spec.state_size,)
            assert {c: o["images"][c].shape for c in env_images} == env_images
    finally:
        stack.close()
    rows = [obs, next_obs]
    arrays = {"obs/state": np.stack([o["state"] for o in rows]),
              **{f"obs/images/{c}": np.stack([o["images"][c] for o in rows])
                 for c in spec.image_shapes},
              "action": np.zeros((1, spec.action_size), np.float32),
              "reward": np.array([reward], np.float32), "terminated": np.array([False]),
              "truncated": np.array([False]), "intervened": np.array([True]),
              "extras/grasp_penalty": np.array([info["grasp_penalty"]], np.float32)}
    msg = decode(encode("transitions", actor="a0", session="s", seq=0, policy_version=0,
                        arrays=arrays), schema=spec.wire_schema())
    online = ReplayBuffer(8, **spec.replay_kwargs())
    demo = ReplayBuffer(8, **spec.replay_kwargs())
    assert Ingestor(online, demo).add(msg) == 1 and len(online) == len(demo) == 1
    np.testing.assert_array_equal(demo.gather([0])["next_obs"]["state"][0], next_obs["state"])


def test_a_crop_outside_the_frame_is_refused_by_the_spec_as_by_the_env():
    task = load_task(None, ["env.cameras=[{name: front, crop: [0, 0, 40, 20]}]", *SMALL])
    with pytest.raises(ValueError, match="outside its 32x32 frame"):
        env_spec(task)


def test_the_learner_imports_no_driver_and_no_renderer():
    code = ("import sys, learner.node, learner.learner_state, learner.ingest;"
            "from hilrl.envs.spec import env_spec; from hilrl.config import load_task;"
            "env_spec(load_task('tasks/sim_pick_cube_pixels.yaml'));"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('robot_drivers', 'mujoco', 'actor', 'OpenGL')];"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "MUJOCO_GL": "none"}, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_runs_of_flags():
    assert _runs(np.array([], bool)) == []
    assert _runs(np.array([1, 1, 0, 1, 0, 0, 1], bool)) == [(0, 2), (3, 4), (6, 7)]


def _message(seq: int, states: np.ndarray, intervened: list[bool], end: bool = False,
             session: str = "s1"):
    n = len(intervened)
    arrays = {"obs/state": states.astype(np.float32),
              "action": np.full((n, 4), seq, np.float32),
              "reward": np.zeros(n, np.float32),
              "terminated": np.array([False] * (n - 1) + [end]),
              "truncated": np.zeros(n, bool),
              "intervened": np.array(intervened),
              "extras/grasp_penalty": np.zeros(n, np.float32)}
    return decode(encode("transitions", actor="a0", session=session, seq=seq,
                         policy_version=3, arrays=arrays))


def test_ingest_puts_every_step_online_and_intervened_runs_into_the_demo_buffer():
    online = ReplayBuffer(100, 2, {}, 4, extras=("grasp_penalty",))
    demo = ReplayBuffer(100, 2, {}, 4, extras=("grasp_penalty",))
    ing = Ingestor(online, demo)
    obs = np.arange(20, dtype=np.float32).reshape(10, 2)
    # Two batches of one episode: steps 0..4 and 5..8; the human drives 1-2 and 4-6.
    assert ing.add(_message(0, obs[:6], [False, True, True, False, True]), learner_step=5) == 5
    assert ing.add(_message(5, obs[5:10], [True, True, False, False], end=True)) == 4
    assert len(online) == 9
    # Intervened steps 1, 2, 4, 5, 6; 4 -> 5 -> 6 continue across the two messages.
    assert len(demo) == 5
    batch = demo.gather(demo.valid_indices())
    np.testing.assert_array_equal(batch["obs"]["state"][:, 0], obs[[1, 2, 4, 5, 6], 0])
    np.testing.assert_array_equal(batch["next_obs"]["state"][:, 0], obs[[2, 3, 5, 6, 7], 0])
    assert ing.included == {("a0", "s1"): 9}
    assert ing.interventions == 5 and ing.episodes == 1 and ing.staleness == [2]
    # A message already included (a resend, or the log replayed after a restart) is skipped.
    assert ing.add(_message(5, obs[5:10], [True, True, False, False], end=True)) == 0
    assert len(online) == 9 and len(demo) == 5


def test_load_demos_checks_the_dataset_against_the_task(tmp_path):
    from actor.teleop import record_demos
    from hilrl.storage.dataset import DatasetError
    from learner.ingest import load_demos

    task = load_task(ROOT / "tasks" / "sim_pick_cube_pixels.yaml",
                     ["device.expert.takeover=always", "env.image_size=[32,32]"])
    record_demos(task, tmp_path / "d", 1, progress=False)
    spec = env_spec(task)
    buf = ReplayBuffer(500, **spec.replay_kwargs())
    episodes, steps = load_demos([tmp_path / "d"], buf)
    assert episodes == 1 and len(buf) == steps > 0
    state_only = ReplayBuffer(500, **env_spec(task, images=False).replay_kwargs())
    load_demos([tmp_path / "d"], state_only)  # cameras a run does not use are dropped
    assert len(state_only) == steps
    wrong = ReplayBuffer(500, spec.state_size + 3, spec.image_shapes, spec.action_size,
                         extras=("grasp_penalty",))
    with pytest.raises(DatasetError, match="state/action sizes"):
        load_demos([tmp_path / "d"], wrong)
    other_cams = ReplayBuffer(500, spec.state_size, {"side": (32, 32, 3)}, spec.action_size,
                              extras=("grasp_penalty",))
    with pytest.raises(DatasetError, match="lack camera"):
        load_demos([tmp_path / "d"], other_cams)


def test_checkpoints_fall_back_to_an_older_step_when_the_newest_snapshot_is_damaged(tmp_path):
    from hilrl.learning import sac
    from learner.learner_state import RunCheckpoints

    spec = env_spec(load_task(None, ["env.cameras=[]"]))
    config = sac.SACConfig.cpu(hidden_dims=(8,), latent_dim=8, proprio_hidden=(8,))
    state = sac.create(config, spec.example_observation(), spec.action_size)
    online = ReplayBuffer(50, **spec.replay_kwargs())
    demo = ReplayBuffer(50, **spec.replay_kwargs())
    store = RunCheckpoints(tmp_path, keep=2)
    for step, seq in ((1, 4), (2, 9), (3, 12)):
        online.add_batch({"state": np.full((4, spec.state_size), step, np.float32),
                          "images": {}}, np.zeros((3, spec.action_size), np.float32),
                         np.zeros(3, np.float32), np.array([0, 0, 1], bool), np.zeros(3, bool),
                         extras={name: np.zeros(3, np.float32) for name in online.extras})
        store.save(state.replace(step=state.step + step), online, demo, {("a", "s"): seq},
                   {"n": step})
    # Only the snapshot files the two kept checkpoints name are left (the 50 slots are one
    # chunk, which every step changed; the demo buffer is empty: no chunk).
    assert sorted(p.name for p in (tmp_path / "replay").iterdir()) == [
        "demo-2.json", "demo-3.json", "online-2.0.npz", "online-2.json", "online-3.0.npz",
        "online-3.json"]
    (tmp_path / "replay" / "online-3.0.npz").write_bytes(b"garbage")
    restored = store.restore(state)
    assert restored.step == 2 and restored.included == {("a", "s"): 9}
    assert restored.counters == {"n": 2} and len(restored.online) == 6
    store.close()


_KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
import numpy as np
from hilrl.config import load_task
from hilrl.envs.spec import env_spec
from hilrl.learning import replay, sac
from learner.learner_state import RunCheckpoints

run = Path(sys.argv[1])
replay.CHUNK_BYTES = 1 << 13  # a few slots per chunk: a checkpoint touches only some of them
spec = env_spec(load_task(None, ["env.cameras=[{name: front}]", "env.image_size=[16,16]"]))
state = sac.create(sac.SACConfig.cpu(hidden_dims=(8,), latent_dim=8, proprio_hidden=(8,),
                                     conv_features=(4,), conv_strides=(2,)),
                   spec.example_observation(), spec.action_size)
online = replay.ReplayBuffer(300, **spec.replay_kwargs())
demo = replay.ReplayBuffer(100, **spec.replay_kwargs())
rng = np.random.default_rng(0)

def episode(buf, n):
    buf.add_batch({"state": rng.normal(size=(n + 1, spec.state_size)).astype(np.float32),
                   "images": {"front": rng.integers(0, 256, (n + 1, 16, 16, 3), np.uint8)}},
                  rng.uniform(-1, 1, (n, spec.action_size)).astype(np.float32),
                  rng.normal(size=n).astype(np.float32), np.arange(n) == n - 1,
                  np.zeros(n, bool), extras={e: np.zeros(n, np.float32) for e in buf.extras})

store = RunCheckpoints(run, keep=2)
for step in (1, 2):
    for _ in range(12):  # 12 x 21 slots a checkpoint: the ring wraps before step 2
        episode(online, 20)
    episode(demo, 10)
    store.save(state.replace(step=state.step + step), online, demo, {("a", "s"): step * 10},
               {"n": step})
online.save(run / "reference-online.npz")  # what step 2 holds, in the one-file format
demo.save(run / "reference-demo.npz")
episode(online, 20)
writes = []
real = replay.atomic_write
def killed_on_the_second_chunk(path, write):
    writes.append(path)
    if len(writes) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, write)
replay.atomic_write = killed_on_the_second_chunk
store.save(state.replace(step=state.step + 3), online, demo, {("a", "s"): 30}, {"n": 3})
"""


def test_an_incremental_checkpoint_killed_mid_save_resumes_bit_exact_from_the_last(tmp_path):
    from hilrl.learning import sac
    from learner.learner_state import RunCheckpoints

    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    replay_dir = tmp_path / "replay"
    assert [p.name for p in replay_dir.glob("online-3.*")] != []  # the killed save's chunk
    spec = env_spec(load_task(None, ["env.cameras=[{name: front}]", "env.image_size=[16,16]"]))
    template = sac.create(sac.SACConfig.cpu(hidden_dims=(8,), latent_dim=8, proprio_hidden=(8,),
                                            conv_features=(4,), conv_strides=(2,)),
                          spec.example_observation(), spec.action_size)
    store = RunCheckpoints(tmp_path, keep=2)
    restored = store.restore(template)
    assert restored.step == 2 and restored.counters == {"n": 2}
    for buf, name in ((restored.online, "online"), (restored.demo, "demo")):
        reference = ReplayBuffer.load(tmp_path / f"reference-{name}.npz")
        assert (buf._cursor, buf._filled, buf._open) == (
            reference._cursor, reference._filled, reference._open)
        for (key, a), b in zip(buf._arrays().items(), reference._arrays().values(),
                               strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} {key}")
    # Step 2 was itself incremental: it names chunks step 1 wrote too.
    online_manifest = json.loads((replay_dir / "online-2.json").read_text())["chunks"]
    assert {n.split(".")[0] for n in online_manifest} == {"online-1", "online-2"}
    # The next checkpoint clears what the killed one left; it restores as saved.
    store.save(template.replace(step=template.step + 3), restored.online, restored.demo,
               {("a", "s"): 20}, {})
    kept = {n for step in (2, 3) for kind in ("online", "demo")
            for n in ReplayBuffer.snapshot_files(replay_dir / f"{kind}-{step}.json")}
    assert {p.name for p in replay_dir.iterdir()} == kept
    assert store.restore(template).step == 3
    store.close()


def test_transitions_reach_the_buffers_while_an_update_runs(tmp_path, monkeypatch):
    """Ingestion has a thread of its own: an actor's transitions go into the replay while
    the update loop is busy in an update (here one held until they are in)."""
    import threading

    from polling import wait_for

    from hilrl.cli.train_sim import free_port_pair
    from hilrl.learning import sac
    from hilrl.transport.actor_client import ActorClient
    from hilrl.transport.wire import unflatten
    from learner.node import Learner

    port = free_port_pair()
    task = load_task(ROOT / "tasks" / "sim_pick_cube.yaml", [
        f"learner.bind=tcp://127.0.0.1:{port}", f"learner.weights_bind=tcp://127.0.0.1:{port + 1}",
        "agent.num_critics=2", "agent.hidden_dims=[16,16]", "learner.batch_size=4",
        "learner.min_transitions=4"])
    node = Learner(task, tmp_path / "run", quiet=True)
    n = 6  # a first episode, so that updates can start
    node.ingest.online.add_batch(
        {"state": np.zeros((n + 1, node.spec.state_size), np.float32), "images": {}},
        np.zeros((n, node.spec.action_size), np.float32), np.zeros(n, np.float32),
        np.arange(n) == n - 1, np.zeros(n, bool),
        extras={name: np.zeros(n, np.float32) for name in node.ingest.online.extras})
    in_update, release = threading.Event(), threading.Event()
    real_update = sac.update

    def held(state, batch):
        in_update.set()
        assert release.wait(300), "the transitions never reached the buffer"
        return real_update(state, batch)

    monkeypatch.setattr(sac, "update", held)
    loop = threading.Thread(target=node.run)
    loop.start()
    client = None
    try:
        assert in_update.wait(300)
        before = len(node.ingest.online)
        client = ActorClient("a0", node.server.endpoint, node.server.weights_endpoint,
                             node.schema, str(tmp_path / "spill"))
        for i in range(10):
            step = {name: np.full(spec.shape, i, spec.dtype)
                    for name, spec in node.schema.step_fields().items()}
            step.update(terminated=np.bool_(i == 9), truncated=np.bool_(False),
                        intervened=np.bool_(False))
            step["next_obs/state"] = np.full_like(step["obs/state"], i + 1)
            client.send_transition(unflatten(step))
        wait_for(lambda: len(node.ingest.online) == before + 10, timeout=300)
        assert not release.is_set() and node._step == 0  # all while the first update ran
    finally:
        release.set()
        node.stop()
        loop.join(300)
        if client is not None:
            client.close()


def test_learner_cli_refuses_a_used_run_dir_and_an_open_bind(tmp_path, capsys):
    from hilrl.cli import main

    small = ["agent.hidden_dims=[8]", "learner.bind=tcp://127.0.0.1:0",
             "learner.weights_bind=tcp://127.0.0.1:0"]
    (tmp_path / "learner" / "log" / "a0").mkdir(parents=True)
    assert main(["learner", "--run-dir", str(tmp_path), "env.cameras=[]", *small]) == 2
    assert "pass --resume" in capsys.readouterr().err

    open_bind = ["learner.bind=tcp://0.0.0.0:0", "learner.weights_bind=tcp://0.0.0.0:0"]
    assert main(["learner", "--run-dir", str(tmp_path / "other"), "env.cameras=[]",
                 "agent.hidden_dims=[8]", *open_bind]) == 2
    assert "refusing to bind" in capsys.readouterr().err


def test_the_learner_rate_counts_critic_updates(monkeypatch):
    """updates/s means critic updates everywhere: update calls x utd."""
    import learner.node as node

    now = [100.0]
    monkeypatch.setattr(node.time, "monotonic", lambda: now[0])
    calls, per_call = node._Rate(), node._Rate(per_tick=4)
    for _ in range(11):  # 10 intervals of 0.5 s: 2 update calls per second
        calls.tick()
        per_call.tick()
        now[0] += 0.5
    now[0] -= 0.5
    assert calls.value == pytest.approx(2.0)
    assert per_call.value == pytest.approx(8.0)


def test_return_bound_is_the_largest_return_the_rewards_allow():
    from hilrl.learning.sac import return_bound

    ends = np.array([False, False, True])
    assert return_bound([0.0, 0.0, 1.0], ends, 0.97) == 1.0  # sparse success that ends it
    assert return_bound([-1.0, 0.0, 2.0], ends, 0.97) == 2.0  # penalties add nothing
    assert return_bound([0.5, 0.0, 1.0], ends, 0.9) == pytest.approx(0.5 / 0.1 + 1.0)
    assert return_bound([0.5, 0.0, 1.0], ends, 1.0) == float("inf")
    assert return_bound([], np.zeros(0, bool), 0.97) == float("inf")


def test_the_learner_warns_when_q_stays_above_any_return_the_rewards_allow(tmp_path, capsys):
    from hilrl.cli.train_sim import free_port_pair
    from learner.node import Q_TOO_HIGH_RECORDS, Learner

    port = free_port_pair()
    task = load_task(ROOT / "tasks" / "sim_pick_cube.yaml", [
        f"learner.bind=tcp://127.0.0.1:{port}", f"learner.weights_bind=tcp://127.0.0.1:{port + 1}",
        "agent.num_critics=2"])
    node = Learner(task, tmp_path / "run", quiet=False)
    try:
        n = 6  # one episode: no reward until the success that ends it
        reward, ends = np.zeros(n, np.float32), np.zeros(n, bool)
        reward[-1] = ends[-1] = 1
        node.ingest.online.add_batch(
            {"state": np.zeros((n + 1, node.spec.state_size), np.float32), "images": {}},
            np.zeros((n, node.spec.action_size), np.float32), reward, ends, np.zeros(n, bool),
            extras={name: np.zeros(n, np.float32) for name in node.ingest.online.extras})
        capsys.readouterr()
        # A record below the bound (with margin) breaks the streak; the warning comes only
        # after Q_TOO_HIGH_RECORDS records above it in a row.
        qs = [2.8] * (Q_TOO_HIGH_RECORDS - 1) + [1.4] + [2.8] * Q_TOO_HIGH_RECORDS
        for i, q in enumerate(qs):
            values = {"train/q": q}
            node._check_q(values)
            assert values["train/q_bound"] == 1.0
            err = capsys.readouterr().err
            assert ("WARNING" in err) == (i == len(qs) - 1), (i, err)
        assert "mean Q (2.80)" in err and "(1.00)" in err and "agent.num_critics: 10" in err
    finally:
        node.close()
