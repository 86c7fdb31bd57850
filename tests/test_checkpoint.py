from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hilrl.storage.checkpoint import (
    MANIFEST_NAME,
    CheckpointCorruptError,
    Checkpointer,
    CheckpointError,
    CheckpointIncompleteError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        x = nn.LayerNorm()(x)
        # one bfloat16 layer so bf16 params and bf16 adam moments are covered
        x = nn.relu(nn.Dense(16, param_dtype=jnp.bfloat16, dtype=jnp.float32)(x))
        return nn.Dense(2)(x)


model = MLP()
tx = optax.adam(1e-2)
alpha_tx = optax.adam(1e-3)


@jax.jit
def _init_arrays(key: jax.Array, log_alpha: jax.Array):
    params = model.init(key, jnp.zeros((1, 4)))
    return params, tx.init(params), alpha_tx.init(log_alpha)


def make_state(seed: int) -> dict:
    """A realistic learner state: params, adam states, both key kinds, step, log_alpha."""
    log_alpha = jnp.asarray(np.log(0.1) + seed, jnp.float32)
    params, opt_state, alpha_opt_state = _init_arrays(jax.random.key(seed), log_alpha)
    return {
        "params": params,
        "opt_state": opt_state,
        "log_alpha": log_alpha,
        "alpha_opt_state": alpha_opt_state,
        "rng": jax.random.key(seed + 100),  # new-style typed key
        "raw_rng": jax.random.PRNGKey(seed + 200),  # legacy uint32[2] key
        "step": seed * 7,  # plain Python int
    }


@jax.jit
def _update(s: dict, batch: jax.Array):
    rng, k1 = jax.random.split(s["rng"])
    raw_rng, k2 = jax.random.split(s["raw_rng"])
    noisy = batch + 0.1 * jax.random.normal(k1, batch.shape) \
        + 0.1 * jax.random.normal(k2, batch.shape)

    def loss_fn(params, log_alpha):
        out = model.apply(params, noisy)
        return jnp.mean(out**2) + jnp.exp(log_alpha) * jnp.mean(out[:, 0])

    loss, (g, ga) = jax.value_and_grad(loss_fn, argnums=(0, 1))(s["params"], s["log_alpha"])
    upd, opt_state = tx.update(g, s["opt_state"], s["params"])
    aupd, alpha_opt_state = alpha_tx.update(ga, s["alpha_opt_state"])
    new = dict(s, params=optax.apply_updates(s["params"], upd), opt_state=opt_state,
               log_alpha=s["log_alpha"] + aupd, alpha_opt_state=alpha_opt_state, rng=rng,
               raw_rng=raw_rng)
    return new, loss


def update(s: dict, batch: jax.Array):
    step = s["step"]
    new, loss = _update(dict(s, step=0), batch)
    return dict(new, step=step + 1), loss


def train(s: dict, n: int):
    batch = jnp.linspace(-1, 1, 32).reshape(8, 4)
    losses = []
    for _ in range(n):
        s, loss = update(s, batch)
        losses.append(loss)
    return s, jnp.stack(losses)


def _raw(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return str(jax.random.key_impl(x)), np.asarray(jax.random.key_data(x))
    return None, np.asarray(x)


def assert_bit_exact(a, b):
    fa = jax.tree_util.tree_flatten_with_path(a)
    fb = jax.tree_util.tree_flatten_with_path(b)
    assert fa[1] == fb[1]  # same tree structure (namedtuples, dicts, ...)
    for (path, x), (_, y) in zip(fa[0], fb[0], strict=True):
        name = jax.tree_util.keystr(path)
        assert type(x) is type(y), name
        (ix, x), (iy, y) = _raw(x), _raw(y)
        assert ix == iy, name
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name


@pytest.fixture
def trained():
    state, _ = train(make_state(0), 3)
    return state


def _data_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in (step_dir / "state").rglob("*")
                  if p.is_file() and p.parent.name == "d")


def test_roundtrip_bit_exact_and_training_continues(tmp_path, trained):
    threads_before = set(threading.enumerate())
    with Checkpointer(tmp_path / "ckpt") as ck:
        assert ck.latest_step() is None
        ck.save(3, trained, {"config": {"lr": 1e-2}, "episodes": 12})
        assert ck.latest_step() == 3
        fresh = make_state(5)  # same structure, different values everywhere
        state, extra = ck.restore(fresh)
    assert extra == {"config": {"lr": 1e-2}, "episodes": 12}
    assert_bit_exact(state, trained)
    p = state["params"]["params"]
    assert p["Dense_1"]["kernel"].dtype == jnp.bfloat16
    assert state["opt_state"][0].mu["params"]["Dense_1"]["kernel"].dtype == jnp.bfloat16
    assert state["opt_state"][0].count.dtype == jnp.int32 and int(
        state["opt_state"][0].count) == 3
    assert str(jax.random.key_impl(state["rng"])) == "threefry2x32"
    assert state["raw_rng"].dtype == jnp.uint32 and state["step"] == 3
    # training continues identically from the restored state
    a, la = train(trained, 3)
    b, lb = train(state, 3)
    assert jnp.array_equal(la, lb)
    assert_bit_exact(a, b)
    # no orbax background threads left behind (saving is synchronous)
    assert set(threading.enumerate()) <= threads_before


def test_rbg_typed_key_and_retention(tmp_path):
    s = {"k": jax.random.key(1, impl="rbg"), "x": jnp.arange(3.0), "step": 0}
    with Checkpointer(tmp_path, max_to_keep=2) as ck:
        for step in (10, 20, 30):
            ck.save(step, dict(s, step=step))
        assert ck.all_steps() == [20, 30]
        out, extra = ck.restore({"k": jax.random.key(9, impl="rbg"), "x": jnp.zeros(3),
                                 "step": 0}, step=20)
        assert extra == {}
        assert_bit_exact(out, dict(s, step=20))
        # threefry target vs rbg checkpoint: refused, with the key named
        with pytest.raises(CheckpointMismatchError, match="'k'"):
            ck.restore({"k": jax.random.key(0), "x": jnp.zeros(3), "step": 0})
        # steps must increase; orbax alone would silently return False here
        with pytest.raises(CheckpointError, match="already exists"):
            ck.save(30, s)
        with pytest.raises(CheckpointError, match="must increase"):
            ck.save(25, s)


def test_target_mismatch_names_the_key(tmp_path, trained):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, trained)
        bad = make_state(1)
        del bad["log_alpha"]
        with pytest.raises(CheckpointMismatchError, match="log_alpha"):
            ck.restore(bad)
        bad = make_state(1)
        bad["params"]["params"]["Dense_2"]["kernel"] = jnp.zeros((16, 3))
        with pytest.raises(CheckpointMismatchError, match="params/params/Dense_2/kernel.*shape"):
            ck.restore(bad)
        # orbax would cast float32 -> bfloat16 silently; we refuse
        bad = make_state(1)
        bad["params"]["params"]["Dense_0"]["kernel"] = jnp.zeros((4, 16), jnp.bfloat16)
        with pytest.raises(CheckpointMismatchError, match="Dense_0/kernel.*dtype"):
            ck.restore(bad)
        with pytest.raises(CheckpointNotFoundError, match="step 7"):
            ck.restore(trained, step=7)
    with Checkpointer(tmp_path / "empty") as ck, pytest.raises(CheckpointNotFoundError):
        ck.restore(trained)


def test_corrupt_latest_falls_back(tmp_path, trained, caplog):
    states = {}
    with Checkpointer(tmp_path) as ck:
        s = trained
        for step in (1, 2, 3):
            s, _ = train(s, 1)
            states[step] = s
            ck.save(step, s, {"step": step})
    # flip one bit in one array chunk of the newest checkpoint
    victim = _data_files(tmp_path / "3")[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 3  # listing does not read data ...
        with pytest.raises(CheckpointCorruptError, match=f"step 3.*{victim.name}.*sha256"):
            ck.restore(make_state(1))  # ... restore does, and says which file
        state, extra = ck.restore(make_state(1), step=2)  # explicit fallback
        assert_bit_exact(state, states[2])
        assert extra == {"step": 2}
        step, state, extra = ck.restore_latest_valid(make_state(1))
        assert step == 2 and extra == {"step": 2}
        assert_bit_exact(state, states[2])
        assert "skipping checkpoint step 3" in caplog.text
        # the corrupt step was moved aside (kept for inspection), so step 3 can be re-saved
        assert ck.all_steps() == [1, 2]
        assert [p.name.split("-")[0] for p in (tmp_path / "quarantine").iterdir()] == ["3"]
        ck.save(3, state)
        assert ck.latest_step() == 3
    # a deleted file and a truncated file are caught too
    (tmp_path / "2" / "extra" / "metadata").unlink()
    victim = _data_files(tmp_path / "1")[0]
    victim.write_bytes(victim.read_bytes()[:-3])
    with Checkpointer(tmp_path, read_only=True) as ck:
        with pytest.raises(CheckpointCorruptError, match="extra/metadata is missing"):
            ck.restore(trained, step=2)
        with pytest.raises(CheckpointCorruptError, match="bytes, expected"):
            ck.restore(trained, step=1)


_CHILD = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    from hilrl.storage import checkpoint
    directory, where = sys.argv[1], sys.argv[2]
    ck = checkpoint.Checkpointer(directory)
    ck.save(1, {"w": jnp.full((64, 64), 1.0), "step": 1})
    if where == "orbax":  # die inside orbax, after the arrays are written, before the rename
        from orbax.checkpoint._src.path import atomicity
        for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
            cls.finalize = lambda self: os._exit(17)
    else:  # die after orbax finalised the step dir, before our manifest commits it
        checkpoint.Checkpointer._commit = lambda self, step, state: os._exit(17)
    ck.save(2, {"w": jnp.full((64, 64), 2.0), "step": 2})
    os._exit(0)
""")


@pytest.mark.parametrize("where", ["orbax", "commit"])
def test_killed_save_is_never_restored(tmp_path, where):
    """A process that dies mid-save leaves nothing that latest_step/restore would pick."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), where], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr[-2000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    target = {"w": jnp.zeros((64, 64)), "step": 0}
    if where == "orbax":
        assert any(".orbax-checkpoint-tmp" in n for n in names), names
    else:
        assert "2" in names and not (tmp_path / "2" / MANIFEST_NAME).exists()

    with Checkpointer(tmp_path, read_only=True) as ro:  # a reader touches nothing
        assert ro.latest_step() == 1
        state, _ = ro.restore(target)
        assert state["step"] == 1 and float(state["w"][0, 0]) == 1.0
        if where == "commit":
            assert ro.incomplete_steps() == [2]
            with pytest.raises(CheckpointIncompleteError, match="interrupted"):
                ro.restore(target, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == names

    with Checkpointer(tmp_path) as ck:  # the writer cleans up and can save step 2 again
        assert not any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())
        ck.save(2, {"w": jnp.full((64, 64), 2.0), "step": 2})
        state, _ = ck.restore(target)
        assert state["step"] == 2 and float(state["w"][0, 0]) == 2.0
        assert ck.all_steps() == [1, 2]


_CHILD_PRUNE = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    from hilrl.storage import checkpoint
    ck = checkpoint.Checkpointer(sys.argv[1], max_to_keep=1)
    ck.save(1, {"w": jnp.full((8, 8), 1.0), "step": 1})

    def killed_half_way(path):  # delete one file of the old step, then die
        victim = next(p for p in sorted(checkpoint.Path(path).rglob("*")) if p.is_file())
        victim.unlink()
        os._exit(17)

    checkpoint.shutil.rmtree = killed_half_way
    ck.save(2, {"w": jnp.full((8, 8), 2.0), "step": 2})  # commits 2, then prunes 1
    os._exit(0)
""")


def test_a_kill_while_an_old_step_is_deleted_leaves_every_committed_step_whole(tmp_path):
    """Retention deletes old steps; a process killed half-way through a delete must not
    leave a committed step whose manifest lists files that are gone."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _CHILD_PRUNE, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr[-2000:]
    target = {"w": jnp.zeros((8, 8)), "step": 0}
    with Checkpointer(tmp_path, read_only=True) as ro:
        assert ro.all_steps() == [2]
        for step in ro.all_steps():
            ro.verify(step)
        state, _ = ro.restore(target)
        assert state["step"] == 2
    with Checkpointer(tmp_path):  # the writer clears what the killed delete left
        assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]


def test_read_only_and_validation(tmp_path, trained):
    with pytest.raises(CheckpointNotFoundError):
        Checkpointer(tmp_path / "missing", read_only=True)
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(TypeError, match="JSON"):
            ck.save(1, trained, {"x": object()})
        assert ck.all_steps() == []
        ck.save(1, trained)
    with Checkpointer(tmp_path, read_only=True) as ro:
        with pytest.raises(CheckpointError, match="read-only"):
            ro.save(2, trained)
        assert ro.restore(make_state(2))[0]["step"] == trained["step"]
