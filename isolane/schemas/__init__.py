"""The wire contract between workers and the parent (see :mod:`isolane.schemas.events`)."""

from isolane.schemas.events import (
    EVENT_TYPES,
    MAX_FRAME_BYTES,
    PAYLOADS,
    SCHEMA_VERSION,
    TERMINAL_EVENT_TYPES,
    DecodedFrame,
    Event,
    WireEvent,
    decode_frame,
    encode_batch,
    event_from_row,
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
    "WireEvent",
    "decode_frame",
    "encode_batch",
    "event_from_row",
    "validate_payload",
]
