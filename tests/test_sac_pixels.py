"""SAC learns from pixels: a dot on a black image must be driven to the image centre.

Exercises the whole pixel path -- uint8 images, conv encoder, spatial pooling, DrQ shift,
encoder trained by the critic only -- on a task too small to need a GPU.
"""

import time

import gymnasium as gym
import jax
import numpy as np
import pytest

from hilrl.learning import sac


class DotReach(gym.Env):
    """A 3x3 white dot on a black ``size`` x ``size`` image. The action (dx, dy) in [-1, 1]
    moves it by ``speed`` (position in [-1, 1]^2); reward is minus its distance to the centre.
    Episodes end by time limit only (truncation). With ``noise_camera`` a second camera shows
    random pixels, and ``state`` carries a useless random vector.

    Staying put scores about -19 per 25-step episode; reaching the centre about -3.
    """

    def __init__(self, size=24, horizon=25, speed=0.2, noise_camera=False, state=False):
        self.size, self.horizon, self.speed = size, horizon, speed
        self.noise_camera, self.with_state = noise_camera, state
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self):
        img = np.zeros((self.size, self.size, 3), np.uint8)
        x, y = np.round((self.pos + 1) / 2 * (self.size - 3)).astype(int)
        img[y:y + 3, x:x + 3] = 255
        obs = {"images": {"cam": img}}
        if self.noise_camera:
            obs["images"]["noise"] = self.np_random.integers(0, 256, img.shape, dtype=np.uint8)
        if self.with_state:
            obs["state"] = self.np_random.normal(size=3).astype(np.float32)
        return obs

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + self.speed * np.clip(action, -1, 1), -1, 1)
        self.t += 1
        return self._obs(), -float(np.linalg.norm(self.pos)), False, self.t >= self.horizon, {}


def _stack(items):
    return jax.tree.map(lambda *xs: np.stack(xs), *items)


def evaluate(policy_fn, env_kwargs, episodes=10):
    env = DotReach(**env_kwargs)
    returns = []
    for e in range(episodes):
        obs, _ = env.reset(seed=1000 + e)
        done, total = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(policy_fn(obs))
            total += r
            done = term or trunc
        returns.append(total)
    return float(np.mean(returns))


def train(config, env_kwargs, steps, batch_size, start_steps=500, seed=0):
    env = DotReach(**env_kwargs)
    obs, _ = env.reset(seed=seed)
    state = sac.create(config, obs, 2, seed=seed)
    obs_log, next_log, actions, rewards = [], [], [], []
    rng, key = np.random.default_rng(seed), jax.random.PRNGKey(seed)
    for t in range(steps):
        if t < start_steps:
            action = rng.uniform(-1, 1, 2).astype(np.float32)
        else:
            key, k = jax.random.split(key)
            action = np.asarray(sac.sample_actions(state, obs, k))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        obs_log.append(obs)
        next_log.append(next_obs)
        actions.append(action)
        rewards.append(reward)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if t >= start_steps:
            idx = rng.integers(0, t + 1, batch_size * config.utd)
            batch = {"obs": _stack([obs_log[i] for i in idx]),
                     "next_obs": _stack([next_log[i] for i in idx]),
                     "action": np.asarray(actions)[idx],
                     "reward": np.asarray(rewards, np.float32)[idx],
                     "mask": np.ones(len(idx), np.float32)}  # never terminates
            state, _ = sac.update(state, batch)
    return state


def _run(config, env_kwargs, steps, batch_size):
    baseline = evaluate(lambda _: np.zeros(2, np.float32), env_kwargs)
    t0 = time.perf_counter()
    state = train(config, env_kwargs, steps, batch_size)
    key = jax.random.PRNGKey(0)
    score = evaluate(lambda o: np.asarray(sac.sample_actions(state, o, key, deterministic=True)),
                     env_kwargs)
    print(f"dot reach: policy {score:.2f} vs standing still {baseline:.2f}; "
          f"{steps} steps in {time.perf_counter() - t0:.1f} s")
    return score, baseline


def test_sac_learns_dot_reach_from_pixels():
    """CI size: one 24x24 camera, a small conv, 2500 env steps (~25 s on 2 cores)."""
    config = sac.SACConfig.cpu(utd=1, discount=0.9, hidden_dims=(128, 128), latent_dim=64,
                               bottleneck_dim=64, conv_features=(16, 16, 16),
                               conv_strides=(2, 1, 1), init_temperature=0.1)
    score, baseline = _run(config, {}, steps=2500, batch_size=64)
    assert baseline < -15
    assert score > -9


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a hang guard: 3000 steps take ~7 min on 2 idle cores
def test_sac_learns_dot_reach_default_encoder_two_cameras():
    """Default encoder (4 stride-2 conv layers of 32, spatial embedding), 64x64, a camera of
    noise and a useless state vector, utd 2, batch 32 (~7 min on 2 cores)."""
    config = sac.SACConfig.cpu(utd=2, discount=0.9, init_temperature=0.1)
    score, baseline = _run(config, {"size": 64, "noise_camera": True, "state": True},
                           steps=3000, batch_size=32)
    assert baseline < -15
    assert score > -9
