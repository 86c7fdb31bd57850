"""The actor's end of the transport: transitions out through an Outbox, weights in.

The control loop only ever calls cheap, non-blocking methods::

    client = ActorClient("arm0", schema=schema, spill_dir="spill/arm0")
    while running:                                    # 10 Hz
        if (w := client.latest_weights()) is not None and w[0] != version:
            version, params = w                       # swap between control steps
        ...
        client.send_transition({"obs": obs, "action": a, "reward": r, "terminated": te,
                                "truncated": tr, "intervened": iv, "next_obs": obs2,
                                "extras": {...}})
    client.close()

send_transition (control loop)
------------------------------
The transition (one step: obs, action, reward, terminated, truncated, intervened,
next_obs, extras; ``Schema.step_fields()``) is checked against the schema (names, shapes,
dtypes that cast safely, finite floats) and copied into row ``n`` of preallocated batch
arrays in the wire layout (``hilrl.transport.wire``, "Transition batch"): each observation
is kept once. The obs arrays have ``batch_size + 1`` rows; step ``n``'s next_obs goes into
obs row ``n + 1``, the batch's pending last row, and step ``n``'s own obs is already there
(row ``n``, the previous step's next_obs; copied only for the first step of a batch). A step
whose obs is not equal (``np.array_equal`` per obs array, in the schema's dtypes) to the
pending next_obs -- a reset without an episode end, a skipped or repeated step, a caller
bug -- *closes the batch there* (counted as ``split_batches``, a WARNING the first time)
and starts a new batch with its own obs: the previous steps keep their true next_obs and
nothing is lost or overwritten. The comparison costs about what copying the obs would, so
a step still costs O(size of one transition), no I/O, no network, under a lock held only for
that copy and a few attribute updates. The batch is *closed* when it holds ``batch_size``
transitions, when the transition ends an episode (so a batch never spans two episodes and
only its last step is terminated or truncated), when the next step does not continue it
(above), or (by the background thread) once its oldest transition is ``max_delay_s`` old
(a step after that starts a new batch). Only steps sharing a batch share frames: at 10 Hz
the default ``max_delay_s`` 0.5 gives ~5 steps and 6 observations per batch (1.2 frame sets
per step instead of 2); the learner samples from a buffer of thousands of steps, so half a
second of delay costs it nothing. A closed
batch is moved to a short queue and an empty batch prepared by the background thread (pages
already touched) takes its place. The background thread encodes closed batches (frames that view
the batch arrays, no copy; compressed images are new buffers, see "Image compression") and
puts them into the Outbox, which assigns their seqs. So at
10 Hz every transition leaves within ``max_delay_s`` and costs the loop one copy; under
load messages carry ``batch_size`` transitions. If ``_MAX_SEALED`` closed batches are
already waiting (a burst of calls), the caller puts them itself (an encode, still no I/O).
When the Outbox refuses (``OutboxFull``: memory and spill limits reached) batches wait;
once the open batch is full too (or ends an episode, or the next step does not continue it)
``send_transition`` raises OutboxFull and the transition is not accepted (hold the robot).
Transitions in the open or closed batches, like the Outbox's unspilled messages, are in
memory only: a SIGKILL loses them, ``close()`` does not. With ``durable=True`` every
transition is a message of its own, encoded and put into a durable Outbox (written and
fsynced) inside ``send_transition``: when it returns, the transition survives a SIGKILL.
That costs the control loop an encode, a write and an fsync per step, and the wire and
the disk carry obs and next_obs of every step (2 frame sets instead of ~1.2). When the
disk refuses, the transition is not accepted (OutboxFull).
A bad transition raises ValueError.

Image compression
-----------------
``compress`` (default None: every array raw) chooses, per camera, how its images travel:
"raw", "png" (lossless; ``("png", level)`` for a zlib level 0..9, default 1) or
``("jpeg", quality)`` (lossy, quality 1..100; plain "jpeg" is quality 90); see
``hilrl.transport.wire``, "Compressed images". It is either one setting for every image
observation (uint8 [..., H, W, 3 or 1]) or a mapping whose keys name observations by
camera name ("front": the last path segment, when no two observations share it), obs path
("images/front") or array name ("obs/images/front"); unknown, ambiguous or non-image keys
raise ValueError in the constructor. E.g.
``compress={"front": ("jpeg", 90), "wrist": "png"}``. The learner needs no setting: decode
returns plain arrays (its log keeps the compressed frames). Compression happens where
batches are encoded, in the background thread; ``send_transition`` never compresses: with
compression on, when ``_MAX_SEALED`` closed batches already wait (the encoder is behind),
the batch stays open, and once it is full ``send_transition`` raises OutboxFull rather
than encode in the caller (counted as ``encoder_behind``). ``flush()`` and ``close()`` may
encode in the calling thread. The background thread encodes for about 20 ms per loop
(at least one batch) before it serves its sockets again, so heartbeats, acks and sending go
on while a fast control loop keeps it compressing. Cost per 128x128x3 image: PNG ~0.5 ms,
JPEG ~0.1 ms to encode (``bench/transport_speed.py``: transitions_per_s.png / .jpeg90).

Background thread (owns the sockets)
------------------------------------
* DEALER to the learner. On start and on every reconnect: a *fresh* DEALER (an old one
  would still hold stale queued frames), then a ``hello`` per stream. Streams are the
  sessions of dead predecessors found by ``Outbox.recover(spill_dir)`` (oldest first,
  under their old session ids) and this client's own session. A stream sends only after
  its ``hello_ok``, whose seq acks everything below it; then everything unacked is sent
  again from the oldest (``rewind``), up to ``max_inflight`` messages not yet acked.
* ``ack`` messages ack the stream's Outbox (cumulative). A recovered stream whose messages
  are all acked is discarded from disk.
* ``error`` replies: "gap", "busy", "disk_full" and any other reject of transitions pause
  the stream and rewind it after a back-off (0.2 s for a gap, 1 s otherwise), so resends
  come in order and at most one rewind per back-off. "schema" on hello is logged as an
  ERROR and the hello is retried every ``peer_timeout_s`` (data is kept, never dropped).
* Heartbeats every ``heartbeat_s``; any message from the learner proves it alive. Silent
  for ``peer_timeout_s``: ``learner_alive`` turns False (WARNING), the DEALER is replaced
  and hellos are sent again until the learner answers. No ack progress for
  ``resend_after_s`` while messages are in flight also rewinds (the learner may have lost
  unacked messages in a crash while staying reachable).
* SUB for weights (and ``weights`` replies on the DEALER): a set is taken only if its
  version is above the current one, so versions never go backwards. A partial set
  (``meta["full"]`` False) is merged into the current full set; without one it is ignored
  and the full set requested. ``weights_request`` is sent when no weights arrived within
  ``request_after_s`` of start, or when a hello_ok/heartbeat/ack says the learner has a
  newer version than ours and it has not arrived within ``request_after_s`` (at most one
  request per ``request_after_s``).

``latest_weights()`` returns ``(version, tree)`` of the newest set without blocking (a
tuple swapped atomically; the arrays are read-only views of received frames).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import zmq

from hilrl.transport.outbox import Outbox, OutboxFull, OutboxMessage, RecoveredSession
from hilrl.transport.wire import (
    DEFAULT_MAX_BYTES,
    Compression,
    Message,
    Schema,
    WireError,
    compression,
    decode,
    encode,
    flatten,
    unflatten,
)

__all__ = ["ActorClient"]

log = logging.getLogger(__name__)

_POLL_MS = 10
_GAP_BACKOFF_S = 0.2
_ERROR_BACKOFF_S = 1.0
_MAX_SEALED = 4  # closed batches waiting for the outbox before send_transition refuses
_SPARES = 2  # empty batches prepared (pages touched) by the background thread
_ENCODE_BUDGET_S = 0.02  # encoding per background loop before the sockets get a turn


class _UnackedStream:
    """One session's unacked messages as the sender sees them: live (the Outbox) or
    recovered (a dead predecessor's messages read from its spill directory)."""

    def __init__(self, session: str, outbox: Outbox | None = None,
                 recovered: RecoveredSession | None = None) -> None:
        self.session = session
        self.outbox = outbox
        self.recovered = recovered
        self.pending: collections.deque[OutboxMessage] = collections.deque(
            recovered.messages if recovered else ())
        self.cursor = 0  # recovered only: index into pending of the next to send
        self.ready = False  # hello_ok received on the current connection
        self.hello_at = -1e9
        self.inflight: collections.deque[tuple[int, int, int]] = collections.deque()
        self.inflight_bytes = 0
        self.hold_until = 0.0  # paused after an error until then, then rewound
        self.last_progress = time.monotonic()

    def first_unacked(self) -> int:
        if self.outbox is not None:
            return self.outbox.acked_seq
        return self.pending[0].seq if self.pending else 0

    def next_to_send(self) -> OutboxMessage | None:
        if self.outbox is not None:
            return self.outbox.next_to_send(0.0)
        if self.cursor < len(self.pending):
            self.cursor += 1
            return self.pending[self.cursor - 1]
        return None

    def ack(self, upto: int) -> None:
        while self.inflight and self.inflight[0][0] + self.inflight[0][1] <= upto:
            self.inflight_bytes -= self.inflight.popleft()[2]
            self.last_progress = time.monotonic()
        if self.outbox is not None:
            if upto > self.outbox.acked_seq:
                self.last_progress = time.monotonic()
            self.outbox.ack(upto)
            return
        while self.pending and self.pending[0].seq + self.pending[0].count <= upto:
            self.pending.popleft()
            self.cursor = max(0, self.cursor - 1)
            self.last_progress = time.monotonic()

    def rewind(self) -> None:
        self.inflight.clear()
        self.inflight_bytes = 0
        self.last_progress = time.monotonic()
        if self.outbox is not None:
            self.outbox.rewind()
        else:
            self.cursor = 0

    @property
    def done(self) -> bool:  # a recovered stream with nothing left
        return self.outbox is None and not self.pending


class _Batch:
    """Preallocated arrays for up to ``size`` transitions in the wire layout: obs/ arrays
    have ``size + 1`` rows (row ``n`` holds the last step's next_obs), the others ``size``."""

    def __init__(self, fields: Mapping[str, Any], size: int) -> None:
        self.arrays = {name: np.empty((size + name.startswith("obs/"), *spec.shape),
                                      spec.dtype)
                       for name, spec in fields.items()}
        self.n = 0
        self.ended = False  # its last step ended the episode: nothing may follow it
        self.started = 0.0
        self.policy_version = -1


class ActorClient:
    """The actor's transport endpoint (see the module docstring).

    Args:
        actor_id: this actor's id (letters, digits, ``_ . : @ -``).
        learner / weights: the learner's ROUTER and PUB endpoints.
        schema: the agreed transition layout (must equal the learner's).
        spill_dir: this actor's Outbox spill root (one per actor id: dead sessions found
            there are delivered as this actor's).
        keys: ``security.ClientKeys`` for CURVE, or None.
        heartbeat_s / peer_timeout_s: heartbeat period and the silence after which the
            learner counts as gone.
        batch_size: transitions per message at most (<= schema.max_batch).
        max_delay_s: a partial batch is sent once its oldest transition is this old.
        max_bytes: size cap of received messages (ZMQ_MAXMSGSIZE and decode).
        max_bytes_in_memory / max_bytes_on_disk: the Outbox's limits.
        max_inflight / max_inflight_bytes: messages (bytes) sent and not yet acked, per
            stream; at least one message is always allowed.
        resend_after_s: no ack progress this long with messages in flight: rewind.
        request_after_s: see "weights_request" in the module docstring.
        compress: image compression, one setting for every camera or a mapping from camera
            name / obs path / array name to "raw" | "png" | ("png", level) | "jpeg" |
            ("jpeg", quality) (see "Image compression" in the module docstring).
        durable: every transition on disk before ``send_transition`` returns (batches of
            one; see the module docstring).
    """

    def __init__(
        self,
        actor_id: str,
        learner: str = "tcp://127.0.0.1:5555",
        weights: str = "tcp://127.0.0.1:5556",
        schema: Schema | None = None,
        spill_dir: str = "actor_spill",
        keys: Any = None,
        heartbeat_s: float = 1.0,
        peer_timeout_s: float = 5.0,
        batch_size: int = 32,
        max_delay_s: float = 0.5,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_bytes_in_memory: int = 256 << 20,
        max_bytes_on_disk: int = 8 << 30,
        max_inflight: int = 64,
        max_inflight_bytes: int = 256 << 20,
        resend_after_s: float = 3.0,
        request_after_s: float = 0.5,
        compress: Any = None,
        durable: bool = False,
    ) -> None:
        if durable:
            batch_size = 1
        if schema is None:
            raise ValueError("ActorClient needs the agreed schema (EnvSpec.wire_schema)")
        if not 1 <= batch_size <= schema.max_batch:
            raise ValueError(f"batch_size must be in 1..schema.max_batch={schema.max_batch}, "
                             f"got {batch_size}")
        encode("heartbeat", actor=actor_id)  # validates the id with the wire's rules
        if not actor_id:
            raise ValueError("actor_id must not be empty")
        self.actor_id = actor_id
        self.schema = schema
        self.learner = learner
        self.weights_endpoint = weights
        self.heartbeat_s = float(heartbeat_s)
        self.peer_timeout_s = float(peer_timeout_s)
        self.batch_size = int(batch_size)
        self.max_delay_s = float(max_delay_s)
        self.max_bytes = int(max_bytes)
        self.max_inflight = int(max_inflight)
        self.max_inflight_bytes = int(max_inflight_bytes)
        self.resend_after_s = float(resend_after_s)
        self.request_after_s = float(request_after_s)
        self._keys = keys
        self._fields = schema.fields()  # the batch arrays (wire layout)
        self._step_fields = schema.step_fields()  # one send_transition call
        # Smallest first (the state): what _continues compares first.
        self._obs_names = [(f"obs/{p}", f"next_obs/{p}") for p in sorted(
            schema.obs, key=lambda p: math.prod(schema.obs[p].shape))]
        self._warned_split = False
        self.compress = _resolve_compress(schema, compress)  # array name -> Compression

        recovered = Outbox.recover(spill_dir)
        self.durable = bool(durable)
        self.outbox = Outbox(spill_dir, max_bytes_in_memory, max_bytes_on_disk,
                             durable=self.durable)
        self.session = self.outbox.session
        self._streams = [_UnackedStream(r.session, recovered=r) for r in recovered]
        self._streams.append(_UnackedStream(self.session, outbox=self.outbox))
        if recovered:
            log.info("actor %s: delivering %d message(s) of %d dead session(s) first",
                     actor_id, sum(len(r.messages) for r in recovered), len(recovered))

        self._batch_lock = threading.Lock()
        self._batch = _Batch(self._fields, self.batch_size)
        self._sealed: collections.deque[_Batch] = collections.deque()  # closed, not yet put
        self._over_budget = False  # the last _put_sealed stopped at its time budget
        self._put_lock = threading.Lock()  # one encoder at a time: seqs and order
        self._spares: collections.deque[_Batch] = collections.deque()  # prepared, empty
        self._weights: tuple[int, dict[str, Any]] | None = None
        self._flat_weights: dict[str, np.ndarray] | None = None
        self._learner_version = -1
        self._heard_version = False
        self._stats_out: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._counts: collections.Counter[str] = collections.Counter()
        self._last_rx = -1e9
        self._alive = False
        self._stop = threading.Event()
        self._closed = False
        self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._run, name=f"actor-client-{actor_id}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control loop side

    def send_transition(self, transition: Mapping[str, Any], policy_version: int | None = None
                        ) -> None:
        """Queue one transition (see the module docstring). Never blocks on the network.
        Raises ValueError for a transition that does not fit the schema, OutboxFull when
        the outbox refuses (the transition is then not accepted)."""
        flat = flatten(transition)
        if flat.keys() != self._step_fields.keys():
            missing = sorted(self._step_fields.keys() - flat.keys())
            extra = sorted(flat.keys() - self._step_fields.keys())
            raise ValueError(f"send_transition: transition does not match the schema: "
                             f"missing {missing}, unexpected {extra}")
        values = {name: _check_value(name, flat[name], spec)
                  for name, spec in self._step_fields.items()}
        for obs_name, _ in self._obs_names:  # compared in the dtype they are stored in
            values[obs_name] = values[obs_name].astype(self._fields[obs_name].dtype,
                                                       copy=False)
        if policy_version is None:
            w = self._weights
            policy_version = w[0] if w is not None else -1
        ends = bool(values["terminated"]) or bool(values["truncated"])
        with self._batch_lock:
            batch = self._batch
            # An episode end whose close failed (outbox full) leaves the batch open; the next
            # step must still go into a new batch.
            full = batch.n == self.batch_size or batch.ended
            split = 0 < batch.n and not full and not self._continues(batch, values)
            if (full or split) and not self._close_batch_locked():
                self._counts["refused_transitions"] += 1
                raise OutboxFull("send_transition: the outbox refuses new messages (see its "
                                 "log) and the batches waiting for it are full; hold the robot")
            if split:
                self._counts["split_batches"] += 1
                if not self._warned_split:
                    self._warned_split = True
                    log.warning("actor %s: a transition's obs differs from the previous "
                                "transition's next_obs although that one did not end the "
                                "episode (a reset without terminated/truncated?); the batch "
                                "is closed there and a new one starts (counted as "
                                "split_batches; logged once)", self.actor_id)
            batch = self._batch
            row = batch.n
            for name, value in values.items():
                if name.startswith("next_obs/"):
                    batch.arrays[name[5:]][row + 1] = value  # the pending last row
                elif row == 0 or not name.startswith("obs/"):
                    batch.arrays[name][row] = value  # (obs of row > 0: already there)
            if row == 0:
                batch.started = time.monotonic()
                batch.policy_version = int(policy_version)
            batch.n = row + 1
            batch.ended = ends
            if batch.n == self.batch_size or ends:
                self._close_batch_locked()  # if that fails it stays open: still accepted
            if self.durable:
                self._put_now_locked(batch)

    def _put_now_locked(self, batch: _Batch) -> None:
        """Durable: put the transition's batch (of one) into the outbox now; if the outbox
        refuses it (the disk), take it back: not accepted."""
        with self._put_lock:
            if batch in self._sealed and not self._put_sealed_locked():
                self._sealed.remove(batch)
                batch.n, batch.ended = 0, False
                self._spares.append(batch)
                self._counts["refused_transitions"] += 1
                raise OutboxFull("send_transition: the outbox could not write this transition "
                                 "to disk (see its log); it was not accepted: hold the robot")

    def _continues(self, batch: _Batch, values: Mapping[str, np.ndarray]) -> bool:
        """Whether this step's obs equals the batch's pending next_obs (row ``n``); the state
        first: it is small and almost always differs when the step does not continue."""
        row = batch.n
        return all(np.array_equal(batch.arrays[name][row], values[name])
                   for name, _ in self._obs_names)

    def flush(self) -> bool:
        """Close the open batch now (the background thread sends it); False if it could
        not be closed because the batches waiting for the outbox are full. When
        ``_MAX_SEALED`` batches wait, they are encoded here (compressed, if configured)."""
        with self._batch_lock:
            return self._close_batch_locked(may_encode=True)

    def _close_batch_locked(self, may_encode: bool | None = None) -> bool:
        # O(1): hand the batch to the background thread, take a prepared empty one.
        if self._batch.n == 0:
            return True
        if len(self._sealed) >= _MAX_SEALED:
            # The background thread is behind (a burst of calls): put them here, which
            # costs an encode per batch but no I/O; False only if the outbox refuses.
            # With compression an encode is not cheap: send_transition (may_encode None)
            # refuses instead; flush/close (True) encode.
            if may_encode is None:
                may_encode = not self.compress
            if not may_encode:
                self._counts["encoder_behind"] += 1
                return False
            if not self._put_sealed():
                return False
        self._sealed.append(self._batch)
        self._batch = (self._spares.popleft() if self._spares
                       else _Batch(self._fields, self.batch_size))
        return True

    def _put_sealed(self, budget_s: float | None = None) -> bool:
        """Encode closed batches and put them into the outbox, in order (normally in the
        background thread). A batch the outbox refuses stays first in line and False is
        returned; it is retried on the next loop. With ``budget_s`` (the background thread)
        it stops after the first batch that ends past the budget, so a control loop that
        closes batches as fast as they are compressed cannot keep the thread from its
        sockets (heartbeats, acks, sending)."""
        with self._put_lock:
            return self._put_sealed_locked(budget_s)

    def _put_sealed_locked(self, budget_s: float | None = None) -> bool:
        deadline = None if budget_s is None else time.monotonic() + budget_s
        self._over_budget = False
        while self._sealed:
            if deadline is not None and time.monotonic() > deadline:
                self._over_budget = True  # more to encode: the loop does not idle
                break
            batch = self._sealed[0]
            n = batch.n
            frames = encode("transitions", actor=self.actor_id, session=self.session,
                            seq=self.outbox.next_seq, policy_version=batch.policy_version,
                            arrays={name: a[:n + name.startswith("obs/")]
                                    for name, a in batch.arrays.items()},
                            compress=self.compress)
            try:
                self.outbox.put(frames, n)
            except OutboxFull:
                self._counts["refused_batches"] += 1
                return False
            self._sealed.popleft()
            self._counts["sealed_batches"] += 1
            self._counts["queued_transitions"] += n
        return True

    def _refill_spares(self) -> None:
        while len(self._spares) < _SPARES:
            spare = _Batch(self._fields, self.batch_size)
            for a in spare.arrays.values():
                a.fill(0)  # touch the pages here, not in the control loop's first copy
            self._spares.append(spare)

    def latest_weights(self) -> tuple[int, dict[str, Any]] | None:
        """``(version, parameter tree)`` of the newest weights received, or None."""
        return self._weights

    @property
    def learner_alive(self) -> bool:
        """True while the learner answered within peer_timeout_s."""
        return self._alive and time.monotonic() - self._last_rx < self.peer_timeout_s

    def send_stats(self, stats: Mapping[str, Any]) -> None:
        """Queue episode stats ({str: number}) for the learner's logger (best effort: kept
        in a bounded queue, the oldest dropped when the learner is away for long)."""
        stats = {str(k): (int(v) if isinstance(v, bool | np.integer) else
                          float(v) if isinstance(v, np.floating) else v)
                 for k, v in stats.items()}
        encode("stats", actor=self.actor_id, session=self.session,
               meta={"stats": stats})  # raises WireError now, in the caller, if invalid
        self._stats_out.append(stats)

    def stats(self) -> dict[str, Any]:
        """Counters: the outbox's, sealed/refused batches, sent/acked/resent, rewinds,
        reconnects, weights received/requested, errors by code, learner_alive."""
        out: dict[str, Any] = {f"outbox_{k}": v for k, v in self.outbox.stats().items()}
        out.update(self._counts)
        out["learner_alive"] = self.learner_alive
        out["recovered_sessions_pending"] = sum(1 for s in self._streams if s.outbox is None)
        return out

    def wait_delivered(self, timeout: float) -> bool:
        """Flush, then wait until every transition (this session's and recovered ones') is
        acked; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.flush() and self._batch.n == 0 and not self._sealed
                    and self.outbox.acked_seq == self.outbox.next_seq
                    and all(s.outbox is not None for s in self._streams)):
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Seal the open batch, stop the thread, close the sockets and the outbox (unacked
        messages are spilled so the next client with this spill_dir delivers them).
        Idempotent; bounded by ``timeout``."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("actor %s: client thread did not stop within %.1f s", self.actor_id,
                        timeout)
        self.outbox.close()

    def __enter__(self) -> ActorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ background thread

    def _socket(self, kind: int, endpoint: str) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_bytes)
        if self._keys is not None:
            from hilrl.transport import security

            security.secure_client_socket(sock, self._keys)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.RCVHWM, 4)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        return sock

    def _run(self) -> None:
        self._dealer: zmq.Socket | None = None
        sub = self._socket(zmq.SUB, self.weights_endpoint)
        start = time.monotonic()
        self._connected_at = start
        self._next_heartbeat = start
        self._last_request = -1e9
        self._want_weights_since = start  # waiting for weights since (None: not waiting)
        try:
            self._reconnect()
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            while not self._stop.is_set():
                dealer = self._dealer
                poller.register(dealer, zmq.POLLIN)
                # No idle wait while closed batches wait to be encoded (not refused).
                events = dict(poller.poll(0 if self._over_budget else _POLL_MS))
                if sub in events:
                    self._drain(sub)
                if dealer in events:
                    self._drain(dealer)
                now = time.monotonic()
                self._seal_if_old(now)
                self._send_stats()
                self._pump(now)
                self._timers(now)
                if self._dealer is not dealer:
                    poller.unregister(dealer)
                    dealer.close(linger=0)
        except Exception:
            log.exception("actor %s: client thread crashed", self.actor_id)
            raise
        finally:
            try:
                self._put_sealed()  # close(): what the control loop handed over goes in
            except Exception:
                log.exception("actor %s: could not queue the last batches", self.actor_id)
            if self._dealer is not None:
                self._dealer.close(linger=0)
            sub.close(linger=0)
            self._ctx.term()

    def _send(self, frames: list[Any]) -> bool:
        try:
            self._dealer.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _reconnect(self) -> None:
        """A fresh DEALER (the old one is closed by the loop) and hellos for every stream."""
        if self._dealer is not None:
            self._counts["reconnects"] += 1
        self._dealer = self._socket(zmq.DEALER, self.learner)
        self._connected_at = time.monotonic()
        for s in self._streams:
            s.ready = False
            s.hello_at = -1e9
            s.rewind()

    def _hello(self, s: _UnackedStream, now: float) -> None:
        s.hello_at = now
        self._send(encode("hello", actor=self.actor_id, session=s.session,
                          seq=s.first_unacked(), policy_version=self._version(),
                          meta={"schema": self.schema.to_meta()}))

    def _version(self) -> int:
        w = self._weights
        return w[0] if w is not None else -1

    def _drain(self, sock: zmq.Socket) -> None:
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = decode(frames, self.max_bytes)
            except WireError as e:
                self._counts["bad_replies"] += 1
                log.warning("actor %s: bad message from the learner dropped: %s",
                            self.actor_id, e)
                continue
            if sock is self._dealer:
                self._last_rx = time.monotonic()
                if not self._alive:
                    log.info("actor %s: learner is reachable", self.actor_id)
                self._alive = True
            self._handle(msg)

    def _stream(self, session: str) -> _UnackedStream | None:
        for s in self._streams:
            if s.session == session:
                return s
        return None

    def _handle(self, msg: Message) -> None:
        t = msg.type
        if t in ("hello_ok", "ack", "heartbeat"):
            self._learner_version = max(self._learner_version, msg.policy_version)
            self._heard_version = True
        if t == "weights":
            self._take_weights(msg)
        elif t == "hello_ok" or t == "ack":
            s = self._stream(msg.session)
            if s is None:
                return
            try:
                s.ack(msg.seq)
            except ValueError as e:  # an ack beyond what we sent: a confused learner
                log.error("actor %s: %s", self.actor_id, e)
                return
            if t == "hello_ok":
                s.ready = True
                s.rewind()
            self._counts["acks"] += t == "ack"
            if s.done:
                self._streams.remove(s)
                s.recovered.discard()
                log.info("actor %s: dead session %s fully delivered", self.actor_id,
                         s.session)
        elif t == "error":
            self._error(msg)

    def _error(self, msg: Message) -> None:
        code = str(msg.meta.get("code", "?"))
        self._counts[f"error_{code}"] += 1
        s = self._stream(msg.session)
        reason = msg.meta.get("reason")
        if code == "no_weights":
            return
        if code == "schema":
            log.error("actor %s: the learner refused our hello: %s", self.actor_id, reason)
            return
        log.log(logging.INFO if code == "gap" else logging.WARNING,
                "actor %s: learner error (%s): %s", self.actor_id, code, reason)
        if s is not None and msg.meta.get("ref_type") == "transitions":
            expected = msg.meta.get("expected")
            if code == "gap" and any(m[0] == expected for m in s.inflight):
                return  # stale: sent before our last rewind, which already resent `expected`
            now = time.monotonic()
            if s.hold_until <= now:
                s.hold_until = now + (_GAP_BACKOFF_S if code == "gap" else _ERROR_BACKOFF_S)

    def _take_weights(self, msg: Message) -> None:
        version = msg.policy_version
        current = self._version()
        if version <= current:
            self._counts["weights_stale"] += 1
            return
        if msg.meta.get("full"):
            flat = dict(msg.arrays)
        elif self._flat_weights is not None:
            flat = {**self._flat_weights, **msg.arrays}
        else:
            self._counts["weights_partial_without_base"] += 1
            self._learner_version = max(self._learner_version, version)
            return
        self._flat_weights = flat
        self._weights = (version, unflatten(flat))  # one reference swap: atomic for readers
        self._learner_version = max(self._learner_version, version)
        self._counts["weights_received"] += 1

    def _seal_if_old(self, now: float) -> None:
        batch = self._batch
        if batch.n and now - batch.started >= self.max_delay_s:
            with self._batch_lock:
                if self._batch.n and now - self._batch.started >= self.max_delay_s:
                    self._close_batch_locked()
        self._put_sealed(_ENCODE_BUDGET_S)
        self._refill_spares()

    def _send_stats(self) -> None:
        while self._stats_out and self.learner_alive:
            stats = self._stats_out.popleft()
            self._send(encode("stats", actor=self.actor_id, session=self.session,
                              meta={"stats": stats}))

    def _pump(self, now: float) -> None:
        for s in list(self._streams):
            if not s.ready:
                continue
            if s.hold_until:
                if now < s.hold_until:
                    continue
                s.hold_until = 0.0
                s.rewind()
                self._counts["rewinds"] += 1
            while (len(s.inflight) < self.max_inflight
                   and s.inflight_bytes < self.max_inflight_bytes):
                msg = s.next_to_send()
                if msg is None:
                    break
                if not self._send(list(msg.frames)):
                    s.rewind()  # the socket is full; start over from the oldest later
                    break
                if not s.inflight:
                    s.last_progress = now
                nbytes = sum(memoryview(f).nbytes for f in msg.frames)
                s.inflight.append((msg.seq, msg.count, nbytes))
                s.inflight_bytes += nbytes
                self._counts["sent_messages"] += 1

    def _timers(self, now: float) -> None:
        if now - self._last_rx > self.peer_timeout_s and now - self._connected_at > \
                self.peer_timeout_s:
            if self._alive:
                log.warning("actor %s: learner silent for %.1f s; reconnecting",
                            self.actor_id, now - self._last_rx)
            self._alive = False
            self._reconnect()
            return
        for s in self._streams:
            if not s.ready and now - s.hello_at > max(self.heartbeat_s, 1.0):
                self._hello(s, now)
            elif s.ready and s.inflight and now - s.last_progress > self.resend_after_s:
                log.info("actor %s: no ack for %.1f s; resending session %s", self.actor_id,
                         now - s.last_progress, s.session)
                s.rewind()
                self._counts["rewinds"] += 1
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_s
            self._send(encode("heartbeat", actor=self.actor_id, session=self.session,
                              policy_version=self._version()))
        have = self._version()
        if have >= 0 and self._learner_version <= have:
            self._want_weights_since = None
        elif self._want_weights_since is None:
            self._want_weights_since = now
        # Ask when the learner says it has newer weights, or when we have none and have
        # not heard yet whether it has any.
        newer = self._learner_version > have or (have < 0 and not self._heard_version)
        if (self._want_weights_since is not None and newer
                and now - self._want_weights_since >= self.request_after_s
                and now - self._last_request >= self.request_after_s):
            self._last_request = now
            self._counts["weights_requests"] += 1
            self._send(encode("weights_request", actor=self.actor_id, session=self.session,
                              policy_version=have))


def _resolve_compress(schema: Schema, compress: Any) -> dict[str, Compression]:
    """``compress`` as array name ("obs/<path>") -> Compression, raw entries dropped."""
    if compress is None:
        return {}
    images = [p for p, spec in schema.obs.items() if spec.dtype == "uint8"
              and len(spec.shape) >= 3 and spec.shape[-1] in (1, 3) and 0 not in spec.shape]
    if not isinstance(compress, Mapping):
        setting = compression(compress)
        chosen = {p: setting for p in images}
    else:
        chosen = {}
        for key, value in compress.items():
            if not isinstance(key, str):
                raise ValueError(f"compress: key {key!r} is not a str")
            path = key[4:] if key.startswith("obs/") and key[4:] in schema.obs else key
            if path not in schema.obs:
                named = [p for p in schema.obs if p.rsplit("/", 1)[-1] == key]
                if len(named) != 1:
                    which = "names no" if not named else f"is ambiguous ({named}); use the path"
                    raise ValueError(f"compress: {key!r} {which} observation of the schema "
                                     f"(obs paths: {sorted(schema.obs)})")
                path = named[0]
            if path in chosen:
                raise ValueError(f"compress: observation {path!r} is named twice")
            if path not in images:
                spec = schema.obs[path]
                raise ValueError(f"compress: observation {path!r} is {spec.dtype} "
                                 f"{list(spec.shape)}; only uint8 images [..., H, W, 3] or "
                                 "[..., H, W, 1] can be compressed")
            chosen[path] = compression(value)
    return {f"obs/{p}": c for p, c in chosen.items() if c.encoding != "raw"}


def _check_value(name: str, value: Any, spec: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != spec.shape:
        raise ValueError(f"send_transition: {name!r} has shape {list(arr.shape)}, the schema "
                         f"says {list(spec.shape)}")
    if not np.can_cast(arr.dtype, spec.dtype, "same_kind"):
        raise ValueError(f"send_transition: {name!r} is {arr.dtype.name}, which does not cast "
                         f"safely to the schema's {spec.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"send_transition: {name!r} holds NaN or inf")
    return arr

