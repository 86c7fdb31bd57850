"""The person's check on the learned reward (``env.reward: classifier``).

A false success is the learned reward's worst error: it ends a failed episode with reward 1,
and RL learns to repeat whatever fooled the classifier (an empty gripper lifted beside the
cube). The person watching the robot sees it at once. So when the classifier ends a training
episode as a success, the arm holds still for up to ``env.classifier.review_steps`` control
steps while the episode's last transition waits, and the device is read:

- REJECT ("not done"): the transition goes to the learner with reward 0 and not terminal
  (cut, as by a time limit, so the learner bootstraps through it), so the learner never
  sees the false success as one. The classifier's view of the episode's last frames is
  written as failures to ``actors/<id>/rejected_labels`` (a labels dataset), and after every
  ``retrain_every`` rejections the classifier is retrained in a background thread (as
  ``hilrl train-classifier --like`` would: its own data plus the rejections) and judges
  from the first episode after the new file is written.
- SUCCESS (confirmed), or nothing within the window: the success stands.

Without a person (``device.kind: none``) or with ``review_steps: 0`` nothing holds and the
classifier's word is final, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.config import ClassifierSettings
from hilrl.envs.wrappers import EmergencyStop
from hilrl.interfaces import Button, NullDevice
from hilrl.storage.dataset import DatasetError, DatasetWriter, Episode

from .env_factory import EnvStack
from .loop import Pacer

log = logging.getLogger("hilrl.actor")

RETRAINED = "classifier_r{:03d}.hilrl"


class RewardReview:
    """Holds the arm for the person's verdict on each classifier success, keeps the frames
    they reject, and retrains the classifier on them in the background."""

    def __init__(self, stack: EnvStack, settings: ClassifierSettings, directory: Path,
                 say: Callable[[str], None]) -> None:
        wrapper = stack.reward_classifier()
        if wrapper is None:
            raise ValueError("a reward review needs env.reward=classifier")
        self.wrapper, self.device, self.hold = wrapper, stack.device, stack.hold
        self.settings, self.dir, self.say = settings, directory, say
        self.labels = directory / "rejected_labels"
        self.writer: DatasetWriter | None = None
        if (self.labels / "meta.json").exists():  # a resumed run goes on counting
            self.writer = DatasetWriter(self.labels, {})
        self.rejections = self._kept()
        self.retrains = 0
        self._retrain: _Retraining | None = None
        self._retrained_at = self._kept()  # rejected episodes the classifier in use has seen
        self.current = Path(settings.path or "")
        latest = self._latest_retrained()
        if latest is not None:  # a resumed run judges with what it had learned
            self._use(latest, "resuming with")

    @classmethod
    def for_stack(cls, stack: EnvStack, settings: ClassifierSettings, directory: Path,
                  say: Callable[[str], None]) -> RewardReview | None:
        """A review when there is a classifier to check and a person to check it."""
        if (stack.reward_classifier() is None or settings.review_steps == 0
                or isinstance(stack.device, NullDevice)):
            return None
        return cls(stack, settings, directory, say)

    # ---------------------------------------------------------------- the verdict

    def ask(self, clock: Pacer) -> bool:
        """Hold the arm up to ``review_steps`` control steps, reading the device; True when
        the person said REJECT, False on SUCCESS or silence. ESTOP raises EmergencyStop."""
        self.device.review()
        for _ in range(self.settings.review_steps):
            clock.start_step()
            self.hold()
            buttons = self.device.read().buttons
            if Button.ESTOP in buttons:
                raise EmergencyStop("emergency stop pressed during the reward's review: the "
                                    "arm is holding its pose")
            clock.end_step()
            if Button.REJECT in buttons:
                return True
            if Button.SUCCESS in buttons:
                return False
        return False

    def reject(self, episode: int) -> None:
        """Keep the classifier's view of the episode's last frames as failures; retrain
        when enough have come in."""
        self.rejections += 1
        views = list(self.wrapper.recent_views)
        try:
            if self.writer is None:
                self.writer = DatasetWriter(self.labels, {"kind": "labels",
                                                          "source": "rejected"})
            self.writer.write(_failures(views, episode))
        except (OSError, DatasetError) as e:  # the relabelled transition still went out
            log.warning("could not keep the rejected frames in %s: %s", self.labels, e)
            return
        self._maybe_retrain()

    # ---------------------------------------------------------------- retraining

    def poll(self) -> None:
        """Between episodes: take the retrained classifier once its training is done."""
        if self._retrain is None or self._retrain.is_alive():
            return
        job, self._retrain = self._retrain, None
        if job.error is None:
            self._use(job.out, "judging with")
        else:
            self.say(f"retraining the reward classifier failed ({job.error}); keeping "
                     f"{self.current.name}")
        self._maybe_retrain()

    def _maybe_retrain(self) -> None:
        every = self.settings.retrain_every
        if not every or self._retrain is not None or self._kept() - self._retrained_at < every:
            return
        self._retrained_at = self._kept()
        latest = self._latest_retrained()
        n = 1 + (int(latest.stem.rsplit("_r", 1)[1]) if latest is not None else 0)
        self._retrain = _Retraining(self.current, self.labels, self.dir / RETRAINED.format(n),
                                    self.settings.retrain_epochs)
        self._retrain.start()
        self.say(f"{self.rejections} reward successes rejected: retraining the classifier "
                 f"on its data plus them, in the background ({self._retrain.out.name})")

    def _use(self, path: Path, verb: str) -> None:
        from hilrl.learning.classifier import ClassifierError, RewardClassifier

        try:
            self.wrapper.use(RewardClassifier.load(path))
        except ClassifierError as e:
            self.say(f"cannot use the retrained classifier {path}: {e}; keeping "
                     f"{self.current.name}")
            return
        self.current = path
        self.retrains += 1
        self.say(f"{verb} the retrained reward classifier {path.name} (threshold "
                 f"{self.wrapper.threshold:.3f}, {self.rejections} rejections)")

    def _latest_retrained(self) -> Path | None:
        found = sorted(self.dir.glob(RETRAINED.replace("{:03d}", "[0-9][0-9][0-9]")))
        return found[-1] if found else None

    def _kept(self) -> int:
        """Rejected episodes whose frames are in ``rejected_labels``."""
        return 0 if self.writer is None else self.writer.next_index

    def close(self) -> None:
        """A retraining still running is abandoned (its file is written atomically or not
        at all; a resumed run retrains again when due)."""
        self._retrain = None

    def status(self) -> dict[str, Any]:
        return {"rejections": self.rejections, "classifier_retrains": self.retrains,
                "classifier": self.current.name,
                "classifier_retraining": self._retrain is not None}


class _Retraining(threading.Thread):
    """``train-classifier --like current --data rejected`` in a background thread of the
    actor (JAX releases the GIL while it computes; nodes start no processes). Between
    episodes :meth:`RewardReview.poll` takes its file."""

    def __init__(self, current: Path, rejected: Path, out: Path, epochs: int) -> None:
        super().__init__(name="classifier-retraining", daemon=True)
        self.current, self.rejected, self.out, self.epochs = current, rejected, out, epochs
        self.error: str | None = None

    def run(self) -> None:
        from hilrl.learning.classifier import (
            ClassifierError,
            retrain_recipe,
            train_classifier,
        )

        try:
            recipe = retrain_recipe(self.current, [self.rejected])
            train_classifier(recipe.pop("paths"), self.out, **recipe, max_epochs=self.epochs,
                             progress=False)
        except (ClassifierError, OSError, ValueError) as e:
            self.error = str(e)


def _failures(views: list[dict[str, np.ndarray]], episode: int) -> Episode:
    """The frames as a labels episode whose every frame is a failure (a labels dataset: the
    per-step ``success`` labels observation t+1; the meta says the episode failed, for
    ``--labels last:K`` data)."""
    steps = len(views) - 1
    cams = sorted(views[0])
    ended = np.zeros(steps, bool)
    ended[-1] = True
    return Episode(state=np.zeros((steps + 1, 1), np.float32),
                   images={c: np.stack([v[c] for v in views]) for c in cams},
                   action=np.zeros((steps, 1), np.float32), reward=np.zeros(steps, np.float32),
                   terminated=np.zeros(steps, bool), truncated=ended,
                   intervened=np.zeros(steps, bool),
                   extras={"success": np.zeros(steps, bool)},
                   meta={"success": False, "source": "rejected", "episode": episode,
                         "time": time.time()})
