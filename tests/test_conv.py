import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hilrl.learning.conv import Conv, patches


@pytest.mark.parametrize("kernel,stride,padding,size", [
    ((3, 3), 1, "VALID", (17, 17)), ((3, 3), 2, "VALID", (16, 13)),
    ((7, 7), 2, "SAME", (16, 13)), ((1, 1), 2, "SAME", (17, 17)), ((2, 3), 1, "VALID", (9, 8)),
    ((7, 7), 2, ((3, 3), (3, 3)), (16, 16))])
def test_matmul_conv_matches_flax_conv_and_its_gradients(kernel, stride, padding, size):
    x = jax.random.normal(jax.random.key(0), (2, *size, 5))
    ref = nn.Conv(4, kernel, strides=stride, padding=padding)
    ours = Conv(4, kernel, strides=stride, padding=padding, impl="matmul")
    params = ref.init(jax.random.key(1), x)
    # Same parameter tree: weights move freely between the two.
    assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(params)

    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=1e-5)

    def loss(module):
        return lambda p, x: (module.apply(p, x) ** 2).sum()

    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_lax_impl_matches_matmul_impl():
    x = jax.random.normal(jax.random.key(2), (1, 9, 9, 3))
    a, b = Conv(6, (3, 3), 2, impl="lax"), Conv(6, (3, 3), 2, impl="matmul")
    params = a.init(jax.random.key(3), x)
    np.testing.assert_allclose(a.apply(params, x), b.apply(params, x), atol=1e-5)


def test_patches_order_is_row_col_channel():
    x = jnp.arange(1 * 3 * 3 * 2, dtype=jnp.float32).reshape(1, 3, 3, 2)
    p = patches(x, (2, 2), 1)
    assert p.shape == (1, 2, 2, 8)
    # The patch at output (0, 1) covers input rows 0-1, cols 1-2, channels interleaved last.
    expected = np.concatenate([x[0, 0, 1], x[0, 0, 2], x[0, 1, 1], x[0, 1, 2]])
    np.testing.assert_array_equal(p[0, 0, 1], expected)


@pytest.mark.parametrize("impl", ["matmul", "lax"])
def test_input_scale_on_uint8_equals_a_conv_of_the_scaled_floats(impl):
    x = jax.random.randint(jax.random.key(4), (2, 11, 11, 3), 0, 256).astype(jnp.uint8)
    ref = nn.Conv(4, (3, 3), strides=2, padding="VALID")
    ours = Conv(4, (3, 3), 2, impl=impl, input_scale=1 / 255)
    params = ref.init(jax.random.key(5), x.astype(jnp.float32))
    scaled = x.astype(jnp.float32) / 255
    out = ours.apply(params, x)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref.apply(params, scaled), rtol=1e-5, atol=1e-6)
    g_ours = jax.grad(lambda p: (ours.apply(p, x) ** 2).sum())(params)
    g_ref = jax.grad(lambda p: (ref.apply(p, scaled) ** 2).sum())(params)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_auto_times_a_network_once_per_machine_and_remembers_it(tmp_path, monkeypatch):
    from hilrl.learning import autotune, conv
    from hilrl.learning.networks import ConvEncoder

    monkeypatch.setenv("HILRL_CACHE_DIR", str(tmp_path / "a"))
    enc = ConvEncoder((4, 4), (3, 3), (2, 2))
    x = jnp.zeros((2, 17, 17, 3), jnp.uint8)
    params = enc.init(jax.random.key(0), x)
    jax.jit(jax.grad(lambda p: enc.apply(p, x).sum()))(params)
    stored = json.loads((tmp_path / "a" / "autotune.json").read_text())[autotune.machine()]
    keys = [k for k in stored if k.startswith("ConvEncoder(features=(4, 4)")
            and " at 2x17x17x3 uint8 " in k]
    assert sorted(k.rsplit(" ", 1)[1] for k in keys) == ["forward", "train"], stored
    assert all(set(stored[k]) == set(conv.IMPLS) and min(stored[k].values()) > 0 for k in keys)
    assert not any(k.startswith("Conv(") for k in stored)  # the layers follow the network

    # Another process (here: the cache read again from disk) times nothing it holds.
    monkeypatch.setenv("HILRL_CACHE_DIR", str(tmp_path / "b"))
    enc.init(jax.random.key(0), jnp.zeros((1, 9, 9, 3), jnp.uint8))  # loads b
    monkeypatch.setenv("HILRL_CACHE_DIR", str(tmp_path / "a"))

    def no_timing(*args):
        raise AssertionError("timed a network the cache holds")

    monkeypatch.setattr(conv, "time_module", no_timing)
    jax.jit(jax.grad(lambda p: enc.apply(p, x + 1).sum()))(params)
    with pytest.raises(AssertionError, match="timed a network"):
        enc.init(jax.random.key(0), jnp.zeros((3, 17, 17, 3), jnp.uint8))  # a new shape


@pytest.mark.parametrize("impl", [("lax", "matmul"), ("matmul", "lax")])
@pytest.mark.parametrize("images", ["uint8", "float32"])
def test_a_mixed_pair_computes_the_same_conv_and_gradients(impl, images):
    x = jax.random.randint(jax.random.key(4), (2, 11, 11, 3), 0, 256).astype(images)
    ref = nn.Conv(4, (3, 3), strides=2, padding="VALID")
    ours = Conv(4, (3, 3), 2, impl=impl, input_scale=1 / 255)
    params = ref.init(jax.random.key(5), x.astype(jnp.float32))
    scaled = x.astype(jnp.float32) / 255
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, scaled),
                               rtol=1e-5, atol=1e-6)
    g_ours = jax.grad(lambda p: (ours.apply(p, x) ** 2).sum())(params)
    g_ref = jax.grad(lambda p: (ref.apply(p, scaled) ** 2).sum())(params)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    if images == "float32":  # the image gradient, through the custom VJP
        gx_ours = jax.grad(lambda x: (ours.apply(params, x) ** 2).sum())(x)
        gx_ref = jax.grad(lambda x: (ref.apply(params, x / 255) ** 2).sum())(x)
        np.testing.assert_allclose(gx_ours, gx_ref, rtol=1e-4, atol=1e-6)


def test_a_bad_impl_and_an_unreadable_cache_get_clear_handling(tmp_path, monkeypatch, caplog):
    from hilrl.learning import autotune

    x = jnp.zeros((1, 7, 7, 2))
    with pytest.raises(ValueError, match="conv impl must be"):
        Conv(3, (3, 3), impl="fast").init(jax.random.key(0), x)
    (tmp_path / "autotune.json").write_text("{not json")
    monkeypatch.setenv("HILRL_CACHE_DIR", str(tmp_path))
    Conv(3, (3, 3)).init(jax.random.key(0), x)  # a lone layer with "auto" is its own network
    assert "unreadable" in caplog.text
    stored = json.loads((tmp_path / "autotune.json").read_text())[autotune.machine()]
    keys = [k for k in stored if k.startswith("Conv(features=3") and "1x7x7x2" in k]
    assert keys
    # Entries of the wrong form are timed again, not trusted.
    (tmp_path / "autotune.json").write_text(json.dumps(
        {autotune.machine(): {k: {"lax": "slow", "matmul": "fast"} for k in keys}}))
    monkeypatch.setenv("HILRL_CACHE_DIR", str(tmp_path / "elsewhere"))
    Conv(3, (3, 3)).init(jax.random.key(0), jnp.zeros((1, 5, 5, 2)))  # reload on the way back
    monkeypatch.setenv("HILRL_CACHE_DIR", str(tmp_path))
    Conv(3, (3, 3)).init(jax.random.key(0), x)
    stored = json.loads((tmp_path / "autotune.json").read_text())[autotune.machine()]
    assert all(isinstance(t, float) for k in keys for t in stored[k].values()), stored


def test_timings_are_kept_apart_per_xla_flags():
    """XLA_FLAGS can hand convolutions to another library (YNNPACK or Eigen on XLA:CPU), so a
    pick timed under one set of flags is not reused under another."""
    import os
    import subprocess
    import sys

    def machine(flags: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        if flags is not None:
            env["XLA_FLAGS"] = flags
        return subprocess.run([sys.executable, "-c", "from hilrl.learning import autotune; "
                               "print(autotune.machine())"], env=env, capture_output=True,
                              text=True, check=True).stdout.strip()

    plain, flagged = machine(None), machine("--xla_cpu_enable_fast_math=false")
    assert plain != flagged and flagged.startswith(plain)
    assert "--xla_cpu_enable_fast_math=false" in flagged
