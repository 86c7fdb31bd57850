"""The learner's end of the transport: a ROUTER for actors' messages, a PUB for weights.

``LearnerServer`` runs one background thread that owns both sockets (ZeroMQ sockets are not
thread-safe); the learner talks to it through thread-safe calls and queues::

    server = LearnerServer(log_dir=..., schema=env_spec(task).wire_schema())
    for record, msg in server.log.messages(server.schema):  # rebuild replay after a restart
        ingest(msg)  # learner/ingest.py: ReplayBuffer.add_batch(msg.tree())
    server.start()
    while training:
        for msg in server.drain():           # new transitions, durable already
            ingest(msg)
        ...
        server.publish_weights(params, version, full=False)
    server.close()

Messages reach the learner as sent (``hilrl.transport.wire``, "Transition batch": obs/
arrays with N + 1 rows, no next_obs), which is the layout ``ReplayBuffer.add_batch`` takes;
``wire.transitions_view(msg)`` gives the per-step ``{"obs", "next_obs", "action", ...}``
with N rows each (zero-copy views ``obs[:-1]`` and ``obs[1:]``) for readers that want it.

Protocol (message types and fields: ``hilrl.transport.wire``)
-------------------------------------------------------------
ROUTER, default ``tcp://127.0.0.1:5555``. Every message is decoded and validated first
(size cap, header, the agreed schema for transitions); a bad one gets an ``error`` reply
whose ``meta`` holds ``reason`` (WireError's message), ``code`` (its category) and, when
the header could be read, ``ref_type``/``ref_seq``. It is counted under ``rejected[code]``,
logged (rate-limited) and changes nothing. Per type:

hello            the actor's schema must equal ours, else ``error`` (code "schema", the first
                 difference as reason). Otherwise ``hello_ok`` with seq = the stream's
                 durable seq (``LearnerLog.hello``) and policy_version = current weights.
transitions      ``LearnerLog.classify``: "new" is appended to the log; "duplicate" is
                 dropped (counted) and acked again; "gap"/"overlap" get an ``error`` (code
                 "gap", meta["expected"] = the seq to resend from). Everything one poll
                 brings in (up to ``_BURST`` messages) is appended, then fsynced once by
                 a syncer thread while the server goes on receiving (group commit,
                 ``LearnerLog.begin_sync``); when that is done the new messages go to the
                 learner (``drain()`` or ``on_transitions``) and each stream gets one
                 ``ack`` (seq = durable seq). At most ``_MAX_GROUPS`` bursts wait for
                 the disk; then the server stops reading and TCP pushes back.
                 When the log cannot write (disk full, ``LogFull``) the message gets an error
                 (code "disk_full") and no ack; when the learner's inbox is full, code
                 "busy". The actor keeps such data and resends it after a back-off.
weights_request  the last full parameter set (a ``weights`` message, meta["full"] True, at
                 the current version) on the same ROUTER connection; ``error`` (code
                 "no_weights") before the first ``publish_weights``.
heartbeat        answered with a ``heartbeat`` carrying the current weights version.
stats            ``(actor, stats dict)`` to ``stats()`` / ``on_stats``.

Every message from an actor refreshes its last-seen time; an actor silent for
``peer_timeout_s`` is reported gone (WARNING, ``actors()``) and back when it returns.

PUB, default ``tcp://127.0.0.1:5556``: ``publish_weights`` sends ``weights`` messages.
Versions strictly increase (a lower or equal one raises ValueError). The first set must be
full; later ones may hold only the trainable leaves (``full=False``), which must be leaves of
the full set: the server merges them into its copy of the full set, so a weights_request
always gets every parameter at the newest version. PUB drops messages for a subscriber that
is not keeping up (SNDHWM); the actor notices from the version in heartbeats and asks.

Sockets: LINGER 0 everywhere; ZMQ_MAXMSGSIZE = ``max_bytes`` on the ROUTER (libzmq applies it
per frame and drops the connection of a peer that sends a larger one); the whole message is
bounded by ``decode``'s ``max_bytes``. Binding beyond loopback needs CURVE keys
(``hilrl.transport.security``, imported only when needed) or ``insecure=True``.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import numpy as np
import zmq

from hilrl.transport.learner_log import LearnerLog, LogFull, SyncTicket
from hilrl.transport.wire import (
    DEFAULT_MAX_BYTES,
    MAX_HEADER_BYTES,
    Message,
    Schema,
    WireError,
    decode,
    encode,
    flatten,
)

__all__ = ["LearnerServer", "check_bind"]

log = logging.getLogger(__name__)

_BURST = 256  # messages handled per group commit
_BURST_BYTES = 256 << 20
_MAX_GROUPS = 4  # bursts waiting for their fsync before the server stops reading
_POLL_MS = 50
_LOG_FIRST = 5  # rejects logged per code before rate limiting
_LOG_EVERY = 1000
_LOOPBACK = ("tcp://127.", "tcp://localhost:", "tcp://[::1]:", "ipc://", "inproc://")


def check_bind(address: str, keys: Any, insecure: bool) -> None:
    """Refuse a bind beyond loopback without keys unless ``insecure`` (security module)."""
    if keys is None and address.startswith(_LOOPBACK):
        return
    from hilrl.transport import security  # lazily: only CURVE setups need it

    security.check_bind_address(address, keys, insecure)


class LearnerServer:
    """Receives transitions, answers actors, publishes weights (see the module docstring).

    Args:
        bind: ROUTER endpoint for actors' messages.
        weights_bind: PUB endpoint for weights.
        log_dir: the durable log's directory (``LearnerLog``); opened now, its ack table
            restored; replay it with ``server.log.messages()`` before ``start()``.
        schema: the agreed transition layout.
        keys: ``security.ServerKeys`` for CURVE, or None.
        insecure: allow binding beyond loopback without keys.
        heartbeat_s: unused by the server itself (actors drive heartbeats); kept for symmetry
            and reported in hello_ok's meta so actors can check the configuration.
        peer_timeout_s: an actor silent this long is reported gone.
        max_bytes: size cap of one message (ZMQ_MAXMSGSIZE and decode).
        on_transitions / on_stats: called from the server thread instead of queueing (keep
            them fast; an exception is logged and the message still counts as delivered).
        inbox_size: transitions messages waiting in ``drain()`` before new ones are refused
            with "busy" (so an idle learner cannot make the server grow without bound).
        log_max_bytes: optional size limit of the durable log (LogFull beyond it).
    """

    def __init__(
        self,
        bind: str = "tcp://127.0.0.1:5555",
        weights_bind: str = "tcp://127.0.0.1:5556",
        log_dir: str = "learner_log",
        schema: Schema | None = None,
        keys: Any = None,
        insecure: bool = False,
        heartbeat_s: float = 1.0,
        peer_timeout_s: float = 5.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_transitions: Callable[[Message], None] | None = None,
        on_stats: Callable[[str, dict[str, Any]], None] | None = None,
        inbox_size: int = 4096,
        log_max_bytes: int | None = None,
    ) -> None:
        if schema is None:
            raise ValueError("LearnerServer needs the agreed schema (EnvSpec.wire_schema)")
        check_bind(bind, keys, insecure)
        check_bind(weights_bind, keys, insecure)
        self.schema = schema
        self.max_bytes = int(max_bytes)
        self.heartbeat_s = float(heartbeat_s)
        self.peer_timeout_s = float(peer_timeout_s)
        self.log = LearnerLog.open(log_dir, max_bytes=log_max_bytes)
        self._on_transitions = on_transitions
        self._on_stats = on_stats
        self._inbox: queue.Queue[Message] = queue.Queue(maxsize=inbox_size)
        self._stats_q: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=10000)
        self._prune_q: queue.Queue[dict[tuple[str, str], int]] = queue.Queue()
        self._keys = keys
        self._lock = threading.Lock()  # counters, peers, weights state
        self._publish_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._peers: dict[str, float] = {}
        self._gone: set[str] = set()
        self._version = -1
        self._full: dict[str, np.ndarray] | None = None
        self._full_frames: list[Any] | None = None
        self._pub_queue: list[list[Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Group commit: bursts whose fsync runs in the syncer thread, oldest first.
        self._groups: collections.deque[tuple[SyncTicket, list[Any]]] = collections.deque()
        self._reserved = 0  # inbox places held by messages in _groups
        self._sync_q: queue.Queue[SyncTicket | None] = queue.Queue()
        self._syncer = threading.Thread(target=self._sync_loop, name="learner-log-sync",
                                        daemon=True)
        self._closed = False

        self._ctx = zmq.Context()
        try:
            self._router = self._socket(zmq.ROUTER, bind)
            self._router.setsockopt(zmq.MAXMSGSIZE, self.max_bytes)
            self._router.bind(bind)
            self._pub = self._socket(zmq.PUB, weights_bind)
            self._pub.setsockopt(zmq.SNDHWM, 16)
            self._pub.bind(weights_bind)
            # The learner's threads wake the server thread through this pipe.
            self._wake_rx = self._ctx.socket(zmq.PAIR)
            self._wake_rx.linger = 0
            address = f"inproc://learner-wake-{id(self)}"
            self._wake_rx.bind(address)
            self._wake_tx = self._ctx.socket(zmq.PAIR)
            self._wake_tx.linger = 0
            self._wake_tx.connect(address)
        except BaseException:
            self._close_sockets()
            raise
        self.endpoint = self._router.get(zmq.LAST_ENDPOINT).decode()
        self.weights_endpoint = self._pub.get(zmq.LAST_ENDPOINT).decode()

    def _socket(self, kind: int, address: str) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.linger = 0
        if self._keys is not None:
            from hilrl.transport import security

            security.secure_server_socket(sock, self._keys, self._ctx)
        return sock

    # ------------------------------------------------------------------ learner side

    def start(self) -> LearnerServer:
        """Start the server thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="learner-server",
                                            daemon=True)
            self._syncer.start()
            self._thread.start()
        return self

    def drain(self, max_messages: int | None = None) -> list[Message]:
        """The transitions messages received (and made durable) since the last call."""
        out = []
        while max_messages is None or len(out) < max_messages:
            try:
                out.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return out

    def get(self, timeout: float | None = None) -> Message | None:
        """The next transitions message, waiting up to ``timeout`` (None if none came)."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def prune_log(self, covered: Mapping[tuple[str, str], int]) -> None:
        """``LearnerLog.prune(covered)`` in the thread that owns the log (asynchronously
        while the server runs; at once before ``start()`` or after ``close()``)."""
        covered = dict(covered)
        running = self._thread is not None and self._thread.is_alive()
        if not running:
            self._prune(covered)
            return
        self._prune_q.put(covered)
        self._wake()

    def _prune(self, covered: dict[tuple[str, str], int]) -> None:
        try:
            freed = self.log.prune(covered)
        except OSError as e:
            log.warning("learner server: pruning the log failed (%s); it is retried at the "
                        "next checkpoint", e)
            return
        if freed:
            log.info("learner server: pruned %.1f MB of log covered by a checkpoint", freed / 1e6)

    def stats(self) -> list[tuple[str, dict[str, Any]]]:
        """The ``(actor, stats)`` pairs received since the last call."""
        out = []
        while True:
            try:
                out.append(self._stats_q.get_nowait())
            except queue.Empty:
                return out

    def publish_weights(self, params: Mapping[str, Any], version: int, full: bool = True
                        ) -> None:
        """Publish a parameter tree (nested dict of numpy arrays) at ``version``.

        Copies the arrays (the caller may reuse them), so it costs about one memcpy of the
        set in the calling thread; sending happens in the server thread. Raises ValueError
        for a version not above the last one, a partial set before any full one, a partial
        set with leaves the full set lacks, or a set larger than ``max_bytes``."""
        flat = {name: np.array(value, order="C") for name, value in flatten(params).items()}
        version = int(version)
        # One publisher at a time; the server thread's lock is held only to swap the result
        # in, not while a large set is copied, encoded and checked.
        with self._publish_lock:
            with self._lock:
                last, base = self._version, self._full
            if version <= last:
                raise ValueError(f"publish_weights: version {version} is not above the last "
                                 f"published version {last}; versions must increase")
            if full:
                merged = flat
            else:
                if base is None:
                    raise ValueError("publish_weights(full=False) before any full set: "
                                     "publish the whole parameter tree first")
                if unknown := sorted(set(flat) - set(base)):
                    raise ValueError(f"publish_weights(full=False): leaves {unknown[:5]} are "
                                     "not in the full parameter set published before")
                merged = {**base, **flat}
            frames = encode("weights", policy_version=version, arrays=flat,
                            meta={"full": bool(full)})
            full_frames = frames if full else encode(
                "weights", policy_version=version, arrays=merged, meta={"full": True})
            size = sum(memoryview(f).nbytes for f in full_frames)
            if size > self.max_bytes:
                raise ValueError(f"publish_weights: {size} bytes exceed max_bytes="
                                 f"{self.max_bytes}; raise max_bytes on learner and actors")
            self._commit_weights(version, merged, full_frames, frames)
        self._wake()

    def _commit_weights(self, version: int, merged: dict[str, np.ndarray],
                        full_frames: list[Any], frames: list[Any]) -> None:
        with self._lock:
            self._version = version
            self._full = merged
            self._full_frames = full_frames
            self._pub_queue.append(frames)
            self._counts["weights_published"] += 1

    @property
    def weights_version(self) -> int:
        """The last published version (-1: none)."""
        return self._version

    def _wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # already plenty of wake-ups pending

    def counters(self) -> dict[str, Any]:
        """accepted (messages), accepted_transitions, duplicates, acks, weights_published,
        weights_requests, heartbeats, stats_received, rejected ({code: n}),
        rejected_total."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["rejected"] = dict(self._rejected)
            out["rejected_total"] = sum(self._rejected.values())
        for key in ("accepted", "accepted_transitions", "duplicates", "acks"):
            out.setdefault(key, 0)
        return out

    def actors(self) -> dict[str, dict[str, Any]]:
        """actor id -> {"last_seen_s": seconds since its last message, "alive": bool}."""
        now = time.monotonic()
        with self._lock:
            return {a: {"last_seen_s": now - t, "alive": now - t < self.peer_timeout_s}
                    for a, t in self._peers.items()}

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread, close the sockets and the log (idempotent, bounded by timeout)."""
        if self._closed:
            return
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("learner server: thread did not stop within %.1f s", timeout)
        with self._lock:
            self._closed = True
        if self._thread is None or not self._thread.is_alive():
            self._close_sockets()
            self.log.close()

    def _close_sockets(self) -> None:
        for name in ("_router", "_pub", "_wake_rx", "_wake_tx"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=0)
        if self._keys is not None:
            from hilrl.transport import security

            security.stop_authenticator(self._ctx)
        self._ctx.term()

    def __enter__(self) -> LearnerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ server thread

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        next_check = time.monotonic()
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(_POLL_MS))
                if self._wake_rx in events:
                    while True:
                        try:
                            self._wake_rx.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                self._send_weights()
                self._finish_groups()
                while not self._prune_q.empty():
                    self._prune(self._prune_q.get_nowait())
                if len(self._groups) >= _MAX_GROUPS:
                    # The disk is behind: stop reading until the oldest sync is done (zmq's
                    # queues and TCP push back on the actors meanwhile).
                    self._groups[0][0].done.wait(_POLL_MS / 1000)
                elif self._router in events:
                    self._handle_burst()
                if time.monotonic() >= next_check:
                    self._check_peers()
                    next_check = time.monotonic() + min(1.0, self.peer_timeout_s / 4)
        except Exception:
            log.exception("learner server: thread crashed; actors will see it as gone")
            raise
        finally:
            deadline = time.monotonic() + 5
            while self._groups and time.monotonic() < deadline:
                self._groups[0][0].done.wait(0.1)
                self._finish_groups()
            self._sync_q.put(None)
            self._syncer.join(5)

    def _sync_loop(self) -> None:
        # The syncer thread: fdatasync while the server thread keeps receiving.
        while (ticket := self._sync_q.get()) is not None:
            ticket.run()
            self._wake()

    def _finish_groups(self) -> None:
        while self._groups and self._groups[0][0].done.is_set():
            ticket, pending = self._groups.popleft()
            self._reserved -= sum(1 for p in pending if p[1] is not None)
            self._commit(pending, ticket)

    def _send_weights(self) -> None:
        with self._lock:
            pending, self._pub_queue = self._pub_queue, []
        for frames in pending:
            try:
                self._pub.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # no subscriber can take it now; they ask when they miss a version

    def _handle_burst(self) -> None:
        pending: list[tuple[bytes, Message | None, str, str]] = []
        nbytes = 0
        for _ in range(_BURST):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            ident, body = frames[0].bytes, frames[1:]
            nbytes += sum(len(f) for f in body)
            item = self._handle(ident, body, self._reserved + len(pending))
            if item is not None:
                pending.append(item)
            if nbytes > _BURST_BYTES:
                break
        if not pending:
            return
        ticket = self.log.begin_sync()
        if ticket is None:  # duplicates only: their acks need no sync
            self._commit(pending, None)
            return
        self._groups.append((ticket, pending))
        self._reserved += sum(1 for p in pending if p[1] is not None)
        self._sync_q.put(ticket)

    def _commit(self, pending: list[tuple[bytes, Message | None, str, str]],
                ticket: SyncTicket | None) -> None:
        try:
            if ticket is not None:
                self.log.finish_sync(ticket)
        except LogFull as e:
            log.error("learner server: %s", e)
            for ident, msg, _actor, _session in pending:
                if msg is not None:
                    self._reject(ident, "disk_full", f"the learner cannot store data: {e}",
                                 msg.type, msg.actor, msg.session, msg.seq)
            pending = [p for p in pending if p[1] is None]
        acks: dict[tuple[bytes, str, str], None] = {}
        for ident, msg, actor, session in pending:
            if msg is not None:
                self._deliver(msg)
            acks[(ident, actor, session)] = None
        for ident, actor, session in acks:
            seq = self.log.durable_seq(actor, session)
            self._reply(ident, encode("ack", actor=actor, session=session, seq=seq,
                                      policy_version=self._version))
            with self._lock:
                self._counts["acks"] += 1

    def _deliver(self, msg: Message) -> None:
        if self._on_transitions is not None:
            try:
                self._on_transitions(msg)
            except Exception:
                log.exception("learner server: on_transitions raised (message stays stored)")
        else:
            self._inbox.put_nowait(msg)  # room was reserved when it was accepted

    def _handle(self, ident: bytes, frames: list[Any], reserved: int
                ) -> tuple[bytes, Message | None, str, str] | None:
        """Handle one message; returns what the group commit must ack, if anything."""
        try:
            msg = decode(frames, self.max_bytes, self.schema)
        except WireError as e:
            self._reject(ident, e.code, str(e), *_peek_header(frames))
            return None
        if msg.actor:
            self._seen(msg.actor)
        t = msg.type
        if t == "transitions":
            return self._transitions(ident, msg, frames, reserved)
        if t == "hello":
            self._hello(ident, msg)
        elif t == "heartbeat":
            with self._lock:
                self._counts["heartbeats"] += 1
            self._reply(ident, encode("heartbeat", policy_version=self._version))
        elif t == "weights_request":
            with self._lock:
                frames_out = self._full_frames
                self._counts["weights_requests"] += 1
            if frames_out is None:
                self._reject(ident, "no_weights", "no weights have been published yet",
                             t, msg.actor, msg.session, msg.seq, count=False)
            else:
                self._reply(ident, frames_out)
        elif t == "stats":
            self._stats(msg)
        elif t == "error":
            log.warning("learner server: actor %r reports an error: %s", msg.actor,
                        msg.meta.get("reason"))
        else:
            self._reject(ident, "type", f"the learner does not accept {t!r} messages",
                         t, msg.actor, msg.session, msg.seq)
        return None

    def _transitions(self, ident: bytes, msg: Message, frames: list[Any], reserved: int
                     ) -> tuple[bytes, Message | None, str, str] | None:
        actor, session, n = msg.actor, msg.session, msg.batch_size
        try:
            kind = self.log.classify(actor, session, msg.seq, n)
            if kind == "duplicate":
                with self._lock:
                    self._counts["duplicates"] += 1
                return ident, None, actor, session
            if kind != "new":
                expected = self.log.next_seq(actor, session)
                self._reject(ident, "gap", f"transitions {msg.seq}..{msg.seq + n - 1} of "
                             f"session {session} do not follow the stored ones: expected seq "
                             f"{expected}; rewind and resend from there", "transitions",
                             actor, session, msg.seq, expected=expected)
                return None
            if self._on_transitions is None and self._inbox.qsize() + reserved >= \
                    self._inbox.maxsize:
                self._reject(ident, "busy", "the learner's inbox is full; resend later",
                             "transitions", actor, session, msg.seq)
                return None
            self.log.append(actor, session, msg.seq, n, frames)
        except ValueError as e:  # an id the log cannot store
            self._reject(ident, "header", str(e), "transitions", actor, session, msg.seq)
            return None
        except LogFull as e:
            self._reject(ident, "disk_full", f"the learner cannot store data: {e}",
                         "transitions", actor, session, msg.seq)
            return None
        with self._lock:
            self._counts["accepted"] += 1
            self._counts["accepted_transitions"] += n
        return ident, msg, actor, session

    def _hello(self, ident: bytes, msg: Message) -> None:
        theirs = Schema.from_meta(msg.meta["schema"])  # decode checked it already
        if (diff := self.schema.mismatch(theirs)) is not None:
            self._reject(ident, "schema", f"schema mismatch: {diff} (this learner's schema "
                         "first); actor and learner must use the same observation/action "
                         "config", "hello", msg.actor, msg.session, msg.seq)
            return
        try:
            durable = self.log.hello(msg.actor, msg.session, msg.seq)
        except ValueError as e:
            self._reject(ident, "header", str(e), "hello", msg.actor, msg.session, msg.seq)
            return
        log.info("learner server: hello from %s session %s (its oldest unacked seq %d, "
                 "stored up to %d)", msg.actor, msg.session, msg.seq, durable)
        self._reply(ident, encode("hello_ok", actor=msg.actor, session=msg.session,
                                  seq=durable, policy_version=self._version,
                                  meta={"heartbeat_s": self.heartbeat_s,
                                        "peer_timeout_s": self.peer_timeout_s}))

    def _stats(self, msg: Message) -> None:
        stats = dict(msg.meta["stats"])
        with self._lock:
            self._counts["stats_received"] += 1
        if self._on_stats is not None:
            try:
                self._on_stats(msg.actor, stats)
            except Exception:
                log.exception("learner server: on_stats raised")
            return
        try:
            self._stats_q.put_nowait((msg.actor, stats))
        except queue.Full:  # informational: drop the oldest rather than grow
            try:
                self._stats_q.get_nowait()
            except queue.Empty:
                pass
            self._stats_q.put_nowait((msg.actor, stats))
            with self._lock:
                self._counts["stats_dropped"] += 1

    def _seen(self, actor: str) -> None:
        with self._lock:
            self._peers[actor] = time.monotonic()
            back = actor in self._gone
            self._gone.discard(actor)
        if back:
            log.info("learner server: actor %r is back", actor)

    def _check_peers(self) -> None:
        now = time.monotonic()
        with self._lock:
            gone = [a for a, t in self._peers.items()
                    if now - t > self.peer_timeout_s and a not in self._gone]
            self._gone.update(gone)
        for actor in gone:
            log.warning("learner server: actor %r is gone (silent for more than %.1f s)",
                        actor, self.peer_timeout_s)

    def _reject(self, ident: bytes, code: str, reason: str, ref_type: str | None = None,
                actor: str = "", session: str = "", seq: int = 0, count: bool = True,
                **extra: Any) -> None:
        if count:
            with self._lock:
                self._rejected[code] += 1
                n = self._rejected[code]
            if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
                log.warning("learner server: rejected a %s from %r (%s, #%d): %s",
                            ref_type or "message", actor or "?", code, n, reason)
        meta: dict[str, Any] = {"reason": reason[:4000], "code": code, **extra}
        if ref_type is not None:
            meta.update(ref_type=ref_type, ref_seq=seq)
        try:
            frames = encode("error", actor=actor, session=session, seq=seq, meta=meta)
        except WireError:  # ids from a header that was only partly valid
            frames = encode("error", meta=meta)
        self._reply(ident, frames)

    def _reply(self, ident: bytes, frames: list[Any]) -> None:
        try:
            self._router.send_multipart([ident, *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the peer is not reading; the protocol recovers (hello, resend, request)
        except zmq.ZMQError as e:
            log.debug("learner server: reply failed: %s", e)


def _peek_header(frames: list[Any]) -> tuple[str | None, str, str, int]:
    """type, actor, session, seq of a rejected message, as far as they can be read safely
    (for the error reply only; anything doubtful is left out)."""
    if not frames or len(frames[0]) > MAX_HEADER_BYTES:
        return None, "", "", 0
    try:
        head = msgpack.unpackb(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0],
                               raw=False, max_bin_len=0, max_ext_len=0, max_array_len=4096,
                               max_map_len=4096, max_str_len=1 << 16)
    except Exception:
        return None, "", "", 0
    if not isinstance(head, dict):
        return None, "", "", 0

    def get(key: str, kind: type, default: Any) -> Any:
        value = head.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    seq = get("seq", int, 0)
    return (get("type", str, None), get("actor", str, ""), get("session", str, ""),
            seq if 0 <= seq < 1 << 63 else 0)

