from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hilrl.learning.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet10, count_params, preprocess

# conv_init 7*7*3*64 + norm 2*64; block0 2*3*3*64*64 + 2*2*64; block1..3 convs + 1x1 projections
# + 3 norms each. Same count as serl's resnetv1-10 (GroupNorm has scale+bias, convs no bias).
RESNET10_PARAMS = 4_905_792


MODEL = ResNet10()
# one jitted init/apply for the whole file, so each input shape compiles once
INIT = jax.jit(MODEL.init)
APPLY = jax.jit(MODEL.apply, static_argnames="train")
X0 = jnp.zeros((1, 64, 64, 3), jnp.float32)


@pytest.fixture(scope="module")
def model_and_vars():
    return MODEL, INIT(jax.random.key(0), X0)


def test_param_count_and_names(model_and_vars):
    _, variables = model_and_vars
    n = count_params(variables)
    print(f"ResNet10 params: {n:,}")
    assert n == RESNET10_PARAMS
    p = variables["params"]
    # serl's resnetv1-10 names, so converted pretrained weights load without renaming
    assert set(p) == {"conv_init", "norm_init"} | {f"ResNetBlock_{i}" for i in range(4)}
    assert p["conv_init"]["kernel"].shape == (7, 7, 3, 64)
    assert "conv_proj" not in p["ResNetBlock_0"]
    assert p["ResNetBlock_3"]["conv_proj"]["kernel"].shape == (1, 1, 256, 512)
    assert set(p["ResNetBlock_1"]) == {"Conv_0", "Conv_1", "MyGroupNorm_0", "MyGroupNorm_1",
                                       "conv_proj", "norm_proj"}
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize("size,out", [(128, 4), (64, 2)])
def test_output_shape(model_and_vars, size, out):
    model, variables = model_and_vars
    x = preprocess(np.random.default_rng(0).integers(0, 256, (2, size, size, 3), np.uint8))
    y = APPLY(variables, x)
    assert y.shape == (2, out, out, 512)
    assert y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    assert bool(jnp.all(y >= 0))  # ends in relu


def test_deterministic(model_and_vars):
    model, variables = model_and_vars
    again = INIT(jax.random.key(0), X0)
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), variables, again))
    other = INIT(jax.random.key(1), X0)
    assert not jnp.array_equal(variables["params"]["conv_init"]["kernel"],
                               other["params"]["conv_init"]["kernel"])
    x = preprocess(np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), np.uint8))
    apply = APPLY
    y1, y2 = apply(variables, x), apply(variables, x)
    assert jnp.array_equal(y1, y2)
    # train flag changes nothing (GroupNorm, no batch stats): the very same computation
    assert str(jax.make_jaxpr(partial(model.apply, train=True))(variables, x)) == str(
        jax.make_jaxpr(partial(model.apply, train=False))(variables, x))
    # batch elements are independent (GroupNorm normalises per example, unlike BatchNorm)
    y3 = apply(variables, x.at[1].set(0.0))
    assert jnp.array_equal(y3[0], y1[0]) and not jnp.array_equal(y3[1], y1[1])


def test_num_groups_configurable():
    model = ResNet10(num_groups=32)
    v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert count_params(v) == RESNET10_PARAMS  # GroupNorm params don't depend on groups
    with pytest.raises(ValueError):  # 64 channels not divisible
        jax.eval_shape(ResNet10(num_groups=48).init, jax.random.key(0),
                       jnp.zeros((1, 64, 64, 3)))


def test_preprocess():
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[0, 0, 0] = [255, 128, 0]
    x = preprocess(img)
    assert x.dtype == jnp.float32 and x.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(x[0, 0, 0], (np.array([1.0, 128 / 255, 0.0]) - IMAGENET_MEAN)
                               / IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(x[0, 1, 1], -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-6)
    with pytest.raises(ValueError):
        preprocess(np.zeros((1, 4, 4, 1), np.uint8))


def test_rejects_bad_inputs(model_and_vars):
    model, variables = model_and_vars
    with pytest.raises(TypeError):
        model.apply(variables, jnp.zeros((1, 64, 64, 3), jnp.uint8))
    with pytest.raises(ValueError):
        model.apply(variables, jnp.zeros((64, 64, 3), jnp.float32))
