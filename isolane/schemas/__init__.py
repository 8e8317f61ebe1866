"""The wire contract, and what both sides of a run share: neither side's machinery, only its shapes.

::

    envelope.py  the event envelope, its one encoder (worker) and decoder (parent)
    payloads.py  every event type's payload          outcome.py   terminal event → verdict
    spool.py     the spool: the record format, its safe reading, doorbells, the writer lock
    spec.py      WorkerSpec (parent → worker), exit codes, resume keys
    limits.py    resource limits                     redaction.py secrets never leave the worker
    blobs.py     the content-addressed file store    paths.py     paths that stay inside a directory

It imports nothing of isolane but :mod:`isolane.errors` (an import-linter contract keeps it so),
and only light libraries (msgspec, orjson): both the worker and the parent load it.
"""

from isolane.schemas.envelope import (
    MAX_FRAME_BYTES,
    SCHEMA_VERSION,
    DecodedFrame,
    Event,
    EventRow,
    WireEvent,
    decode_frame,
    decode_lines,
    encode_event,
    event_from_row,
    events_from_rows,
)
from isolane.schemas.payloads import (
    EVENT_TYPES,
    PAYLOADS,
    RUNTIME_EVENT_TYPES,
    TERMINAL_EVENT_TYPES,
    validate_payload,
)

__all__ = [
    "EVENT_TYPES",
    "MAX_FRAME_BYTES",
    "PAYLOADS",
    "RUNTIME_EVENT_TYPES",
    "SCHEMA_VERSION",
    "TERMINAL_EVENT_TYPES",
    "DecodedFrame",
    "Event",
    "EventRow",
    "WireEvent",
    "decode_frame",
    "decode_lines",
    "encode_event",
    "event_from_row",
    "events_from_rows",
    "validate_payload",
]
