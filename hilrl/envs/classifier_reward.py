"""Reward from a learned success classifier (``env.reward: classifier``).

On a real robot nothing else says the task succeeded. Each step the classifier
(``hilrl.learning.classifier.RewardClassifier``, trained with ``hilrl train-classifier``) looks at
the frames its cameras see, cropped and resized exactly as when its training data was
recorded; success = ``p >= threshold`` for ``consecutive`` steps in a row and, optionally,
state entries within bounds. Success gives reward 1 and ends the episode (terminated).

It sits before ImageCropResize and cuts its own view from the frames as rendered (the crop
and size stored in the classifier file), whatever the policy's cameras are set to: a
classifier trained on 128x128 frames keeps seeing them while the policy sees 64x64. It sets
``info["success"]`` to its own verdict. A simulator's privileged success stays in
``info["scene_success"]``, which nothing here reads: it only judges (the actor's
false-success count), never rewards.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from hilrl.config import CameraConfig, ClassifierSettings
from hilrl.envs.spec import camera_output_shape
from hilrl.envs.wrappers import crop_resize

_INDEXED = re.compile(r"([A-Za-z_]+)\[(\d+)\]")


class ClassifierReward(gym.Wrapper):
    def __init__(self, env: gym.Env, classifier: Any, settings: ClassifierSettings,
                 state_slices: Mapping[str, slice] | None = None) -> None:
        super().__init__(env)
        self.settings = settings
        self.use(classifier)
        self.consecutive = settings.consecutive
        self.conditions = _conditions(settings.state_condition, state_slices or {})
        self._streak = 0
        # The classifier's view of the last frames it judged (the reset frame first): what
        # the person rejects when it called a failure a success (actor.reward_review).
        self.recent_views: deque[dict[str, np.ndarray]] = deque(maxlen=settings.consecutive + 2)

    def use(self, classifier: Any) -> None:
        """Judge with ``classifier`` from the next step on (a retrained one); it must see
        the cameras as the env renders them. Raises ClassifierError, keeping the old one."""
        from hilrl.learning.classifier import ClassifierError

        images = self.env.observation_space["images"].spaces
        missing = sorted(set(classifier.cameras) - set(images))
        if missing:
            raise ClassifierError(
                f"the reward classifier needs camera(s) {missing}, but the env has "
                f"{sorted(images)}: add them to env.cameras (env.policy_cameras keeps them "
                "away from the policy)")
        views = {cam: (_list(view.get("crop")), _list(view.get("size")))
                 for cam, view in classifier.camera_settings.items()}
        shapes = {}
        for cam in classifier.cameras:
            crop, size = views.get(cam, (None, None))
            rendered = images[cam].shape[:2]
            try:
                shapes[cam] = camera_output_shape(CameraConfig(cam, crop, size), rendered)
            except ValueError as e:
                raise ClassifierError(f"{e}: the reward classifier's view of {cam!r} was cut "
                                      "from frames of another size; set env.image_size as "
                                      "when its labels were recorded") from None
        try:
            classifier.check_cameras(shapes)
        except ClassifierError as e:
            rendered = {cam: images[cam].shape for cam in classifier.cameras}
            raise ClassifierError(f"{e}. The classifier cuts its view (crop, size: "
                                  f"{views}) from the frames as rendered "
                                  f"({rendered})") from None
        self.views = views
        self.classifier = classifier
        self.threshold = (self.settings.threshold if self.settings.threshold is not None
                          else float(classifier.threshold))

    def reset(self, **kwargs):
        self._streak = 0
        obs, info = self.env.reset(**kwargs)
        self.recent_views.clear()
        self.recent_views.append(self._view(obs))
        info["success"] = False
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        view = self._view(obs)
        self.recent_views.append(view)
        p = self.classifier.probability(view)
        positive = p >= self.threshold and all(
            lo <= obs["state"][i] <= hi for i, lo, hi in self.conditions)
        self._streak = self._streak + 1 if positive else 0
        success = self._streak >= self.consecutive
        info["success"] = success
        info["success_prob"] = float(p)
        if success:
            reward, terminated = 1.0, True
        return obs, float(reward), terminated, truncated, info

    def _view(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        return {cam: crop_resize(obs["images"][cam], *self.views.get(cam, (None, None)))
                for cam in self.classifier.cameras}


def _list(value: Any) -> list[int] | None:
    return None if value is None else [int(v) for v in value]


def _conditions(spec: Mapping[str, Sequence[float | None]], slices: Mapping[str, slice]
                ) -> list[tuple[int, float, float]]:
    """(state index, low, high) per entry of ``classifier.state_condition``."""
    out = []
    for key, (low, high) in spec.items():
        match = _INDEXED.fullmatch(key)
        name, offset = (match.group(1), int(match.group(2))) if match else (key, None)
        if name not in slices:
            raise ValueError(f"classifier.state_condition {key!r}: {name!r} is not in "
                             f"env.state_keys {list(slices)}")
        part = slices[name]
        size = part.stop - part.start
        if offset is None:
            if size != 1:
                raise ValueError(f"classifier.state_condition {key!r}: {name} has {size} "
                                 f"entries; say which, e.g. {name}[2]")
            offset = 0
        if offset >= size:
            raise ValueError(f"classifier.state_condition {key!r}: {name} has {size} entries")
        out.append((part.start + offset, -np.inf if low is None else float(low),
                    np.inf if high is None else float(high)))
    return out
