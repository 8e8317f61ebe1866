"""The wire contract between workers and the parent: the event envelope and its codec
(:mod:`isolane.schemas.envelope`) and every event type's payload (:mod:`isolane.schemas.payloads`)."""

from isolane.schemas.envelope import (
    MAX_FRAME_BYTES,
    SCHEMA_VERSION,
    DecodedFrame,
    Event,
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
    "WireEvent",
    "decode_frame",
    "encode_batch",
    "event_from_row",
    "validate_payload",
]
