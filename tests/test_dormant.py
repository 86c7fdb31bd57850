"""Dormant units: the ratio on networks with known dead units, DrM's shrink-and-perturb, and
both in a real learner's run."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hilrl.config import load_task
from hilrl.learning import dormant, sac
from hilrl.learning.networks import MLP, CriticEnsemble
from hilrl.learning.sac_config import SACConfig
from hilrl.reporting.metrics import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
X = jax.random.normal(jax.random.PRNGKey(1), (256, 12))


def kill(params, path: tuple[str, ...], units: slice, bias: float = -1.0):
    """The units of the Dense layer at ``path`` get zero input weights and bias ``bias``:
    ReLU(bias) for any input, so exactly 0 for a negative bias."""
    params = jax.tree.map(jnp.array, params)
    dense = params
    for key in path:
        dense = dense[key]
    dense["kernel"] = dense["kernel"].at[..., units].set(0.0)
    dense["bias"] = dense["bias"].at[..., units].set(bias)
    return params


def activity(module: nn.Module, params, *args):
    return module.apply({"params": params}, *args, mutable=[dormant.COLLECTION])[1]


def test_the_ratio_counts_the_dead_units_of_a_layer():
    mlp = MLP((32,), layer_norm=False, activate_final=True)
    params = mlp.init(jax.random.PRNGKey(0), X)["params"]
    assert dormant.dormant_ratio(activity(mlp, params, X), 0.025) == 0.0
    dead = kill(params, ("Dense_0",), slice(0, 8))
    assert dormant.dormant_ratio(activity(mlp, dead, X), 0.025) == 8 / 32
    # Barely alive: a constant 0.001 is far below 2.5% of the layer's mean activity, so
    # dormant at tau = 0.025 but not at tau = 0.
    faint = kill(params, ("Dense_0",), slice(0, 8), bias=1e-3)
    assert dormant.dormant_ratio(activity(mlp, faint, X), 0.025) == 8 / 32
    assert dormant.dormant_ratio(activity(mlp, faint, X), 0.0) == 0.0


def test_each_ensemble_member_is_scored_against_its_own_layer():
    critic = CriticEnsemble(num=2, hidden=(16, 16), layer_norm=False)
    actions = jnp.zeros((X.shape[0], 2))
    params = critic.init(jax.random.PRNGKey(0), X, actions)["params"]
    base = float(dormant.dormant_ratio(activity(critic, params, X, actions), 0.025))
    member = params["ensemble"]["MLP_0"]["Dense_0"]
    member["kernel"] = member["kernel"].at[0, :, :4].set(0.0)
    member["bias"] = member["bias"].at[0, :4].set(-1.0)
    # 4 of member 0's first-layer units, out of 2 members x 2 layers x 16 units; the second
    # layer may change with its inputs, so only a rise of at least that much is certain.
    ratio = float(dormant.dormant_ratio(activity(critic, params, X, actions), 0.025))
    assert ratio >= base + 4 / 64 - 1e-9


def _tiny(**overrides) -> tuple[sac.SACState, dict]:
    config = SACConfig.cpu(conv_features=(8, 8), conv_strides=(2, 2), bottleneck_dim=16,
                           latent_dim=32, hidden_dims=(32, 32), utd=1, conv_impl="lax",
                           **overrides)
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=(32, 5)).astype(np.float32),
           "images": {"wrist": rng.integers(0, 255, (32, 24, 24, 3), dtype=np.uint8)}}
    batch = {"obs": obs, "next_obs": obs, "reward": np.zeros(32, np.float32),
             "action": rng.uniform(-1, 1, (32, 4)).astype(np.float32),
             "mask": np.ones(32, np.float32)}
    return sac.create(config, obs, 4, seed=0), batch


def test_sac_reports_every_network_and_perturbs_by_the_actors_ratio():
    state, batch = _tiny(layer_norm=False)
    ratios = jax.device_get(sac.dormant_ratios(state, batch))
    assert set(ratios) == {"encoder", "actor", "critic"}
    assert all(0.0 <= r < 0.5 for r in ratios.values()), ratios
    # Kill 3/4 of the actor's first layer: its ratio is then >= 0.375, so DrM's factor
    # clip(1 - 2 * ratio, 0.2, 0.9) is its floor, 0.2.
    actor = kill(state.actor_params, ("MLP_0", "Dense_0"), slice(0, 24))
    state = state.replace(actor_params=actor, step=jnp.asarray(5, jnp.int32))
    for _ in range(2):
        state, _ = sac.update(state, batch)
    assert float(sac.dormant_ratios(state, batch)["actor"]) >= 24 / 64
    perturbed, info = sac.perturb(state, batch)
    assert float(info["actor_dormant_ratio"]) >= 24 / 64
    f = float(info["perturb_factor"])
    assert f == pytest.approx(0.2)
    # Every weight is f * old + (1 - f) * fresh: a LayerNorm-free Dense bias initialises to
    # 0, so the killed biases shrink by exactly f; the slow copies are blended the same way.
    old_bias = state.actor_params["MLP_0"]["Dense_0"]["bias"][:24]
    assert np.allclose(perturbed.actor_params["MLP_0"]["Dense_0"]["bias"][:24], f * old_bias)
    ema_bias = state.actor_ema_params["MLP_0"]["Dense_0"]["bias"][:24]
    assert np.allclose(perturbed.actor_ema_params["MLP_0"]["Dense_0"]["bias"][:24],
                       f * ema_bias)
    # ... and the fresh part is a new draw: the kernels are not just shrunk.
    kernel = state.critic_params["critic"]["ensemble"]["MLP_0"]["Dense_0"]["kernel"]
    new_kernel = perturbed.critic_params["critic"]["ensemble"]["MLP_0"]["Dense_0"]["kernel"]
    assert not np.allclose(new_kernel, f * kernel)
    # The optimisers start over; training goes on from there.
    assert int(jax.tree.leaves(perturbed.actor_opt_state)[0]) == 0
    # What DrM perturbs for: the dead units get fresh weights and respond again.
    assert float(sac.dormant_ratios(perturbed, batch)["actor"]) < float(
        info["actor_dormant_ratio"]) - 0.2
    after, metrics = sac.update(perturbed, batch)
    assert float(metrics["update_skipped"]) == 0.0


def test_perturb_settings_are_checked():
    with pytest.raises(ValueError, match="perturb_min"):
        SACConfig(perturb_min=0.9, perturb_max=0.5)
    with pytest.raises(ValueError, match="perturb_every"):
        SACConfig(perturb_every=-1)


def small_learner(tmp_path, *overrides: str, resume: bool = False):
    """A real learner on the state pick-cube task with tiny networks, its buffer holding one
    6-step episode unless resumed: enough to update."""
    from hilrl.cli.train_sim import free_port_pair
    from learner.node import Learner

    port = free_port_pair()
    task = load_task(ROOT / "tasks" / "sim_pick_cube.yaml", [
        f"learner.bind=tcp://127.0.0.1:{port}", f"learner.weights_bind=tcp://127.0.0.1:{port + 1}",
        "agent.num_critics=2", "agent.hidden_dims=[16,16]", "learner.batch_size=4",
        "learner.min_transitions=4", "learner.max_updates=6", *overrides])
    node = Learner(task, tmp_path / "run", quiet=True, resume=resume)
    if not resume:
        n = 6
        node.ingest.online.add_batch(
            {"state": np.random.default_rng(0).normal(size=(n + 1, node.spec.state_size))
             .astype(np.float32), "images": {}},
            np.zeros((n, node.spec.action_size), np.float32), np.zeros(n, np.float32),
            np.arange(n) == n - 1, np.zeros(n, bool),
            extras={name: np.zeros(n, np.float32) for name in node.ingest.online.extras})
    return node


def test_a_learner_logs_dormant_ratios_and_perturbs_on_schedule(tmp_path):
    node = small_learner(tmp_path, "learner.log_every=2", "agent.perturb_every=3")
    assert node.run() == 6
    records = read_jsonl(tmp_path / "run" / "learner" / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert all(0.0 <= r[f"dormant/{net}"] <= 1.0 for net in ("encoder", "actor", "critic"))
    # Perturbed at steps 3 and 6: each shows in the next record, with DrM's factor.
    perturbed = [r["step"] for r in records if "dormant/perturb_factor" in r]
    assert perturbed == [4, 6]
    for r in records[1:]:
        expected = np.clip(1 - 2 * r["dormant/actor_dormant_ratio"], 0.2, 0.9)
        assert r["dormant/perturb_factor"] == pytest.approx(expected)


def test_adaptive_utd_rises_once_the_critics_active_units_hold_and_survives_a_resume(tmp_path):
    # Any change passes the tolerance: the rise comes at the second check, the first with a
    # previous one to compare with.
    settings = ("learner.log_every=1", "agent.utd=1", "agent.utd_high=3",
                "agent.utd_check_every=2", "agent.utd_tolerance=1.0")
    node = small_learner(tmp_path, *settings)
    assert node.run() == 6
    records = read_jsonl(tmp_path / "run" / "learner" / "metrics.jsonl")
    assert [r["train/utd"] for r in records] == [1, 1, 1, 3, 3, 3]
    assert node.state.config.utd == 3
    node = small_learner(tmp_path, *settings, resume=True)
    try:
        assert node.state.config.utd == 3  # from the checkpoint, not the task's 1
    finally:
        node.close()


def test_adaptive_utd_settings_are_checked():
    with pytest.raises(ValueError, match="utd_high"):
        SACConfig(utd=2, utd_high=1)


def test_the_expectile_loss_is_least_at_the_expectile():
    targets = jnp.array([0.0, 1.0])  # equally often: the tau-expectile is tau
    grad = jax.grad(lambda v: sac.expectile_loss(jnp.full(2, v), targets, 0.9))
    assert float(grad(0.9)) == pytest.approx(0.0, abs=1e-6)
    assert float(grad(0.5)) < 0.0 < float(grad(0.95))


def test_drm_exploits_once_the_actor_is_awake():
    config = SACConfig(exploit_lambda=0.6)
    lam = [float(sac.exploit_lambda(jnp.asarray(b), config)) for b in (0.0, 0.2, 0.6)]
    assert lam[0] == pytest.approx(0.6, abs=1e-4)  # awake: the full weight
    assert lam[1] == pytest.approx(0.3)  # at the target ratio: half
    assert lam[2] < 1e-6  # dormant: none
    q = jnp.array([[1.0, 2.0], [3.0, 0.0]])
    blended = sac.critic_target(q, jnp.zeros(2), jnp.ones(2), 1.0, jnp.array([0, 1]),
                                jnp.zeros(2), 0.0, False, next_value=jnp.array([5.0, 5.0]),
                                lam=0.5)
    assert np.allclose(blended, [0.5 * 5 + 0.5 * 1, 0.5 * 5 + 0.5 * 0])


def test_the_exploitation_switch_trains_its_value_in_the_update():
    state, batch = _tiny(exploit_lambda=0.6)
    assert "value" in state.critic_params
    losses = []
    for _ in range(30):
        state, info = sac.update(state, batch)
        assert float(info["update_skipped"]) == 0.0
        assert 0.0 <= float(info["exploit_lambda"]) <= 0.6
        losses.append(float(info["value_loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    with pytest.raises(ValueError, match="exploit_lambda"):
        SACConfig(exploit_lambda=1.5)
