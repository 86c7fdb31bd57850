"""The learner's update split over several devices gives the one-device result.

This CPU has one device; the multi-device checks run in a child process whose XLA makes
two host devices (``--xla_force_host_platform_device_count``), as it must be told before
JAX starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hilrl.learning.data_parallel import device_count

ROOT = Path(__file__).resolve().parents[1]


def _run_child(code: str, *args: str) -> str:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


_UPDATE = """
import jax, numpy as np
from hilrl.learning import data_parallel, sac
from test_sac import A, B, _batch, _example_obs, _tiny_config

assert len(jax.devices()) == 2
config = _tiny_config(utd=2)
one = two = sac.create(config, _example_obs(), A)
dp = data_parallel.local(None, B)
assert len(dp.devices) == 2
two = dp.replicate(two)
for seed in range(3):
    batch = _batch(B * config.utd, seed)
    one, info_one = sac.update(one, batch)
    split = dp.shard(batch)
    # Each device holds its own half of the rows, not a copy of all of them.
    assert {s.data.shape[0] for s in split["reward"].addressable_shards} == {B}
    two, info_two = sac.update(two, split)
worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves((one.critic_params, one.actor_params, one.log_alpha)),
                            jax.tree.leaves((two.critic_params, two.actor_params, two.log_alpha)),
                            strict=True))
assert worst < 1e-5, worst
moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(one.critic_params),
                            jax.tree.leaves(sac.create(config, _example_obs(), A).critic_params)))
assert moved > 1e-3, moved  # the updates did change the parameters
assert len(jax.tree.leaves(two.critic_params)[0].sharding.device_set) == 2
np.testing.assert_allclose(info_one["critic_loss"], info_two["critic_loss"], rtol=1e-5)
# The critic steps' slices line up with the devices' blocks: XLA moves no batch rows
# between devices, only the gradients' sums.
hlo = sac.update.lower(two, split).compile().as_text()
assert "all-reduce" in hlo
assert "all-gather" not in hlo and "collective-permute" not in hlo
print("ok", worst)
"""


def test_an_update_split_over_two_devices_equals_the_one_device_update():
    assert "ok" in _run_child(_UPDATE)


_LEARNER = """
import sys
from pathlib import Path
import jax, numpy as np
from hilrl.cli.train_sim import free_port_pair
from hilrl.config import load_task
from learner.node import Learner

run, root = Path(sys.argv[1]), Path(sys.argv[2])
port = free_port_pair()
task = load_task(root / "tasks" / "sim_pick_cube.yaml", [
    f"learner.bind=tcp://127.0.0.1:{port}", f"learner.weights_bind=tcp://127.0.0.1:{port + 1}",
    "agent.num_critics=2", "agent.hidden_dims=[32,32]", "learner.batch_size=8",
    "learner.min_transitions=10", "learner.max_updates=" + sys.argv[3]])
node = Learner(task, run, resume=sys.argv[3] != "4", quiet=False)
n = 10  # 4 episodes of 10 steps, each ending in success
rng = np.random.default_rng(0)
for _ in range(4):
    node.ingest.online.add_batch(
        {"state": rng.normal(size=(n + 1, node.spec.state_size)).astype(np.float32),
         "images": {}},
        rng.uniform(-1, 1, (n, node.spec.action_size)).astype(np.float32),
        (np.arange(n) == n - 1).astype(np.float32), np.arange(n) == n - 1, np.zeros(n, bool),
        extras={name: np.zeros(n, np.float32) for name in node.ingest.online.extras})
steps = node.run()
on = jax.tree.leaves(node.state.critic_params)[0].sharding.device_set
print("steps", steps, "devices", len(on))
"""


def test_the_learner_trains_on_every_device_and_resumes_on_them(tmp_path):
    first = _run_child(_LEARNER, str(tmp_path / "run"), str(ROOT), "4")
    assert "training on 2 devices (cpu:0, cpu:1)" in first
    assert "steps 4 devices 2" in first
    # Its checkpoint (written from the copies on the devices) resumes onto both again.
    second = _run_child(_LEARNER, str(tmp_path / "run"), str(ROOT), "6")
    assert "resumed at step 4" in second and "steps 6 devices 2" in second


def test_device_count_takes_what_divides_the_batch_and_explains_what_does_not():
    assert device_count(1, None, 256) == 1
    assert device_count(4, None, 256) == 4
    assert device_count(3, None, 256) == 2  # 3 GPUs, batch 256: two of them take 128 each
    assert device_count(3, 3, 96) == 3
    with pytest.raises(ValueError, match="at most 2"):
        device_count(2, 4, 256, "gpu")
    with pytest.raises(ValueError, match="multiple of 3"):
        device_count(3, 3, 256)
