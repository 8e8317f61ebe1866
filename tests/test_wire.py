"""The wire contract: valid records round-trip, hostile bytes never crash the decoder."""

from __future__ import annotations

import time

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isolane.errors import InvalidEvent
from isolane.schemas import (
    EVENT_TYPES,
    PAYLOADS,
    decode_frame,
    decode_lines,
    encode_event,
    event_from_row,
    validate_payload,
)
from isolane.schemas.envelope import WireEvent, event_rows


def test_encode_then_decode_round_trips() -> None:
    """What the worker encodes (one record per line) the parent decodes to the same envelope,
    payload byte-exact."""
    records = [encode_event("run-a", 1, time.time(), "custom", None, {"name": "x", "k": [1, 2]}),
               encode_event("run-a", 2, time.time(), "dag_node_update", "step_1",
                            {"status": "running"})]
    assert all(b"\n" not in r and b"\0" not in r for r in records)
    decoded = decode_lines(b"".join(r + b"\n" for r in records), "run-a")
    assert decoded.problems == []
    assert [(e.seq, e.type, e.node_id) for e in decoded.events] == [
        (1, "custom", None), (2, "dag_node_update", "step_1")]
    assert orjson.loads(decoded.events[0].data_json()) == {"name": "x", "k": [1, 2]}
    assert decoded.types == {"custom", "dag_node_update"}


@given(st.lists(st.dictionaries(st.text(max_size=8), st.text(max_size=40) | st.integers(-2**63, 2**63 - 1)),
                max_size=30))
def test_rows_built_in_one_pass_are_the_rows_of_each_event(datas: list[dict[str, object]]) -> None:
    """event_rows (the parent's hot path) gives exactly WireEvent.row of every event, whatever
    text the payloads hold, and a raw NUL in a payload too (the decoder refuses one; the rows
    must not depend on that)."""
    records = b"".join(encode_event("run-a", i, 1.5, "custom", "n" if i % 2 else None,
                                    {**data, "name": "x"}) + b"\n" for i, data in enumerate(datas, 1))
    events = decode_lines(records, "run-a").events
    assert len(events) == len(datas)
    assert event_rows(events) == [event.row() for event in events]
    forged = WireEvent(1, "run-a", 1, 1.0, "custom", None, msgspec.Raw(b'{"name":"a\x00b"}'))
    assert event_rows([forged, *events]) == [forged.row(), *(event.row() for event in events)]


def test_records_hold_no_newline_and_no_nul_whatever_the_text() -> None:
    """Text with newlines and NUL characters is escaped inside the record: a newline can only
    end a record, and a NUL only mark space not yet written (the spool format relies on it)."""
    record = encode_event("r", 1, 0.0, "output", None, {"stream": "stdout", "text": "a\nb\x00c\r"})
    assert b"\n" not in record and b"\0" not in record
    (event,) = decode_lines(record + b"\n", "r").events
    assert orjson.loads(event.data_json())["text"] == "a\nb\x00c\r"


def test_unencodable_values_are_rendered_not_dropped() -> None:
    """A value orjson cannot encode is kept as its repr instead of losing the event."""
    record = encode_event("r", 1, 0.0, "custom", None, {"name": "x", "obj": object()})
    (event,) = decode_lines(record + b"\n", "r").events
    assert orjson.loads(event.data_json())["obj"].startswith("<object object")


def test_values_orjson_refuses_even_with_repr_are_rendered_key_by_key() -> None:
    """An int past 64 bits, a cycle and nesting deeper than orjson goes make it raise whatever
    ``default`` says; the event is kept with those values (only them) as their repr."""
    cycle: list[object] = []
    cycle.append(cycle)
    deep: list[object] = []
    inner = deep
    for _ in range(300):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    for value, rendered in [(2**70, str(2**70)), ([2**70], f"[{2**70}]"), (cycle, "[[...]]"),
                            (deep, "[" * 301 + "]" * 301)]:
        record = encode_event("r", 1, 0.0, "custom", None, {"name": "x", "v": value, "ok": [1]})
        (event,) = decode_lines(record + b"\n", "r").events
        assert orjson.loads(event.data_json()) == {"name": "x", "v": rendered, "ok": [1]}


def test_lines_of_the_older_spool_format_are_read() -> None:
    """A spool written before one record per line (a JSON array of envelopes per line) decodes."""
    older = orjson.dumps([{"v": 1, "run_id": "r", "seq": s, "ts": 1.0, "type": "custom",
                           "node_id": None, "data": {"name": "old"}} for s in (1, 2)])
    newer = encode_event("r", 3, 1.0, "custom", None, {"name": "new"})
    decoded = decode_lines(older + b"\n" + newer + b"\n", "r")
    assert [e.seq for e in decoded.events] == [1, 2, 3] and not decoded.problems


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: {**e, "type": "no_such_type"}, "unknown event type"),
        (lambda e: {**e, "data": {"status": "exploded"}, "type": "dag_node_update"}, "payload of"),
        (lambda e: {**e, "run_id": "someone-else"}, "arrived on the pipe of run"),
        (lambda e: {**e, "seq": 0}, "seq must be >= 1"),
        (lambda e: {**e, "v": 99}, "unsupported schema version"),
        (lambda e: {k: v for k, v in e.items() if k != "ts"}, "malformed envelope"),
    ],
    ids=["unknown-type", "bad-payload", "other-run", "seq-zero", "version", "missing-field"],
)
def test_one_bad_event_is_rejected_and_its_neighbours_kept(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    """A bad event in a frame becomes one problem; the valid events around it survive."""
    good = {"v": 1, "run_id": "r", "seq": 1, "ts": 1.0, "type": "custom", "node_id": None,
            "data": {"name": "ok"}}
    events = [good, mutate({**good, "seq": 2}), {**good, "seq": 3}]
    decoded = decode_frame(orjson.dumps(events), "r")
    assert len(decoded.problems) == 1 and reason in decoded.problems[0].reason
    assert [e.seq for e in decoded.events] == [1, 3]
    lines = decode_lines(b"".join(orjson.dumps(e) + b"\n" for e in events), "r")
    assert len(lines.problems) == 1 and reason in lines.problems[0].reason
    assert [e.seq for e in lines.events] == [1, 3]


def test_every_declared_type_accepts_its_minimal_payload() -> None:
    """Each event type's payload validates with its required fields, and rejects a non-object."""
    minimal = {
        "run_started": {"workflow": "w"}, "run_failed": {"error": "e"}, "phase_change": {"phase": "p"},
        "dag_created": {"nodes": []}, "dag_node_update": {"status": "running"},
        "agent_message": {"sender": "a"}, "handoff": {"to_agent": "b"}, "tool_call": {"tool": "t"},
        "code_execution": {"language": "python", "exit_code": 0},
        "llm_call": {"model": "m", "prompt_tokens": 1, "completion_tokens": 1, "cost": None,
                     "cost_source": "unknown_model"},
        "llm_retry": {"endpoint": "/chat/completions"},
        "cost_update": {"total_cost": 0.0}, "file_created": {"path": "a", "size": 1, "sha256": "x"},
        "file_modified": {"path": "a", "size": 1, "sha256": "x"},
        "file_deleted": {"path": "a", "version": 2},
        "output": {"stream": "stdout", "text": ""}, "human_input_request": {"request_id": "1", "prompt": "?"}, "human_input_response": {"request_id": "1"},
        "error": {"message": "m"}, "custom": {"name": "n"},
    }
    for type_ in EVENT_TYPES:
        validate_payload(type_, orjson.dumps(minimal.get(type_, {})))
        with pytest.raises(InvalidEvent):
            validate_payload(type_, b"[1, 2]")
    assert set(PAYLOADS) == EVENT_TYPES


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_decoder_never_raises_on_random_bytes(payload: bytes) -> None:
    """Arbitrary bytes as a frame or as spool lines yield problems, never an exception."""
    decoded = decode_frame(payload, "r")
    assert decoded.events or decoded.problems or payload.strip() == b"[]"
    lines = decode_lines(payload + b"\n", "r")
    assert lines.events or lines.problems or not payload.replace(b"[]", b"").strip()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["v", "run_id", "seq", "ts", "type", "node_id", "data"]),
                                json_values), max_size=5))
def test_decoder_never_raises_on_random_json(events: list[dict[str, object]]) -> None:
    """Well-formed JSON of the wrong shape is rejected event by event, never by an exception."""
    decoded = decode_frame(orjson.dumps(events), "r")
    assert len(decoded.events) + len(decoded.problems) >= (1 if events else 0)


def test_deep_nesting_is_a_problem_not_a_crash() -> None:
    """A deeply nested payload cannot blow the parent's stack."""
    deep = b"[" * 100_000 + b"]" * 100_000
    assert decode_frame(deep, "r").problems
    nested_payload = b'[{"v":1,"run_id":"r","seq":1,"ts":1,"type":"custom","node_id":null,"data":{"name":"x","d":' \
        + b"[" * 50_000 + b"]" * 50_000 + b"}}]"
    assert decode_frame(nested_payload, "r").problems


def test_huge_integers_are_a_problem_not_a_crash() -> None:
    """An integer beyond 64 bits in the envelope is rejected as an invalid event."""
    frame = b'[{"v":1,"run_id":"r","seq":99999999999999999999999,"ts":1,"type":"custom","node_id":null,"data":{"name":"x"}}]'
    assert decode_frame(frame, "r").problems


def test_a_number_beyond_a_double_is_kept_and_read_back() -> None:
    """``1e1000000`` under an undeclared key is valid JSON: stored as written, and every reader
    of the row gets the event (the number as infinity), never an exception."""
    frame = b'[{"v":1,"run_id":"r","seq":1,"ts":1,"type":"custom","node_id":null,"data":{"name":"x","big":1e1000000}}]'
    (event,) = decode_frame(frame, "r").events
    row = event.row()
    assert row[5] == '{"name":"x","big":1e1000000}'
    read = event_from_row(*row)
    assert read.data["name"] == "x" and read.data["big"] == float("inf")


def test_invalid_utf8_under_an_undeclared_key_is_a_problem_not_a_crash() -> None:
    """Bytes that are not UTF-8 where no payload field is declared are rejected for that event;
    its valid neighbours are kept, and every kept event's data decodes as text."""
    good = b'{"v":1,"run_id":"r","seq":1,"ts":1,"type":"custom","node_id":null,"data":{"name":"ok"}}'
    bad = b'{"v":1,"run_id":"r","seq":2,"ts":1,"type":"custom","node_id":null,"data":{"name":"x","zz":"\xff\xfe"}}'
    decoded = decode_frame(b"[" + good + b"," + bad + b"]", "r")
    assert [e.seq for e in decoded.events] == [1] and len(decoded.problems) == 1
    for event in decoded.events:
        bytes(event.data).decode()


def test_past_max_problems_bad_lines_are_counted_and_good_ones_still_decoded() -> None:
    """A flood of garbage costs a split past the caller's cap: the problems are counted, not
    kept, and a valid record among them still decodes."""
    good = encode_event("r", 1, 1.0, "custom", None, {"name": "kept"})
    data = b"garbage!\n" * 50 + b'{"not":"an envelope"}\n' + good + b"\n" + b"\n" + b"x\n"
    decoded = decode_lines(data, "r", max_problems=3)
    assert [e.seq for e in decoded.events] == [1]
    assert len(decoded.problems) == 3 and decoded.dropped == 49
    uncapped = decode_lines(data, "r")
    assert len(uncapped.problems) == 52 and uncapped.dropped == 0
