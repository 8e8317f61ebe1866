"""The wire contract, and what both sides of a run share: neither side's machinery, only its shapes.

::

    envelope.py  the event envelope, its one encoder (worker) and decoder (parent)
    payloads.py  every event type's payload          outcome.py  terminal event → verdict
    framing.py   frames on the event pipe            spool.py    the spool format and its reading
    spec.py      WorkerSpec (parent → worker), exit codes, resume keys
    limits.py    resource limits                     redaction.py secrets never leave the worker
    blobs.py     the content-addressed file store    paths.py    paths that stay inside a directory

It imports nothing of isolane but :mod:`isolane.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "MAX_FRAME_BYTES": "isolane.schemas.envelope",
    "SCHEMA_VERSION": "isolane.schemas.envelope",
    "DecodedFrame": "isolane.schemas.envelope",
    "Event": "isolane.schemas.envelope",
    "EventRow": "isolane.schemas.envelope",
    "WireEvent": "isolane.schemas.envelope",
    "decode_frame": "isolane.schemas.envelope",
    "encode_batch": "isolane.schemas.envelope",
    "event_from_row": "isolane.schemas.envelope",
    "EVENT_TYPES": "isolane.schemas.payloads",
    "PAYLOADS": "isolane.schemas.payloads",
    "TERMINAL_EVENT_TYPES": "isolane.schemas.payloads",
    "validate_payload": "isolane.schemas.payloads",
})

if TYPE_CHECKING:
    from isolane.schemas.envelope import (
        MAX_FRAME_BYTES,
        SCHEMA_VERSION,
        DecodedFrame,
        Event,
        EventRow,
        WireEvent,
        decode_frame,
        encode_batch,
        event_from_row,
    )
    from isolane.schemas.payloads import (
        EVENT_TYPES,
        PAYLOADS,
        TERMINAL_EVENT_TYPES,
        validate_payload,
    )

__all__ = [
    "EVENT_TYPES",
    "MAX_FRAME_BYTES",
    "PAYLOADS",
    "SCHEMA_VERSION",
    "TERMINAL_EVENT_TYPES",
    "DecodedFrame",
    "Event",
    "EventRow",
    "WireEvent",
    "decode_frame",
    "encode_batch",
    "event_from_row",
    "validate_payload",
]
