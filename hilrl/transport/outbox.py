"""The actor's outbox: transitions handed off by the control loop, kept until the learner acks.

The outbox knows nothing about sockets or the wire format. A *message* is an opaque list of
bytes-like frames (bytes, memoryview, a C-contiguous numpy array: anything with the buffer
protocol) that covers the contiguous range of sequence numbers ``[seq, seq + count)``.

Roles and threads
-----------------
* The control loop (10 Hz) calls ``put(frames, count)``. It assigns the next ``count``
  sequence numbers (per session, from 0, contiguous) and appends the message under a lock
  held only for a few dict/attribute operations: no disk I/O, no waiting on the sender or
  on the spill thread, ever (unless the outbox is durable, below). Frames are stored by
  reference, not copied: do not modify them after ``put``.
* The socket layer's sender thread calls ``next_to_send()`` / ``take()`` (messages not sent
  yet, in order), ``ack(upto_seq)`` (cumulative: the learner has made durable every seq
  below ``upto_seq``; every message whose range ends at or before it is dropped) and
  ``rewind()`` after a reconnect (everything unacked is sent again, oldest first). Reading
  a spilled message back from disk happens in the sender's call, outside the lock.
* The outbox's own spill thread moves the oldest unacked messages to disk when the frames
  held in memory exceed ``max_bytes_in_memory`` (down to half of it, so spills come in
  batches), and deletes segment files once everything in them is acked.

The spilled messages are always the oldest unacked ones, so they form a prefix of the
queue: disk holds ``[acked, m)`` and memory ``[m, next_seq)``.

Limits and OutboxFull
---------------------
``max_bytes_in_memory`` is the level at which spilling starts; the spill thread keeps the
frames in memory below it. ``put`` never waits for the spill, so memory may run past the
bound while a spill is being written; ``put`` refuses (raises ``OutboxFull``) a message that
would take memory past twice the bound (the disk cannot keep up), or past the bound while
spilling is impossible: the segment files have reached ``max_bytes_on_disk`` or writing
failed (disk full, ENOSPC, or any other OSError). A refused message was not accepted (no
sequence number was used); nothing accepted before is ever dropped. The outbox then stays
``overflowing`` (every ``put`` is refused, so the caller does not flap between holding and
moving the robot) until a successful spill brings memory back under the bound or the
learner's acks bring it under half the bound. The caller decides what to do meanwhile,
normally hold the robot.

Durable puts
------------
With ``durable=True`` (``actor.durable``), ``put`` itself appends the message to the current
segment and fsyncs it, then accepts it as already spilled: once ``put`` returns, the
message survives a SIGKILL or a power loss. That puts a disk write and an fsync into the
caller's time, the cost of the option (``bench/transport_speed.py``:
``actor_send_p99_ms.durable``). A write that fails (disk full, ``max_bytes_on_disk``)
accepts nothing: ``put`` raises OutboxFull and the seq stays unused, so the caller can hold
the robot and offer the same message again. The sender reads every message back from disk.

Spill directory and sessions
----------------------------
Every ``Outbox`` has a new random session id (uuid4 hex) and its own directory
``<spill_dir>/<session>/`` holding ``meta.json`` (``{"format": "hilrl-outbox-spill",
"version": 1, "session", "created", "pid"}``, written atomically), ``LOCK`` (held with
``flock`` while the outbox is open, released by the kernel when the process dies, even by
SIGKILL) and the segment files ``<first seq, 20 digits>.seg``. Segments are append-only;
each spill batch is written with ``writev`` and fsynced before its messages count as
spilled. ``close()`` spills whatever is still unacked in memory (within the disk limit) and
removes the directory when nothing is left unacked.

A restarted actor starts a NEW session (its sequence numbers start at 0 again, and the
learner dedups by (actor, session, seq)). ``Outbox.recover(spill_dir)`` reads the
directories of sessions that are no longer open (their lock is free) and returns their
pending messages with their old session id, so the socket layer can still deliver them
under that id; ``RecoveredSession.discard()`` deletes the directory once the learner has
acked them. Recovered messages may include some the learner had already acked (a segment
is deleted only when all of it is acked); the learner drops those as duplicates. Messages
that were still only in memory when the process died are lost with it: only spilled
messages survive a crash.

Segment file format (version 1), all integers little-endian
-----------------------------------------------------------
::

    file header   8 bytes   b"HLOBSEG\\x01"
    record*       one per message:
      crc32       u32       zlib.crc32 of every byte of the record after this field
      nframes     u32       number of frames (>= 1)
      seq         u64       first sequence number of the message
      count       u64       number of sequence numbers it covers (>= 1)
      lengths     u64 x nframes   byte length of each frame
      frames      the frame bytes, concatenated

No pickle, nothing but lengths and raw bytes.

Damaged segments: reading stops at the first record that runs past the end of the file or
whose CRC does not match, since its lengths cannot be trusted. If that record is the end
of the file (it runs past the end, or only zero bytes follow it) it is a *torn tail*, what
a crash in the middle of a spill leaves, and it is ignored (logged at INFO): its messages
were never reported as spilled (a damaged length field can look the same; either way the
problem is reported). Otherwise it is *corruption* (a flipped byte, a failing
disk). ``recover()`` then skips the rest of that segment with a WARNING and lists the
problem in ``RecoveredSession.problems`` (recovery of a dead session must not keep a new
actor from starting); later segments are still read. Reading a spilled message back in a
live session raises ``SpillFileError`` instead: skipping it would leave a gap the learner's
cumulative ack can never pass.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from hilrl.storage.fsutil import atomic_write_bytes, fsync_dir, write_all

__all__ = [
    "FORMAT",
    "VERSION",
    "Outbox",
    "OutboxFull",
    "OutboxMessage",
    "RecoveredSession",
    "SpillFileError",
    "read_segment",
]

log = logging.getLogger(__name__)

FORMAT = "hilrl-outbox-spill"
VERSION = 1
SEGMENT_MAGIC = b"HLOBSEG\x01"
_RECORD = struct.Struct("<IIQQ")  # crc32, nframes, seq, count
_LENGTH = struct.Struct("<Q")
_MAX_FRAMES = 1 << 16  # a sanity bound for reading: a larger nframes is garbage
_META = "meta.json"
_LOCK = "LOCK"
_SEGMENT_RE = re.compile(r"[0-9]{20}\.seg")
_SESSION_RE = re.compile(r"[0-9a-f]{32}")
_BUILDING_RE = re.compile(r"\.[0-9a-f]{32}\.new")  # a session directory being created
_LOW_WATER = 0.5  # a spill brings the frames in memory down to this fraction of the bound
_HARD_FACTOR = 2  # put refuses beyond this multiple of max_bytes_in_memory
_RETRY_SECONDS = 0.5  # how often a blocked spill (disk full, ...) is tried again
_MAX_BATCH = 1024  # messages per spill batch, which bounds how long picking holds the lock

# Anything with the buffer protocol (typing's Buffer is Python 3.12+).
BytesLike = Any


class OutboxFull(RuntimeError):
    """put() refused a message: memory and disk limits are reached (see the message)."""


class SpillFileError(ValueError):
    """A spill segment is damaged or unreadable."""


class OutboxMessage(NamedTuple):
    """One message: ``frames`` cover sequence numbers ``[seq, seq + count)``."""

    seq: int
    count: int
    frames: Sequence[BytesLike]


@dataclass
class RecoveredSession:
    """What a session that is no longer open left in its spill directory."""

    session: str
    directory: Path
    messages: list[OutboxMessage]  # in seq order
    problems: list[str] = field(default_factory=list)  # torn tails and damaged records

    def discard(self) -> None:
        """Delete the session's directory (call once the learner has acked its messages)."""
        _remove_session_dir(self.directory)


# ---------------------------------------------------------------------- record format


def encode_record(seq: int, count: int, frames: Sequence[BytesLike]) -> list[BytesLike]:
    """The buffers of one record, header first (the frames themselves are not copied)."""
    lengths = b"".join(_LENGTH.pack(memoryview(f).nbytes) for f in frames)
    tail = _RECORD.pack(0, len(frames), seq, count)[4:] + lengths
    crc = zlib.crc32(tail)
    for f in frames:
        crc = zlib.crc32(memoryview(f).cast("B"), crc)
    return [struct.pack("<I", crc) + tail, *frames]


class _BadRecord(Exception):
    def __init__(self, reason: str, torn: bool) -> None:
        super().__init__(reason)
        self.torn = torn


def decode_record(buf: memoryview, offset: int) -> tuple[OutboxMessage, int]:
    """Decode the record at ``offset`` of ``buf``; returns it and the offset after it.

    The frames are memoryviews into ``buf``. Raises _BadRecord (torn=True when the record
    runs past the end of ``buf``)."""
    end = len(buf)
    if offset + _RECORD.size > end:
        raise _BadRecord(f"record header cut off after {end - offset} bytes", torn=True)
    crc, nframes, seq, count = _RECORD.unpack_from(buf, offset)
    if not 1 <= nframes <= _MAX_FRAMES or count < 1:
        # Could be a torn header as much as corruption; the CRC check cannot run without
        # trustworthy lengths, so report it as damaged and let the caller classify it.
        raise _BadRecord(f"implausible record header (nframes={nframes}, count={count})",
                         torn=False)
    pos = offset + _RECORD.size
    if pos + _LENGTH.size * nframes > end:
        raise _BadRecord("frame lengths cut off", torn=True)
    lengths = [_LENGTH.unpack_from(buf, pos + _LENGTH.size * i)[0] for i in range(nframes)]
    pos += _LENGTH.size * nframes
    stop = pos + sum(lengths)
    if stop > end:
        raise _BadRecord(f"record of {stop - offset} bytes cut off after {end - offset}",
                         torn=True)
    if zlib.crc32(buf[offset + 4:stop]) != crc:
        raise _BadRecord(f"CRC mismatch (record claims seq {seq}, count {count})", torn=False)
    frames = []
    for n in lengths:
        frames.append(buf[pos:pos + n])
        pos += n
    return OutboxMessage(seq, count, frames), stop


def create_segment(directory: Path, first_seq: int, replace: bool = False) -> tuple[Path, int]:
    """Create ``<directory>/<first_seq, 20 digits>.seg`` holding only the magic, durably (file
    and directory fsynced); returns its path and an fd open for appending. An existing file
    is an error unless ``replace``."""
    path = directory / f"{first_seq:020d}.seg"
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o644)
    try:
        write_all(fd, [SEGMENT_MAGIC])
        os.fsync(fd)
        fsync_dir(directory)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return path, fd


def read_segment(path: str | os.PathLike[str]) -> tuple[list[OutboxMessage], str | None]:
    """All intact records of a segment file in order, and a description of the damage that
    ended reading early (None if the file is intact). See the module docstring."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    if len(data) < len(SEGMENT_MAGIC):
        if bytes(data) == SEGMENT_MAGIC[:len(data)]:
            return [], (f"{path}: torn tail: file header cut off" if data else None)
        return [], f"{path}: not an outbox segment (bad file header)"
    if bytes(data[:len(SEGMENT_MAGIC)]) != SEGMENT_MAGIC:
        return [], f"{path}: not an outbox segment (bad file header)"
    messages: list[OutboxMessage] = []
    offset = len(SEGMENT_MAGIC)
    while offset < len(data):
        try:
            msg, offset = decode_record(data, offset)
        except _BadRecord as e:
            torn = e.torn or not bytes(data[offset:]).rstrip(b"\0")
            kind = "torn tail" if torn else "damaged record"
            after = messages[-1].seq + messages[-1].count if messages else None
            return messages, (f"{path}: {kind} at offset {offset} ({e}); "
                              f"{len(data) - offset} bytes ignored"
                              + (f", messages from seq {after} on in this segment are lost"
                                 if not torn and after is not None else ""))
        messages.append(msg)
    return messages, None



def _pread_all(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while size:
            chunk = os.pread(fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            size -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _remove_session_dir(directory: Path) -> None:
    # Only what an outbox puts there, so a wrong path can never wipe anything else.
    for p in directory.iterdir():
        if (_SEGMENT_RE.fullmatch(p.name) or p.name in (_META, _LOCK)
                or (p.name.startswith(f".{_META}.") and p.name.endswith(".tmp"))):
            p.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError as e:
        log.warning("outbox: could not remove %s (%s); other files in it were left alone",
                    directory, e)
    fsync_dir(directory.parent)


# ---------------------------------------------------------------------- the outbox


class _Segment:
    __slots__ = ("path", "first_seq", "end_seq", "nbytes", "fd", "sealed")

    def __init__(self, path: Path, first_seq: int) -> None:
        self.path = path
        self.first_seq = first_seq
        self.end_seq = first_seq  # exclusive end of the seqs written so far
        self.nbytes = 0
        self.fd: int | None = None  # open for appending while it is the current segment
        self.sealed = False  # no more appends (full, or a write to it failed)


class _Entry:
    __slots__ = ("seq", "count", "nbytes", "frames", "segment", "offset", "size")

    def __init__(self, seq: int, count: int, nbytes: int, frames: tuple) -> None:
        self.seq = seq
        self.count = count
        self.nbytes = nbytes  # frame bytes
        self.frames: tuple | None = frames  # None once spilled
        self.segment: _Segment | None = None  # where it was spilled
        self.offset = 0
        self.size = _RECORD.size + _LENGTH.size * len(frames) + nbytes  # its record's bytes


class Outbox:
    """Unacked messages of one actor session (see the module docstring).

    Args:
        spill_dir: root of the spill directories; this session uses ``spill_dir/<session>``.
            Use one per actor (it may hold dead sessions for ``recover``).
        max_bytes_in_memory: frame bytes kept in memory before the oldest spill to disk.
        max_bytes_on_disk: bytes of this session's segment files beyond which nothing more
            spills (and ``put`` raises OutboxFull once memory is full too).
        segment_bytes: a new segment file starts when the next record would take the current
            one past this size (a larger record gets a segment of its own); smaller
            segments are deleted sooner after acks.
        durable: ``put`` writes each message to its segment and fsyncs it before accepting
            it (see "Durable puts"), so a SIGKILL loses nothing accepted.
    """

    def __init__(
        self,
        spill_dir: str | os.PathLike[str],
        max_bytes_in_memory: int = 256 << 20,
        max_bytes_on_disk: int = 8 << 30,
        segment_bytes: int = 16 << 20,
        durable: bool = False,
    ) -> None:
        for name, value in (("max_bytes_in_memory", max_bytes_in_memory),
                            ("max_bytes_on_disk", max_bytes_on_disk),
                            ("segment_bytes", segment_bytes)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.max_bytes_in_memory = int(max_bytes_in_memory)
        self.max_bytes_on_disk = int(max_bytes_on_disk)
        self.segment_bytes = int(segment_bytes)
        self.durable = bool(durable)
        self.session = uuid.uuid4().hex
        self.spill_dir = Path(spill_dir)
        self.directory = self.spill_dir / self.session
        # Build the directory under a name recover() ignores and rename it into place with
        # the lock already held, so recover() can never take a starting session for a dead one.
        building = self.spill_dir / f".{self.session}.new"
        building.mkdir(parents=True)
        self._lock_fd = os.open(building / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        meta = {"format": FORMAT, "version": VERSION, "session": self.session,
                "created": time.time(), "pid": os.getpid()}
        atomic_write_bytes(building / _META, json.dumps(meta).encode())
        os.rename(building, self.directory)
        fsync_dir(self.spill_dir)

        self._lock = threading.Lock()
        # One writer of the segment files at a time: the spill thread, or a durable put.
        self._write_lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # a sender waiting for a put
        self._wake = threading.Event()  # the spill thread has work
        # Unacked messages by message number: _head (oldest) .. _tail (exclusive). Numbers
        # below _mem_start are spilled, the rest in memory; _send is the next one to send.
        self._entries: dict[int, _Entry] = {}
        self._head = self._tail = self._mem_start = self._send = 0
        self._sent_high = 0  # one past the highest message number ever sent
        self._next_seq = 0
        self._acked_seq = 0
        self._mem_bytes = 0  # frame bytes of the unacked messages held in memory
        self._pending_bytes = 0  # frame bytes of all unacked messages
        self._disk_bytes = 0
        self._segments: list[_Segment] = []  # in seq order; the last one may be current
        self._blocked: str | None = None  # why the last spill failed; None when it did not
        self._overflowing = False
        self._closing = False
        self._closed = False
        self._flush_on_close = True
        self._counts = dict.fromkeys(
            ("queued_messages", "queued_bytes", "sent_messages", "sent_bytes",
             "resent_messages", "acked_messages", "acked_bytes", "spilled_messages",
             "spilled_bytes", "refused_puts", "spill_errors"), 0)
        self._thread = threading.Thread(target=self._run, name=f"outbox-spill-{self.session[:8]}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control loop side

    def put(self, frames: Sequence[BytesLike], count: int = 1) -> int:
        """Accept one message covering ``count`` sequence numbers; returns its first seq.

        O(1) and never blocks on I/O. Raises OutboxFull when the limits are reached (the
        message is then not accepted), ValueError for a bad message, RuntimeError after
        close()."""
        frames = tuple(frames)
        if not frames:
            raise ValueError("put: a message needs at least one frame")
        if isinstance(count, bool) or int(count) != count or count < 1:
            raise ValueError(f"put: count must be an integer >= 1, got {count!r}")
        count = int(count)
        nbytes = 0
        for i, f in enumerate(frames):
            try:
                view = memoryview(f)
            except TypeError as e:
                raise TypeError(f"put: frame {i} is a {type(f).__name__}, not bytes-like") from e
            if not view.c_contiguous:
                raise ValueError(f"put: frame {i} is not C-contiguous (copy it first)")
            nbytes += view.nbytes
        if nbytes > self.max_bytes_in_memory:
            raise ValueError(f"put: a message of {nbytes} bytes is larger than "
                             f"max_bytes_in_memory={self.max_bytes_in_memory}")
        if self.durable:
            return self._put_durable(frames, count, nbytes)
        with self._lock:
            if self._closing:
                raise RuntimeError("put: the outbox is closed")
            mem = self._mem_bytes + nbytes
            if (self._overflowing or mem > _HARD_FACTOR * self.max_bytes_in_memory
                    or (self._blocked is not None and mem > self.max_bytes_in_memory)):
                self._overflowing = True
                self._counts["refused_puts"] += 1
                state = self._state_locked()
                mem = 0
            else:
                state = None
                seq = self._next_seq
                self._next_seq += count
                self._entries[self._tail] = _Entry(seq, count, nbytes, frames)
                self._tail += 1
                self._mem_bytes = mem
                self._pending_bytes += nbytes
                self._counts["queued_messages"] += 1
                self._counts["queued_bytes"] += nbytes
                self._cond.notify()
        if state is not None:
            self._wake.set()  # let the spill thread try again now
            raise OutboxFull(self._full_message(state))
        if mem > self.max_bytes_in_memory:
            self._wake.set()
        return seq

    def _put_durable(self, frames: tuple, count: int, nbytes: int) -> int:
        """Append the message to the current segment and fsync it, then accept it, already
        spilled; when the write fails nothing is accepted (OutboxFull) and the seq is
        unused. Serialised with the spill thread's writes and deletes."""
        with self._write_lock:
            with self._lock:
                if self._closing:
                    raise RuntimeError("put: the outbox is closed")
                entry = _Entry(self._next_seq, count, nbytes, frames)
                no = self._tail
                cur = self._segments[-1] if self._segments else None
                new_segment = (cur is None or cur.sealed
                               or cur.nbytes + entry.size > self.segment_bytes)
                room = self.max_bytes_on_disk - self._disk_bytes - (
                    len(SEGMENT_MAGIC) if new_segment else 0)
                if entry.size > room:
                    self._set_blocked_locked(f"the spill files reached max_bytes_on_disk="
                                             f"{self.max_bytes_on_disk} ({self._disk_bytes} "
                                             "bytes)")
            if entry.size > room or not self._write([(no, entry)], new_segment):
                with self._lock:
                    self._counts["refused_puts"] += 1
                    state = self._state_locked()
                raise OutboxFull(self._full_message(state))
            with self._lock:
                self._next_seq += count
                self._entries[no] = entry
                self._tail = no + 1
                self._pending_bytes += nbytes
                self._counts["queued_messages"] += 1
                self._counts["queued_bytes"] += nbytes
                self._cond.notify()
        return entry.seq

    @property
    def overflowing(self) -> bool:
        """True while put() refuses messages (see "Limits and OutboxFull")."""
        return self._overflowing

    @property
    def next_seq(self) -> int:
        """The seq the next accepted message will get."""
        return self._next_seq

    @property
    def acked_seq(self) -> int:
        """Everything below this seq has been acked."""
        return self._acked_seq

    def _state_locked(self) -> dict[str, Any]:
        return {"mem": self._mem_bytes, "disk": self._disk_bytes, "blocked": self._blocked,
                "acked": self._acked_seq, "next": self._next_seq,
                "pending": self._tail - self._head}

    def _full_message(self, s: dict[str, Any]) -> str:
        why = s["blocked"] or "the spill thread is not keeping up with put()"
        return (f"outbox full: {s['pending']} unacked messages (seq {s['acked']} to "
                f"{s['next'] - 1}), {s['mem']} bytes in memory (max_bytes_in_memory="
                f"{self.max_bytes_in_memory}) and {s['disk']} bytes spilled to "
                f"{self.directory} (max_bytes_on_disk={self.max_bytes_on_disk}); cannot "
                f"spill more: {why}. This message was not accepted; nothing accepted before "
                "is lost. Hold the robot until the learner acks (is it running and "
                "reachable?), or raise the limits / free disk space.")

    # ------------------------------------------------------------------ sender side

    def next_to_send(self, timeout: float | None = 0.0) -> OutboxMessage | None:
        """The next message not sent yet (since the last rewind), in seq order.

        Waits up to ``timeout`` seconds for one (None: forever) and returns None if there is
        none, or once the outbox is closed. A spilled message is read back from disk here,
        outside the lock; a damaged one raises SpillFileError (and stays next)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                while self._send >= self._tail and not self._closing:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return None
                    self._cond.wait(left)
                if self._send >= self._tail:
                    return None
                no = self._send
                entry = self._entries[no]
                self._send = no + 1
                frames, segment = entry.frames, entry.segment
                offset, size = entry.offset, entry.size
                if frames is not None:
                    self._count_sent(no, entry)
                    return OutboxMessage(entry.seq, entry.count, frames)
            try:
                msg = self._read_spilled(segment, offset, size, entry)
            except (FileNotFoundError, SpillFileError) as e:
                with self._lock:
                    if no not in self._entries:
                        continue  # acked meanwhile (and its segment deleted): move on
                    self._send = min(self._send, no)  # it stays next: no silent gap
                if isinstance(e, FileNotFoundError):
                    raise SpillFileError(f"{segment.path}: spill segment holding seq "
                                         f"{entry.seq} is missing (deleted by hand?)") from e
                raise
            with self._lock:
                if no not in self._entries:
                    continue
                self._count_sent(no, entry)
            return msg

    def take(self, max_messages: int = 64, max_bytes: int = 4 << 20,
             timeout: float | None = 0.0) -> list[OutboxMessage]:
        """Up to ``max_messages`` unsent messages (and about ``max_bytes``; at least one if
        any), waiting up to ``timeout`` only for the first one."""
        batch: list[OutboxMessage] = []
        size = 0
        while len(batch) < max_messages and size < max_bytes:
            msg = self.next_to_send(timeout if not batch else 0.0)
            if msg is None:
                break
            batch.append(msg)
            size += sum(memoryview(f).nbytes for f in msg.frames)
        return batch

    def __iter__(self) -> Iterator[OutboxMessage]:
        """Unsent messages, until there is none right now."""
        while (msg := self.next_to_send(0.0)) is not None:
            yield msg

    def rewind(self) -> int:
        """Make every unacked message unsent again (after a reconnect); returns how many."""
        with self._lock:
            self._send = self._head
            return self._tail - self._head

    def ack(self, upto_seq: int) -> int:
        """The learner holds every seq below ``upto_seq``: drop each message whose range ends
        at or before it. Returns how many were dropped; an old (smaller) ack drops none.
        Raises ValueError for an ack beyond anything put (a confused or foreign peer)."""
        upto_seq = int(upto_seq)
        with self._lock:
            if upto_seq > self._next_seq:
                raise ValueError(f"ack({upto_seq}) is beyond the last seq handed out "
                                 f"({self._next_seq - 1}) in session {self.session}")
            if upto_seq <= self._acked_seq:
                return 0
            self._acked_seq = upto_seq
            dropped = 0
            spilled = False
            while self._head < self._tail:
                entry = self._entries[self._head]
                if entry.seq + entry.count > upto_seq:
                    break
                del self._entries[self._head]
                self._head += 1
                dropped += 1
                self._counts["acked_messages"] += 1
                self._counts["acked_bytes"] += entry.nbytes
                self._pending_bytes -= entry.nbytes
                if entry.frames is None:
                    spilled = True
                else:
                    self._mem_bytes -= entry.nbytes
            self._send = max(self._send, self._head)
            self._mem_start = max(self._mem_start, self._head)
            self._update_overflow_locked()
        if spilled or self._blocked is not None:
            self._wake.set()  # segments to delete, or room to spill again
        return dropped

    def _count_sent(self, no: int, entry: _Entry) -> None:
        self._counts["sent_messages"] += 1
        self._counts["sent_bytes"] += entry.nbytes
        if no < self._sent_high:
            self._counts["resent_messages"] += 1
        self._sent_high = max(self._sent_high, no + 1)

    def _read_spilled(self, segment: _Segment | None, offset: int, size: int,
                      entry: _Entry) -> OutboxMessage:
        assert segment is not None
        try:
            data = _pread_all(segment.path, offset, size)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise SpillFileError(f"{segment.path}: cannot read spilled message seq "
                                 f"{entry.seq} ({e})") from e
        try:
            msg, _ = decode_record(memoryview(data), 0)
        except _BadRecord as e:
            raise SpillFileError(
                f"{segment.path}: spilled message seq {entry.seq}..{entry.seq + entry.count - 1}"
                f" at offset {offset} is damaged ({e}): the disk is failing or the file was "
                "modified. It cannot be resent; restart the actor (a new session starts)."
            ) from None
        if (msg.seq, msg.count) != (entry.seq, entry.count):
            raise SpillFileError(f"{segment.path}: offset {offset} holds seq {msg.seq} "
                                 f"(count {msg.count}), expected {entry.seq} ({entry.count})")
        return msg

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, int]:
        """Counters for logging: cumulative ``queued/sent/resent/acked/spilled_messages``
        and ``_bytes``, ``refused_puts``, ``spill_errors``; current ``pending_messages``
        (unacked), ``unsent_messages``, ``memory_bytes``, ``disk_bytes``, ``segments``,
        ``next_seq``, ``acked_seq``, ``overflowing`` (0/1)."""
        with self._lock:
            out = dict(self._counts)
            out.update(pending_messages=self._tail - self._head,
                       pending_bytes=self._pending_bytes,
                       unsent_messages=self._tail - self._send,
                       memory_bytes=self._mem_bytes, disk_bytes=self._disk_bytes,
                       segments=len(self._segments), next_seq=self._next_seq,
                       acked_seq=self._acked_seq, overflowing=int(self._overflowing))
            return out

    # ------------------------------------------------------------------ spill thread

    def _update_overflow_locked(self) -> None:
        if self._mem_bytes <= self.max_bytes_in_memory:
            self._blocked = None  # nothing needs spilling, so nothing is blocked
        # Hysteresis: once refusing, accept again only with room for a while, so the
        # caller does not flap between holding and moving the robot.
        if self._mem_bytes <= self.max_bytes_in_memory * _LOW_WATER:
            self._overflowing = False

    def _run(self) -> None:
        while True:
            self._wake.wait(_RETRY_SECONDS)
            self._wake.clear()  # before working: a put during the work wakes us again
            closing = self._closing
            try:
                with self._write_lock:
                    self._delete_acked_segments()
                    self._spill(everything=closing and self._flush_on_close)
            except Exception as e:  # keep the thread alive: put() reports it as OutboxFull
                log.exception("outbox: spill thread error")
                with self._lock:
                    self._blocked = f"spill thread error: {type(e).__name__}: {e}"
            if closing:
                return

    def _delete_acked_segments(self) -> None:
        with self._lock:
            doomed = [s for s in self._segments if s.end_seq <= self._acked_seq]
            self._segments = [s for s in self._segments if s.end_seq > self._acked_seq]
        for seg in doomed:
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None
            try:
                seg.path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("outbox: could not delete acked segment %s (%s)", seg.path, e)
            with self._lock:
                self._disk_bytes -= seg.nbytes
        if doomed:
            fsync_dir(self.directory)

    def _spill(self, everything: bool = False) -> None:
        target = 0 if everything else int(self.max_bytes_in_memory * _LOW_WATER)
        while True:
            with self._lock:
                if not everything and self._mem_bytes <= self.max_bytes_in_memory:
                    self._update_overflow_locked()
                    return
                picked, new_segment, reason = self._pick_locked(target)
                if not picked:
                    if reason is not None:
                        self._set_blocked_locked(reason)
                    return
            if not self._write(picked, new_segment):
                return

    def _pick_locked(self, target: int) -> tuple[list[tuple[int, _Entry]], bool, str | None]:
        # The oldest in-memory messages that bring memory down to `target`, limited to what
        # fits in the current segment (or a new one) and under the disk limit.
        no = max(self._mem_start, self._head)
        cur = self._segments[-1] if self._segments else None
        # A new segment when the next record does not fit in the current one (a record
        # larger than segment_bytes gets a segment of its own).
        new_segment = (cur is None or cur.sealed or no >= self._tail
                       or cur.nbytes + self._entries[no].size > self.segment_bytes)
        used_segment = len(SEGMENT_MAGIC) if new_segment else cur.nbytes
        room_segment = self.segment_bytes - used_segment
        room_disk = self.max_bytes_on_disk - self._disk_bytes
        if new_segment:
            room_disk -= len(SEGMENT_MAGIC)
        picked: list[tuple[int, _Entry]] = []
        mem = self._mem_bytes
        used = 0
        while no < self._tail and mem > target and len(picked) < _MAX_BATCH:
            entry = self._entries[no]
            size = entry.size
            if used + size > room_disk:
                break
            if picked and used + size > room_segment:
                break
            picked.append((no, entry))
            used += size
            mem -= entry.nbytes
            no += 1
        if picked or no >= self._tail or mem <= target:
            return picked, new_segment, None
        return [], new_segment, (f"the spill files reached max_bytes_on_disk="
                                 f"{self.max_bytes_on_disk} ({self._disk_bytes} bytes)")

    def _set_blocked_locked(self, reason: str) -> None:
        if self._blocked != reason:
            log.warning("outbox: cannot spill to %s: %s", self.directory, reason)
        self._blocked = reason

    def _write(self, picked: list[tuple[int, _Entry]], new_segment: bool) -> bool:
        """Append the picked messages to a segment, fsync, then mark them spilled."""
        buffers: list[BytesLike] = []
        for _no, entry in picked:
            buffers += encode_record(entry.seq, entry.count, entry.frames)
        seg = None
        try:
            if new_segment:
                seg = self._new_segment(picked[0][1].seq)
            else:
                seg = self._segments[-1]
            start = seg.nbytes
            write_all(seg.fd, buffers)
            os.fsync(seg.fd)
        except Exception as e:
            with self._lock:
                self._counts["spill_errors"] += 1
                full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
                self._set_blocked_locked(("disk full: " if full else "write failed: ")
                                         + f"{type(e).__name__}: {e}")
            if seg is not None:
                self._abandon_tail(seg)
            return False
        with self._lock:
            offset = start
            for no, entry in picked:
                entry.segment, entry.offset = seg, offset
                entry.frames = None
                if no in self._entries:  # else acked during the write, or a durable put's
                    self._mem_bytes -= entry.nbytes  # that is not in yet
                self._counts["spilled_messages"] += 1
                self._counts["spilled_bytes"] += entry.nbytes
                offset += entry.size
            seg.nbytes = offset
            seg.end_seq = picked[-1][1].seq + picked[-1][1].count
            self._disk_bytes += offset - start
            self._mem_start = max(self._mem_start, picked[-1][0] + 1)
            self._blocked = None
            if self._mem_bytes <= self.max_bytes_in_memory:
                self._overflowing = False
        return True

    def _new_segment(self, first_seq: int) -> _Segment:
        path, fd = create_segment(self.directory, first_seq)
        if self._segments and self._segments[-1].fd is not None:
            os.close(self._segments[-1].fd)
            self._segments[-1].fd = None
        seg = _Segment(path, first_seq)
        seg.fd = fd
        seg.nbytes = len(SEGMENT_MAGIC)
        with self._lock:
            self._segments.append(seg)
            self._disk_bytes += seg.nbytes
        return seg

    def _abandon_tail(self, seg: _Segment) -> None:
        # A failed write may have left part of a record at the end: cut it off so the file
        # reads cleanly, and never append to this segment again (if the cut fails too, the
        # partial record is a torn tail that readers ignore).
        seg.sealed = True
        if seg.fd is not None:
            try:
                os.ftruncate(seg.fd, seg.nbytes)
            except OSError as e:
                log.warning("outbox: could not truncate %s after a failed write (%s)",
                            seg.path, e)
            os.close(seg.fd)
            seg.fd = None
        if seg.end_seq == seg.first_seq:
            # No record in it: delete it now, or the next segment (named after the same
            # first seq) could not be created.
            try:
                seg.path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("outbox: could not delete empty segment %s (%s)", seg.path, e)
                return
            with self._lock:
                self._segments.remove(seg)
                self._disk_bytes -= seg.nbytes

    # ------------------------------------------------------------------ shutdown

    def close(self, flush: bool = True, timeout: float = 30.0) -> None:
        """Stop the spill thread and join it. With ``flush``, unacked messages still in
        memory are spilled first (within max_bytes_on_disk) so that a restarted actor can
        ``recover`` them; without, they are dropped. The session directory is removed when
        nothing is left unacked. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = self._closing = True
            self._flush_on_close = flush
            self._cond.notify_all()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("outbox: spill thread did not stop within %.0f s; leaving %s as is",
                        timeout, self.directory)
            return
        with self._lock:
            in_memory = self._tail - max(self._mem_start, self._head)
            pending = self._tail - self._head
        for seg in self._segments:
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None
        if in_memory:
            why = (f"they did not fit in max_bytes_on_disk={self.max_bytes_on_disk} or could "
                   f"not be written" if flush else "close(flush=False)")
            log.warning("outbox: %d unacked messages were only in memory and are dropped at "
                        "close (%s)", in_memory, why)
        if pending == 0 or not self._segments:  # nothing left that recover() could return
            _remove_session_dir(self.directory)
        os.close(self._lock_fd)  # releases the flock: recover() may now read the session

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ recovery

    @staticmethod
    def recover(spill_dir: str | os.PathLike[str]) -> list[RecoveredSession]:
        """The sessions under ``spill_dir`` that are no longer open (their process closed
        or died), each with its pending messages read from disk, oldest session first.

        Open sessions (this process's or another live actor's) are skipped. Damaged records
        are skipped with a warning and listed in ``problems`` (see the module docstring).
        Nothing is deleted: call ``discard()`` once the learner has acked a session."""
        root = Path(spill_dir)
        if not root.is_dir():
            return []
        found = []
        for directory in root.iterdir():
            if _BUILDING_RE.fullmatch(directory.name):
                _remove_abandoned(directory)
                continue
            if not (directory.is_dir() and _SESSION_RE.fullmatch(directory.name)):
                continue
            try:
                recovered = _recover_session(directory)
            except FileNotFoundError:  # removed by its closing outbox meanwhile
                continue
            if recovered is not None:
                found.append(recovered)
        found.sort(key=lambda r: (r[0], r[1].session))
        return [r for _created, r in found]


def _remove_abandoned(directory: Path) -> None:
    # A process that died while creating its session directory: it holds no messages.
    try:
        lock_fd = os.open(directory / _LOCK, os.O_RDWR)
    except OSError:
        return  # no LOCK yet: it may be being created right now; an empty dir is harmless
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _remove_session_dir(directory)
    except (BlockingIOError, FileNotFoundError):
        pass  # being created right now, or gone
    finally:
        os.close(lock_fd)


def _recover_session(directory: Path) -> tuple[float, RecoveredSession] | None:
    try:
        meta = json.loads((directory / _META).read_text())
    except FileNotFoundError:
        return None  # not an outbox directory, or one being removed
    except (OSError, ValueError) as e:
        log.warning("outbox: %s: unreadable %s (%s); skipped", directory, _META, e)
        return None
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT
            or meta.get("session") != directory.name):
        log.warning("outbox: %s is not an outbox spill directory; skipped", directory)
        return None
    try:
        lock_fd = os.open(directory / _LOCK, os.O_RDWR)
    except FileNotFoundError:
        lock_fd = None
    try:
        if lock_fd is not None:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # a live outbox owns it
        messages: list[OutboxMessage] = []
        problems: list[str] = []
        for path in sorted(p for p in directory.iterdir() if _SEGMENT_RE.fullmatch(p.name)):
            msgs, problem = read_segment(path)
            messages += msgs
            if problem is not None:
                problems.append(problem)
                if "torn tail" in problem:
                    log.info("outbox recover: %s", problem)
                else:
                    log.warning("outbox recover: %s", problem)
        messages.sort(key=lambda m: m.seq)
        session = RecoveredSession(directory.name, directory, messages, problems)
        created = meta.get("created")
        return (float(created) if isinstance(created, int | float) else 0.0), session
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
