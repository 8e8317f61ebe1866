"""The event envelope: its one encoder (worker), its one decoder (parent), and its stored form.

::

    worker                                       parent
    ──────                                       ──────
    Emitter.emit(type, data)                     decode_frame(frame, run_id)
      (a tuple in a buffer)                        one C-level decode of the array, then one
        │ flusher: encode_batch() → frame           validation call per event type in the frame
        ├──▶ pipe:  4-byte length + frame  ───────▶ WireEvent (data kept as raw JSON) → Store
        └──▶ spool: frame + b"\\n"  (<run dir>/events.jsonl, one JSON array per line)

An event is an envelope ``{v, run_id, seq, ts, type, node_id, data}``:

* ``v`` – :data:`SCHEMA_VERSION`; ``run_id`` – the run (a branch is a run with a parent);
* ``seq`` – per-run, strictly increasing from 1, assigned by the worker: the idempotency key;
* ``ts`` – UTC time as float seconds since the Unix epoch;
* ``type`` – one of :data:`~isolane.schemas.payloads.EVENT_TYPES`; stored strings never change
  once released (add, don't rename);
* ``node_id`` – the DAG node the event belongs to, or ``None``;
* ``data`` – the payload, whose shape :data:`~isolane.schemas.payloads.PAYLOADS` declares per
  type. Extra keys are kept (forward compatibility); missing or mistyped declared keys make the
  event invalid.

Nothing else in isolane builds an envelope by hand: the worker calls :func:`encode_batch`, the
parent calls :func:`decode_frame`, and readers of stored rows call :func:`event_from_row`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import orjson

from isolane.errors import InvalidEvent
from isolane.schemas.payloads import PAYLOADS, Payload, validate_payload

__all__ = [
    "MAX_FRAME_BYTES",
    "SCHEMA_VERSION",
    "BufferedEvent",
    "DecodedFrame",
    "Event",
    "EventRow",
    "WireEvent",
    "decode_frame",
    "encode_batch",
    "event_from_row",
]

SCHEMA_VERSION: Final = 1

#: Frames larger than this are refused by the parent (an ``invalid_event`` diagnostic).
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024

#: One decoder per event type for a list of its payloads (the fast path of :func:`decode_frame`).
_PAYLOAD_LIST_DECODERS: Final = {name: msgspec.json.Decoder(list[cls]) for name, cls in PAYLOADS.items()}  # type: ignore[valid-type]


# -- encoding (worker side) ------------------------------------------------------------------------

#: One event as the store keeps it: ``(run_id, seq, ts, type, node_id, data as JSON text)``.
EventRow = tuple[str, int, float, str, str | None, str]

#: One buffered event as the worker's emitter holds it: ``(seq, ts, type, node_id, data)``.
BufferedEvent = tuple[int, float, str, str | None, dict[str, Any]]


def _default(obj: Any) -> Any:
    """Fallback for values orjson cannot encode: keep the event, render the value as text."""
    return repr(obj)


def encode_batch(run_id: str, batch: Sequence[BufferedEvent]) -> bytes:
    """Encode buffered events once, as one JSON array of envelopes.

    The same bytes are the frame sent on the event pipe and, followed by a newline, the line
    appended to the spool (``events.jsonl`` holds one JSON array of envelopes per line, one line
    per flush). Values orjson cannot encode are rendered with ``repr`` rather than dropping the
    event.
    """
    v = SCHEMA_VERSION
    return orjson.dumps(
        [{"v": v, "run_id": run_id, "seq": seq, "ts": ts, "type": type_, "node_id": node_id,
          "data": data} for seq, ts, type_, node_id, data in batch],
        default=_default,
        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY,
    )


# -- decoding (parent side) ------------------------------------------------------------------------


class WireEvent(msgspec.Struct, frozen=True):
    """An envelope as it crossed the pipe; ``data`` stays raw JSON until someone needs it."""

    v: int
    run_id: str
    seq: int
    ts: float
    type: str
    node_id: str | None
    data: msgspec.Raw

    def data_json(self) -> str:
        """The payload as JSON text, exactly as the worker wrote it."""
        return bytes(self.data).decode("utf-8")

    def row(self) -> EventRow:
        """The event as the store keeps it (``data`` as the worker's JSON text, unparsed)."""
        return (self.run_id, self.seq, self.ts, self.type, self.node_id,
                bytes(self.data).decode("utf-8"))


_MAX_SEQ: Final = 2**63
_FRAME_DECODER: Final = msgspec.json.Decoder(list[WireEvent])
_RAW_LIST_DECODER: Final = msgspec.json.Decoder(list[msgspec.Raw])
_ONE_DECODER: Final = msgspec.json.Decoder(WireEvent)


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """What one frame held: the valid events, in order, and one problem per rejected part.

    ``types`` is the set of event types among ``events`` (a monitor looks for terminal events
    there instead of testing every event).
    """

    events: list[WireEvent]
    problems: list[InvalidEvent]
    types: frozenset[str] = frozenset()


def _check(event: WireEvent, run_id: str) -> InvalidEvent | None:
    if event.run_id != run_id:
        return InvalidEvent(
            f"event names run {event.run_id!r} but arrived on the pipe of run {run_id!r}",
            excerpt=bytes(event.data),
        )
    if event.v != SCHEMA_VERSION:
        return InvalidEvent(f"unsupported schema version {event.v} (this parent reads {SCHEMA_VERSION})")
    if not 1 <= event.seq < _MAX_SEQ:
        return InvalidEvent(f"seq must be >= 1 and fit in 63 bits, got {event.seq}")
    if not math.isfinite(event.ts):
        return InvalidEvent(f"ts must be a finite number of seconds, got {event.ts}")
    try:
        validate_payload(event.type, event.data)
        # The store keeps ``data`` as text: bytes msgspec skipped (keys no payload declares)
        # must be UTF-8 too.
        bytes(event.data).decode("utf-8")
    except InvalidEvent as exc:
        return exc
    except UnicodeDecodeError as exc:
        return InvalidEvent(f"payload of {event.type!r} holds invalid UTF-8: {exc.reason} at byte "
                            f"{exc.start}", excerpt=bytes(event.data))
    return None


_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, RecursionError,
                         UnicodeDecodeError)


def decode_frame(payload: bytes, run_id: str) -> DecodedFrame:
    """Decode one frame from the pipe of ``run_id``; never raises for bad input.

    The fast path decodes the whole array at once, checks the envelopes with a few whole-frame
    passes and validates the payloads of each event type in one call; every event's ``data`` is
    then valid UTF-8 JSON. If anything is wrong, the frame is taken apart event by event so that
    valid events survive and each bad one yields its own problem.
    """
    if len(payload) > MAX_FRAME_BYTES:
        return DecodedFrame([], [InvalidEvent(
            f"frame of {len(payload)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit",
            excerpt=payload[:200])])
    try:
        if not payload.isascii():  # msgspec skips what no payload declares without checking it
            payload.decode("utf-8")
        events = _FRAME_DECODER.decode(payload)
    except _DECODE_ERRORS:
        return _decode_slowly(payload, run_id)
    if not events:
        return DecodedFrame(events, [])
    # Whole-frame checks (each one pass in C) instead of a Python loop over the envelopes.
    seqs = [event.seq for event in events]
    if ({event.run_id for event in events} != {run_id}
            or {event.v for event in events} != {SCHEMA_VERSION}
            or min(seqs) < 1 or max(seqs) >= _MAX_SEQ
            # a NaN or an infinity makes the sum non-finite (so may a huge finite sum: then the
            # slow path checks each event)
            or not math.isfinite(sum([event.ts for event in events]))):
        return _decode_slowly(payload, run_id)
    types = frozenset([event.type for event in events])
    for type_ in types:
        decoder = _PAYLOAD_LIST_DECODERS.get(type_)
        if decoder is None:
            return _decode_slowly(payload, run_id)
        datas = ([event.data for event in events] if len(types) == 1
                 else [event.data for event in events if event.type == type_])
        try:
            decoder.decode(b"[" + b",".join(datas) + b"]")
        except _DECODE_ERRORS:
            return _decode_slowly(payload, run_id)
    return DecodedFrame(events, [], types)


def _decode_slowly(payload: bytes, run_id: str) -> DecodedFrame:
    try:
        parts = _RAW_LIST_DECODER.decode(payload)
    except _DECODE_ERRORS as exc:
        return DecodedFrame([], [InvalidEvent(f"frame is not a JSON array: {exc}", excerpt=payload)])
    events: list[WireEvent] = []
    problems: list[InvalidEvent] = []
    for part in parts:
        try:
            event = _ONE_DECODER.decode(part)
        except _DECODE_ERRORS as exc:
            problems.append(InvalidEvent(f"malformed envelope: {exc}", excerpt=bytes(part)))
            continue
        problem = _check(event, run_id)
        if problem is None:
            events.append(event)
        else:
            problems.append(problem)
    return DecodedFrame(events, problems, frozenset([event.type for event in events]))


# -- reading stored events -------------------------------------------------------------------------


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A stored event as readers see it (``Executor``, the CLI, the WebSocket).

    ``data`` is the decoded payload dict; :meth:`payload` gives the typed view.
    """

    run_id: str
    seq: int
    ts: float
    type: str
    node_id: str | None = None
    data: dict[str, Any] = {}
    v: int = SCHEMA_VERSION

    def payload(self) -> Payload:
        """The payload as its declared type (raises :class:`InvalidEvent` if it does not fit)."""
        return validate_payload(self.type, orjson.dumps(self.data))

    def to_json_data(self) -> str:
        """The payload as JSON text (as stored)."""
        return orjson.dumps(self.data).decode()

    def to_json(self) -> bytes:
        """The envelope as JSON bytes (the shape a worker sent)."""
        return orjson.dumps(
            {"v": self.v, "run_id": self.run_id, "seq": self.seq, "ts": self.ts,
             "type": self.type, "node_id": self.node_id, "data": self.data})


def event_from_row(
    run_id: str, seq: int, ts: float, type_: str, node_id: str | None, data: str | bytes | dict[str, Any]
) -> Event:
    """Build an :class:`Event` from a stored row (``data`` as JSON text or already decoded)."""
    payload = data if isinstance(data, dict) else orjson.loads(data)
    return Event(run_id=run_id, seq=seq, ts=ts, type=type_, node_id=node_id, data=payload)
