"""Actor <-> learner transport (DESIGN.md "Transport", issue 4).

- ``wire``: the pickle-free message format (a msgpack header frame, then raw array
  buffers), validated on receipt; no sockets.
- ``outbox``: the actor's unacked transitions, spilling to disk, recoverable after a crash.
- ``learner_log``: the learner's durable inbox and ack table (exactly-once by actor, session
  and sequence number).
- ``learner_server`` / ``actor_client``: the ZeroMQ ends (ROUTER/DEALER for transitions,
  acks, hello and heartbeats; PUB/SUB for versioned weights).
- ``security``: CURVE keys and the authenticator, required beyond loopback.
"""

from hilrl.transport.wire import (
    PROTOCOL_VERSION,
    ArraySpec,
    Message,
    Schema,
    WireError,
    decode,
    encode,
    flatten,
    transitions_view,
    unflatten,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ArraySpec",
    "Message",
    "Schema",
    "WireError",
    "decode",
    "encode",
    "flatten",
    "transitions_view",
    "unflatten",
]
