"""The learner's durable inbox: every accepted transitions message, on disk before it is acked.

The learner server appends each transitions message it accepts here, exactly as received
(the wire frames), fsyncs in groups, and only then acks it. After a restart (SIGKILL
included) ``LearnerLog.open`` rebuilds the ack table from the files and ``records()`` /
``messages()`` replay everything stored, so the learner can rebuild its replay buffer.
The log knows the wire format only in ``messages()``; the rest handles opaque frames.

Layout
------
::

    <root>/<actor id>/<session id>/<first seq, 20 digits>.seg

One directory per (actor, session) *stream*. Ids come from validated headers (letters,
digits, ``_ . : @ -``); "", "." and ".." are refused (``ValueError``), so an id is always a
plain directory name. Segment files use the outbox's spill segment format
(``hilrl.transport.outbox``: magic ``b"HLOBSEG\\x01"``, then CRC'd, length-prefixed
records of ``seq, count, frames``; no pickle) and are read back with its ``read_segment``.
A record holds one transitions message: its seq is the message's first transition, its
count the batch size N, its frames the wire frames (header + arrays), so ``wire.decode``
reads it again. A segment is append-only; a new one starts after ``segment_bytes`` or
after a restart.

Sequence numbers and the ack table
----------------------------------
Per stream, the records hold one contiguous range ``[base, next)``; ``base`` is 0 for a
stream the learner saw from its start, or the seq a ``hello`` announced for a stream this
log has never seen (its older seqs were acked by a learner whose log is gone).
``classify(actor, session, seq, count)`` sorts an incoming message:

    "new"        seq == next: append it
    "duplicate"  seq + count <= next: already stored; drop it and re-ack
    "gap"        seq > next: something before it is missing; refuse, the actor rewinds
                 and resends in order (the error says which seq is expected)
    "overlap"    seq < next < seq + count: never produced by hilrl's actor (its messages
                 keep their seq ranges across resends); refused like a gap

Two positions per stream: ``next_seq`` (everything below is appended; used for dedup) and
``durable_seq`` (everything below is fsynced; what an ack may say). ``append`` writes with
``writev`` and no fsync. ``begin_sync()`` snapshots the streams written since the last one
into a ``SyncTicket``, whose ``run()`` (fdatasync; in a syncer thread) may overlap further
appends; ``finish_sync(ticket)``, in ticket order, advances their ``durable_seq``.
``sync()`` does all three at once. The server appends what one poll brought in, begins a
sync, keeps receiving while the disk works, and acks the burst when its ticket is done:
group commit, one fsync per burst and per stream, pipelined with receiving. Leaving a
segment (rollover) fsyncs it first, so a rollback only ever cuts the current segment.

Recovery (``open``)
-------------------
Each stream's segments are read in seq order. A torn tail (a crash mid-append: the last
record runs past the end of the file) is cut off the file. Corruption (a CRC mismatch
before the end) ends the stream there: the damaged segment and any later ones are renamed
to ``*.damaged`` with a WARNING and listed in ``problems``; the transitions in them were
acked and are lost (a failing disk cannot be repaired here); when the actor says hello
again with a seq beyond them, the stream continues there in a new segment. So a segment
may start above where the previous one ended (a WARNING and a ``problems`` entry name the
missing seqs); any other record whose seq does not continue the stream is treated as
corruption. Segments without any record (created just before a crash) are deleted.
``next_seq == durable_seq`` afterwards: what survived on disk is what counts; an unacked
message that did survive is a duplicate when the actor resends it, one that did not is
simply stored again.

Disk full and limits
--------------------
An append that fails (ENOSPC, EDQUOT, any OSError) or would take the log past
``max_bytes`` raises ``LogFull``; the partly written record is cut off the file and the
stream's ``next_seq`` does not move. A failing fsync makes ``finish_sync`` raise
``LogFull`` and roll every stream back to its durable position (the data after it is cut
off; tickets begun before that fail as well). Nothing refused is acked, so the actor keeps
the data (spilling it locally) and resends it later; the server replies with an error saying
the learner's disk is full, logs it and keeps serving. Free space (or raise ``max_bytes``)
and delivery resumes.

Threads: one thread uses a LearnerLog at a time (the server's), except ``SyncTicket.run``;
``records()`` reads the files and belongs before the server starts.

Pruning
-------
The log grows until pruned. Once the learner's replay buffer snapshot (in a checkpoint)
holds a stream's transitions below some seq, ``prune({(actor, session): seq, ...})``
deletes every segment of that stream whose records all lie below it: a segment's records
end where the next segment starts, so no file is read. The stream's newest segment holding
durable records (and any after it, e.g. the one being appended to) is always kept, so
after a restart ``open`` still rebuilds the stream's ``next_seq`` and resent acked
messages are still recognised as duplicates. Recovery then starts the stream at the first
kept record (its ``base``); ``records()`` yields only the kept segments.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hilrl.storage.fsutil import fsync_dir, write_all
from hilrl.transport.outbox import SEGMENT_MAGIC, create_segment, encode_record, read_segment
from hilrl.transport.wire import DEFAULT_MAX_BYTES, Message, Schema, decode

__all__ = ["LearnerLog", "LogFull", "LogRecord", "SyncTicket", "check_id"]

log = logging.getLogger(__name__)

_SEGMENT_RE = re.compile(r"([0-9]{20})\.seg")
_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_MAX_OPEN_FILES = 64  # streams with an open segment; older ones are closed (reopened on use)
_RECORD_HEADER = 24  # crc32, nframes (u32), seq, count (u64): see outbox's record format


class LogFull(OSError):
    """An append or sync failed (disk full, write error, or the log's max_bytes)."""


@dataclass(frozen=True)
class LogRecord:
    """One stored transitions message: ``frames`` cover seqs ``[seq, seq + count)``."""

    actor: str
    session: str
    seq: int
    count: int
    frames: Sequence[memoryview]


def check_id(kind: str, value: str) -> str:
    """An actor or session id usable as a directory name (raises ValueError otherwise)."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{kind} id {value!r} cannot be stored: expected 1..128 letters, "
                         "digits, '_', '.', ':', '@', '-' (not '.' or '..')")
    return value


class _SegmentStream:
    __slots__ = ("directory", "base", "next_seq", "durable_seq", "path", "fd", "size",
                 "durable_size", "seg_records")

    def __init__(self, directory: Path, base: int) -> None:
        self.directory = directory
        self.base = base
        self.next_seq = base
        self.durable_seq = base
        self.path: Path | None = None  # current segment (None: start a new one on append)
        self.fd: int | None = None
        self.size = 0  # bytes written to the current segment
        self.durable_size = 0  # of which fsynced
        self.seg_records = 0


class SyncTicket:
    """Streams to make durable (``LearnerLog.begin_sync``); ``run()`` in any thread."""

    def __init__(self, items: list[tuple[tuple[str, str], int, Path | None, int, int]],
                 epoch: int) -> None:
        self.items = items  # (key, dup'd fd, segment path, next_seq, size) at begin_sync
        self.epoch = epoch
        self.error: OSError | None = None
        self.done = threading.Event()

    def run(self) -> None:
        """fdatasync every stream's segment (durable data and size), close the dups."""
        try:
            for _key, fd, _path, _seq, _size in self.items:
                if self.error is None:
                    try:
                        os.fdatasync(fd)
                    except OSError as e:
                        self.error = e
        finally:
            for _key, fd, _path, _seq, _size in self.items:
                os.close(fd)
            self.done.set()



class LearnerLog:
    """Durable per-(actor, session) log of transitions messages (see the module docstring).

    Args:
        root: directory of the log (created if missing).
        segment_bytes: a new segment starts once the current one passes this size.
        max_bytes: appends beyond this many bytes of segment files raise LogFull (None: only
            the disk limits it).
    """

    def __init__(self, root: str | os.PathLike[str], segment_bytes: int = 64 << 20,
                 max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.segment_bytes = int(segment_bytes)
        self.max_bytes = max_bytes
        self.problems: list[str] = []
        self._streams: dict[tuple[str, str], _SegmentStream] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._open: OrderedDict[tuple[str, str], None] = OrderedDict()  # LRU of open fds
        self._bytes = 0
        self._sync_failed = False
        self._epoch = 0  # advanced by a failed sync: tickets begun before it fail too
        self.root.mkdir(parents=True, exist_ok=True)
        self._scan()

    @classmethod
    def open(cls, root: str | os.PathLike[str], **kwargs: Any) -> LearnerLog:
        """Open (or create) the log at ``root`` and rebuild its ack table from the files."""
        return cls(root, **kwargs)

    # ------------------------------------------------------------------ recovery

    def _scan(self) -> None:
        for actor_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for session_dir in sorted(p for p in actor_dir.iterdir() if p.is_dir()):
                try:
                    key = (check_id("actor", actor_dir.name),
                           check_id("session", session_dir.name))
                except ValueError:
                    log.warning("learner log: %s is not a stream directory; ignored",
                                session_dir)
                    continue
                stream = self._recover_stream(session_dir)
                if stream is not None:
                    self._streams[key] = stream

    def _recover_stream(self, directory: Path) -> _SegmentStream | None:
        segments = sorted(p for p in directory.iterdir() if _SEGMENT_RE.fullmatch(p.name))
        stream: _SegmentStream | None = None
        for i, path in enumerate(segments):
            messages, problem = read_segment(path)
            if stream is None and messages:
                stream = _SegmentStream(directory, messages[0].seq)
            bad = problem is not None and "torn tail" not in problem
            if stream is not None and messages and messages[0].seq > stream.next_seq:
                # Allowed at a segment start only: see "Recovery" in the module docstring.
                gap = (f"{path}: seqs {stream.next_seq}..{messages[0].seq - 1} of the stream "
                       "are missing (acked, then lost)")
                log.warning("learner log: %s", gap)
                self.problems.append(gap)
                stream.next_seq = messages[0].seq
            for msg in messages:
                if stream is None or msg.seq != stream.next_seq:
                    problem = (f"{path}: record seq {msg.seq} does not continue the stream "
                               f"(expected {stream.next_seq if stream else '?'})")
                    bad = True
                    break
                stream.next_seq += msg.count
            if bad:
                self._quarantine(segments[i:], problem or "damaged")
                break
            size = path.stat().st_size
            if problem is not None:  # a torn tail: cut it off so appends continue cleanly
                log.info("learner log: %s", problem)
                size = self._good_length(path, messages)
                os.truncate(path, size)
            if not messages:
                path.unlink()
                continue
            self._bytes += size
        if stream is None:
            return None
        stream.durable_seq = stream.next_seq
        return stream

    @staticmethod
    def _good_length(path: Path, messages: list) -> int:
        # The records read intact, re-measured: magic + per record its header, lengths, frames.
        return len(SEGMENT_MAGIC) + sum(
            _RECORD_HEADER + 8 * len(m.frames) + sum(f.nbytes for f in m.frames)
            for m in messages)

    def _quarantine(self, paths: list[Path], problem: str) -> None:
        log.warning("learner log: %s; %d segment(s) from %s on renamed to *.damaged, their "
                    "transitions are lost", problem, len(paths), paths[0].name)
        self.problems.append(problem)
        for p in paths:
            os.replace(p, p.with_name(p.name + ".damaged"))
        fsync_dir(paths[0].parent)

    # ------------------------------------------------------------------ ack table

    def streams(self) -> dict[tuple[str, str], int]:
        """(actor, session) -> durable_seq of every stream (the ack table)."""
        return {k: s.durable_seq for k, s in self._streams.items()}

    def next_seq(self, actor: str, session: str) -> int:
        """Every seq below this is appended (0 for an unknown stream)."""
        s = self._streams.get((actor, session))
        return s.next_seq if s else 0

    def durable_seq(self, actor: str, session: str) -> int:
        """Every seq below this is fsynced: what an ack may report (0 for an unknown one)."""
        s = self._streams.get((actor, session))
        return s.durable_seq if s else 0

    def hello(self, actor: str, session: str, seq: int) -> int:
        """An actor announced a stream whose oldest unacked seq is ``seq``; returns the
        durable seq to report in hello_ok. An unknown stream starts at ``seq`` (see the
        module docstring); a known one is unchanged."""
        key = (check_id("actor", actor), check_id("session", session))
        stream = self._streams.get(key)
        if stream is None:
            if seq == 0:
                return 0
            log.warning("learner log: stream %s/%s is unknown but its actor says seqs below "
                        "%d were acked (by a learner whose log is gone?); starting it there",
                        actor, session, seq)
            stream = self._streams[key] = _SegmentStream(self.root / actor / session, seq)
        elif seq > stream.next_seq and stream.next_seq == stream.durable_seq:
            # We acked seqs we no longer have (a damaged segment was quarantined): the actor
            # dropped them, so waiting for them would stall the stream forever. Continue at
            # its seq in a new segment; recovery accepts such a jump at a segment start.
            log.error("learner log: stream %s/%s: seqs %d..%d were acked but are lost; "
                      "continuing at %d", actor, session, stream.next_seq, seq - 1, seq)
            self._close_fd(key, stream)
            stream.next_seq = stream.durable_seq = seq
        return stream.durable_seq

    def classify(self, actor: str, session: str, seq: int, count: int) -> str:
        """"new", "duplicate", "gap" or "overlap" (see the module docstring)."""
        expected = self.next_seq(actor, session)
        if seq == expected:
            return "new"
        if seq + count <= expected:
            return "duplicate"
        return "gap" if seq > expected else "overlap"

    # ------------------------------------------------------------------ writing

    def append(self, actor: str, session: str, seq: int, count: int,
               frames: Sequence[Any]) -> None:
        """Append one message (classify must have said "new"); durable after ``sync()``.
        Raises LogFull (nothing appended) when it cannot be written."""
        key = (check_id("actor", actor), check_id("session", session))
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _SegmentStream(self.root / actor / session, 0)
        if seq != stream.next_seq:
            raise ValueError(f"append: stream {actor}/{session} expects seq "
                             f"{stream.next_seq}, got {seq} (call classify first)")
        buffers = encode_record(seq, count, frames)
        nbytes = sum(memoryview(b).nbytes for b in buffers)
        if self.max_bytes is not None and self._bytes + nbytes > self.max_bytes:
            raise LogFull(errno.ENOSPC, f"learner log {self.root} would pass max_bytes="
                          f"{self.max_bytes} ({self._bytes} bytes used)")
        try:
            if stream.fd is None or stream.size >= self.segment_bytes:
                self._new_segment(key, stream)
            elif key in self._open:
                self._open.move_to_end(key)
            write_all(stream.fd, buffers)
        except OSError as e:
            self._cut(stream, stream.size)
            raise LogFull(e.errno or errno.EIO, f"cannot write to the learner log "
                          f"{stream.path}: {e}") from e
        stream.size += nbytes
        stream.seg_records += 1
        stream.next_seq = seq + count
        self._bytes += nbytes
        self._dirty.add(key)

    def _new_segment(self, key: tuple[str, str], stream: _SegmentStream) -> None:
        if stream.fd is not None and stream.next_seq != stream.durable_seq:
            # Make the old segment durable before leaving it, so a rollback (sync failure)
            # only ever has to cut the current segment.
            try:
                os.fsync(stream.fd)
            except OSError:
                self._sync_failed = True  # the next sync() rolls this stream back
                raise
            stream.durable_seq, stream.durable_size = stream.next_seq, stream.size
            self._dirty.discard(key)
        self._close_fd(key, stream)
        stream.directory.mkdir(parents=True, exist_ok=True)
        # replace: a segment left by a rolled-back sync may already hold this name
        path, fd = create_segment(stream.directory, stream.next_seq, replace=True)
        fsync_dir(stream.directory.parent)
        stream.path, stream.fd = path, fd
        stream.size = stream.durable_size = len(SEGMENT_MAGIC)
        stream.seg_records = 0
        self._bytes += len(SEGMENT_MAGIC)
        self._open[key] = None
        while len(self._open) > _MAX_OPEN_FILES:
            old = next(iter(self._open))
            if self._streams[old].next_seq != self._streams[old].durable_seq:
                break  # synced soon; closed on a later append
            self._close_fd(old, self._streams[old])

    def _close_fd(self, key: tuple[str, str], stream: _SegmentStream) -> None:
        self._open.pop(key, None)
        if stream.fd is not None:
            os.close(stream.fd)
            stream.fd = None
        stream.path = None  # a closed segment is never appended to again

    def _cut(self, stream: _SegmentStream, size: int) -> None:
        # Remove a partly written tail (best effort: a torn tail is ignored when read).
        if stream.fd is not None:
            try:
                os.ftruncate(stream.fd, size)
            except OSError as e:
                log.warning("learner log: could not truncate %s (%s)", stream.path, e)

    def begin_sync(self) -> SyncTicket | None:
        """Start making everything appended so far durable: returns a ticket whose ``run()``
        (fdatasync of the streams written since the last ticket; any thread, e.g. a syncer
        thread, while this one keeps appending) must be followed by ``finish_sync`` in this
        thread, tickets in the order they were begun. None when nothing was appended."""
        if not self._dirty:
            return None
        items = []
        for key in sorted(self._dirty):
            stream = self._streams[key]
            # A dup: a rollover may close the stream's own fd while the ticket runs.
            items.append((key, os.dup(stream.fd), stream.path, stream.next_seq, stream.size))
        self._dirty = set()
        return SyncTicket(items, self._epoch)

    def finish_sync(self, ticket: SyncTicket) -> list[tuple[str, str]]:
        """Advance the durable seqs of a ticket that has run; returns its streams. If its
        fsync failed (or an earlier one did), every stream is rolled back to its durable
        position and LogFull is raised: nothing appended since the last good sync may be
        acked (later tickets then fail too)."""
        failed = ticket.error
        if failed is None and ticket.epoch != self._epoch:
            failed = OSError(errno.EIO, "an earlier fsync failed")
        if failed is None and self._sync_failed:
            failed = OSError(errno.EIO, "an fsync before a segment rollover failed")
        if failed is not None:
            self._sync_failed = False
            self._epoch += 1
            self._dirty = set()
            for stream in self._streams.values():
                if stream.next_seq != stream.durable_seq:
                    self._cut(stream, stream.durable_size)
                    self._bytes -= stream.size - stream.durable_size
                    stream.size = stream.durable_size
                    stream.next_seq = stream.durable_seq
            raise LogFull(errno.EIO, f"fsync of the learner log failed ({failed}); the "
                          "unsynced messages were rolled back and are not acked") from failed
        keys = []
        for key, _fd, path, next_seq, size in ticket.items:
            stream = self._streams[key]
            stream.durable_seq = max(stream.durable_seq, next_seq)
            if path == stream.path:
                stream.durable_size = max(stream.durable_size, size)
            keys.append(key)
        return keys

    def sync(self) -> list[tuple[str, str]]:
        """``begin_sync``, ``run`` and ``finish_sync`` in this thread."""
        ticket = self.begin_sync()
        if ticket is None:
            if self._sync_failed:  # a failed rollover fsync with nothing appended after it
                return self.finish_sync(SyncTicket([], self._epoch))
            return []
        ticket.run()
        return self.finish_sync(ticket)

    def prune(self, covered: Mapping[tuple[str, str], int]) -> int:
        """Delete the segments whose records all lie below ``covered[(actor, session)]``
        (e.g. what a replay buffer snapshot holds); returns the bytes freed.

        Per stream, a segment's records end where the next segment starts (file names are
        first seqs), so nothing is read. The newest segment that holds durable records and
        everything after it are always kept: ``open`` rebuilds the stream's next seq (and
        so its dedup) from them. Unknown streams are ignored. Call it from the thread that
        appends (see "Threads" in the module docstring)."""
        freed = 0
        for key, seq in covered.items():
            stream = self._streams.get(key)
            if stream is None or not stream.directory.is_dir():
                continue
            segments = sorted((int(m[1]), p) for p in stream.directory.iterdir()
                              if (m := _SEGMENT_RE.fullmatch(p.name)))
            # Keep from the newest segment holding durable records: the newest file may be
            # empty (named at durable_seq after a rollback or a failed write), and recovery
            # deletes empty segments, which would lose the stream's next seq.
            keep_from = next((i for i in range(len(segments) - 1, -1, -1)
                              if segments[i][0] < stream.durable_seq
                              and segments[i][1].stat().st_size > len(SEGMENT_MAGIC)), 0)
            removed = False
            for i in range(keep_from):  # oldest first: a crash leaves a contiguous suffix
                end, path = segments[i + 1][0], segments[i][1]
                if end > seq:
                    break
                if path == stream.path:  # never: the open segment is the newest
                    break
                size = path.stat().st_size
                path.unlink()
                freed += size
                removed = True
            if removed:
                fsync_dir(stream.directory)
        self._bytes = max(0, self._bytes - freed)
        return freed

    @property
    def nbytes(self) -> int:
        """Bytes of all segment files."""
        return self._bytes

    def close(self) -> None:
        """Sync and close every open segment (idempotent)."""
        try:
            self.sync()
        finally:
            for key, stream in list(self._streams.items()):
                self._close_fd(key, stream)

    # ------------------------------------------------------------------ reading

    def records(self) -> Iterator[LogRecord]:
        """Every stored message, stream by stream (sorted by actor, session), in seq order.
        Reads the files as they are now; run it before the server starts appending."""
        for actor_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for session_dir in sorted(p for p in actor_dir.iterdir() if p.is_dir()):
                key = (actor_dir.name, session_dir.name)
                if key not in self._streams:
                    continue
                for path in sorted(p for p in session_dir.iterdir()
                                   if _SEGMENT_RE.fullmatch(p.name)):
                    messages, _problem = read_segment(path)
                    for m in messages:
                        yield LogRecord(key[0], key[1], m.seq, m.count, m.frames)

    def messages(self, schema: Schema | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[tuple[LogRecord, Message]]:
        """``records()`` with each decoded (validated again: the disk is not trusted).
        Per-step rows: ``wire.transitions_view(msg)``. Records written by an older protocol
        version (e.g. version 1's next_obs arrays) raise WireError ("version")."""
        for record in self.records():
            yield record, decode(list(record.frames), max_bytes, schema)

