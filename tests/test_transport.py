"""Tests of the ZeroMQ transport (learner_log, learner_server, actor_client): real sockets on
127.0.0.1, real files, and separate processes where something gets SIGKILLed.

The learner and actor processes are this file run as a script (``python test_transport.py
learner ...`` / ``actor ...``). Every transition's payload is a function of (actor number,
index), so what arrives can be checked byte for byte against what was sent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # when run as a script (the child processes)
    sys.path.insert(0, str(REPO))

from children import killed_on_exit  # noqa: E402

from hilrl.transport.actor_client import ActorClient  # noqa: E402
from hilrl.transport.learner_log import LearnerLog  # noqa: E402
from hilrl.transport.learner_server import LearnerServer  # noqa: E402
from hilrl.transport.outbox import Outbox, OutboxFull, read_segment  # noqa: E402
from hilrl.transport.wire import (  # noqa: E402
    PROTOCOL_VERSION,
    Schema,
    decode,
    encode,
    transitions_view,
)

SCHEMA = Schema({"state": ("float32", (4,))}, ("float32", (2,)), max_batch=64)
PER_ACTOR = 10_000


def transition(actor: int, i: int) -> dict:
    """The i-th transition of actor number ``actor`` (everything derives from the pair)."""
    return {
        "obs": {"state": np.array([actor, i, i * 0.5, 1.0], np.float32)},
        "next_obs": {"state": np.array([actor, i + 1, i * 0.5 + 0.5, 1.0], np.float32)},
        "action": np.array([i % 7, -1.0], np.float32),
        "reward": float(i % 3),
        "terminated": i % 100 == 99,
        "truncated": False,
        "intervened": i % 5 == 0,
    }


def row_bytes(steps: dict, row: int) -> bytes:
    """The payload of one step of a batch (every field incl. next_obs, fixed order);
    ``steps`` is ``transitions_view(msg, flat=True)``."""
    return b"".join(np.ascontiguousarray(steps[name][row]).tobytes()
                    for name in sorted(SCHEMA.step_fields()))


def expected_row(actor: int, i: int) -> bytes:
    t = transition(actor, i)
    flat = {"obs/state": t["obs"]["state"], "next_obs/state": t["next_obs"]["state"],
            "action": t["action"], "reward": np.float32(t["reward"]),
            "terminated": np.bool_(t["terminated"]), "truncated": np.bool_(t["truncated"]),
            "intervened": np.bool_(t["intervened"])}
    return b"".join(np.ascontiguousarray(flat[name]).tobytes()
                    for name in sorted(SCHEMA.step_fields()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- child processes


def learner_main(log_dir: str, port: int, wport: int) -> None:
    server = LearnerServer(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{wport}",
                           log_dir=log_dir, schema=SCHEMA, peer_timeout_s=2.0)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    deadline = time.monotonic() + 120  # never outlive a broken test
    while not stop.is_set() and time.monotonic() < deadline:
        server.drain()  # a real learner would add these to its replay buffer
        time.sleep(0.02)
    server.close()


def actor_main(number: int, spill: str, port: int, wport: int, start: int, count: int,
               progress: str) -> None:
    client = ActorClient(f"actor{number}", f"tcp://127.0.0.1:{port}",
                         f"tcp://127.0.0.1:{wport}", SCHEMA, spill, heartbeat_s=0.2,
                         peer_timeout_s=1.0, batch_size=50, max_delay_s=0.05,
                         max_bytes_in_memory=8 << 10, resend_after_s=1.0)
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, f"{client.session} {start:012d}".encode())
    offset = len(client.session) + 1
    print("ready", flush=True)
    i = start
    deadline = time.monotonic() + 60
    while i < start + count and time.monotonic() < deadline:
        client.send_transition(transition(number, i))  # OutboxFull is not expected here
        i += 1
        # Accepted: the page cache keeps this across a SIGKILL of this process.
        os.pwrite(fd, f"{i:012d}".encode(), offset)
        if i % 10 == 0:
            time.sleep(0.01)  # ~1000 transitions/s: the run spans the learner restarts
    ok = client.wait_delivered(40)
    client.close()
    print("done" if ok else "timeout", flush=True)


class Proc:
    """A child process running this file; killed in close()."""

    def __init__(self, *args: object) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.p = subprocess.Popen([sys.executable, __file__, *map(str, args)], cwd=REPO,
                                  env=env, stdout=subprocess.PIPE, text=True)

    def wait_line(self, want: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.p.stdout], [], [], 0.1)
            if ready:
                line = self.p.stdout.readline()
                if not line:
                    break
                if line.strip() in (want, "timeout", "done"):
                    return line.strip()
        raise AssertionError(f"child {self.p.args[2:]} did not print {want!r} within "
                             f"{timeout} s (exit code {self.p.poll()})")

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def close(self) -> None:
        self.kill()
        if self.p.stdout:
            self.p.stdout.close()


# ---------------------------------------------------------------------------- helpers


def stored(log_dir: Path) -> dict[tuple[str, str], list[tuple[int, bytes]]]:
    """(actor, session) -> [(seq, row payload)] of everything in the learner's log."""
    out: dict[tuple[str, str], list[tuple[int, bytes]]] = {}
    for record, msg in LearnerLog.open(log_dir).messages(SCHEMA):
        assert (msg.actor, msg.session, msg.seq) == (record.actor, record.session, record.seq)
        rows = out.setdefault((msg.actor, msg.session), [])
        steps = transitions_view(msg, flat=True)
        for r in range(msg.batch_size):
            rows.append((msg.seq + r, row_bytes(steps, r)))
    return out


def segment_end(directory: Path) -> int:
    """One past the last seq of the intact records in a directory of segments (read-only)."""
    end = 0
    for path in sorted(directory.glob("*.seg")):
        messages, _problem = read_segment(path)
        for m in messages:
            end = max(end, m.seq + m.count)
    return end


def checksum(items: list[tuple[str, str, int, bytes]]) -> str:
    h = hashlib.sha256()
    for actor, session, seq, payload in sorted(items):
        h.update(f"{actor}/{session}/{seq}/".encode() + payload)
    return h.hexdigest()


# ---------------------------------------------------------------------------- (a) exactly once


def test_exactly_once_through_learner_and_actor_kills(tmp_path: Path) -> None:
    """3 actors x 10,000 transitions; the learner is SIGKILLed and restarted twice, actor0
    once. "Sent in a live session" means: for sessions whose process lived to the end, every
    transition send_transition accepted. For actor0's killed session it means every
    transition that was durable somewhere when it died: in the learner's log, or spilled by
    its outbox (read from the spill files right after the kill, before anything restarts).
    Transitions only in its memory (the open batch, the last unspilled messages) are lost
    by design. Each of those must arrive exactly once, byte for byte; nothing else may."""
    log_dir = tmp_path / "log"
    port, wport = free_port(), free_port()
    procs: list[Proc] = []
    try:
        learner = Proc("learner", log_dir, port, wport)
        procs.append(learner)
        learner.wait_line("ready", 20)
        actors = {}
        for n in range(3):
            actors[n] = Proc("actor", n, tmp_path / f"spill{n}", port, wport, 0, PER_ACTOR,
                             tmp_path / f"progress{n}")
            procs.append(actors[n])
        for n in range(3):
            actors[n].wait_line("ready", 20)
        time.sleep(2.0)
        learner.kill()  # 1st learner kill
        time.sleep(0.3)
        learner = Proc("learner", log_dir, port, wport)
        procs.append(learner)
        learner.wait_line("ready", 20)
        time.sleep(1.5)
        learner.kill()  # 2nd learner kill; actor0 dies while the learner is down
        time.sleep(0.5)
        actors[0].kill()
        session0, accepted0 = (tmp_path / "progress0").read_text().split()
        accepted0 = int(accepted0)
        learner_end0 = segment_end(log_dir / "actor0" / session0)
        spilled_end0 = segment_end(tmp_path / "spill0" / session0)
        learner = Proc("learner", log_dir, port, wport)
        procs.append(learner)
        learner.wait_line("ready", 20)
        actors[0] = Proc("actor", 0, tmp_path / "spill0", port, wport, accepted0,
                         PER_ACTOR - accepted0, tmp_path / "progress0b")
        procs.append(actors[0])
        for n in range(3):
            assert actors[n].wait_line("done", 45) == "done", f"actor{n} did not finish"
        learner.kill()
    finally:
        for p in procs:
            p.close()

    got = stored(log_dir)
    session0b = (tmp_path / "progress0b").read_text().split()[0]
    sessions = {(f"actor{n}", (tmp_path / f"progress{n}").read_text().split()[0]): (n, 0)
                for n in (1, 2)}
    sessions[("actor0", session0b)] = (0, accepted0)
    # The dead session: everything durable at its death, i.e. [0, max(learner, spill)).
    dead_end = max(learner_end0, spilled_end0)
    assert spilled_end0 > learner_end0, "the dead session's spill should hold unacked data"
    assert dead_end <= accepted0
    sessions[("actor0", session0)] = (0, 0)
    want_counts = {("actor0", session0): dead_end, ("actor0", session0b): PER_ACTOR - accepted0}
    want_counts.update({k: PER_ACTOR for k in sessions if k[0] != "actor0"})

    assert set(got) == set(sessions), f"unexpected streams {set(got) ^ set(sessions)}"
    expected_items, got_items = [], []
    for key, rows in got.items():
        seqs = [seq for seq, _ in rows]
        assert len(seqs) == len(set(seqs)), f"{key}: duplicated seqs"
        assert seqs == list(range(want_counts[key])), (
            f"{key}: got {len(seqs)} seqs {seqs[:3]}..{seqs[-3:]}, want 0..{want_counts[key]}")
        number, first = sessions[key]
        for seq, payload in rows:
            got_items.append((*key, seq, payload))
        for seq in range(want_counts[key]):
            expected_items.append((*key, seq, expected_row(number, first + seq)))
    assert len(got_items) == len(expected_items)
    assert checksum(got_items) == checksum(expected_items)
    # The lost ones are exactly the dead actor's in-memory tail (bounded by its limits).
    assert accepted0 - dead_end <= 50 + 4 * 50


# ---------------------------------------------------------------------------- in-process rigs


@pytest.fixture
def server(tmp_path: Path):
    srv = LearnerServer("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", log_dir=tmp_path / "log",
                        schema=SCHEMA, max_bytes=1 << 20, peer_timeout_s=2.0).start()
    try:
        yield srv
    finally:
        srv.close()


def make_client(srv: LearnerServer, tmp_path: Path, name: str = "good", **kw) -> ActorClient:
    args = dict(heartbeat_s=0.2, peer_timeout_s=1.0, batch_size=20, max_delay_s=0.02)
    args.update(kw)
    return ActorClient(name, srv.endpoint, srv.weights_endpoint, SCHEMA,
                       str(tmp_path / f"spill-{name}"), **args)


# ---------------------------------------------------------------------------- (b) weights


def test_late_joiner_gets_current_weights_and_versions_never_go_back(
        server: LearnerServer, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frozen = {"encoder": {"kernel": rng.standard_normal((8, 8)).astype(np.float32)}}
    server.publish_weights({**frozen, "head": {"w": np.zeros(4, np.float32)}}, 1, full=True)
    with pytest.raises(ValueError, match="not above"):
        server.publish_weights({"head": {"w": np.zeros(4, np.float32)}}, 1, full=False)
    for v in (2, 3):
        server.publish_weights({"head": {"w": np.full(4, v, np.float32)}}, v, full=False)
    stop = threading.Event()

    def publisher() -> None:  # keep publishing while the actor joins
        v = 4
        while not stop.is_set() and v < 60:
            server.publish_weights({"head": {"w": np.full(4, v, np.float32)}}, v, full=False)
            v += 1
            time.sleep(0.02)

    thread = threading.Thread(target=publisher)
    thread.start()
    client = make_client(server, tmp_path, "late")
    try:
        t0 = time.monotonic()
        seen = []
        while time.monotonic() - t0 < 1.0 and not seen:
            if (w := client.latest_weights()) is not None:
                seen.append(w[0])
            time.sleep(0.002)
        assert seen, "no weights within 1 s of joining"
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            w = client.latest_weights()
            seen.append(w[0])
            # A consistent set: the trainable part matches its version, the frozen part too.
            np.testing.assert_array_equal(w[1]["head"]["w"], np.full(4, w[0], np.float32))
            np.testing.assert_array_equal(w[1]["encoder"]["kernel"], frozen["encoder"]["kernel"])
            if not thread.is_alive() and w[0] == server.weights_version:
                break
            time.sleep(0.005)
        assert seen == sorted(seen), "versions went backwards"
        assert seen[-1] == server.weights_version
    finally:
        stop.set()
        thread.join(5)
        client.close()


# ---------------------------------------------------------------------------- (c) malformed


def good_frames(n: int = 3, **changes) -> dict:
    arrays = {"obs/state": np.zeros((n + 1, 4), np.float32),
              "action": np.zeros((n, 2), np.float32), "reward": np.zeros(n, np.float32),
              "terminated": np.zeros(n, bool), "truncated": np.zeros(n, bool),
              "intervened": np.zeros(n, bool)}
    arrays.update(changes)
    return arrays


def raw_header(arrays: dict, **fields) -> bytes:
    header = {"type": "transitions", "v": PROTOCOL_VERSION, "actor": "evil", "session": "s1",
              "seq": 0, "policy_version": -1,
              "arrays": [{"name": k, "dtype": a.dtype.name, "shape": list(a.shape)}
                         for k, a in arrays.items()], "meta": {}}
    header.update(fields)
    return msgpack.packb(header)


def test_malformed_inputs_are_rejected_while_a_good_actor_delivers(
        server: LearnerServer, tmp_path: Path) -> None:
    good = make_client(server, tmp_path)
    ctx = zmq.Context()
    stop = threading.Event()
    sent = [0]

    def feed() -> None:
        while not stop.is_set():
            good.send_transition(transition(7, sent[0]))
            sent[0] += 1
            time.sleep(0.002)

    feeder = threading.Thread(target=feed)
    feeder.start()
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(server.endpoint)
    try:
        ok = good_frames()
        ok_arrays = [memoryview(a.reshape(-1).view(np.uint8)) for a in ok.values()]
        nan = good_frames(**{"obs/state": np.full((4, 4), np.nan, np.float32)})
        inf = good_frames(reward=np.array([0, np.inf, 0], np.float32))
        bad_shape = good_frames(**{"obs/state": np.zeros((4, 5), np.float32)})
        obs_n_rows = good_frames(**{"obs/state": np.zeros((3, 4), np.float32)})
        bad_dtype = good_frames(action=np.zeros((3, 2), np.float64))
        bad_schema = Schema({"state": ("float32", (5,))}, ("float32", (2,)), max_batch=64)
        cases = {
            "random bytes": ([os.urandom(200)], "header"),
            "empty frame": ([b""], "header"),
            "truncated array frame": ([raw_header(ok), *ok_arrays[:-1],
                                       bytes(ok_arrays[-1])[:1]], "frames"),
            "missing frames": ([raw_header(ok), *ok_arrays[:3]], "frames"),
            "seq is a str": ([raw_header(ok, seq="0"), *ok_arrays], "header"),
            "actor is an int": ([raw_header(ok, actor=5), *ok_arrays], "header"),
            "unknown type": ([raw_header({}, type="gimme")], "type"),
            "wrong shape": (encode("transitions", actor="evil", session="s1",
                                   arrays=bad_shape), "schema"),
            "wrong dtype": (encode("transitions", actor="evil", session="s1",
                                   arrays=bad_dtype), "schema"),
            "obs with N rows": ([raw_header(obs_n_rows),
                                 *(bytes(memoryview(a.reshape(-1).view(np.uint8)))
                                   for a in obs_n_rows.values())], "batch"),
            "NaN": ([raw_header(nan), *(bytes(memoryview(a.reshape(-1).view(np.uint8)))
                                        for a in nan.values())], "value"),
            "inf": ([raw_header(inf), *(bytes(memoryview(a.reshape(-1).view(np.uint8)))
                                        for a in inf.values())], "value"),
            "gap": (encode("transitions", actor="evil", session="s1", seq=100,
                           arrays=good_frames()), "gap"),
            "wrong schema at hello": (encode("hello", actor="evil", session="s1",
                                             meta={"schema": bad_schema.to_meta()}), "schema"),
        }
        for name, (frames, code) in cases.items():
            raw.send_multipart(frames)
            assert raw.poll(3000), f"{name}: no reply"
            reply = decode(raw.recv_multipart())
            assert reply.type == "error", name
            assert reply.meta["code"] == code, f"{name}: {reply.meta}"
            assert reply.meta["reason"], name
        rejected = server.counters()["rejected"]
        for code in ("header", "frames", "type", "schema", "value", "gap", "batch"):
            assert rejected.get(code, 0) >= 1, rejected
        assert server.log.next_seq("evil", "s1") == 0, "a rejected message changed the log"

        # Oversized (beyond ZMQ_MAXMSGSIZE = 1 MiB): libzmq drops that connection, no reply.
        big = ctx.socket(zmq.DEALER)
        big.linger = 0
        big.connect(server.endpoint)
        big.send_multipart([raw_header(ok), os.urandom(2 << 20)])
        assert not big.poll(500), "an oversized message got a reply"
        big.close()
        # The server still answers on other connections ...
        raw.send_multipart(encode("heartbeat"))
        assert raw.poll(3000) and decode(raw.recv_multipart()).type == "heartbeat"
        # ... and the good actor kept delivering through all of it.
        before = server.counters()["accepted_transitions"]
        deadline = time.monotonic() + 30  # an event: more transitions accepted
        while server.counters()["accepted_transitions"] <= before:
            assert time.monotonic() < deadline, "the good actor stopped delivering"
            time.sleep(0.01)
        stop.set()
        feeder.join(5)
        assert good.wait_delivered(10)
        got = sum(m.batch_size for m in server.drain() if m.actor == "good")
        assert got == sent[0]
        # The stats channel reaches the learner's logger; the learner knows who is there.
        good.send_stats({"return": 1.5, "length": 100, "interventions": 3})
        deadline = time.monotonic() + 3
        stats = []
        while not stats and time.monotonic() < deadline:
            stats = server.stats()
            time.sleep(0.01)
        assert stats == [("good", {"return": 1.5, "length": 100, "interventions": 3})]
        assert server.actors()["good"]["alive"]
    finally:
        stop.set()
        feeder.join(5)
        raw.close()
        ctx.term()
        good.close()


# ---------------------------------------------------------------------------- batch layout


def test_actor_batches_carry_each_obs_once_and_split_where_obs_does_not_continue(
        server: LearnerServer, tmp_path: Path) -> None:
    """Steps of one episode share a batch whose obs has N + 1 rows; an episode end closes
    it; a step whose obs is not the previous next_obs (a reset without an episode end, a
    repeated step) closes it too. The learner's per-step view equals every sent step."""
    client = make_client(server, tmp_path, "split", batch_size=20, max_delay_s=30.0)
    indices = [*range(95, 100),  # 99 is terminated (i % 100 == 99): closes the batch
               *range(100, 104),  # continues after the end: a new batch anyway
               *range(200, 203),  # a reset without an episode end: split
               *range(202, 205)]  # 202 again: its obs is not 203's pending next_obs: split
    try:
        for i in indices:
            client.send_transition(transition(5, i))
        assert client.wait_delivered(10)
        assert client.stats()["split_batches"] == 2
    finally:
        client.close()
    msgs = [m for m in server.drain() if m.actor == "split"]
    assert [m.batch_size for m in msgs] == [5, 4, 3, 3]
    assert [m.seq for m in msgs] == [0, 5, 9, 12]
    got = []
    for msg in msgs:
        n = msg.batch_size
        assert msg.arrays["obs/state"].shape == (n + 1, 4)  # each observation once
        assert not any(name.startswith("next_obs/") for name in msg.arrays)
        steps = transitions_view(msg, flat=True)
        assert np.shares_memory(steps["next_obs/state"], msg.arrays["obs/state"])
        got.extend(row_bytes(steps, r) for r in range(n))
        # Within a batch only the last step may end the episode.
        assert not msg.arrays["terminated"][:-1].any()
    assert got == [expected_row(5, i) for i in indices]  # nothing lost, nothing changed


def test_actor_never_appends_to_a_batch_after_an_episode_end(
        server: LearnerServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the batch cannot be closed at an episode end (outbox full), it stays open; the
    next step must not join it (it is refused until the batch can be closed)."""
    client = make_client(server, tmp_path, "ends", batch_size=20, max_delay_s=30.0)
    try:
        with monkeypatch.context() as m:
            m.setattr(client, "_close_batch_locked", lambda: False)
            client.send_transition(transition(5, 98))
            client.send_transition(transition(5, 99))  # terminated: accepted, stays open
            with pytest.raises(OutboxFull):
                client.send_transition(transition(5, 100))  # obs == 99's next_obs
        client.send_transition(transition(5, 100))
        assert client.wait_delivered(10)
    finally:
        client.close()
    msgs = [m for m in server.drain() if m.actor == "ends"]
    assert [m.batch_size for m in msgs] == [2, 1]
    got = [row_bytes(transitions_view(m, flat=True), r) for m in msgs
           for r in range(m.batch_size)]
    assert got == [expected_row(5, i) for i in (98, 99, 100)]


def test_actor_splits_a_batch_on_an_image_that_does_not_continue(
        server: LearnerServer, tmp_path: Path) -> None:
    """The continuity check covers every obs array, not only the state."""
    schema = Schema({"state": ("float32", (2,)), "images/front": ("uint8", (4, 4, 3))},
                    ("float32", (2,)), max_batch=64)
    srv = LearnerServer("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", log_dir=tmp_path / "log2",
                        schema=schema).start()
    client = ActorClient("img", srv.endpoint, srv.weights_endpoint, schema,
                         str(tmp_path / "spill-img"), batch_size=20, max_delay_s=30.0)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (4, 4, 3), np.uint8) for _ in range(6)]
    state = np.zeros(2, np.float32)  # the same state throughout: only the images differ

    def step(i: int, j: int) -> dict:
        return {"obs": {"state": state, "images": {"front": frames[i]}},
                "next_obs": {"state": state.astype(np.float64),  # cast safely, compared so
                             "images": {"front": frames[j]}},
                "action": np.zeros(2, np.float32), "reward": 0.0, "terminated": False,
                "truncated": False, "intervened": False}

    sent = [step(0, 1), step(1, 2), step(3, 4), step(4, 5)]  # frame 2 -> 3: not continued
    try:
        for t in sent:
            client.send_transition(t)
        assert client.wait_delivered(10)
        assert client.stats()["split_batches"] == 1
        msgs = srv.drain()
    finally:
        client.close()
        srv.close()
    assert [m.batch_size for m in msgs] == [2, 2]
    views = [transitions_view(m) for m in msgs]
    for t, (v, r) in zip(sent, [(views[0], 0), (views[0], 1), (views[1], 0), (views[1], 1)],
                         strict=True):
        np.testing.assert_array_equal(v["obs"]["images"]["front"][r], t["obs"]["images"]["front"])
        np.testing.assert_array_equal(v["next_obs"]["images"]["front"][r],
                                      t["next_obs"]["images"]["front"])


def test_png_compressed_images_arrive_byte_identical(tmp_path: Path) -> None:
    """An actor compressing its cameras with PNG (per camera name and by path): the learner
    gets plain arrays equal byte for byte to what was sent, and its log keeps the PNGs."""
    schema = Schema({"state": ("float32", (2,)), "images/front": ("uint8", (24, 32, 3)),
                     "images/wrist": ("uint8", (16, 16, 1))}, ("float32", (2,)), max_batch=64)
    srv = LearnerServer("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", log_dir=tmp_path / "log3",
                        schema=schema).start()
    client = ActorClient("png", srv.endpoint, srv.weights_endpoint, schema,
                         str(tmp_path / "spill-png"), batch_size=8, max_delay_s=0.05,
                         compress={"front": "png", "obs/images/wrist": ("png", 9)})
    assert set(client.compress) == {"obs/images/front", "obs/images/wrist"}
    rng = np.random.default_rng(7)
    obs = [{"state": np.array([i, -i], np.float32),
            "images": {"front": rng.integers(0, 256, (24, 32, 3), np.uint8),
                       "wrist": rng.integers(0, 256, (16, 16, 1), np.uint8)}}
           for i in range(21)]
    sent = [{"obs": obs[i], "next_obs": obs[i + 1], "action": np.zeros(2, np.float32),
             "reward": float(i), "terminated": i == 9, "truncated": False,
             "intervened": False} for i in range(20)]
    try:
        for t in sent:
            client.send_transition(t)
        assert client.wait_delivered(10)
        msgs = srv.drain()
    finally:
        client.close()
        srv.close()
    got = []
    for msg in msgs:
        view = transitions_view(msg)
        for r in range(msg.batch_size):
            got.append({k: (view[k]["images"]["front"][r].tobytes(),
                            view[k]["images"]["wrist"][r].tobytes(), view[k]["state"][r][0])
                        for k in ("obs", "next_obs")})
    want = [{k: (t[k]["images"]["front"].tobytes(), t[k]["images"]["wrist"].tobytes(),
                 t[k]["state"][0]) for k in ("obs", "next_obs")} for t in sent]
    assert got == want
    lg = LearnerLog.open(tmp_path / "log3")
    try:
        records = list(lg.records())
        assert sum(r.count for r in records) == 20
        for record in records:
            specs = {s["name"]: s for s in msgpack.unpackb(bytes(record.frames[0]))["arrays"]}
            assert specs["obs/images/front"]["encoding"] == "png"
            assert specs["obs/images/wrist"]["encoding"] == "png"
            assert "encoding" not in specs["obs/state"]
    finally:
        lg.close()


def test_actor_compress_option_is_checked_up_front(tmp_path: Path) -> None:
    schema = Schema({"state": ("float32", (2,)), "images/front": ("uint8", (8, 8, 3)),
                     "depth/front": ("uint8", (8, 8, 1))}, ("float32", (2,)))
    spill = str(tmp_path / "spill-x")
    for compress, match in [({"rear": "png"}, "'rear' names no observation"),
                            ({"front": "png"}, "'front' is ambiguous"),
                            ({"state": "png"}, "'state' is float32 \\[2\\]"),
                            ({"images/front": ("jpeg", 0)}, "compression .* is invalid"),
                            ("gif", "compression 'gif' is invalid")]:
        with pytest.raises(ValueError, match=match):
            ActorClient("x", "tcp://127.0.0.1:9", "tcp://127.0.0.1:9", schema, spill,
                        compress=compress)
    client = ActorClient("x", "tcp://127.0.0.1:9", "tcp://127.0.0.1:9", schema, spill,
                         compress=("jpeg", 80))
    try:  # one setting: every image observation
        assert client.compress == {"obs/images/front": ("jpeg", 80),
                                   "obs/depth/front": ("jpeg", 80)}
    finally:
        client.close(timeout=1)


# ---------------------------------------------------------------------------- (d) heartbeats


def test_heartbeat_detects_learner_death_and_return(tmp_path: Path) -> None:
    port, wport = free_port(), free_port()
    learner = Proc("learner", tmp_path / "log", port, wport)
    procs = [learner]
    client = ActorClient("hb", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{wport}", SCHEMA,
                         str(tmp_path / "spill"), heartbeat_s=0.2, peer_timeout_s=1.0,
                         batch_size=10, max_delay_s=0.02)
    try:
        learner.wait_line("ready", 20)
        deadline = time.monotonic() + 5
        while not client.learner_alive and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.learner_alive
        learner.kill()
        t0 = time.monotonic()
        while client.learner_alive and time.monotonic() - t0 < 3:
            time.sleep(0.01)
        took = time.monotonic() - t0
        assert not client.learner_alive
        assert took <= 1.0 + 0.3, f"noticed the dead learner after {took:.2f} s"
        for i in range(30):  # the control loop goes on meanwhile
            client.send_transition(transition(9, i))
        learner = Proc("learner", tmp_path / "log", port, wport)
        procs.append(learner)
        learner.wait_line("ready", 20)
        deadline = time.monotonic() + 5
        while not client.learner_alive and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.learner_alive, "did not reconnect to the restarted learner"
        assert client.wait_delivered(10), "delivery did not resume"
    finally:
        client.close()
        for p in procs:
            p.close()
    rows = stored(tmp_path / "log")[("hb", client.session)]
    assert [s for s, _ in rows] == list(range(30))


# ---------------------------------------------------------------------------- log unit tests


def test_log_dedups_refuses_gaps_and_survives_a_torn_tail(tmp_path: Path) -> None:
    lg = LearnerLog.open(tmp_path)
    frames = encode("transitions", actor="a", session="s", arrays=good_frames(2))
    assert lg.classify("a", "s", 0, 2) == "new"
    lg.append("a", "s", 0, 2, frames)
    assert lg.durable_seq("a", "s") == 0 and lg.next_seq("a", "s") == 2
    lg.sync()
    assert lg.durable_seq("a", "s") == 2
    assert lg.classify("a", "s", 0, 2) == "duplicate"
    assert lg.classify("a", "s", 5, 2) == "gap"
    assert lg.classify("a", "s", 1, 2) == "overlap"
    lg.append("a", "s", 2, 2, frames)
    lg.close()
    seg = next((tmp_path / "a" / "s").glob("*.seg"))
    with open(seg, "ab") as f:  # a crash in the middle of an append
        f.write(b"\x01\x02\x03")
    lg = LearnerLog.open(tmp_path)
    assert lg.streams() == {("a", "s"): 4}
    assert [(r.seq, r.count) for r in lg.records()] == [(0, 2), (2, 2)]
    with pytest.raises(ValueError, match="cannot be stored"):
        lg.append("..", "s", 0, 2, frames)
    lg.close()


def test_log_quarantines_a_damaged_segment(tmp_path: Path) -> None:
    lg = LearnerLog.open(tmp_path, segment_bytes=1)  # one record per segment
    frames = encode("transitions", actor="a", session="s", arrays=good_frames(2))
    for seq in (0, 2, 4):
        lg.append("a", "s", seq, 2, frames)
    lg.close()
    second = tmp_path / "a" / "s" / f"{2:020d}.seg"
    data = bytearray(second.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the payload: a CRC mismatch, not a torn tail
    second.write_bytes(bytes(data))
    lg = LearnerLog.open(tmp_path)
    assert lg.streams() == {("a", "s"): 2}  # what follows the damage cannot be trusted
    assert lg.problems and "damaged" in " ".join(lg.problems)
    assert sorted(p.name for p in (tmp_path / "a" / "s").iterdir()) == [
        f"{0:020d}.seg", f"{2:020d}.seg.damaged", f"{4:020d}.seg.damaged"]
    assert lg.classify("a", "s", 2, 2) == "new"  # an unacked resend is stored again
    # But if the actor had those seqs acked (and dropped), its hello moves the stream on.
    assert lg.hello("a", "s", 6) == 6
    assert lg.classify("a", "s", 6, 2) == "new"
    lg.append("a", "s", 6, 2, frames)
    lg.close()
    lg = LearnerLog.open(tmp_path)
    assert [r.seq for r in lg.records()] == [0, 6]
    assert lg.streams() == {("a", "s"): 8} and any("missing" in p for p in lg.problems)


def test_log_refuses_when_full_and_keeps_serving(tmp_path: Path) -> None:
    srv = LearnerServer("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", log_dir=tmp_path / "log",
                        schema=SCHEMA, log_max_bytes=3000).start()
    client = make_client(srv, tmp_path, resend_after_s=0.5, batch_size=5)
    try:
        for i in range(40):
            client.send_transition(transition(1, i))
        deadline = time.monotonic() + 5
        while not srv.counters()["rejected"].get("disk_full") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.counters()["rejected"].get("disk_full")
        # The burst's group commit: wait for it, then the log holds what fitted.
        while not srv.log.durable_seq("good", client.session) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # and let a commit in progress finish
        stored_before = srv.log.durable_seq("good", client.session)
        assert 0 < stored_before < 40
        assert client.outbox.acked_seq <= stored_before  # nothing refused was acked
        srv.log.max_bytes = None  # space freed: delivery resumes
        assert client.wait_delivered(10)
        assert srv.log.durable_seq("good", client.session) == 40
    finally:
        client.close()
        srv.close()


# ---------------------------------------------------------------------------- CURVE


def test_curve_round_trip(tmp_path: Path) -> None:
    security = pytest.importorskip("hilrl.transport.security")
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    generated = security.generate_keys(tmp_path / "keys", ["a0"])
    server_keys = security.load_server_keys(tmp_path / "keys")
    client_keys = security.load_client_keys(generated.actor_dirs["a0"])
    srv = LearnerServer("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", log_dir=tmp_path / "log",
                        schema=SCHEMA, keys=server_keys).start()
    client = ActorClient("a0", srv.endpoint, srv.weights_endpoint, SCHEMA,
                         str(tmp_path / "spill"), keys=client_keys, heartbeat_s=0.2,
                         batch_size=10, max_delay_s=0.02)
    try:
        srv.publish_weights({"w": np.arange(3, dtype=np.float32)}, 5)
        for i in range(25):
            client.send_transition(transition(3, i))
        assert client.wait_delivered(10)
        deadline = time.monotonic() + 3
        while client.latest_weights() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.latest_weights()[0] == 5
    finally:
        client.close()
        srv.close()


def durable_actor_main(spill: str) -> None:
    """A durable actor whose learner never answers: 30 transitions, then it waits to die."""
    client = ActorClient("dur", "tcp://127.0.0.1:9", "tcp://127.0.0.1:9", SCHEMA, spill,
                         durable=True)
    for i in range(30):
        client.send_transition(transition(7, i))
    print("sent", flush=True)
    sys.stdin.readline()


def test_a_durable_actor_killed_at_once_loses_no_transition(tmp_path: Path) -> None:
    """actor.durable: once send_transition returns, the transition is on disk. Killed right
    after its 30th send (SIGKILL, no close), the actor's spill holds all 30, each a message
    of its own, and a restarted actor delivers them: the learner gets each once."""
    spill = tmp_path / "spill"
    with killed_on_exit([sys.executable, __file__, "durable", str(spill)], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=str(REPO))) as child:
        assert child.stdout.readline().strip() == "sent"
    [rec] = Outbox.recover(spill)
    assert [(m.seq, m.count) for m in rec.messages] == [(i, 1) for i in range(30)]
    srv = LearnerServer("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", log_dir=tmp_path / "log",
                        schema=SCHEMA).start()
    client = ActorClient("dur", srv.endpoint, srv.weights_endpoint, SCHEMA, str(spill),
                         heartbeat_s=0.2)
    try:
        rows = []
        while len(rows) < 30:
            msg = srv.get(timeout=60)  # the next message, as it arrives
            assert msg is not None, f"only {len(rows)} of 30 transitions arrived"
            steps = transitions_view(msg, flat=True)
            rows += [row_bytes(steps, r) for r in range(msg.batch_size)]
        assert rows == [expected_row(7, i) for i in range(30)]
    finally:
        client.close()
        srv.close()


# ---------------------------------------------------------------------------- script entry

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(process)d %(name)s: %(message)s")
    role, *rest = sys.argv[1:]
    if role == "learner":
        learner_main(rest[0], int(rest[1]), int(rest[2]))
    elif role == "durable":
        durable_actor_main(rest[0])
    elif role == "actor":
        actor_main(int(rest[0]), rest[1], int(rest[2]), int(rest[3]), int(rest[4]),
                   int(rest[5]), rest[6])
