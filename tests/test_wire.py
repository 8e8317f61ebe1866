"""The wire contract and the frame reader: valid frames round-trip, hostile bytes never crash."""

from __future__ import annotations

import os
import struct
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isolane.backends.channel import FrameReader
from isolane.errors import InvalidEvent
from isolane.schemas import (
    EVENT_TYPES,
    PAYLOADS,
    decode_frame,
    encode_batch,
    validate_payload,
)


def _frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def test_encode_then_decode_round_trips() -> None:
    """What the worker encodes the parent decodes to the same envelope, payload byte-exact."""
    batch = [(1, time.time(), "custom", None, {"name": "x", "k": [1, 2]}),
             (2, time.time(), "dag_node_update", "step_1", {"status": "running"})]
    frame = encode_batch("run-a", batch)
    decoded = decode_frame(frame, "run-a")
    assert decoded.problems == []
    assert [(e.seq, e.type, e.node_id) for e in decoded.events] == [
        (1, "custom", None), (2, "dag_node_update", "step_1")]
    assert orjson.loads(decoded.events[0].data_json()) == {"name": "x", "k": [1, 2]}
    assert [envelope["seq"] for envelope in orjson.loads(frame)] == [1, 2]


def test_unencodable_values_are_rendered_not_dropped() -> None:
    """A value orjson cannot encode is kept as its repr instead of losing the event."""
    frame = encode_batch("r", [(1, 0.0, "custom", None, {"name": "x", "obj": object()})])
    (event,) = decode_frame(frame, "r").events
    assert orjson.loads(event.data_json())["obj"].startswith("<object object")


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


def test_every_declared_type_accepts_its_minimal_payload() -> None:
    """Each event type's payload validates with its required fields, and rejects a non-object."""
    minimal = {
        "run_started": {"workflow": "w"}, "run_failed": {"error": "e"}, "phase_change": {"phase": "p"},
        "dag_created": {"nodes": []}, "dag_node_update": {"status": "running"},
        "agent_message": {"sender": "a"}, "handoff": {"to_agent": "b"}, "tool_call": {"tool": "t"},
        "code_execution": {"language": "python", "exit_code": 0},
        "llm_call": {"model": "m", "prompt_tokens": 1, "completion_tokens": 1, "cost": None,
                     "cost_source": "unknown_model"},
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
    """Arbitrary bytes as a frame yield problems, never an exception."""
    decoded = decode_frame(payload, "r")
    assert decoded.events or decoded.problems or payload.strip() == b"[]"


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


def test_invalid_utf8_under_an_undeclared_key_is_a_problem_not_a_crash() -> None:
    """Bytes that are not UTF-8 where no payload field is declared are rejected for that event;
    its valid neighbours are kept, and every kept event's data decodes as text."""
    good = b'{"v":1,"run_id":"r","seq":1,"ts":1,"type":"custom","node_id":null,"data":{"name":"ok"}}'
    bad = b'{"v":1,"run_id":"r","seq":2,"ts":1,"type":"custom","node_id":null,"data":{"name":"x","zz":"\xff\xfe"}}'
    decoded = decode_frame(b"[" + good + b"," + bad + b"]", "r")
    assert [e.seq for e in decoded.events] == [1] and len(decoded.problems) == 1
    for event in decoded.events:
        bytes(event.data).decode()


def _reader_with(data: bytes, *, max_frame: int = 1 << 20) -> tuple[FrameReader, int]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    os.write(write_fd, data)
    os.close(write_fd)
    return FrameReader(read_fd, max_frame=max_frame), read_fd


def test_reader_splits_frames_and_reports_eof() -> None:
    """Several frames in one read come out whole and in order, then EOF."""
    reader, _ = _reader_with(_frame(b"[1]") + _frame(b"[2, 3]"))
    result = reader.read_available()
    reader.close()
    assert result.frames == [b"[1]", b"[2, 3]"] and result.eof and not result.problems


def test_oversized_frame_is_skipped_and_stream_resyncs() -> None:
    """A frame over the limit is skipped byte-exactly; the next frame is still read."""
    reader, _ = _reader_with(_frame(b"x" * 5000) + _frame(b"[1]"), max_frame=1000)
    result = reader.read_available()
    reader.close()
    assert result.frames == [b"[1]"]
    assert len(result.problems) == 1 and "over the 1000-byte limit" in result.problems[0].reason


def test_truncated_frame_at_eof_is_reported() -> None:
    """A pipe that closes inside a frame reports the partial frame instead of hanging."""
    reader, _ = _reader_with(_frame(b"[1, 2, 3]")[:6])
    result = reader.read_available()
    reader.close()
    assert result.eof and not result.frames and "closed inside a frame" in result.problems[0].reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_reader_never_raises_on_random_bytes(data: bytes) -> None:
    """Random bytes on the pipe produce frames or problems; memory stays bounded by the limit."""
    reader, _ = _reader_with(data, max_frame=512)
    result = reader.read_available()
    reader.close()
    assert result.eof
    assert all(len(f) <= 512 for f in result.frames)


def test_emitter_sends_a_lone_event_at_once_and_batches_a_burst(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After a quiet spell an event is sent without waiting out the linger (here 30 s); the
    events that follow it at once travel together in the next frame."""
    from isolane.worker.emitter import Emitter

    read_fd, write_fd = os.pipe()
    emitter = Emitter("r", pipe_fd=write_fd, spool_path=tmp_path / "spool.jsonl",
                      flush_interval=30.0, heartbeat_interval=3600.0)
    reader = FrameReader(read_fd)
    try:
        emitter.emit("custom", {"name": "lone"})
        frames: list[bytes] = []
        deadline = time.monotonic() + 10.0  # far below the 30 s linger
        while not frames and time.monotonic() < deadline:
            frames = reader.read_available().frames
            time.sleep(0.01)
        assert [len(orjson.loads(f)) for f in frames] == [1]
        for i in range(50):
            emitter.emit("custom", {"name": "burst", "i": i})
        emitter.flush()
        frames = reader.read_available().frames
        assert sum(len(orjson.loads(f)) for f in frames) == 50 and len(frames) <= 2
    finally:
        emitter.close()
        os.close(read_fd)
