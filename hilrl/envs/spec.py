"""What a task's observations and actions look like, without building its robot.

The learner must start on a machine with no robot, camera or GL, yet its replay buffer and
the wire schema it agrees with actors need the exact shapes. For the simulated and real arms
they follow from the task file alone (the same arithmetic as ``ManipulatorEnv`` and its
wrappers; a test checks the two agree); a gymnasium env is built once to read its spaces
(gymnasium envs are not drivers and need no hardware).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hilrl.config import TaskConfig
from hilrl.envs.manipulator import STATE_SIZES
from hilrl.transport.wire import Schema

# Per-transition extras every hilrl env reports (0 where it has no gripper).
EXTRAS = ("grasp_penalty",)
MAX_BATCH = 256  # transitions per wire message, at most


@dataclass(frozen=True)
class EnvSpec:
    state_size: int
    image_shapes: dict[str, tuple[int, int, int]]  # camera -> (H, W, 3) the policy sees
    action_size: int

    def replay_kwargs(self) -> dict[str, Any]:
        """Arguments of ``ReplayBuffer`` (without capacity) for this env's transitions."""
        return {"state_size": self.state_size, "image_shapes": dict(self.image_shapes),
                "action_size": self.action_size, "extras": EXTRAS}

    def wire_schema(self) -> Schema:
        """The transition layout learner and actors agree on at hello."""
        return Schema.from_replay_spec({"capacity": 2, **self.replay_kwargs()},
                                       max_batch=MAX_BATCH)

    def example_observation(self) -> dict[str, Any]:
        """A zero observation, batched (1, ...), for initialising networks."""
        return {"state": np.zeros((1, self.state_size), np.float32),
                "images": {cam: np.zeros((1, *shape), np.uint8)
                           for cam, shape in self.image_shapes.items()}}


def env_spec(task: TaskConfig, images: bool = True) -> EnvSpec:
    """The observation/action layout the policy sees in ``actor.env_factory.make_env(task,
    images=images)``: its cameras are ``env.policy_cameras`` (default: all)."""
    cfg = task.env
    if cfg.robot == "gymnasium":
        from hilrl.envs.gym_adapter import make_gym_env

        settings = cfg.gymnasium
        if not images:
            settings = type(settings)(**{**settings.__dict__, "image_keys": {}})
        env = make_gym_env(settings, cfg.max_episode_steps, seed=None)
        try:
            space = env.observation_space
            return EnvSpec(int(space["state"].shape[0]),
                           {c: tuple(s.shape) for c, s in space["images"].spaces.items()},
                           int(env.action_space.shape[0]))
        finally:
            env.close()
    state_size = sum(STATE_SIZES[k] for k in cfg.state_keys)
    if cfg.frozen_encoder:  # the encoder's features ride in the state; no image reaches it
        from hilrl.learning.pretrain import read_spec

        return EnvSpec(state_size + read_spec(cfg.frozen_encoder).feature_size, {},
                       7 if cfg.rotation_actions else 4)
    shapes: dict[str, tuple[int, int, int]] = {}
    seen = cfg.policy_cameras
    for cam in cfg.cameras if images else []:
        if seen is not None and cam.name not in seen:
            continue
        h, w = cfg.image_size
        if cam.crop is not None:
            x0, y0, x1, y1 = cam.crop
            h, w = y1 - y0, x1 - x0
        if cam.size is not None:
            h, w = cam.size
        shapes[cam.name] = (int(h), int(w), 3)
    return EnvSpec(state_size, shapes, 7 if cfg.rotation_actions else 4)
