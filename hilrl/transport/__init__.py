"""Actor <-> learner transport (DESIGN.md "Transport", issue 4).

``hilrl.transport.wire`` is the pickle-free message format: a msgpack header frame followed by
raw array buffers, validated on receipt. It knows nothing about sockets; the ZeroMQ layer
builds on it.
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
    "unflatten",
]
