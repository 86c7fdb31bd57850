"""Getting transitions into the learner's two replay buffers: actors' messages and demos.

Every step goes into the online buffer; steps a person drove (``intervened``) also go into
the demo buffer, which holds the recorded demos too (HIL-SERL's "intervention buffer"), so
half of every batch learns from human actions. ``Ingestor.included`` remembers, per actor
stream, the first seq not yet in the buffers: a checkpoint stores it with the buffer
snapshots, and after a restart exactly the log records past it are replayed, so every
transition is in the buffers once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from hilrl.learning.base_policy import BasePolicy, to_residual
from hilrl.learning.replay import ReplayBuffer
from hilrl.storage.dataset import DatasetError, iter_dataset
from hilrl.transport.wire import Message

if TYPE_CHECKING:
    from hilrl.learning.pretrain import FrozenEncoder

log = logging.getLogger(__name__)

Stream = tuple[str, str]  # (actor id, session id)


class Ingestor:
    def __init__(self, online: ReplayBuffer, demo: ReplayBuffer,
                 included: Mapping[Stream, int] | None = None) -> None:
        self.online = online
        self.demo = demo
        self.included: dict[Stream, int] = dict(included or {})
        self.transitions = 0  # online transitions added (this process)
        self.interventions = 0
        self.episodes = 0  # episode ends seen
        self.staleness: list[int] = []  # learner step - policy_version, per message

    def covers(self, actor: str, session: str, seq: int, count: int) -> bool:
        """Whether the message [seq, seq + count) is already in the buffers."""
        return seq + count <= self.included.get((actor, session), 0)

    def add(self, msg: Message, learner_step: int | None = None) -> int:
        """Add one transitions message; returns its number of steps (0 if already in)."""
        n = msg.batch_size
        if self.covers(msg.actor, msg.session, msg.seq, n):
            return 0
        # The wire layout is add_batch's (the server checked it against the schema the env
        # spec made, which the buffers share): obs with N + 1 rows, each frame once, and
        # every other array N rows.
        batch = msg.tree()
        obs, extras = batch["obs"], batch.get("extras", {})
        action, reward = batch["action"], batch["reward"]
        terminated, truncated = batch["terminated"], batch["truncated"]
        intervened = np.asarray(batch["intervened"], bool)
        self.online.add_batch(obs, action, reward, terminated, truncated, intervened, extras)
        for start, stop in _runs(intervened):
            # A run that stops before the batch's end did not end the episode: the next
            # step's obs continues it only if the person keeps driving (a new batch).
            self.demo.add_batch(
                _rows(obs, start, stop + 1), action[start:stop], reward[start:stop],
                terminated[start:stop], truncated[start:stop], intervened[start:stop],
                _rows(extras, start, stop))
        self.included[(msg.actor, msg.session)] = msg.seq + n
        self.transitions += n
        self.interventions += int(intervened.sum())
        self.episodes += int(terminated[-1] or truncated[-1])
        if learner_step is not None and msg.policy_version >= 0:
            self.staleness.append(learner_step - msg.policy_version)
        return n


def _rows(tree: Any, start: int, stop: int) -> Any:
    if isinstance(tree, Mapping):
        return {k: _rows(v, start, stop) for k, v in tree.items()}
    return tree[start:stop]


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    padded = np.concatenate([[False], flags, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def load_demos(paths: Iterable[str | Path], buffer: ReplayBuffer,
               encoder: FrozenEncoder | None = None,
               residual: Callable[[dict[str, Any], np.ndarray], np.ndarray] | None = None
               ) -> tuple[int, int]:
    """Add every episode of the datasets at ``paths`` to ``buffer``; returns (episodes,
    transitions). Cameras the buffer does not use are dropped (a state-based run can learn
    from demos recorded with images); a missing one, or a different state or action size,
    raises DatasetError naming the dataset. ``encoder`` (the task's ``env.frozen_encoder``)
    appends its features of the demo frames to the state, as the actor's env does.
    ``residual(obs, actions)`` (residual RL: :func:`residual_of`) replaces each episode's
    actions by the corrections to the base policy that would have applied them."""
    if encoder is not None:
        from hilrl.learning.pretrain import EncoderFileError  # loaded with the encoder already
    episodes = steps = 0
    for path in paths:
        for ep in iter_dataset(path):
            if encoder is not None:
                try:
                    state = encoder.episode_state(ep.state, ep.images)
                except EncoderFileError as e:
                    raise DatasetError(f"{path}: these demos do not fit the frozen encoder: "
                                       f"{e}") from e
                ep = dataclasses.replace(ep, state=state)
            missing = sorted(set(buffer.image_shapes) - set(ep.images))
            if missing:
                raise DatasetError(f"{path}: demos lack camera(s) {missing} this task uses "
                                   f"(they have {sorted(ep.images)})")
            want = (buffer.state_size, buffer.action_size)
            got = (ep.state.shape[1], ep.action.shape[1])
            if got != want:
                raise DatasetError(f"{path}: demos have state/action sizes {got}, this task "
                                   f"{want}; were they recorded for another task?")
            extras = {name: ep.extras.get(name, np.zeros(ep.length, np.float32))
                      for name in buffer.extras}
            images = {c: ep.images[c] for c in buffer.image_shapes}
            action = ep.action
            if residual is not None:
                action = residual({"state": ep.state[:-1],
                                   "images": {c: v[:-1] for c, v in images.items()}}, action)
            view = SimpleNamespace(
                state=ep.state, images=images,
                action=action, reward=ep.reward, terminated=ep.terminated,
                truncated=ep.truncated, intervened=np.ones(ep.length, bool), extras=extras)
            try:
                buffer.add_episode(view)
            except ValueError as e:
                raise DatasetError(f"{path}: {e}") from e
            episodes += 1
            steps += ep.length
    return episodes, steps


def residual_of(base: BasePolicy, scale: float, batch: int = 256
                ) -> Callable[[dict[str, Any], np.ndarray], np.ndarray]:
    """``load_demos``'s ``residual`` for a base policy: its actions on the demo observations,
    ``batch`` at a time, and the residuals of the demo actions to them."""
    def convert(obs: dict[str, Any], actions: np.ndarray) -> np.ndarray:
        base_actions = np.concatenate([
            np.asarray(base(_rows(obs, i, i + batch)), np.float32)
            for i in range(0, len(actions), batch)])
        return to_residual(actions, base_actions, scale)

    return convert
