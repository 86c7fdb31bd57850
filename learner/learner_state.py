"""The learner's resumable state on disk: agent, replay buffers and what they include.

Layout under the learner's directory::

    checkpoints/<step>/        agent state (hilrl.storage.checkpoint: orbax + checksummed manifest);
                               its extra JSON names the replay snapshots and holds
                               ``included`` (per actor stream, the first seq not in them)
    replay/online-<step>.json  replay snapshots written just before that checkpoint, chunked
    replay/demo-<step>.json    (ReplayBuffer.save_chunks): each names its chunk files,
                               <name>-<step>.<chunk>.npz, of this or an earlier checkpoint,
                               so a checkpoint writes only the chunks changed since the last
    log/                       the durable transport log (hilrl.transport.learner_log)

A checkpoint is committed only once its snapshots are on disk, so whatever it names exists.
After it commits, snapshot files no kept checkpoint names are deleted, and log segments every
kept checkpoint covers are pruned: the oldest kept checkpoint can still be resumed from
(its snapshots plus the log records after ``included``), which is the fallback when the
newest one turns out damaged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hilrl.learning.replay import ReplayBuffer, ReplayFileError
from hilrl.storage.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
)
from hilrl.transport.learner_server import LearnerServer

log = logging.getLogger(__name__)

Stream = tuple[str, str]


@dataclass
class Restored:
    step: int
    state: Any
    online: ReplayBuffer
    demo: ReplayBuffer
    included: dict[Stream, int]
    counters: dict[str, Any]


class RunCheckpoints:
    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.replay_dir = self.directory / "replay"
        self.ckpt = Checkpointer(self.directory / "checkpoints", max_to_keep=keep)

    def exists(self) -> bool:
        return self.ckpt.latest_step() is not None

    def save(self, state: Any, online: ReplayBuffer, demo: ReplayBuffer,
             included: dict[Stream, int], counters: dict[str, Any],
             server: LearnerServer | None = None) -> int:
        """Write snapshots then the agent checkpoint at ``state.step``; returns the step.
        Raises OSError / CheckpointError when the disk refuses (nothing committed then)."""
        step = int(state.step)
        names = {"online": online.save_chunks(self.replay_dir, f"online-{step}"),
                 "demo": demo.save_chunks(self.replay_dir, f"demo-{step}")}
        extra = {"replay": names, "included": [[a, s, q] for (a, s), q in included.items()],
                 "counters": counters}
        self.ckpt.save(step, state, extra_json=extra)
        self._clean(server)
        return step

    def _clean(self, server: LearnerServer | None) -> None:
        kept = self.ckpt.all_steps()
        extras = []
        for step in kept:
            try:
                extras.append(self.ckpt.read_extra(step))
            except (CheckpointError, OSError, ValueError) as e:
                log.warning("checkpoint %d: cannot read its extra data (%s)", step, e)
                return  # keep everything rather than delete what it may need
        try:
            wanted = {name for extra in extras for snapshot in extra["replay"].values()
                      for name in ReplayBuffer.snapshot_files(self.replay_dir / snapshot)}
        except ReplayFileError as e:
            log.warning("a kept replay snapshot is unreadable (%s); nothing deleted", e)
            return
        for path in self.replay_dir.glob("*"):
            if path.suffix in (".npz", ".json") and path.name not in wanted:
                path.unlink(missing_ok=True)
        if server is not None and extras:
            server.prune_log(_included(extras[0]))

    def restore(self, template: Any) -> Restored:
        """The newest checkpoint whose agent state and snapshots load; older ones are tried
        when the newest is damaged. Raises CheckpointNotFoundError when none works."""
        errors = []
        for step in reversed(self.ckpt.all_steps()):
            try:
                state, extra = self.ckpt.restore(template, step)
                names = extra["replay"]
                online = ReplayBuffer.load(self.replay_dir / names["online"])
                demo = ReplayBuffer.load(self.replay_dir / names["demo"])
            except CheckpointMismatchError:
                raise  # a config/code change, not damage: an older step would not fit either
            except (CheckpointError, ReplayFileError, KeyError) as e:
                log.warning("checkpoint %d cannot be resumed from (%s); trying an older one",
                            step, e)
                errors.append(f"step {step}: {e}")
                continue
            return Restored(step, state, online, demo, _included(extra),
                            dict(extra.get("counters", {})))
        raise CheckpointNotFoundError(
            f"{self.ckpt.directory}: no checkpoint to resume from"
            + (": " + "; ".join(errors) if errors else ""))

    def close(self) -> None:
        self.ckpt.close()


def _included(extra: dict[str, Any]) -> dict[Stream, int]:
    return {(a, s): int(q) for a, s, q in extra.get("included", [])}
