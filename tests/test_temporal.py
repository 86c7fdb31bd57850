"""The temporal auxiliary losses (agent.aux_loss: TACO, SPR): the losses' math, and each
switch compiled into the pixel update, training the encoder on a fixed batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hilrl.learning import sac, temporal
from hilrl.learning.sac_config import SACConfig


def test_infonce_is_zero_when_each_query_finds_its_key_and_log_b_by_chance():
    eye = 50.0 * jnp.eye(8)
    assert float(temporal.taco_loss(eye, eye)) == pytest.approx(0.0, abs=1e-6)
    same = jnp.ones((8, 4))
    assert float(temporal.taco_loss(same, same)) == pytest.approx(np.log(8), rel=1e-5)


def test_spr_loss_is_minus_the_cosine_and_trains_the_query_only():
    q = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    assert float(temporal.spr_loss(q, 3.0 * q)) == pytest.approx(-1.0)
    assert float(temporal.spr_loss(q, -q)) == pytest.approx(1.0)
    grad_key = jax.grad(lambda k: temporal.spr_loss(q, k))(jnp.array([[1.0, 1.0], [1.0, 0.0]]))
    assert np.all(np.asarray(grad_key) == 0.0)


def batch_and_config(kind: str) -> tuple[dict, SACConfig]:
    rng = np.random.default_rng(0)

    def obs() -> dict:
        return {"state": rng.normal(size=(32, 5)).astype(np.float32),
                "images": {"wrist": rng.integers(0, 255, (32, 24, 24, 3), dtype=np.uint8)}}

    batch = {"obs": obs(), "next_obs": obs(), "reward": np.zeros(32, np.float32),
             "action": rng.uniform(-1, 1, (32, 4)).astype(np.float32),
             "mask": np.ones(32, np.float32)}
    config = SACConfig.cpu(conv_features=(8, 8), conv_strides=(2, 2), bottleneck_dim=16,
                           latent_dim=32, hidden_dims=(32, 32), utd=1, conv_impl="lax",
                           aux_loss=kind)
    return batch, config


@pytest.mark.parametrize("kind", ["taco", "spr"])
def test_each_aux_loss_trains_in_the_update_and_shapes_the_encoder(kind):
    batch, config = batch_and_config(kind)
    state = sac.create(config, batch["obs"], 4, seed=0)
    assert "aux" in state.critic_params and "aux" not in sac.policy(state).params
    losses = []
    for _ in range(40):
        state, info = sac.update(state, batch)
        assert float(info["update_skipped"]) == 0.0
        losses.append(float(info["aux_loss"]))
    if kind == "taco":  # from far above chance (log 32 = 3.5) to well below it
        assert losses[-1] < 1.0 and losses[-1] < 0.2 * losses[0], losses
    else:  # cosine similarity of prediction and target up by 0.5 or more
        assert losses[-1] < losses[0] - 0.5, losses
    # The loss reaches the encoder: the same first update without it moves it otherwise.
    plain_batch, plain = batch_and_config("none")
    with_aux, _ = sac.update(sac.create(config, batch["obs"], 4, seed=0), batch)
    without, _ = sac.update(sac.create(plain, plain_batch["obs"], 4, seed=0), plain_batch)
    a, b = (jax.tree.leaves(s.critic_params["encoder"]) for s in (with_aux, without))
    assert any(not np.allclose(x, y) for x, y in zip(a, b, strict=True))


def test_an_unknown_aux_loss_is_refused():
    with pytest.raises(ValueError, match="aux_loss"):
        SACConfig(aux_loss="curl")
