"""The learner's checkpoint directory fills up, then turns read-only, then recovers: the
learner says so, keeps training and acking, keeps its last good checkpoint, and the actor
keeps stepping. The directory is a real tmpfs of a few MB (needs root to mount; skipped
otherwise), so ENOSPC and EROFS come from the kernel, not from a mock."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_nodes import SMALL, TASK, Node, committed_steps, node_env, read_json, wait_for

from hilrl.cli.train_sim import free_port_pair


def _mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")


def _fill(path: Path) -> Path:
    """Take every free byte of the filesystem at ``path``."""
    filler = path / "filler"
    # Unbuffered: a buffered file would hold the bytes that did not fit and raise ENOSPC
    # again when it is closed.
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError:
            pass
    return filler


def test_full_then_read_only_checkpoint_dir(tmp_path):
    run = tmp_path / "run"
    ckpts = run / "learner" / "checkpoints"
    _mount_tmpfs(ckpts, 8)
    port = free_port_pair()
    endpoints = [f"learner.bind=tcp://127.0.0.1:{port}",
                 f"learner.weights_bind=tcp://127.0.0.1:{port + 1}"]
    learner = Node("learner", ["learner", "--task", str(TASK), "--run-dir", str(run), *SMALL,
                               *endpoints], run, node_env())
    actor = Node("actor", ["actor", "--task", str(TASK), "--run-dir", str(run), "--learner",
                           f"tcp://127.0.0.1:{port}", "actor.hz=50", "device.kind=none",
                           *SMALL], run, node_env())
    nodes = [learner, actor]
    ldir, adir = run / "learner", run / "actors" / "actor0"
    try:
        first = wait_for("a first checkpoint",
                         lambda: read_json(ldir / "status.json").get("last_checkpoint"), nodes)
        filler = _fill(ckpts)

        def failing_and_going_on(error: str, since: dict):
            """The learner printed ``error`` for a checkpoint, and since ``since`` it trained,
            took in new transitions, and the actor kept stepping."""
            s = read_json(ldir / "status.json")
            a = read_json(adir / "status.json")
            return (f"FAILED: {error}" in learner.output() and s["step"] > since["step"] + 40
                    and s["env_steps"] > since["env_steps"]
                    and a.get("env_steps", 0) > since["env_steps"])

        before = read_json(ldir / "status.json")
        wait_for("failed checkpoints (disk full) while training and acting go on",
                 lambda: failing_and_going_on("[Errno 28] No space left", before), nodes)
        full = read_json(ldir / "status.json")
        assert full["checkpoint_failures"] >= 1
        # The last good one is still the one named. It may be later than `first`: a
        # checkpoint can finish while the filler takes the space, before status.json shows it.
        good = full["last_checkpoint"]
        assert good >= first and good == max(committed_steps(ldir)), (good, first)

        filler.unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(ckpts)], check=True)
        wait_for("failed checkpoints (read-only) while training and acting go on",
                 lambda: failing_and_going_on("[Errno 30] Read-only file system", full), nodes)
        assert max(committed_steps(ldir)) == good

        subprocess.run(["mount", "-o", "remount,rw", str(ckpts)], check=True)
        wait_for("a new checkpoint once the directory is writable again",
                 lambda: (read_json(ldir / "status.json").get("last_checkpoint") or 0) > good,
                 nodes)
        assert actor.terminate() == 0
        assert learner.terminate() == 0
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.kill()
        subprocess.run(["umount", "-l", str(ckpts)], capture_output=True)
