from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from hilrl.learning.resnet import ResNet10, preprocess
from hilrl.storage import weights as weights_io
from hilrl.storage.weights import (
    MAGIC,
    WeightsCorruptError,
    WeightsError,
    WeightsFormatError,
    WeightsMismatchError,
    load_pretrained_resnet10,
    load_weights,
    read_header,
    save_weights,
)


def _tree():
    rng = np.random.default_rng(0)
    return {
        "enc": {
            "kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
            "bias": jnp.asarray(rng.standard_normal(4), jnp.bfloat16),
        },
        "head": {
            "w16": rng.standard_normal((4, 2)).astype(np.float16),
            "w64": rng.standard_normal((2,)),
            "count": np.int32(7),  # numpy scalar -> 0-d array
            "ids": np.arange(5, dtype=np.int64),
            "pix": np.arange(6, dtype=np.uint8).reshape(2, 3),
            "mask": np.array([True, False]),
            "nan": np.array([np.nan, np.inf, -0.0], np.float32),  # bit patterns kept
        },
        "empty": {},
    }


def _assert_same(a, b):
    fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype, path
        assert x.shape == y.shape, path
        assert x.tobytes() == y.tobytes(), path  # bit-exact, NaN payloads and -0.0 included


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "w.weights"
    save_weights(path, _tree(), {"model": "toy", "num_groups": 4})
    return path


def test_roundtrip_exact(saved):
    params, meta = load_weights(saved)
    _assert_same(params, _tree())
    assert params["empty"] == {}
    assert meta == {"model": "toy", "num_groups": 4}
    assert params["enc"]["bias"].dtype == jnp.bfloat16
    assert params["head"]["count"].shape == ()
    # with a target (arrays or abstract shapes) and matching expectations
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x),
                                                                   np.asarray(x).dtype), _tree())
    params2, _ = load_weights(saved, target=target, expect={"model": "toy"})
    _assert_same(params2, _tree())
    # the header is readable on its own and describes every array
    h = read_header(saved)
    assert h["format"] == "hilrl-weights" and h["version"] == 1
    assert h["manifest"]["enc/bias"] == {"shape": [4], "dtype": "bfloat16"}


def test_atomic_write_leaves_no_temp_files(tmp_path, saved):
    save_weights(saved, {"a": np.ones(3, np.float32)}, {})  # overwrite in place
    assert sorted(os.listdir(saved.parent)) == ["w.weights"]
    params, _ = load_weights(saved)
    assert set(params) == {"a"}


@pytest.mark.parametrize("where", ["magic", "header_len", "header_hash", "header", "payload",
                                   "last"])
def test_byte_flip_is_detected(saved, where):
    data = bytearray(saved.read_bytes())
    hlen = int.from_bytes(data[len(MAGIC):len(MAGIC) + 8], "little")
    pos = {"magic": 3, "header_len": len(MAGIC), "header_hash": len(MAGIC) + 8 + 5,
           "header": len(MAGIC) + 40 + hlen // 2, "payload": len(MAGIC) + 40 + hlen + 50,
           "last": len(data) - 1}[where]
    data[pos] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=str(saved)):
        load_weights(saved)


@pytest.mark.parametrize("keep", [0, 4, 14, 30, 60, 200, -1])
def test_truncation_is_detected(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[: keep if keep >= 0 else len(data) + keep])
    with pytest.raises(WeightsCorruptError, match="truncated|empty|implausible"):
        load_weights(saved)


def test_trailing_garbage_is_detected(saved):
    saved.write_bytes(saved.read_bytes() + b"\0")
    with pytest.raises(WeightsCorruptError, match="trailing"):
        load_weights(saved)


def test_structure_mismatch_names_the_key(saved):
    target = _tree()
    del target["head"]["w64"]
    with pytest.raises(WeightsMismatchError, match="head/w64") as e:
        load_weights(saved, target=target)
    assert str(saved) in str(e.value)
    target = _tree()
    target["head"]["extra"] = np.zeros(1)
    with pytest.raises(WeightsMismatchError, match="missing keys.*head/extra"):
        load_weights(saved, target=target)
    target = _tree()
    target["enc"]["kernel"] = np.zeros((3, 3, 2, 5), np.float32)
    with pytest.raises(WeightsMismatchError, match=r"enc/kernel.*\(3, 3, 2, 4\)"):
        load_weights(saved, target=target)
    target = _tree()
    target["enc"]["bias"] = np.zeros(4, np.float32)
    with pytest.raises(WeightsMismatchError, match="enc/bias.*bfloat16"):
        load_weights(saved, target=target)
    with pytest.raises(WeightsMismatchError, match="model"):
        load_weights(saved, expect={"model": "resnet10"})
    with pytest.raises(WeightsMismatchError, match="lacks 'version'"):
        load_weights(saved, expect={"version": 2})


# A protocol-0 pickle that runs os.system("touch <sentinel>") when unpickled. Written by
# hand so the test itself never imports pickle.
def _evil_pickle(sentinel) -> bytes:
    return f"cos\nsystem\n(S'touch {sentinel}'\ntR.".encode()


def test_pickle_is_never_unpickled(tmp_path):
    sentinel = tmp_path / "pwned"
    evil = _evil_pickle(sentinel)
    bare = tmp_path / "model.pkl"
    bare.write_bytes(evil)
    with pytest.raises(WeightsFormatError, match="not a hilrl weights file"):
        load_weights(bare)
    # Even inside a well-formed container with valid checksums the payload is only ever
    # parsed as msgpack.
    header = {"format": "hilrl-weights", "version": 1, "payload_len": len(evil),
              "payload_sha256": hashlib.sha256(evil).hexdigest(),
              "manifest": {}, "meta": {}}
    hb = json.dumps(header).encode()
    wrapped = tmp_path / "wrapped.weights"
    wrapped.write_bytes(MAGIC + len(hb).to_bytes(8, "little") + hashlib.sha256(hb).digest()
                        + hb + evil)
    with pytest.raises(WeightsCorruptError, match="does not decode|not a parameter tree"):
        load_weights(wrapped)
    # .npz with an object array (which needs pickle) is refused by the converter
    npz = tmp_path / "obj.npz"
    np.savez(npz, **{"a/b": np.array([{"x": 1}], dtype=object)})
    assert weights_io.main(["convert-npz", str(npz), str(tmp_path / "o.weights")]) == 1
    assert not (tmp_path / "o.weights").exists()
    assert not sentinel.exists()


def test_other_formats_are_refused(tmp_path):
    npz = tmp_path / "x.npz"
    np.savez(npz, a=np.ones(2))
    with pytest.raises(WeightsFormatError):
        load_weights(npz)
    fake = tmp_path / "future.weights"
    save_weights(fake, {"a": np.ones(2)})
    data = fake.read_bytes()
    hlen = int.from_bytes(data[len(MAGIC):len(MAGIC) + 8], "little")
    header = json.loads(data[len(MAGIC) + 40: len(MAGIC) + 40 + hlen])
    header["version"] = 99
    hb = json.dumps(header).encode()
    fake.write_bytes(MAGIC + len(hb).to_bytes(8, "little") + hashlib.sha256(hb).digest() + hb
                     + data[len(MAGIC) + 40 + hlen:])
    with pytest.raises(WeightsFormatError, match="version 99"):
        load_weights(fake)


def test_save_rejects_unsupported(tmp_path):
    with pytest.raises(TypeError, match="dtype"):
        save_weights(tmp_path / "a", {"s": np.array(["text"])})
    with pytest.raises(TypeError, match="JSON"):
        save_weights(tmp_path / "b", {"a": np.ones(1)}, {"bad": object()})
    with pytest.raises(WeightsMismatchError, match="'/'"):
        save_weights(tmp_path / "c", {"a/b": np.ones(1)})
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def resnet():
    model = ResNet10()
    variables = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 64, 64, 3)))
    x = preprocess(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8))
    return model, variables, x


def test_resnet10_loads_its_own_weights(tmp_path, resnet):
    model, variables, x = resnet
    path = tmp_path / "resnet10.weights"
    save_weights(path, variables, {"model": "resnet10", "num_groups": 4})
    loaded = load_pretrained_resnet10(path)
    assert all(isinstance(v, jax.Array) for v in jax.tree_util.tree_leaves(loaded))
    apply = jax.jit(model.apply)
    assert jnp.array_equal(apply(loaded, x), apply(variables, x))
    with pytest.raises(WeightsMismatchError, match="num_groups"):
        load_pretrained_resnet10(path, num_groups=32)


def test_convert_npz_cli_serl_layout(tmp_path, resnet, capsys):
    """A user's flat-key npz of serl-style params (no 'params' level) converts and loads."""
    model, variables, x = resnet
    flat = {k: np.asarray(v) for k, v in
            traverse_util.flatten_dict(variables["params"], sep="/").items()}
    npz = tmp_path / "resnet10.npz"
    np.savez(npz, **flat)
    out = tmp_path / "resnet10.weights"
    assert weights_io.main(["convert-npz", str(npz), str(out), "--meta", "model=resnet10",
                            "--meta", "num_groups=4"]) == 0
    assert read_header(out)["meta"] == {"source": "resnet10.npz", "model": "resnet10",
                                        "num_groups": 4}
    loaded = load_pretrained_resnet10(out)
    assert jnp.array_equal(jax.jit(model.apply)(loaded, x), jax.jit(model.apply)(variables, x))
    assert weights_io.main(["info", str(out)]) == 0
    assert "conv_init/kernel: float32(7, 7, 3, 64)" in capsys.readouterr().out
    # a partial file fails with the missing key named
    del flat["ResNetBlock_3/conv_proj/kernel"]
    np.savez(npz, **flat)
    assert weights_io.main(["convert-npz", str(npz), str(out)]) == 0
    with pytest.raises(WeightsMismatchError, match="ResNetBlock_3/conv_proj/kernel"):
        load_pretrained_resnet10(out)
    # a different model's weights are refused
    save_weights(out, {"a": np.ones(1)}, {"model": "mlp"})
    with pytest.raises(WeightsMismatchError, match="mlp"):
        load_pretrained_resnet10(out)
