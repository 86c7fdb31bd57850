"""Imitation baselines with the data the RL run gets: BC on the demos, and HG-DAgger.

- **BC**: behaviour cloning (``hilrl.learning.bc``, SAC's encoder and actor networks) on the
  demos only.
- **HG-DAgger** (Kelly et al. 2019): BC, then rounds of running the policy with the person
  watching; where the person steps in (the same scripted "stall" takeover the RL actor
  gets), their steps join the data set and BC trains again. It stops once it has used the
  intervention budget, e.g. as many intervened steps as an RL run used.

Both run the one episode loop (``actor.loop``) in one process on the task's env (the frozen
encoder's features included), so success is decided as for the RL actor: the env's success
or the person's SUCCESS button, which ends the episode. They write ``episodes.jsonl``
records in the actor's format (``kind`` train/eval, ``env_steps``, ``success``,
``interventions``, ``time``), so one plotting code reads RL and baselines.
Evaluation is the actor's: deterministic policy, interventions off.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hilrl.config import TaskConfig
from hilrl.learning import bc
from hilrl.reporting.metrics import append_jsonl

from .loop import Obs, Observer, Step, run_episode


@dataclass
class Demonstrations:
    """State-action pairs a person produced: (N, S) states and (N, A) actions."""

    state: np.ndarray
    action: np.ndarray

    def extend(self, state: np.ndarray, action: np.ndarray) -> Demonstrations:
        return Demonstrations(np.concatenate([self.state, state]),
                              np.concatenate([self.action, action]))


def load_demonstrations(task: TaskConfig, paths: Sequence[str | Path]) -> Demonstrations:
    """The demos' (state, action) pairs, with the frozen encoder's features if the task has
    one (as the learner loads them)."""
    from hilrl.storage.dataset import iter_dataset

    encoder = None
    if task.env.frozen_encoder:
        from hilrl.learning.pretrain import FrozenEncoder

        encoder = FrozenEncoder(task.env.frozen_encoder)
    states, actions = [], []
    for path in paths:
        for ep in iter_dataset(path):
            state = ep.state if encoder is None else encoder.episode_state(ep.state, ep.images)
            states.append(state[:-1])
            actions.append(ep.action)
    if not states:
        raise ValueError(f"no demo episodes in {list(map(str, paths))}")
    return Demonstrations(np.concatenate(states).astype(np.float32),
                          np.concatenate(actions).astype(np.float32))


def train_bc(data: Demonstrations, task: TaskConfig, steps: int, batch_size: int = 256,
             seed: int = 0) -> bc.BCState:
    """BC from scratch on ``data`` (state observations only: use a frozen encoder or a
    state task)."""
    config = bc.BCConfig(network=task.agent, augment_pad=0)
    state = bc.create(config, {"state": data.state[:1], "images": {}}, data.action.shape[1],
                      seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(data.state), batch_size)
        state, _ = bc.update(state, {"obs": {"state": data.state[idx], "images": {}},
                                     "action": data.action[idx]})
    return state


class _BCPolicy:
    """A BC policy acting in the loop: sampled while training, its mean in evaluation."""

    version = -1

    def __init__(self, state: bc.BCState, key: jax.Array, deterministic: bool) -> None:
        self.state, self.key, self.deterministic = state, key, deterministic

    def act(self, obs: Obs) -> np.ndarray:
        self.key, key = jax.random.split(self.key)
        return np.asarray(bc.sample_actions(self.state, {"state": obs["state"], "images": {}},
                                            key, deterministic=self.deterministic))


class _Intervened(Observer):
    """HG-DAgger's data: the (state, action) pairs where the person stepped in."""

    def __init__(self) -> None:
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []

    def on_step(self, step: Step) -> None:
        if step.intervened:
            self.states.append(step.obs["state"])
            self.actions.append(step.action)

    def demonstrations(self) -> Demonstrations | None:
        if not self.states:
            return None
        return Demonstrations(np.asarray(self.states, np.float32),
                              np.asarray(self.actions, np.float32))


class _Runner:
    """The task's env with a BC policy acting; counts env steps; logs episodes."""

    def __init__(self, task: TaskConfig, log: Path, seed: int) -> None:
        from actor.env_factory import make_env

        self.stack = make_env(task, seed=seed)
        self.log = log
        self.env_steps = 0
        self.counts = {"train": 0, "eval": 0}
        self.key = jax.random.PRNGKey(seed)
        self.seed = seed

    def episode(self, policy: bc.BCState, kind: str
                ) -> tuple[dict[str, Any], Demonstrations | None]:
        """One episode; ``train`` ones let the person step in, and their steps are returned
        as new demonstrations."""
        train = kind == "train"
        self.stack.set_interventions(train)
        acting = _BCPolicy(policy, self.key, deterministic=not train)
        intervened = _Intervened()
        result = run_episode(self.stack.env, acting,
                             self.seed * 100_000 + self.counts[kind] * 2 + train, [intervened],
                             kind=kind)
        self.key = acting.key  # one key stream across episodes
        self.env_steps += result.steps if train else 0
        record_ = {"kind": kind, "episode": self.counts[kind], "env_steps": self.env_steps,
                   "steps": result.steps, "success": result.success,
                   "interventions": result.interventions, "time": time.time()}
        self.counts[kind] += 1
        append_jsonl(self.log, record_)
        return record_, intervened.demonstrations()

    def evaluate(self, policy: bc.BCState, episodes: int) -> float:
        results = [self.episode(policy, "eval")[0]["success"] for _ in range(episodes)]
        return float(np.mean(results))

    def close(self) -> None:
        self.stack.close()


@dataclass(frozen=True)
class BaselineConfig:
    bc_steps: int = 3000  # per (re)training
    rounds_episodes: int = 10  # HG-DAgger: episodes per round between trainings
    intervention_budget: int = 0  # HG-DAgger: stop after this many intervened steps
    max_env_steps: int = 20_000  # HG-DAgger: ... or this many env steps
    eval_every_round: int = 10  # evaluation episodes after each round (0: none)
    final_eval: int = 50


def run_baseline(task: TaskConfig, demos: Sequence[str | Path], out: str | Path,
                 method: str, cfg: BaselineConfig = BaselineConfig(), seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``method`` "bc" or "hgdagger"; writes OUT/episodes.jsonl and returns the summary
    (final evaluated success over ``cfg.final_eval`` episodes, interventions, env steps)."""
    if method not in ("bc", "hgdagger"):
        raise ValueError(f"method must be 'bc' or 'hgdagger', got {method!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _: None)
    t0 = time.monotonic()
    data = load_demonstrations(task, demos)
    policy = train_bc(data, task, cfg.bc_steps, seed=seed)
    runner = _Runner(dataclasses.replace(task, seed=seed), out / "episodes.jsonl", seed)
    interventions = 0
    try:
        while method == "hgdagger" and interventions < cfg.intervention_budget \
                and runner.env_steps < cfg.max_env_steps:
            for _ in range(cfg.rounds_episodes):
                record, new = runner.episode(policy, "train")
                interventions += record["interventions"]
                if new is not None:
                    data = data.extend(new.state, new.action)
            policy = train_bc(data, task, cfg.bc_steps, seed=seed)
            if cfg.eval_every_round:
                rate = runner.evaluate(policy, cfg.eval_every_round)
                say(f"hgdagger: {runner.env_steps} env steps, {interventions} interventions, "
                    f"{len(data.state)} labelled steps, eval {rate:.0%}")
        success = runner.evaluate(policy, cfg.final_eval)
    finally:
        runner.close()
    summary = {"method": method, "success_rate": success, "eval_episodes": cfg.final_eval,
               "interventions": interventions, "env_steps": runner.env_steps,
               "labelled_steps": len(data.state), "minutes": (time.monotonic() - t0) / 60}
    say(f"{method}: {success:.0%} evaluated success ({cfg.final_eval} episodes)")
    return summary
