"""The policy the actor runs: weights from the learner (or a checkpoint), jitted inference."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hilrl.envs.spec import EnvSpec
from hilrl.learning import sac
from hilrl.learning.sac_config import SACConfig


class PolicyRunner:
    """Holds the newest policy parameters and turns observations into actions."""

    def __init__(self, config: SACConfig, spec: EnvSpec, seed: int = 0) -> None:
        self.config = config
        self.spec = spec
        self.version = -1
        self._policy: sac.Policy | None = None
        self._key = jax.random.PRNGKey(seed)

    @property
    def ready(self) -> bool:
        return self._policy is not None

    def set_weights(self, version: int, params: Mapping[str, Any]) -> None:
        """Swap in a parameter tree ({"encoder", "actor", ["gripper"]}); between steps."""
        params = jax.tree.map(jnp.asarray, dict(params))
        first = self._policy is None
        self._policy = sac.Policy(params, self.config, self.spec.action_size)
        self.version = int(version)
        if first:
            self._warm_up()

    def _warm_up(self) -> None:
        """Compile both action modes now: the first control step must not stall for seconds
        on a compile while the arm moves and the cameras run on."""
        obs = self.spec.example_observation()
        for deterministic in (False, True):
            self.act(obs, deterministic)

    def act(self, obs: Mapping[str, Any], deterministic: bool = False) -> np.ndarray:
        if self._policy is None:
            raise RuntimeError("no policy weights yet")
        self._key, key = jax.random.split(self._key)
        # Only what the policy was built for: an env may render extra cameras (videos).
        obs = {"state": obs["state"],
               "images": {cam: obs["images"][cam] for cam in self.spec.image_shapes}}
        return np.asarray(sac.sample_actions(self._policy, obs, key, deterministic))

    def load_checkpoint(self, directory: str | Path, seed: int = 0) -> int:
        """Load the policy of the newest valid checkpoint in ``directory`` (a learner's
        ``checkpoints/``, its learner directory, or its run directory); returns its step."""
        from hilrl.storage.checkpoint import Checkpointer

        directory = find_checkpoints(directory)
        template = sac.create(self.config, self.spec.example_observation(),
                              self.spec.action_size, seed=seed)
        ckpt = Checkpointer(directory, read_only=True)
        try:
            step, state, _ = ckpt.restore_latest_valid(template)
        finally:
            ckpt.close()
        self.set_weights(step, sac.policy(state).params)
        return step


def find_checkpoints(directory: str | Path) -> Path:
    """The checkpoints directory of ``directory``: itself, its ``checkpoints/`` (a learner's
    directory) or its ``learner/checkpoints/`` (a run directory)."""
    from hilrl.storage.checkpoint import CheckpointNotFoundError

    directory = Path(directory)
    for candidate in (directory, directory / "checkpoints", directory / "learner" / "checkpoints"):
        if candidate.is_dir() and any(p.name.isdigit() for p in candidate.iterdir()):
            return candidate
    raise CheckpointNotFoundError(f"{directory}: no checkpoints found (give the learner's run "
                                  "directory or its checkpoints/)")
