"""Tests for the actor outbox (hilrl.transport.outbox): real files, real threads.

Every message's frames are a function of its seq (`payload`), so a message read back from
the wrong place, out of order or with a damaged byte is caught by comparing bytes.
"""

from __future__ import annotations

import errno
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from children import killed_on_exit

from hilrl.transport import outbox as outbox_mod
from hilrl.transport.outbox import (
    SEGMENT_MAGIC,
    Outbox,
    OutboxFull,
    OutboxMessage,
    SpillFileError,
    read_segment,
)

REPO = Path(__file__).resolve().parents[1]


def payload(seq: int, size: int = 300) -> list[bytes]:
    """Two frames that depend only on seq (also used by the SIGKILL child process)."""
    return [f"hdr {seq}".encode(), random.Random(seq).randbytes(size)]


def as_bytes(frames) -> list[bytes]:
    return [memoryview(f).tobytes() for f in frames]


def check(msg: OutboxMessage, seq: int, size: int = 300) -> None:
    assert msg.seq == seq
    assert as_bytes(msg.frames) == payload(seq, size)


def wait_for(cond, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def record_bytes(frames) -> int:
    return 24 + 8 * len(frames) + sum(len(f) for f in frames)


@pytest.fixture
def make(tmp_path):
    made: list[Outbox] = []

    def _make(**kw) -> Outbox:
        kw.setdefault("max_bytes_in_memory", 1 << 20)
        ob = Outbox(tmp_path / "spill", **kw)
        made.append(ob)
        return ob

    yield _make
    for ob in made:
        ob.close(flush=False)


def put_all(ob: Outbox, seqs, size: int = 300) -> None:
    """put() each message, waiting like a caller holding the robot while put() refuses (a
    burst outruns the spill thread: put() never waits for it)."""
    for seq in seqs:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert ob.put(payload(seq, size)) == seq
                break
            except OutboxFull:
                assert time.monotonic() < deadline, "refused for 10 s"
                time.sleep(0.002)


def segments(ob: Outbox) -> list[Path]:
    return sorted(ob.directory.glob("*.seg"))


# ---------------------------------------------------------------------- sequencing


def test_sequence_numbers_are_contiguous_and_per_message(make):
    ob = make()
    counts = [1, 3, 1, 5, 2]
    seqs = [ob.put([b"x" * c, np.full(c, c, np.uint8)], count=c) for c in counts]
    assert seqs == [0, 1, 4, 5, 10]
    assert ob.next_seq == 12
    msgs = list(ob)
    assert [(m.seq, m.count) for m in msgs] == list(zip(seqs, counts, strict=True))
    assert as_bytes(msgs[1].frames) == [b"xxx", bytes([3, 3, 3])]
    assert ob.next_to_send() is None
    # Refused inputs use no sequence number.
    for frames, count, err in [([], 1, ValueError), ([b"a"], 0, ValueError),
                               ([b"a"], True, ValueError), (["str"], 1, TypeError),
                               ([np.zeros((4, 4), np.uint8)[:, ::2]], 1, ValueError)]:
        with pytest.raises(err):
            ob.put(frames, count)
    assert ob.put([b"y"]) == 12
    other = make()  # a second outbox is a second session, from 0 again
    assert other.session != ob.session and other.put([b"z"]) == 0


def test_message_larger_than_memory_bound_is_refused(make):
    ob = make(max_bytes_in_memory=1000)
    with pytest.raises(ValueError, match="larger than max_bytes_in_memory"):
        ob.put([b"x" * 1001])
    assert ob.next_seq == 0


def test_cumulative_ack_drops_exactly_the_acked_messages(make):
    ob = make()
    seqs = [ob.put([bytes([i])], count=2) for i in range(5)]  # [0,2) [2,4) ... [8,10)
    assert [m.seq for m in ob] == seqs
    assert ob.ack(3) == 1  # [2, 4) does not end at or before 3
    assert ob.stats()["pending_messages"] == 4
    assert ob.ack(4) == 1
    assert ob.ack(2) == 0 and ob.ack(4) == 0  # old / repeated acks change nothing
    assert ob.acked_seq == 4
    with pytest.raises(ValueError, match="beyond the last seq"):
        ob.ack(11)
    assert ob.rewind() == 3
    assert [m.seq for m in ob] == [4, 6, 8]
    assert ob.ack(10) == 3
    st = ob.stats()
    assert (st["pending_messages"], st["pending_bytes"], st["memory_bytes"]) == (0, 0, 0)
    assert (st["queued_messages"], st["acked_messages"], st["acked_bytes"]) == (5, 5, 5)
    assert (st["sent_messages"], st["resent_messages"]) == (8, 3)


def test_ack_of_unsent_messages_moves_the_send_cursor(make):
    ob = make()
    put_all(ob, range(5))
    check(ob.next_to_send(), 0)
    ob.ack(3)  # e.g. the learner had them from before a reconnect
    check(ob.next_to_send(), 3)


def test_sender_waits_for_a_put_and_take_batches(make):
    ob = make()
    got: list[OutboxMessage] = []
    t = threading.Thread(target=lambda: got.extend(ob.take(10, timeout=5.0)))
    t.start()
    time.sleep(0.05)
    put_all(ob, range(3))
    t.join(5)
    assert got and not t.is_alive()  # woken by the put
    got += ob.take(10)
    assert [m.seq for m in got] == [0, 1, 2]
    assert ob.take(10, timeout=0.01) == []
    put_all(ob, range(3, 6))
    assert [m.seq for m in ob.take(10, max_bytes=1)] == [3]  # about max_bytes, at least one
    assert [m.seq for m in ob.take(2)] == [4, 5]


# ---------------------------------------------------------------------- spilling


def test_spill_beyond_memory_bound_reads_back_identical_bytes_in_order(make):
    size = 1000
    ob = make(max_bytes_in_memory=20_000, segment_bytes=10_000)
    put_all(ob, range(100), size)
    wait_for(lambda: ob.stats()["memory_bytes"] <= 20_000, what="spill")
    st = ob.stats()
    assert st["spilled_messages"] >= 70 and st["segments"] >= 5
    assert st["disk_bytes"] == sum(p.stat().st_size for p in segments(ob))
    for seq in range(100):
        check(ob.next_to_send(), seq, size)
    assert ob.next_to_send() is None
    # Rewind resends everything unacked, from disk and from memory, in order.
    ob.ack(40)
    assert ob.rewind() == 60
    for seq in range(40, 100):
        check(ob.next_to_send(), seq, size)
    assert ob.stats()["resent_messages"] == 60
    # Acked segments are deleted (by the spill thread).
    ob.ack(100)
    wait_for(lambda: ob.stats()["disk_bytes"] == 0, what="segment deletion")
    assert ob.stats()["segments"] == 0 and not segments(ob)


def test_put_does_no_io_and_never_waits_for_a_blocked_spill(make, monkeypatch):
    """The spill thread's writes hang; put() keeps returning at once until memory reaches
    twice the bound, then refuses with OutboxFull instead of waiting."""
    gate = threading.Event()
    writers: set[int] = set()
    real_write = outbox_mod.write_all

    def hanging_write(fd, buffers):
        writers.add(threading.get_ident())
        assert gate.wait(10), "test gate never opened"
        return real_write(fd, buffers)

    monkeypatch.setattr(outbox_mod, "write_all", hanging_write)
    size = 1000
    ob = make(max_bytes_in_memory=20_000)
    put_all(ob, range(25), size)  # past the bound: the spill starts, and hangs
    wait_for(lambda: writers, what="the spill thread to start writing")
    assert threading.get_ident() not in writers
    times = []
    seq = 25
    with pytest.raises(OutboxFull, match="not keeping up"):
        while seq < 1000:
            t0 = time.perf_counter()
            try:
                ob.put(payload(seq, size))
            finally:
                times.append(time.perf_counter() - t0)
            seq += 1
    accepted = seq
    assert 2 * 20_000 // (size + 10) - 1 <= accepted <= 2 * 20_000 // size
    assert len(times) >= 10
    assert max(times) < 0.1  # generous: each put is microseconds; the spill hangs
    assert ob.overflowing and ob.next_seq == accepted
    gate.set()
    wait_for(lambda: not ob.overflowing, what="overflow to clear after the spill")
    assert ob.put(payload(accepted, size)) == accepted
    for s in range(accepted + 1):
        check(ob.next_to_send(), s, size)
    assert threading.get_ident() not in writers


def test_put_latency_with_slow_sender_and_spilling(make):
    size = 2000
    ob = make(max_bytes_in_memory=200_000, segment_bytes=256_000)
    stop = threading.Event()
    received: list[int] = []

    def slow_sender():
        while not stop.is_set():
            msg = ob.next_to_send(timeout=0.05)
            if msg is None:
                continue
            received.append(msg.seq)
            time.sleep(0.002)  # a slow link
            if msg.seq % 20 == 19:
                ob.ack(msg.seq + 1)

    sender = threading.Thread(target=slow_sender)
    sender.start()
    times = []
    seq = 0
    try:
        for _ in range(600):  # a control loop far faster than 10 Hz
            frames = payload(seq, size)
            t0 = time.perf_counter()
            try:
                ob.put(frames)
                seq += 1
            except OutboxFull:  # a starved spill thread on a loaded machine: refused, fast
                pass
            times.append(time.perf_counter() - t0)
            time.sleep(0.0015)
        wait_for(lambda: ob.stats()["spilled_messages"] > 0, what="a spill")
    finally:
        stop.set()
        sender.join(5)
    assert statistics.median(times) < 1e-3
    assert sorted(times)[int(0.99 * len(times))] < 0.02
    assert received == list(range(len(received)))  # in order, no gaps, no repeats
    assert len(received) > 100


# ---------------------------------------------------------------------- limits


def put_until_refused(ob, size: int, reason: str, attempts: int = 20_000) -> tuple[int, str]:
    """Put payloads in seq order until a put is refused for ``reason``; returns how many were
    accepted and the refusal. A refusal for another reason (memory full while the spill
    thread catches up) is tried again."""
    accepted = 0
    for _ in range(attempts):
        try:
            assert ob.put(payload(accepted, size)) == accepted
            accepted += 1
            time.sleep(0.002)
        except OutboxFull as e:
            if reason in str(e):
                return accepted, str(e)
            time.sleep(0.01)
    raise AssertionError(f"not refused for {reason!r} in {attempts} puts")


def test_outbox_full_when_memory_and_disk_are_full_loses_nothing(make):
    size = 1000
    ob = make(max_bytes_in_memory=4000, max_bytes_on_disk=8000, segment_bytes=3000)
    accepted, msg = put_until_refused(ob, size, "spill files reached max_bytes_on_disk")
    assert "max_bytes_in_memory=4000" in msg and "max_bytes_on_disk=8000" in msg
    assert "Hold the robot" in msg
    st = ob.stats()
    assert ob.overflowing and st["overflowing"] == 1 and st["refused_puts"] >= 1
    assert st["disk_bytes"] <= 8000 and st["spilled_messages"] >= 5
    assert ob.next_seq == accepted  # refused puts used no seq
    with pytest.raises(OutboxFull):  # stays refused
        ob.put(payload(accepted, size))
    for seq in range(accepted):  # from disk and from memory: all there
        check(ob.next_to_send(), seq, size)
    ob.ack(accepted)
    assert not ob.overflowing
    assert ob.put(payload(accepted, size)) == accepted
    wait_for(lambda: not segments(ob), what="segment deletion")


def test_disk_full_is_outbox_full_and_the_segments_stay_clean(make, monkeypatch, tmp_path):
    real_write = outbox_mod.write_all
    full = threading.Event()
    full.set()

    def enospc_write(fd, buffers):
        if full.is_set() and len(buffers) > 1:  # records, not the segment header
            real_write(fd, buffers[: len(buffers) // 2])  # a partial batch, then the error
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, buffers)

    monkeypatch.setattr(outbox_mod, "write_all", enospc_write)
    size = 1000
    ob = make(max_bytes_in_memory=5000)
    accepted, _ = put_until_refused(ob, size, "disk full")
    assert ob.overflowing and ob.next_seq == accepted
    assert ob.stats()["spill_errors"] >= 1
    full.clear()  # space freed: the spill thread retries by itself
    wait_for(lambda: not ob.overflowing, what="the retried spill")
    assert ob.put(payload(accepted, size)) == accepted
    accepted += 1
    session, directory = ob.session, ob.directory
    ob.close()  # spills what is left in memory
    [rec] = Outbox.recover(directory.parent)
    assert rec.session == session and rec.problems == []
    assert [m.seq for m in rec.messages] == list(range(accepted))
    for seq, m in enumerate(rec.messages):
        check(m, seq, size)


# ---------------------------------------------------------------------- damaged files


def closed_session(make, n: int, size: int = 300, **kw) -> tuple[Path, str]:
    """An outbox that was closed with n unacked messages (all spilled at close)."""
    ob = make(**kw)
    put_all(ob, range(n), size)
    ob.close()
    return ob.directory, ob.session


def test_torn_tail_is_ignored_and_earlier_records_survive(make):
    directory, session = closed_session(make, 10)
    [seg] = sorted(directory.glob("*.seg"))
    last = record_bytes(payload(9))
    for keep in (1, 30, last - 10):  # of the last record: in its header, lengths, frames
        data = seg.read_bytes()
        seg.write_bytes(data[:len(data) - last + keep])
        [rec] = Outbox.recover(directory.parent)
        assert rec.session == session
        assert [m.seq for m in rec.messages] == list(range(9))
        for seq, m in enumerate(rec.messages):
            check(m, seq)
        [problem] = rec.problems
        assert "torn tail" in problem
        seg.write_bytes(data)
    # Zeros after the last good record (a crash with the file extended but not written)
    # are a torn tail too.
    seg.write_bytes(seg.read_bytes() + bytes(100))
    [rec] = Outbox.recover(directory.parent)
    assert len(rec.messages) == 10 and "torn tail" in rec.problems[0]


def test_crc_mismatch_skips_the_rest_of_the_segment_with_a_warning(make, caplog):
    size = 300
    rec_size = record_bytes(payload(0, size))
    directory, _ = closed_session(make, 12, size,
                                  segment_bytes=len(SEGMENT_MAGIC) + 6 * rec_size + 10)
    segs = sorted(directory.glob("*.seg"))
    assert len(segs) == 2
    first, _ = read_segment(segs[0])
    assert [m.seq for m in first] == list(range(6))
    data = bytearray(segs[0].read_bytes())
    data[len(SEGMENT_MAGIC) + 3 * rec_size + rec_size - 5] ^= 0x40  # frame bytes of seq 3
    segs[0].write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="hilrl.transport.outbox"):
        [rec] = Outbox.recover(directory.parent)
    assert [m.seq for m in rec.messages] == [0, 1, 2, 6, 7, 8, 9, 10, 11]
    for m in rec.messages:
        check(m, m.seq, size)
    [problem] = rec.problems
    assert "damaged record" in problem and "CRC mismatch" in problem
    assert "from seq 3 on in this segment are lost" in problem
    assert any("damaged record" in r.getMessage() for r in caplog.records)


def test_damaged_spilled_message_in_a_live_session_is_an_error_not_a_gap(make):
    size = 1000
    ob = make(max_bytes_in_memory=20_000)
    put_all(ob, range(30), size)
    wait_for(lambda: ob.stats()["spilled_messages"] >= 10, what="spill")
    seg = segments(ob)[0]
    data = bytearray(seg.read_bytes())
    data[len(SEGMENT_MAGIC) + record_bytes(payload(0, size)) + 100] ^= 1  # in seq 1
    seg.write_bytes(bytes(data))
    check(ob.next_to_send(), 0, size)
    for _ in range(2):  # it stays next: never silently skipped
        with pytest.raises(SpillFileError, match="seq 1..1 at offset .* is damaged"):
            ob.next_to_send()
    ob.ack(2)
    check(ob.next_to_send(), 2, size)


# ---------------------------------------------------------------------- sessions


def test_close_spills_pending_and_recover_returns_them_under_the_old_session(make):
    size = 500
    ob = make()
    put_all(ob, range(20), size)
    ob.ack(5)
    ob.close()
    old = ob.session
    with pytest.raises(RuntimeError, match="closed"):
        ob.put([b"late"])
    new = make()  # open, so recover() leaves it alone
    new.put([b"new session"])
    [rec] = Outbox.recover(new.spill_dir)
    assert rec.session == old and rec.directory == ob.directory
    assert [m.seq for m in rec.messages] == list(range(5, 20))
    for m in rec.messages:
        check(m, m.seq, size)
    rec.discard()
    assert not ob.directory.exists() and new.directory.exists()
    assert Outbox.recover(new.spill_dir) == []


def test_close_with_everything_acked_removes_the_session_dir(make):
    ob = make()
    put_all(ob, range(3))
    ob.ack(3)
    ob.close()
    ob.close()  # idempotent
    assert not ob.directory.exists()
    assert Outbox.recover(ob.spill_dir) == []


CHILD = r"""
import random, sys, time
from hilrl.transport.outbox import Outbox, OutboxFull

def payload(seq, size=300):
    return [f"hdr {seq}".encode(), random.Random(seq).randbytes(size)]

ob = Outbox(sys.argv[1], max_bytes_in_memory=20_000, segment_bytes=8_000)
print(ob.session, flush=True)
seq = 0
reported = False
while True:
    try:
        assert ob.put(payload(seq)) == seq
    except OutboxFull:  # the spill lagging on a slow disk: the caller waits
        time.sleep(0.01)
        continue
    seq += 1
    spilled = ob.stats()["spilled_messages"]
    if spilled >= 100 and not reported:
        print(spilled, flush=True)
        reported = True
    time.sleep(0.0005)  # still putting and spilling when the SIGKILL comes
"""


def test_recover_after_sigkill_returns_every_spilled_message(tmp_path):
    spill = tmp_path / "spill"
    with killed_on_exit([sys.executable, "-c", CHILD, str(spill)], cwd=REPO) as child:
        session = child.stdout.readline().strip()
        spilled = int(child.stdout.readline())
        assert Outbox.recover(spill) == []  # alive: its lock is held
        time.sleep(0.05)
    [rec] = Outbox.recover(spill)
    assert rec.session == session
    seqs = [m.seq for m in rec.messages]
    assert seqs == list(range(len(seqs))) and len(seqs) >= spilled >= 100
    for m in rec.messages:
        check(m, m.seq)
    assert all("torn tail" in p for p in rec.problems)
    rec.discard()
    assert not spill.joinpath(session).exists()


# ------------------------------------------------------------------------ durable puts

DURABLE_CHILD = r"""
import random, sys
from hilrl.transport.outbox import Outbox

def payload(seq, size=300):
    return [f"hdr {seq}".encode(), random.Random(seq).randbytes(size)]

ob = Outbox(sys.argv[1], durable=sys.argv[2] == "durable", max_bytes_in_memory=1 << 20)
print(ob.session, flush=True)
for seq in range(200):
    assert ob.put(payload(seq)) == seq
print(200, flush=True)  # every put has returned: the parent kills us now
sys.stdin.readline()
"""


@pytest.mark.parametrize("mode", ["durable", "default"])
def test_a_durable_outbox_loses_nothing_it_accepted_to_a_sigkill(tmp_path, mode):
    """200 puts returned, then SIGKILL at once: a durable outbox had every one on disk; the
    default one had them in memory (under its spill threshold) and loses them."""
    spill = tmp_path / "spill"
    with killed_on_exit([sys.executable, "-c", DURABLE_CHILD, str(spill), mode],
                        cwd=REPO) as child:
        session = child.stdout.readline().strip()
        assert child.stdout.readline().strip() == "200"
    recovered = Outbox.recover(spill)
    if mode == "default":
        assert sum(len(r.messages) for r in recovered) < 200
        return
    [rec] = recovered
    assert rec.session == session and rec.problems == []
    assert [m.seq for m in rec.messages] == list(range(200))
    for m in rec.messages:
        check(m, m.seq)


def test_a_durable_put_the_disk_refuses_is_not_accepted_and_the_next_one_takes_its_seq(
        tmp_path, monkeypatch):
    ob = Outbox(tmp_path / "spill", durable=True)
    try:
        assert ob.put(payload(0)) == 0
        assert ob.stats()["memory_bytes"] == 0  # on disk, nothing held in memory
        real = outbox_mod.write_all

        def disk_full(fd, buffers):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(outbox_mod, "write_all", disk_full)
        with pytest.raises(OutboxFull):
            ob.put(payload(1))
        assert ob.next_seq == 1 and ob.stats()["pending_messages"] == 1
        monkeypatch.setattr(outbox_mod, "write_all", real)
        assert ob.put(payload(1)) == 1  # the disk has room again: the same seq
        sent = [ob.next_to_send(1.0) for _ in range(2)]  # read back from disk
        for seq, msg in enumerate(sent):
            check(msg, seq)
    finally:
        ob.close()
