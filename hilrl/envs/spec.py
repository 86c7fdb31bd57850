"""What a task's observations and actions look like, worked out once, without its robot.

The learner must start on a machine with no robot, camera or GL, yet its replay buffers,
the wire schema it agrees with actors and the networks it builds need the exact shapes.
:class:`EnvSpec` is the one calculation of that layout and everything else reads it: the
replay buffers (``replay_kwargs``), the wire schema (``wire_schema``), the networks
(``example_observation``) and the dataset files (``dataset_spec``). For the simulated and
real arms it follows from the task file alone, through the same functions the env and its
wrappers use at run time (:func:`camera_output_shape` in ``ImageCropResize``,
``state_slices`` in ``ManipulatorEnv``, the encoder file's ``feature_size`` in
``EncoderFeatures``); a test checks the built env agrees. A gymnasium env is built once to
read its spaces (gymnasium envs are not drivers and need no hardware).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hilrl.config import CameraConfig, TaskConfig
from hilrl.envs.manipulator import state_slices
from hilrl.transport.wire import Schema

# Per-transition extras every hilrl env reports (0 where it has no gripper).
EXTRAS = ("grasp_penalty",)
MAX_BATCH = 256  # transitions per wire message, at most

Shape = tuple[int, int, int]


def camera_output_shape(camera: CameraConfig, frame_hw: tuple[int, int]) -> Shape:
    """(H, W, 3) of ``camera``'s images after its crop (x0, y0, x1, y1) and resize, for frames
    of ``frame_hw`` (height, width). Raises ValueError for a crop outside the frame."""
    h, w = frame_hw
    if camera.crop is not None:
        x0, y0, x1, y1 = camera.crop
        if x1 > w or y1 > h:
            raise ValueError(f"camera {camera.name!r}: crop {tuple(camera.crop)} is outside its "
                             f"{w}x{h} frame")
        h, w = y1 - y0, x1 - x0
    if camera.size is not None:
        h, w = camera.size
    return int(h), int(w), 3


@dataclass(frozen=True)
class EnvSpec:
    """The layout of one task's transitions.

    ``state_size`` and ``image_shapes`` are what the policy sees (and what travels to the
    learner): the state keys followed by a frozen encoder's ``feature_size`` features, and
    the policy's cameras (none with a frozen encoder). ``env_images`` are all the cameras in
    the env's observation, which datasets record (None: the same as ``image_shapes``).
    """

    state_size: int
    image_shapes: dict[str, Shape]  # camera -> (H, W, 3) the policy sees
    action_size: int
    feature_size: int = 0  # a frozen encoder's features at the end of the state
    env_images: dict[str, Shape] | None = field(default=None)

    def replay_kwargs(self) -> dict[str, Any]:
        """Arguments of ``ReplayBuffer`` (without capacity) for this env's transitions."""
        return {"state_size": self.state_size, "image_shapes": dict(self.image_shapes),
                "action_size": self.action_size, "extras": EXTRAS}

    def wire_schema(self, max_batch: int = MAX_BATCH) -> Schema:
        """The transition layout learner and actors agree on at hello (what the replay
        buffers of ``replay_kwargs`` take)."""
        obs = {"state": ("float32", (self.state_size,)),
               **{f"images/{cam}": ("uint8", shape) for cam, shape in self.image_shapes.items()}}
        return Schema(obs, ("float32", (self.action_size,)),
                      {name: ("float32", ()) for name in EXTRAS}, max_batch)

    def example_observation(self) -> dict[str, Any]:
        """A zero observation, batched (1, ...), for initialising networks."""
        return {"state": np.zeros((1, self.state_size), np.float32),
                "images": {cam: np.zeros((1, *shape), np.uint8)
                           for cam, shape in self.image_shapes.items()}}

    def dataset_spec(self) -> dict[str, Any]:
        """What a recorded episode's arrays look like (a dataset's ``info["spec"]``;
        appending requires the same). Demos record what the robot saw: every camera of the
        env and the state without a frozen encoder's features, so one set of demos serves any
        encoder."""
        images = self.image_shapes if self.env_images is None else self.env_images
        return {"state_size": self.state_size - self.feature_size,
                "images": {cam: list(shape) for cam, shape in images.items()},
                "action_size": self.action_size}


def env_spec(task: TaskConfig, images: bool = True, features: bool = True) -> EnvSpec:
    """The layout of ``actor.env_factory.make_env(task, images=images, features=features)``:
    the policy's cameras are ``env.policy_cameras`` (default: all); ``env.frozen_encoder``
    replaces them by its features in the state (with images and features only, as make_env;
    without, the encoder file is not read)."""
    cfg = task.env
    if cfg.robot == "gymnasium":
        from hilrl.envs.gym_adapter import make_gym_env

        settings = cfg.gymnasium if images else dataclasses.replace(cfg.gymnasium, image_keys={})
        env = make_gym_env(settings, cfg.max_episode_steps, seed=None)
        try:
            space = env.observation_space
            cameras = {c: tuple(s.shape) for c, s in space["images"].spaces.items()}
            state_size, action_size = int(space["state"].shape[0]), int(env.action_space.shape[0])
        finally:
            env.close()
        return EnvSpec(state_size, _policy_cameras(cameras, cfg.policy_cameras), action_size,
                       env_images=cameras)
    slices = state_slices(cfg.state_keys)
    state_size = max((s.stop for s in slices.values()), default=0)
    action_size = 7 if cfg.rotation_actions else 4
    cameras = {c.name: camera_output_shape(c, cfg.image_size)
               for c in (cfg.cameras if images else [])}
    if images and features and cfg.frozen_encoder:  # its features ride in the state
        from hilrl.learning.pretrain import read_spec

        features = read_spec(cfg.frozen_encoder).feature_size
        return EnvSpec(state_size + features, {}, action_size, features, cameras)
    return EnvSpec(state_size, _policy_cameras(cameras, cfg.policy_cameras), action_size,
                   env_images=cameras)


def _policy_cameras(cameras: dict[str, Shape], seen: list[str] | None) -> dict[str, Shape]:
    return {name: shape for name, shape in cameras.items() if seen is None or name in seen}
