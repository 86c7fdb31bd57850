"""``hilrl train-bc``: behaviour cloning on a task's demos, written as a residual RL base
policy file (``residual.base``; ``hilrl.learning.base_policy``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.learning.base_policy import FILE_KIND, BasePolicyError

from .ingest import load_demos


def train_bc_policy(task: Any, demos: Sequence[str | Path], out: str | Path, steps: int,
                    batch_size: int = 64, seed: int = 0,
                    progress: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """BC on the demos at ``demos`` with the task's encoder and actor (``task.agent``'s
    networks, DrQ shifts on the images), written to ``out`` as a base policy file. Returns
    the final training MSE, the demo counts and the seconds taken."""
    import jax

    from hilrl.config.io import to_dict
    from hilrl.envs.spec import env_spec
    from hilrl.learning import bc
    from hilrl.learning.replay import ReplayBuffer
    from hilrl.storage.dataset import iter_dataset
    from hilrl.storage.weights import save_weights

    t0 = time.monotonic()
    layout = env_spec(task)
    size = sum(ep.length + 1 for path in demos for ep in iter_dataset(path))  # + last obs
    if size == 0:
        raise BasePolicyError(f"no demo episodes in {[str(p) for p in demos]}")
    buffer = ReplayBuffer(max(size, 2), **layout.replay_kwargs())
    encoder = None
    if task.env.frozen_encoder:
        from hilrl.learning.pretrain import FrozenEncoder

        encoder = FrozenEncoder(task.env.frozen_encoder)
    episodes, transitions = load_demos(demos, buffer, encoder)  # the person's own actions
    config = bc.BCConfig(network=task.agent, augment_pad=task.agent.augment_pad)
    state = bc.create(config, layout.example_observation(), layout.action_size, seed=seed)
    rng = np.random.default_rng(seed)
    mse = math.nan
    for step in range(1, steps + 1):
        state, info = bc.update(state, buffer.sample(batch_size, rng))
        if step % 100 == 0 or step == steps:  # reading it waits for the update
            mse = float(jax.device_get(info["mse"]))
            if progress is not None:
                progress(step, mse)
    save_weights(out, bc.policy(state).params, {
        "kind": FILE_KIND, "network": to_dict(bc.policy(state).config),
        "action_size": layout.action_size, "state_size": layout.state_size,
        "image_shapes": {c: list(s) for c, s in layout.image_shapes.items()},
        "demos": [str(p) for p in demos], "steps": steps, "train_mse": mse})
    return {"mse": mse, "episodes": episodes, "transitions": transitions,
            "seconds": time.monotonic() - t0}
