"""The journal, compiled and in Python: the same records, the same screen, the same refusals.

Each test runs on both implementations (``isolane.worker._journal`` and the Python classes of
``isolane.worker.journal``); the compiled one must be built here when ``ISOLANE_REQUIRE_COMPILED``
is set (CI), else its tests skip with the reason. The emitter's own tests run on whichever the
package uses; the last test runs them again on the Python journal.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolane.schemas.envelope import WireEvent, encode_event, record_prefix
from isolane.schemas.redaction import Redactor
from isolane.worker import journal as journal_module
from isolane.worker.emitter import MAX_EVENT_BYTES, Emitter
from isolane.worker.journal import (
    CLOSED,
    NO_ROOM,
    REDACT,
    TOO_LARGE,
    UNSUPPORTED,
    CursorLike,
    JournalLike,
    Needles,
    PyCursor,
    PyJournal,
)
from isolane.worker.spool_writer import SpoolWriter

ROOT = Path(__file__).resolve().parents[1]


def _compiled() -> tuple[type[Any], type[Any]]:
    try:
        from isolane.worker._journal import Cursor, Journal  # type: ignore[import-not-found]
    except ImportError as exc:
        if os.environ.get("ISOLANE_REQUIRE_COMPILED") == "1":
            pytest.fail(f"the compiled journal is required here but did not import: {exc}")
        pytest.skip(f"the compiled journal is not built ({exc}); pip install -e . builds it "
                    "where a C compiler and Python's headers are installed")
    return Cursor, Journal


Pair = tuple[Callable[[int], CursorLike], Callable[..., JournalLike]]


@pytest.fixture(scope="module", params=["compiled", "python"])
def impl(request: pytest.FixtureRequest) -> Pair:
    if request.param == "compiled":
        return _compiled()
    return PyCursor, PyJournal


RUN_ID = "0123456789abcdef0123456789abcdef"


def _journal(impl: Pair, *, size: int = 1 << 20, needles: Needles | None = ((), ()),
             wake: Callable[[], object] = lambda: None, max_record: int = 1 << 20,
             ) -> tuple[CursorLike, JournalLike, mmap.mmap]:
    cursor_type, journal_type = impl
    cursor = cursor_type(0)
    window = mmap.mmap(-1, size)
    cursor.map(window, 0)
    return cursor, journal_type(cursor, record_prefix(RUN_ID), 0, needles, wake, max_record), window


def _records(window: mmap.mmap, tail: int) -> list[bytes]:
    return bytes(window[:tail]).splitlines()


_names = st.one_of(st.text(max_size=30), st.sampled_from(["custom", "node \"1\"\n", "ünï\tcode",
                                                         "\x00\x1f\x7f", "a\\b"]))
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(type_=_names, node_id=st.none() | _names, data=st.dictionaries(st.text(max_size=8), _json,
                                                                        max_size=5))
def test_a_record_decodes_to_what_encode_event_writes(impl: Pair, type_: str, node_id: str | None,
                                                      data: dict[str, Any]) -> None:
    """Whatever the strings and data, the journal's record is the envelope the parent decodes,
    the same as encode_event's (the time aside); a lone surrogate is refused, for the emitter."""
    cursor, journal, window = _journal(impl, needles=None)
    body = orjson.dumps(data)
    seq = journal.commit(type_, node_id, body)
    try:
        expected = encode_event(RUN_ID, 1, 0.0, type_, node_id, data)
    except TypeError:  # a lone surrogate in a name: orjson refuses it, the journal too
        assert seq == UNSUPPORTED and cursor.tail == 0
        return
    assert seq == 1 and journal.seq == 1
    (record,) = _records(window, cursor.tail)
    got, want = (msgspec.json.decode(r, type=WireEvent) for r in (record, expected))
    assert (got.v, got.run_id, got.seq, got.type, got.node_id, bytes(got.data)) == \
           (want.v, want.run_id, want.seq, want.type, want.node_id, bytes(want.data))
    assert orjson.loads(record) == {**orjson.loads(expected), "ts": got.ts} and got.ts > 1.7e9


def test_records_follow_one_another_in_seq_order_from_many_threads(impl: Pair) -> None:
    cursor, journal, window = _journal(impl, size=8 << 20)
    per_thread, threads = 2_000, 8

    def emit(k: int) -> None:
        for i in range(per_thread):
            assert journal.commit("custom", f"t{k}", orjson.dumps({"i": i})) > 0

    workers = [threading.Thread(target=emit, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seqs = [orjson.loads(r)["seq"] for r in _records(window, cursor.tail)]
    assert seqs == list(range(1, per_thread * threads + 1))


@pytest.mark.parametrize("where", ["data", "type", "node_id"])
@pytest.mark.parametrize("secret", ["sk-abcdefghijklmnop0123", "Authorization: BeArEr abcdefgh123",
                                    "tab\tbearer\tabcdefgh123", "my configured secret",
                                    'quo"ted\\secret'])
def test_a_piece_that_may_hold_a_secret_is_sent_back_unwritten(impl: Pair, where: str,
                                                                secret: str) -> None:
    configured = Redactor(["my configured secret", 'quo"ted\\secret']).needles
    cursor, journal, window = _journal(impl, needles=configured)
    pieces: dict[str, Any] = {"type": "custom", "node_id": None, "data": {"name": "x"}}
    pieces[where] = secret if where != "data" else {"name": f"before {secret} after"}
    args = (pieces["type"], pieces["node_id"], orjson.dumps(pieces["data"]))
    assert journal.commit(*args) == REDACT
    assert cursor.tail == 0 and journal.seq == 0 and bytes(window[:4096]) == bytes(4096)
    assert journal.commit(*args, True) == 1  # screened by the caller: written


def test_no_screen_without_a_redactor_and_nothing_flagged_in_ordinary_records(impl: Pair) -> None:
    _, journal, _ = _journal(impl, needles=None)
    assert journal.commit("custom", None, b'{"key":"sk-abcdefghijklmnop0123"}') == 1
    _, journal, _ = _journal(impl, needles=Redactor(["secret-value"]).needles)
    assert journal.commit("custom", "n-1", b'{"text":"a - b \\\\ c bear","i":-1}') == 1


def test_a_record_the_window_cannot_hold_is_refused_and_written_once_mapped(impl: Pair) -> None:
    cursor, journal, window = _journal(impl, size=mmap.PAGESIZE)
    body = orjson.dumps({"pad": "p" * 1000})
    while (seq := journal.commit("custom", None, body)) > 0:
        pass
    assert seq == NO_ROOM and journal.need > cursor.free
    tail = cursor.tail
    assert bytes(window[tail:]) == bytes(len(window) - tail)  # nothing past the tail
    bigger = mmap.mmap(-1, 4 * mmap.PAGESIZE)
    bigger[:tail] = window[:tail]
    cursor.map(bigger, 0)
    written = len(_records(window, tail))
    assert journal.commit("custom", None, body) == journal.seq == written + 1
    assert len(_records(bigger, cursor.tail)) == written + 1


def test_refusals_too_large_unsupported_and_closed(impl: Pair) -> None:
    cursor, journal, _ = _journal(impl, max_record=300)
    assert journal.commit("custom", None, orjson.dumps({"pad": "p" * 400})) == TOO_LARGE
    assert journal.need > 300
    assert journal.commit(7, None, b"{}") == UNSUPPORTED
    assert journal.commit("custom", 7, b"{}") == UNSUPPORTED
    assert journal.commit("t\ud800", None, b"{}") == UNSUPPORTED
    with pytest.raises(TypeError):
        journal.commit("custom", None, "not bytes")
    assert cursor.tail == 0
    journal.close()
    assert journal.closed and journal.commit("custom", None, b"{}") == CLOSED


def test_the_first_commit_wakes_the_bell_and_take_clears_it(impl: Pair) -> None:
    calls: list[int] = []
    cursor, journal, _ = _journal(impl, wake=lambda: calls.append(1))
    for _ in range(3):
        journal.commit("custom", None, b"{}")
    assert calls == [1] and journal.rung
    assert journal.take() == (True, cursor.tail)
    assert journal.take() == (False, cursor.tail) and not journal.rung
    journal.commit("custom", None, b"{}")
    assert calls == [1, 1]


def test_a_cursor_refuses_a_window_it_cannot_write_or_that_misses_its_tail(impl: Pair) -> None:
    cursor_type, _ = impl
    cursor = cursor_type(5000)
    with pytest.raises(ValueError, match="outside the window"):
        cursor.map(mmap.mmap(-1, mmap.PAGESIZE), 0)
    with pytest.raises(ValueError, match="outside the window"):
        cursor.map(mmap.mmap(-1, 8 * mmap.PAGESIZE), -100)
    if cursor_type is not PyCursor:  # the compiled cursor asks for a writable buffer
        with pytest.raises((TypeError, BufferError)):
            cursor.map(b"read-only bytes", 4990)
    assert not cursor.put(b"{}")  # no window yet
    assert cursor.tail == 5000


def test_the_emitter_never_writes_a_secret_to_the_spool_not_even_past_its_tail(
        tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    emitter = Emitter("r", spool=SpoolWriter(path), pipe_fd=None, heartbeat_interval=3600,
                      redactor=Redactor(["configured-secret-1"]))
    try:
        emitter.emit("custom", {"note": "key sk-abcdefghijklmnop0123 and configured-secret-1"},
                     "node configured-secret-1")
        emitter.emit("agent_message", {"content": "Bearer abcdefgh123"})
        raw = path.read_bytes()  # the whole file, zeros allocated ahead included
    finally:
        emitter.close()
    assert b"abcdefghijklmnop0123" not in raw and b"configured-secret-1" not in raw
    assert b"abcdefgh123" not in raw
    events = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [e["node_id"] for e in events] == ["node [REDACTED]", None]
    assert events[0]["data"]["note"] == "key [REDACTED] and [REDACTED]"


def test_an_event_past_the_limit_becomes_an_error_event(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    emitter = Emitter("r", spool=SpoolWriter(path), pipe_fd=None, heartbeat_interval=3600)
    try:
        assert emitter.emit("custom", {"pad": "p" * MAX_EVENT_BYTES}) == 1
    finally:
        emitter.close()
    (event,) = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert event["type"] == "error" and event["data"]["error_type"] == "EventTooLarge"


def test_the_emitter_tests_pass_on_the_python_journal_too() -> None:
    """The package uses the compiled journal when it is built; the Python one must behave the
    same behind the emitter (threads, limits, redaction, crashes)."""
    if not journal_module.COMPILED:
        pytest.skip("the package already runs on the Python journal: the other tests cover it")
    env = {**os.environ, "ISOLANE_PURE_PYTHON": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "tests/test_spool.py", "tests/test_journal.py", "-k", "not python_journal_too"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
