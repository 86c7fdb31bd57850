"""The ``hilrl`` command: record-demos and inspect, in process through ``hilrl.cli.main`` and
once as a real subprocess. The scripted expert records the demos on the simulated robot."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from actor.env_factory import make_env
from hilrl.cli import main
from hilrl.cli.child import STOP_GRACE_S
from hilrl.cli.train_sim import _tail_text
from hilrl.config import TaskConfig, load_task
from hilrl.config.io import from_dict
from hilrl.storage.dataset import (
    DatasetWriter,
    Episode,
    list_episodes,
    read_dataset,
    read_dataset_info,
)

SMALL = "env.image_size=[32,32]"
SIZE = (32, 32)


def record(out: Path, *args: str, episodes: int = 2) -> int:
    return main(["record-demos", "--out", str(out), "--episodes", str(episodes), *args])


def no_traceback(captured) -> None:
    assert "Traceback" not in captured.out + captured.err


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    """Two demos with 32x32 images, recorded once; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("demos") / "demos"
    assert record(out, SMALL) == 0
    return out


@pytest.fixture
def demos_copy(demos, tmp_path) -> Path:
    return Path(shutil.copytree(demos, tmp_path / "copy"))


def expected_spec(task: TaskConfig, images: bool) -> dict:
    """What the env for ``task`` produces, asked of the env itself rather than the recorder."""
    stack = make_env(task, images=images)
    try:
        obs, _ = stack.env.reset(seed=0)
        return {
            "state_size": int(obs["state"].shape[0]),
            "images": {name: list(img.shape) for name, img in obs["images"].items()},
            "action_size": int(stack.env.action_space.shape[0]),
        }
    finally:
        stack.close()


# --- record-demos -----------------------------------------------------------------------


@pytest.mark.parametrize("images", [True, False], ids=["images", "no-images"])
def test_record_demos_writes_successful_demos(tmp_path, capsys, demos, images):
    if images:
        out = demos
    else:
        out = tmp_path / "demos"
        assert record(out, SMALL, "--no-images") == 0
        captured = capsys.readouterr()
        assert "recorded 2 successful demos" in captured.out
        no_traceback(captured)

    task = load_task(None, [SMALL])
    info = read_dataset_info(out)
    spec = expected_spec(task, images)
    assert info["spec"] == spec
    assert info["kind"] == "demos"
    assert from_dict(TaskConfig, info["task"]) == task  # the task that made it, exactly
    if images:
        assert set(spec["images"]) == {c.name for c in task.env.cameras}
    else:
        assert spec["images"] == {}

    episodes = read_dataset(out)
    assert len(episodes) == len(list_episodes(out)) == 2
    for ep in episodes:
        t = ep.length
        assert 1 < t <= task.env.max_episode_steps
        assert ep.reward[-1] == 1.0 and (ep.reward[:-1] == 0).all()
        assert ep.terminated[-1] and not ep.terminated[:-1].any()
        assert not ep.truncated.any()
        assert ep.intervened.all()
        assert ep.extras["success"][-1] and not ep.extras["success"][:-1].any()
        assert ep.meta["success"] is True and ep.meta["interventions"] == t
        assert ep.state.shape == (t + 1, spec["state_size"])
        assert ep.action.shape == (t, spec["action_size"])
        assert np.abs(ep.action).max() <= 1.0
        assert (ep.action[:, -1] == 1.0).any()  # the expert closed the gripper at some point
        assert set(ep.images) == set(spec["images"])
        for cam, frames in ep.images.items():
            assert frames.shape == (t + 1, *SIZE, 3) and frames.dtype == np.uint8
            # A camera that shows something, and something that changes as the arm moves.
            assert frames[0].std() > 5, f"camera {cam} renders a blank frame"
            assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1, f"{cam} is frozen"
    # Different seeds, so the cube starts elsewhere (visible in the first front frame).
    assert episodes[0].meta["seed"] != episodes[1].meta["seed"]
    if images:
        assert not np.array_equal(episodes[0].images["front"][0], episodes[1].images["front"][0])


def test_dataset_round_trip_is_exact(demos, tmp_path):
    original = read_dataset(demos)
    info = read_dataset_info(demos)
    writer = DatasetWriter(tmp_path / "again", info)
    for ep in original:
        writer.write(ep)
    again = read_dataset(tmp_path / "again")
    assert read_dataset_info(tmp_path / "again") == info

    def arrays(ep: Episode) -> dict[str, np.ndarray]:
        out = {name: getattr(ep, name) for name in
               ("state", "action", "reward", "terminated", "truncated", "intervened")}
        out |= {f"images/{k}": v for k, v in ep.images.items()}
        out |= {f"extras/{k}": v for k, v in ep.extras.items()}
        return out

    assert len(again) == len(original)
    for a, b in zip(original, again, strict=True):
        assert a.meta == b.meta
        arrays_a, arrays_b = arrays(a), arrays(b)
        assert arrays_a.keys() == arrays_b.keys()
        assert {"images/front", "images/wrist", "extras/success"} <= arrays_a.keys()
        for name, arr in arrays_a.items():
            assert arrays_b[name].dtype == arr.dtype, name
            np.testing.assert_array_equal(arrays_b[name], arr, err_msg=name)


def test_record_demos_appends_refuses_another_spec_and_overwrites(demos_copy, capsys):
    out = demos_copy
    before = snapshot(out)
    assert record(out, SMALL) == 0
    files = [p.name for p in list_episodes(out)]
    assert files == [f"episode_{i:06d}.npz" for i in range(4)]
    after = snapshot(out)
    # Appending leaves the existing episodes and meta.json (with its info) untouched.
    assert all(after[name] == data for name, data in before.items())

    episodes = read_dataset(out)
    seeds = [ep.meta["seed"] for ep in episodes]
    assert len(set(seeds)) == 4, f"appended demos repeat seeds: {seeds}"
    first_frames = {ep.images["front"][0].tobytes() for ep in episodes}
    assert len(first_frames) == 4, "appended demos start from scenes already recorded"
    capsys.readouterr()

    # State-only demos do not fit a dataset of image demos: refused, nothing changes.
    assert record(out, SMALL, "--no-images", episodes=1) == 2
    captured = capsys.readouterr()
    no_traceback(captured)
    assert "hilrl: error:" in captured.err
    assert "spec" in captured.err and "--overwrite" in captured.err
    assert snapshot(out) == after

    # Same for a different image size.
    assert record(out, "env.image_size=[24,24]", episodes=1) == 2
    assert "spec" in capsys.readouterr().err
    assert snapshot(out) == after

    # --overwrite starts the dataset over with the new spec.
    assert record(out, SMALL, "--no-images", "--overwrite", episodes=1) == 0
    assert len(list_episodes(out)) == 1
    assert read_dataset_info(out)["spec"]["images"] == {}
    (ep,) = read_dataset(out)
    assert ep.images == {} and ep.reward[-1] == 1.0


@pytest.mark.parametrize("bad", ["0", "-3", "two"])
def test_record_demos_rejects_a_bad_episode_count(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        main(["record-demos", "--out", str(tmp_path / "d"), "--episodes", bad, "--no-images"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "--episodes" in captured.err
    no_traceback(captured)
    assert not (tmp_path / "d").exists()


def test_record_demos_reads_a_task_file(tmp_path, capsys):
    task_file = tmp_path / "task.yaml"
    task_file.write_text("name: my_task\nenv:\n  hz: 20\n  max_episode_steps: 120\n")
    out = tmp_path / "demos"
    assert main(["record-demos", "--task", str(task_file), "--out", str(out), "--episodes", "1",
                 "--no-images", "env.max_translation=0.03"]) == 0
    task = from_dict(TaskConfig, read_dataset_info(out)["task"])
    assert (task.name, task.env.hz, task.env.max_episode_steps) == ("my_task", 20.0, 120)
    assert task.env.max_translation == 0.03  # overrides apply on top of the file
    assert read_dataset(out)[0].reward[-1] == 1.0


# --- inspect ------------------------------------------------------------------------------


def test_inspect_summarises_a_dataset(demos, capsys):
    assert main(["inspect", str(demos)]) == 0
    captured = capsys.readouterr()
    no_traceback(captured)
    episodes = read_dataset(demos)
    lines = captured.out.splitlines()
    assert f"2 episodes, {sum(ep.length for ep in episodes)} steps" in lines
    for i, ep in enumerate(episodes):
        line = next(x for x in lines if x.startswith(f"episode {i}:"))
        assert f"{ep.length} steps" in line and "return 1" in line
        assert f"{ep.length} intervened" in line
        assert "front 32x32" in line and "wrist 32x32" in line
    assert '"state_size"' in captured.out  # the spec is part of the summary


def test_inspect_an_empty_dataset(tmp_path, capsys):
    DatasetWriter(tmp_path / "empty", {"kind": "demos"})
    assert main(["inspect", str(tmp_path / "empty")]) == 0
    assert "0 episodes, 0 steps" in capsys.readouterr().out


def _garbage_in_middle(file: Path) -> None:
    data = bytearray(file.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(range(0xA0, 0xE0))
    file.write_bytes(bytes(data))


def _truncate_half(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:len(data) // 2])


def _encrypted_flag(file: Path) -> None:
    """One flipped bit in the zip's central directory: the member claims to be encrypted."""
    data = bytearray(file.read_bytes())
    entry = data.index(b"PK\x01\x02")
    data[entry + 8] |= 0x01  # general purpose flag bit 0: encrypted
    file.write_bytes(bytes(data))


def _broken_npy_header(file: Path) -> None:
    """The state array's .npy header loses its closing parenthesis (a damaged header)."""
    with zipfile.ZipFile(file) as z:
        members = {info: z.read(info) for info in z.infolist()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for info, payload in members.items():
            if info.filename == "state.npy":
                header_end = payload.index(b"\n") + 1
                header = payload[:header_end]
                assert b"), }" in header
                payload = header.replace(b"), }", b" , }") + payload[header_end:]
            z.writestr(info, payload)
    file.write_bytes(buf.getvalue())


@pytest.mark.parametrize("damage", [_garbage_in_middle, _truncate_half, _encrypted_flag,
                                    _broken_npy_header],
                         ids=["garbage", "truncated", "encrypted-flag", "npy-header"])
def test_inspect_reports_a_damaged_episode(demos_copy, capsys, damage):
    file = demos_copy / "episode_000001.npz"
    damage(file)
    assert main(["inspect", str(demos_copy)]) == 2
    captured = capsys.readouterr()
    no_traceback(captured)
    assert captured.err.startswith("hilrl: error:")
    assert str(file) in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "episode 0:" in captured.out  # the intact episode before it was summarised


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("override, names", [
    ("env.hzz=3", ["env.hzz"]),
    ("env.hz=-1", ["env", "hz", "-1"]),
    ("device.expert.takeover=sometimes", ["device.expert.takeover"]),
    ("device.expert.style=robotic", ["device.expert.style"]),
    ("device.expert.pause_steps=[5,2]", ["pause_steps", "[5, 2]"]),
])
def test_bad_override_exits_2_naming_the_key(tmp_path, capsys, override, names):
    out = tmp_path / "d"
    assert record(out, "--no-images", override, episodes=1) == 2
    captured = capsys.readouterr()
    no_traceback(captured)
    assert captured.err.startswith("hilrl: error:")
    for name in names:
        assert name in captured.err
    assert not out.exists()  # nothing is created for a task that does not load


def test_missing_task_file_or_dataset_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["record-demos", "--task", str(missing), "--out", str(tmp_path / "d")]) == 2
    captured = capsys.readouterr()
    no_traceback(captured)
    assert str(missing) in captured.err
    assert not (tmp_path / "d").exists()

    assert main(["inspect", str(tmp_path / "no_dataset")]) == 2
    captured = capsys.readouterr()
    no_traceback(captured)
    assert "no_dataset" in captured.err


# --- the real entry point -----------------------------------------------------------------


def test_module_entry_point_in_a_subprocess(tmp_path):
    out = tmp_path / "demos"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}

    def hilrl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hilrl.cli", *args], capture_output=True,
                              text=True, timeout=120, env=env, cwd=tmp_path)

    done = hilrl("record-demos", "--out", str(out), "--episodes", "1", "--no-images")
    assert done.returncode == 0, done.stderr
    assert "recorded 1 successful demos" in done.stdout
    assert len(list_episodes(out)) == 1

    done = hilrl("inspect", str(out))
    assert done.returncode == 0, done.stderr
    assert "1 episodes" in done.stdout

    done = hilrl("inspect", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert done.stderr.startswith("hilrl: error:") and "Traceback" not in done.stderr


@pytest.mark.parametrize("pixels", [False, True])
def test_train_sim_picks_task_files_that_exist_and_load(pixels, capsys):
    """The README's main command runs the task file train-sim picks by itself; it must be the
    one shipped in tasks/ (a path computed from this module's location broke once already,
    when the module moved)."""
    import argparse

    from hilrl.cli.train_sim import _choose_task

    args = argparse.Namespace(pixels=pixels, task=None, encoder="auto")
    task, _ = _choose_task(args)
    assert task.parent == Path(__file__).resolve().parent.parent / "tasks"
    assert load_task(task).name == task.stem


def test_train_sim_refuses_a_used_run_dir_and_a_zero_budget(tmp_path, capsys):
    """A used run directory would mix an earlier run's files (status, summary) into the new
    run's figures: train-sim refuses it before starting anything, exit 2 (a failed run)."""
    run = tmp_path / "run"
    (run / "learner").mkdir(parents=True)
    assert main(["train-sim", "--run-dir", str(run), "--no-progress"]) == 2
    assert "holds an earlier run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["learner"]  # nothing started
    fresh = tmp_path / "fresh"
    assert main(["train-sim", "--run-dir", str(fresh), "--no-progress",
                 "--max-updates", "0"]) == 2
    assert "--max-updates" in capsys.readouterr().err
    assert main(["train-sim", "--run-dir", str(fresh), "--no-progress",
                 "--stop-rounds", "0"]) == 2
    assert "--stop-rounds" in capsys.readouterr().err
    assert not fresh.exists()


def test_train_sim_tries_another_port_pair_when_the_learner_port_is_taken(tmp_path, capsys,
                                                                           monkeypatch):
    """Another process may take the free port train-sim found before its learner binds it:
    the learner exits at once, and train-sim starts both nodes again on a new pair."""
    import socket

    import hilrl.cli.train_sim as train_sim

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    pairs = iter([busy, train_sim.free_port_pair()])
    monkeypatch.setattr(train_sim, "free_port_pair", lambda: next(pairs))
    run = tmp_path / "run"
    try:
        code = main(["train-sim", "--run-dir", str(run), "--no-progress", "--demos", "1",
                     "--max-updates", "3", "--final-eval", "0", "env.cameras=[]",
                     "agent.hidden_dims=[16,16]", "learner.min_transitions=10",
                     "learner.batch_size=8"])
    finally:
        taken.close()
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"port {busy} or {busy + 1} was taken" in out
    assert "update budget spent" in out


def _children(pid: int) -> dict[int, str]:
    """The live processes whose parent is ``pid``, by their command line."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # it exited while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(stat.parent.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_train_sim_stopped_by_a_signal_takes_its_learner_and_actor_with_it(tmp_path, sig):
    """A scheduler's SIGTERM, or a SIGKILL no handler sees (the OOM killer), ends train-sim's
    learner and actor too: left running, they trained on as orphans."""
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hilrl.cli", "train-sim", "--run-dir", str(run), "--no-progress",
         "--demos", "1", "--minutes", "0", "--max-updates", "100000000", "--final-eval", "0",
         "env.cameras=[]", "agent.hidden_dims=[16,16]", "learner.min_transitions=10",
         "learner.batch_size=8"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    episodes = run / "actors" / "actor0" / "episodes.jsonl"
    deadline = time.monotonic() + 600  # a guard against a hang; the event is the episode
    nodes: dict[int, str] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        nodes = {p: c for p, c in _children(proc.pid).items()
                 if " learner --task " in c or " actor --task " in c}
        if len(nodes) == 2 and episodes.exists() and episodes.stat().st_size > 0:
            break
        time.sleep(0.2)
    assert proc.poll() is None and len(nodes) == 2, proc.communicate()[0] if proc.poll() else nodes
    proc.send_signal(getattr(signal, sig))
    out = proc.communicate(timeout=300)[0]
    if sig == "SIGTERM":
        assert proc.returncode == 128 + signal.SIGTERM, out
        assert "terminated (SIGTERM)" in out and "Traceback" not in out
    else:
        assert proc.returncode == -signal.SIGKILL
    # A step that does not stop on SIGTERM is ended STOP_GRACE_S after train-sim died.
    guard = time.monotonic() + STOP_GRACE_S + 60
    while time.monotonic() < guard and any(_alive(p) for p in nodes):
        time.sleep(0.2)
    orphans = [c for p, c in nodes.items() if _alive(p)]
    assert not orphans, (orphans, *(_tail_text(run / f"{n}.out", 60)
                                    for n in ("learner", "actor")))


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG and /proc")
def test_a_step_that_ignores_sigterm_is_ended_after_the_grace_when_its_parent_dies(tmp_path):
    """hilrl.cli.child's last resort: a train-sim step still running STOP_GRACE_S after
    train-sim died prints its threads' stacks and exits, rather than run on as an orphan."""
    import signal
    import time

    (tmp_path / "stubborn.py").write_text(
        "import signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\n"
        "while True:\n"
        "    signal.pause()\n")
    out = tmp_path / "child.out"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import os, signal, subprocess, sys\n"
         f"f = open({str(out)!r}, 'wb')\n"
         "p = subprocess.Popen([sys.executable, '-m', 'hilrl.cli.child', str(os.getpid()), "
         "'stubborn'], stdout=f, stderr=subprocess.STDOUT)\n"
         "print(p.pid, flush=True)\n"
         "signal.pause()  # until the test kills it\n"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "HILRL_STOP_GRACE_S": "1",
             "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])})
    child = int(parent.stdout.readline())
    guard = time.monotonic() + 120  # a guard against a hang; the events are the outputs
    while time.monotonic() < guard and b"ignoring SIGTERM" not in out.read_bytes():
        time.sleep(0.05)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    while time.monotonic() < guard and _alive(child):
        time.sleep(0.05)
    text = out.read_text()
    assert not _alive(child), text
    assert "parent process" in text and "exited" in text, text
    assert 'File "' in text and "stubborn.py" in text, text  # the stacks, for the why
