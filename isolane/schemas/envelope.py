"""The event envelope: its one encoder (worker), its one decoder (parent), and its stored form.

::

    worker                                       parent
    ──────                                       ──────
    Emitter.emit(type, data)                     decode_lines(records, run_id)
      journal: one record (as encode_event)        the lines joined into one JSON array: one
        └──▶ spool: record + b"\\n"                C-level decode, one validation call per event
             (<run dir>/events.jsonl, one           type; a bad line is decoded alone (its
             record per line; see                    neighbours survive)
             isolane.schemas.spool)              ──▶ WireEvent (data kept as raw JSON) → Store

An event is an envelope ``{v, run_id, seq, ts, type, node_id, data}``:

* ``v`` – :data:`SCHEMA_VERSION`; ``run_id`` – the run (a branch is a run with a parent);
* ``seq`` – per-run, strictly increasing from 1, assigned by the worker: the idempotency key;
* ``ts`` – UTC time as float seconds since the Unix epoch;
* ``type`` – one of :data:`~isolane.schemas.payloads.EVENT_TYPES` (add, never rename);
* ``node_id`` – the DAG node the event belongs to, or ``None``;
* ``data`` – the payload, whose shape :data:`~isolane.schemas.payloads.PAYLOADS` declares per
  type. Extra keys are kept; missing or mistyped declared keys make the event invalid.

Nothing else in isolane builds an envelope by hand: the worker's journal composes each record
from :func:`record_prefix`, the per-event fields and :func:`encode_data` (the same JSON that
:func:`encode_event` writes, in the same order), the parent calls :func:`decode_lines`
(:func:`decode_frame` for a JSON array of envelopes), and readers of stored rows call
:func:`event_from_row` (:func:`events_from_rows` for many).
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
    "DecodedFrame",
    "Event",
    "EventRow",
    "WireEvent",
    "decode_frame",
    "decode_lines",
    "encode_data",
    "encode_event",
    "event_from_row",
    "event_rows",
    "events_from_rows",
    "record_prefix",
]

SCHEMA_VERSION: Final = 1

#: Frames larger than this are refused by the parent (an ``invalid_event`` diagnostic).
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024

#: One decoder per event type for a list of its payloads (the fast path of :func:`decode_frame`).
_PAYLOAD_LIST_DECODERS: Final = {name: msgspec.json.Decoder(list[cls]) for name, cls in PAYLOADS.items()}  # type: ignore[valid-type]


# -- encoding (worker side) ------------------------------------------------------------------------

#: One event as the store keeps it: ``(run_id, seq, ts, type, node_id, data as JSON text)``.
EventRow = tuple[str, int, float, str, str | None, str]

def _default(obj: Any) -> Any:
    """Fallback for values orjson cannot encode: keep the event, render the value as text."""
    try:
        return repr(obj)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not cost the event
        return f"<{type(obj).__qualname__}: repr() raised {type(exc).__name__}: {exc}>"


_ENCODE_OPTIONS: Final = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_dumps: Final = orjson.dumps


def encode_event(run_id: str, seq: int, ts: float, type_: str, node_id: str | None,
                 data: dict[str, Any]) -> bytes:
    """Encode one envelope as JSON: a spool record, without its ending newline.

    The bytes hold no raw newline and no NUL (JSON escapes both inside strings), which is what
    lets a newline end a record in the spool (see :mod:`isolane.schemas.spool`). Values orjson
    cannot encode are rendered with ``repr`` rather than dropping the event.
    """
    fields = {"v": SCHEMA_VERSION, "run_id": run_id, "seq": seq, "ts": ts, "type": type_,
              "node_id": node_id, "data": data}
    try:
        return _dumps(fields)  # the common case: plain JSON types (the fastest call)
    except TypeError:  # non-string keys, numpy values, objects JSON cannot hold
        fields["data"] = orjson.Fragment(encode_data(data))
        return _dumps(fields)


def record_prefix(run_id: str) -> bytes:
    """What every record of a run starts with, up to its ``seq``: ``{"v":1,"run_id":…,"seq":``
    (the worker's journal composes records from it in :func:`encode_event`'s order)."""
    return b'{"v":%d,"run_id":%s,"seq":' % (SCHEMA_VERSION, _dumps(run_id))


def encode_data(data: Any) -> bytes:
    """An event's ``data`` as JSON, whatever it holds: what orjson cannot encode is rendered with
    ``repr`` (key by key if it refuses even that: a big int, a cycle). Runs user code."""
    try:
        return _dumps(data, default=_default, option=_ENCODE_OPTIONS)
    except TypeError:  # what orjson refuses even with a default
        fallback = ({str(key): _encodable(value) for key, value in data.items()}
                    if isinstance(data, dict) else _default(data))
        return _dumps(fallback, default=_default, option=_ENCODE_OPTIONS)


def _encodable(value: Any) -> Any:
    """``value`` if orjson encodes it (with :func:`_default`), else its ``repr``."""
    try:
        _dumps(value, default=_default, option=_ENCODE_OPTIONS)
    except TypeError:
        return _default(value)
    return value


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


def event_rows(events: Sequence[WireEvent]) -> list[EventRow]:
    """:meth:`WireEvent.row` of each event, with every ``data`` text decoded in one pass (the
    parent's hot path: a span holds thousands of events)."""
    texts = b"\x00".join([event.data for event in events]).decode("utf-8").split("\x00")
    if len(texts) != len(events):  # a NUL byte in some data (nothing a JSON encoder writes)
        return [event.row() for event in events]
    return [(e.run_id, e.seq, e.ts, e.type, e.node_id, text) for e, text in zip(events, texts)]


_MAX_SEQ: Final = 2**63
_FRAME_DECODER: Final = msgspec.json.Decoder(list[WireEvent])
_RAW_LIST_DECODER: Final = msgspec.json.Decoder(list[msgspec.Raw])
_ONE_DECODER: Final = msgspec.json.Decoder(WireEvent)


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """What one frame held: the valid events, in order, and one problem per rejected part;
    ``types``, the set of event types among ``events`` (a monitor looks for terminal ones)."""

    events: list[WireEvent]
    problems: list[InvalidEvent]
    types: frozenset[str] = frozenset()
    #: Problems past the caller's ``max_problems``, counted and not kept.
    dropped: int = 0


def _check(event: WireEvent, run_id: str) -> InvalidEvent | None:
    if event.run_id != run_id:
        return InvalidEvent(f"event names run {event.run_id!r} but arrived on the pipe of run "
                            f"{run_id!r}", excerpt=bytes(event.data))
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
    decoded = _decode_fast(payload, run_id)
    return decoded if decoded is not None else _decode_slowly(payload, run_id)


def _decode_fast(payload: bytes, run_id: str, *, lines: bool = False) -> DecodedFrame | None:
    """The whole frame (``lines``: the JSON Lines) at once, or None when any part of it needs a
    closer look."""
    try:
        if not payload.isascii():  # msgspec skips what no payload declares without checking it
            payload.decode("utf-8")
        # JSON Lines in one C-level pass (``decode_lines``), or one JSON array.
        events = _ONE_DECODER.decode_lines(payload) if lines else _FRAME_DECODER.decode(payload)
    except _DECODE_ERRORS:
        return None
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
        return None
    types = frozenset([event.type for event in events])
    for type_ in types:
        decoder = _PAYLOAD_LIST_DECODERS.get(type_)
        if decoder is None:
            return None
        datas = ([event.data for event in events] if len(types) == 1
                 else [event.data for event in events if event.type == type_])
        try:
            decoder.decode(b"[" + b",".join(datas) + b"]")
        except _DECODE_ERRORS:
            return None
    return DecodedFrame(events, [], types)


def decode_lines(data: bytes, run_id: str, *, max_problems: int | None = None) -> DecodedFrame:
    """Decode spool records of ``run_id`` (whole lines, each ending in ``b"\\n"``); never raises.

    The lines are joined into one JSON array and decoded as a frame (one C-level pass); if
    anything is wrong the lines are decoded one by one, so that every valid record survives and
    each bad line yields its own problem. A line holding an array of envelopes (the spool format
    before one record per line) is read as such. Past ``max_problems`` problems, bad lines are
    only counted (:attr:`DecodedFrame.dropped`), and a line that cannot be an envelope is not
    even decoded: a hostile writer's flood of garbage costs a split, not a decode per line.
    """
    if not data:
        return DecodedFrame([], [])
    body = data[:-1] if data.endswith(b"\n") else data
    if len(body) + 2 <= MAX_FRAME_BYTES and body[:1] == b"{":
        decoded = _decode_fast(data, run_id, lines=True)
        if decoded is not None:
            return decoded
    events: list[WireEvent] = []
    problems: list[InvalidEvent] = []
    cap = len(data) if max_problems is None else max_problems
    dropped = 0
    for line in body.split(b"\n"):
        if len(problems) >= cap:  # past the cap: count, and decode only what may be an envelope
            over: list[InvalidEvent] = []
            if line[:1] == b"{":
                _take_one(line, run_id, events, over)
            dropped += len(over) if line[:1] == b"{" else bool(line.strip())
            continue
        if not line.strip():
            continue
        if line[:1] == b"[":
            one = decode_frame(line, run_id)
            events.extend(one.events)
            problems.extend(one.problems)
            continue
        _take_one(line, run_id, events, problems)
    return DecodedFrame(events, problems, frozenset([event.type for event in events]), dropped)


def _decode_slowly(payload: bytes, run_id: str) -> DecodedFrame:
    try:
        parts = _RAW_LIST_DECODER.decode(payload)
    except _DECODE_ERRORS as exc:
        return DecodedFrame([], [InvalidEvent(f"frame is not a JSON array: {exc}", excerpt=payload)])
    events: list[WireEvent] = []
    problems: list[InvalidEvent] = []
    for part in parts:
        _take_one(part, run_id, events, problems)
    return DecodedFrame(events, problems, frozenset([event.type for event in events]))


def _take_one(record: bytes | msgspec.Raw, run_id: str, events: list[WireEvent],
              problems: list[InvalidEvent]) -> None:
    """Decode one envelope into ``events``, or what is wrong with it into ``problems``."""
    try:
        event = _ONE_DECODER.decode(record)
    except _DECODE_ERRORS as exc:
        problems.append(InvalidEvent(f"malformed envelope: {exc}", excerpt=bytes(record)))
        return
    problem = _check(event, run_id)
    if problem is None:
        events.append(event)
    else:
        problems.append(problem)


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
    if isinstance(data, dict):
        payload = data
    else:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = _lenient(data)
    return Event(run_id=run_id, seq=seq, ts=ts, type=type_, node_id=node_id, data=payload)


def events_from_rows(rows: Sequence[EventRow]) -> list[Event]:
    """:func:`event_from_row` for each row, the ``data`` texts parsed in one call (a third of
    the cost of parsing them one by one: a live reader parses every committed event).

    Each stored text is one JSON value (the worker's payload as the frame decoder checked it),
    so the texts joined by commas are a JSON array of the payloads in order. A text that is not
    (one orjson will not read, or not text) makes the rows decoded one by one, as
    :func:`event_from_row` does.
    """
    try:
        payloads = orjson.loads("[" + ",".join([row[5] for row in rows]) + "]")
    except (orjson.JSONDecodeError, TypeError):
        payloads = None
    if payloads is None or len(payloads) != len(rows):
        return [event_from_row(*row) for row in rows]
    return [Event(run_id=run_id, seq=seq, ts=ts, type=type_, node_id=node_id, data=payload)
            for (run_id, seq, ts, type_, node_id, _), payload in zip(rows, payloads, strict=True)]


def _lenient(data: str | bytes) -> Any:
    """Valid JSON that orjson will not read: a number beyond a double (``1e1000000``, read as
    infinity), written by a worker into an undeclared key. A reader of the run must not fail on
    it (the text is stored as the worker wrote it)."""
    import json

    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return {"undecodable": text[:1000], "reason": str(exc)}
