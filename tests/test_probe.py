"""The linear probe of bench/encoders.py --probe: it separates what is separable, it does not
invent signal in noise, and the features it probes come from the cameras alone."""

import numpy as np
import pytest

from hilrl.learning import sac
from hilrl.learning.classifier import roc_auc
from hilrl.learning.probe import fit_logistic, image_features, probe_scores


def _data(n: int, rng: np.random.Generator, signal: float) -> tuple[np.ndarray, np.ndarray]:
    y = rng.random(n) < 0.1  # successes are rare, as in labelled episodes
    x = rng.standard_normal((n, 20))
    x[:, 3] += signal * y
    return x, y


def test_probe_scores_a_feature_that_carries_the_label_on_new_data():
    rng = np.random.default_rng(0)
    fit = fit_logistic(*_data(400, rng, signal=3.0))
    x, y = _data(400, rng, signal=3.0)
    assert roc_auc(probe_scores(fit, x), y) > 0.95
    assert np.argmax(np.abs(fit[0])) == 3


def test_probe_finds_nothing_in_noise_on_new_data():
    rng = np.random.default_rng(1)
    fit = fit_logistic(*_data(400, rng, signal=0.0))
    x, y = _data(2000, rng, signal=0.0)
    assert abs(roc_auc(probe_scores(fit, x), y) - 0.5) < 0.08


def test_probe_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        fit_logistic(np.zeros((5, 2)), np.zeros(5, bool))


def test_image_features_are_each_cameras_bottleneck_and_ignore_the_proprio():
    config = sac.SACConfig(conv_features=(4, 4), conv_strides=(2, 2), bottleneck_dim=6,
                           latent_dim=8, hidden_dims=(8,), conv_impl="lax")
    rng = np.random.default_rng(0)
    obs = {"state": rng.standard_normal((5, 3)).astype(np.float32),
           "images": {c: rng.integers(0, 256, (5, 16, 16, 3), np.uint8)
                      for c in ("wrist", "front")}}
    state = sac.create(config, obs, 2, seed=0)
    feats = image_features(state, obs, chunk=2)  # chunks of 2, 2, 1 frames
    assert feats.shape == (5, 12)
    assert np.all(np.abs(feats) <= 1.0)  # after the tanh

    other_state = {**obs, "state": obs["state"] + 5.0}
    np.testing.assert_allclose(image_features(state, other_state), feats, atol=1e-6)
    # Cameras in sorted order: front's 6 features first; changing the wrist leaves them.
    wrist_changed = {**obs, "images": {**obs["images"],
                                       "wrist": 255 - obs["images"]["wrist"]}}
    changed = image_features(state, wrist_changed)
    np.testing.assert_allclose(changed[:, :6], feats[:, :6], atol=1e-6)
    assert np.abs(changed[:, 6:] - feats[:, 6:]).max() > 1e-3
