"""Tests for LearnerLog.prune: deleting the segments a replay buffer snapshot covers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from hilrl.transport.learner_log import LearnerLog, LogFull
from hilrl.transport.wire import Schema, encode

SCHEMA = Schema({"state": ("float32", (4,))}, ("float32", (2,)), max_batch=64)
A, B = ("a", "s1"), ("b", "s2")
COUNT = 3  # transitions per message
SEGMENT_BYTES = 700  # a few records per segment


def frames(key: tuple[str, str], seq: int, n: int = COUNT) -> list:
    """A transitions message whose states encode (stream, seq) so records can be told apart."""
    state = np.zeros((n + 1, 4), np.float32)
    state[:, 0], state[:, 1] = ord(key[0][0]), seq + np.arange(n + 1)
    arrays = {"obs/state": state, "action": np.zeros((n, 2), np.float32),
              "reward": np.zeros(n, np.float32), "terminated": np.zeros(n, bool),
              "truncated": np.zeros(n, bool), "intervened": np.zeros(n, bool)}
    return encode("transitions", actor=key[0], session=key[1], seq=seq, arrays=arrays)


def append(lg: LearnerLog, key: tuple[str, str], records: int) -> None:
    for _ in range(records):
        seq = lg.next_seq(*key)
        assert lg.classify(*key, seq, COUNT) == "new"
        lg.append(*key, seq, COUNT, frames(key, seq))
        lg.sync()


def segments(root: Path, key: tuple[str, str]) -> list[int]:
    """First seqs of a stream's segment files, ascending."""
    return sorted(int(p.name[:-4]) for p in (root / key[0] / key[1]).glob("*.seg"))


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.seg"))


def records(lg: LearnerLog) -> list[tuple[str, str, int, int]]:
    return [(r.actor, r.session, r.seq, r.count) for r in lg.records()]


@pytest.fixture
def built(tmp_path: Path) -> LearnerLog:
    lg = LearnerLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    append(lg, A, 12)
    append(lg, B, 5)
    assert len(segments(tmp_path, A)) >= 4 and len(segments(tmp_path, B)) >= 2
    return lg


@pytest.mark.parametrize("covered", [0, 2, 3, 6, 9, 17, 18, 33, 35, 36, 10_000])
def test_prune_deletes_exactly_the_covered_segments_and_keeps_the_newest(
        built: LearnerLog, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        covered: int) -> None:
    lg = built
    before = segments(tmp_path, A)
    b_before = segments(tmp_path, B)
    all_records = records(lg)
    table = lg.streams()
    nbytes = lg.nbytes
    assert nbytes == disk_bytes(tmp_path)
    sizes = {first: (tmp_path / "a" / "s1" / f"{first:020d}.seg").stat().st_size
             for first in before}

    freed = lg.prune({A: covered, ("zz", "unknown"): 10_000})

    # A segment goes iff the next one starts at or below the covered seq; the newest stays.
    gone = [first for first, nxt in zip(before, before[1:], strict=False) if nxt <= covered]
    assert segments(tmp_path, A) == [f for f in before if f not in gone]
    assert segments(tmp_path, A)[-1] == before[-1]
    assert segments(tmp_path, B) == b_before  # not named in covered: untouched
    assert freed == sum(sizes[f] for f in gone) == nbytes - lg.nbytes
    assert lg.nbytes == disk_bytes(tmp_path)

    kept_from = segments(tmp_path, A)[0]
    kept = [r for r in all_records if r[:2] != A or r[2] >= kept_from]
    assert records(lg) == kept
    # Every record the snapshot does not cover is still there.
    assert {r for r in all_records if r[:2] != A or r[2] + r[3] > covered} <= set(kept)
    assert lg.streams() == table

    lg.close()
    with caplog.at_level(logging.WARNING, logger="hilrl.transport.learner_log"):
        reopened = LearnerLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    assert not caplog.records and reopened.problems == []
    assert reopened.streams() == table
    assert records(reopened) == kept
    assert [msg.arrays["obs/state"][0, 1] for rec, msg in reopened.messages(SCHEMA)
            if (rec.actor, rec.session) == A] == [r[2] for r in kept if r[:2] == A]
    # Acked data resent by the actor is still recognised, however old.
    for seq in range(0, table[A], COUNT):
        assert reopened.classify(*A, seq, COUNT) == "duplicate"
    assert reopened.classify(*A, table[A], COUNT) == "new"
    reopened.close()


def test_appends_after_prune_continue_the_open_segment_and_survive_reopen(
        built: LearnerLog, tmp_path: Path) -> None:
    lg = built
    open_segment = segments(tmp_path, A)[-1]
    lg.prune({A: lg.durable_seq(*A), B: lg.durable_seq(*B)})
    assert segments(tmp_path, A) == [open_segment]
    assert len(segments(tmp_path, B)) == 1
    end = lg.durable_seq(*A)
    append(lg, A, 1)  # the open segment (fd kept across prune) takes it
    assert lg.nbytes == disk_bytes(tmp_path)
    append(lg, A, 6)  # and rolls over as usual
    assert len(segments(tmp_path, A)) > 1 and segments(tmp_path, A)[0] == open_segment
    assert lg.nbytes == disk_bytes(tmp_path)
    table = lg.streams()
    lg.close()

    lg = LearnerLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    assert lg.streams() == table and lg.problems == []
    seqs = [r[2] for r in records(lg) if r[:2] == A]
    assert seqs == list(range(open_segment, table[A], COUNT))
    assert end in seqs
    # A second prune of a reopened log (nothing open yet) works the same way.
    freed = lg.prune({A: table[A]})
    assert freed > 0 and segments(tmp_path, A) == segments(tmp_path, A)[-1:]
    assert lg.nbytes == disk_bytes(tmp_path)
    append(lg, A, 2)
    table = lg.streams()
    lg.close()
    lg = LearnerLog.open(tmp_path, segment_bytes=SEGMENT_BYTES)
    assert lg.streams() == table
    assert lg.classify(*A, 0, COUNT) == "duplicate"
    lg.close()


def test_prune_keeps_the_last_segment_with_records_when_the_newest_is_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lg = LearnerLog.open(tmp_path, segment_bytes=1)  # one record per segment
    append(lg, A, 3)
    # A rollover to a new segment whose record is then rolled back (a failing fsync)
    # leaves the newest file empty, named at the durable seq.
    lg.append(*A, 9, COUNT, frames(A, 9))

    def fail(fd: int) -> None:
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(LogFull):
        lg.sync()
    monkeypatch.undo()
    assert segments(tmp_path, A) == [0, 3, 6, 9] and lg.streams() == {A: 9}
    freed = lg.prune({A: 9})
    assert segments(tmp_path, A) == [6, 9]  # 6 holds the stream's last records
    assert freed > 0 and lg.nbytes == disk_bytes(tmp_path)
    lg.close()
    lg = LearnerLog.open(tmp_path)
    assert lg.streams() == {A: 9}
    assert lg.classify(*A, 3, COUNT) == "duplicate"
    lg.close()


def test_prune_of_a_stream_without_files_or_durable_records_deletes_nothing(
        tmp_path: Path) -> None:
    lg = LearnerLog.open(tmp_path, segment_bytes=1)
    assert lg.hello("c", "s", 50) == 50  # known, but nothing stored yet
    assert lg.prune({("c", "s"): 100}) == 0
    lg.append(*A, 0, COUNT, frames(A, 0))
    lg.append(*A, 3, COUNT, frames(A, 3))  # not synced: nothing durable yet
    assert lg.prune({A: 100}) == 0 and segments(tmp_path, A) == [0, 3]
    lg.close()
