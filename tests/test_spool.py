"""The spool and the emitter: records are durable when emit() returns, readers take only complete
records, and nothing a worker wrote can make a reader follow a link, hang or grow unbounded."""

from __future__ import annotations

import mmap
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolane.executor.spool import MAX_LISTED_PROBLEMS, import_spool
from isolane.schemas.envelope import decode_lines, encode_event
from isolane.schemas.spool import (
    DOORBELL,
    DoorbellReader,
    LineSplitter,
    SpoolError,
    SpoolReader,
    find_tail,
    open_spool,
    writer_alive,
)
from isolane.tracking.store import Store
from isolane.worker.emitter import Emitter, EmitterClosed
from isolane.worker.spool_writer import SpoolWriter


def _record(seq: int, **data: object) -> bytes:
    return encode_event("r", seq, 1.0, "custom", None, {"name": "x", **data})


def _read_all(path: Path, *, offset: int = 0) -> tuple[list[int], list[str]]:
    """Every complete record of a spool whose writer has ended: seqs, and problems."""
    fd = open_spool(path)
    try:
        reader = SpoolReader(fd, offset=offset, max_span=4096)
        seqs: list[int] = []
        problems: list[str] = []
        while True:
            span = reader.read()
            decoded = decode_lines(span.data, "r")
            seqs.extend(e.seq for e in decoded.events)
            problems.extend(p.reason for p in [*span.problems, *decoded.problems])
            if not reader.more:
                return seqs, problems
    finally:
        os.close(fd)


def _child(fn: object) -> int:
    """Run ``fn()`` in a forked child (which never returns to pytest); return its wait status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            fn()  # type: ignore[operator]
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


# -- the format --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=40), st.lists(st.integers(1, 700), min_size=1))
def test_splitter_gives_the_same_records_however_the_bytes_arrive(
        sizes: list[int], cuts: list[int]) -> None:
    """Complete records come out whole and in order whatever the chunking; a torn tail is
    reported once at the end, never handed out."""
    records = [_record(i + 1, pad="y" * n) + b"\n" for i, n in enumerate(sizes)]
    stream = b"".join(records) + b'{"v":1,"run_id":"r","se'
    splitter = LineSplitter()
    out = b""
    at = i = 0
    while at < len(stream):  # every byte fed, however small the cuts
        step = cuts[i % len(cuts)]
        i += 1
        span = splitter.feed(stream[at:at + step])
        assert not span.problems
        out += span.data
        at += step
    assert out == b"".join(records)
    (torn,) = splitter.finish()
    assert "ends inside a record" in torn.reason


def test_splitter_skips_an_oversized_record_and_stays_bounded() -> None:
    """A line longer than the limit is skipped up to its newline with one problem; the records
    after it survive and the splitter never holds more than the limit."""
    splitter = LineSplitter(max_record=1000)
    problems = []
    for _ in range(50):
        span = splitter.feed(b"z" * 300)
        problems.extend(span.problems)
        assert len(splitter._partial) <= 1000
    span = splitter.feed(b"zz\n" + _record(1) + b"\n")
    assert len(problems) == 1 and "longer than 1000 bytes" in problems[0].reason
    assert decode_lines(span.data, "r").events[0].seq == 1


def test_find_tail_tells_complete_records_from_a_torn_one_and_allocated_space(tmp_path: Path) -> None:
    """The end of the complete records and the end of the data, whatever zeros follow."""
    path = tmp_path / "events.jsonl"
    good = _record(1) + b"\n" + _record(2) + b"\n"
    path.write_bytes(good + b'{"v":1,"ru' + bytes(3 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert find_tail(fd) == (len(good), len(good) + 10)
    finally:
        os.close(fd)


def test_a_spool_truncated_inside_a_record_imports_up_to_the_last_complete_one(
        tmp_path: Path, store: Store) -> None:
    """Torn record: the import stores every record before it, no byte of it, and a diagnostic
    says what was dropped (the run's data otherwise stays intact)."""
    run_id = "torn-run"
    store.create_run(run_id=run_id, workflow="w", task="t", status="crashed")
    path = tmp_path / "events.jsonl"
    records = b"".join(encode_event(run_id, seq, 1.0, "custom", None, {"name": "n", "i": seq})
                       + b"\n" for seq in range(1, 101))
    torn = encode_event(run_id, 101, 1.0, "custom", None, {"name": "n", "i": 101})
    path.write_bytes(records + torn[: len(torn) // 2])
    result = import_spool(store, run_id, path)
    assert result.inserted == 100 and result.last_seq == 100
    assert store.seq_stats(run_id) == (100, 1, 100)
    (diagnostic,) = store.diagnostics(run_id)
    assert diagnostic.kind == "spool_invalid" and "ends inside a record" in diagnostic.reason


def test_a_spool_flooded_with_garbage_imports_its_records_and_lists_a_bounded_number_of_problems(
        tmp_path: Path, store: Store) -> None:
    """Garbage between valid records: every valid record is stored; at most 1,000 invalid ones are
    listed as diagnostics, and one more says how many were only counted."""
    run_id = "flooded-run"
    store.create_run(run_id=run_id, workflow="w", task="t", status="crashed")
    path = tmp_path / "events.jsonl"
    garbage = b"garbage!\n" * 3000
    path.write_bytes(b"".join(encode_event(run_id, seq, 1.0, "custom", None, {"name": "n"}) + b"\n"
                              + garbage for seq in range(1, 4)))
    result = import_spool(store, run_id, path)
    assert result.inserted == 3 and store.seq_stats(run_id) == (3, 1, 3)
    assert result.unlisted == 9000 - MAX_LISTED_PROBLEMS
    diagnostics = store.diagnostics(run_id)
    assert len(diagnostics) == MAX_LISTED_PROBLEMS + 1
    assert f"{9000 - MAX_LISTED_PROBLEMS} more invalid records" in diagnostics[-1].reason


# -- untrusted spools ----------------------------------------------------------------------------


def test_a_spool_replaced_by_a_link_or_a_fifo_is_refused_without_reading(tmp_path: Path) -> None:
    """A link (to /dev/zero) and a FIFO in the spool's place are refused at once: nothing is
    read, nothing hangs."""
    link = tmp_path / "link.jsonl"
    link.symlink_to("/dev/zero")
    with pytest.raises(SpoolError, match="symbolic link"):
        open_spool(link)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(SpoolError, match="not a regular file"):
        open_spool(fifo)
    with pytest.raises(SpoolError, match="symbolic link"):
        SpoolWriter(link)


def test_a_lying_doorbell_never_makes_a_reader_skip_what_is_written_later(tmp_path: Path) -> None:
    """A doorbell far past the data (or garbage on the pipe) reads up to the space not yet
    written and no further: records written there later are still read."""
    path = tmp_path / "events.jsonl"
    writer = SpoolWriter(path, growth=1 << 16)
    writer.append(_record(1))
    fd = open_spool(path)
    reader = SpoolReader(fd)
    span = reader.read(1 << 40)
    assert [e.seq for e in decode_lines(span.data, "r").events] == [1]
    writer.append(_record(2))
    span = reader.read(1 << 40)
    assert [e.seq for e in decode_lines(span.data, "r").events] == [2]
    writer.close()
    os.close(fd)


def test_a_reader_ahead_of_the_doorbells_waits_for_a_record_whose_bytes_land_out_of_order(
        tmp_path: Path) -> None:
    """A record being written may have its later bytes in place before its earlier ones (a
    compiler or memcpy stores them in any order; only the newline comes last). A reader led
    there by a lying doorbell takes none of it until it is whole, then all of it."""
    path = tmp_path / "events.jsonl"
    first, second = _record(1), _record(2)
    with open(path, "wb") as fh:
        fh.write(first + b"\n" + bytes(len(second) + 1) + bytes(4096))
    fd = open_spool(path)
    reader = SpoolReader(fd)
    at = len(first) + 1
    os.pwrite(fd := os.open(path, os.O_WRONLY), second[-20:], at + len(second) - 20)  # the end first
    os.pwrite(fd, second[:10], at)  # and the start: a hole of NUL bytes between them
    span = reader.read(1 << 40)
    assert [e.seq for e in decode_lines(span.data, "r").events] == [1] and not span.problems
    assert reader.offset == at
    os.pwrite(fd, second[10:-20], at + 10)
    assert reader.read(1 << 40).data == b""  # complete but not yet published by its newline
    os.pwrite(fd, b"\n", at + len(second))
    span = reader.read(1 << 40)
    assert [e.seq for e in decode_lines(span.data, "r").events] == [2] and not span.problems
    os.close(fd)
    os.close(reader.fd)


def test_doorbells_survive_garbage_on_the_pipe() -> None:
    """Misaligned bytes on the pipe cost at most a wrong hint; the reader keeps the highest tail."""
    read_fd, write_fd = os.pipe()
    try:
        bells = DoorbellReader(read_fd)
        os.write(write_fd, DOORBELL.pack(100) + DOORBELL.pack(250))
        assert bells.read() == 250
        os.write(write_fd, b"xyz")
        os.write(write_fd, DOORBELL.pack(300))
        assert bells.read() >= 250 and not bells.eof
        os.close(write_fd)
        bells.read()
        assert bells.eof
    finally:
        os.close(read_fd)


# -- the writer ----------------------------------------------------------------------------------


def test_records_cross_window_boundaries_and_a_clean_close_leaves_plain_json_lines(
        tmp_path: Path) -> None:
    """Records of every size across many small windows read back in order; a closed spool is
    exactly its records, one per line."""
    path = tmp_path / "events.jsonl"
    writer = SpoolWriter(path, growth=1 << 12)
    expected = []
    for seq in range(1, 301):
        record = _record(seq, pad="p" * (seq * 37 % 9000))
        writer.append(record)
        expected.append(record + b"\n")
    writer.close()
    assert path.read_bytes() == b"".join(expected)
    assert _read_all(path) == (list(range(1, 301)), [])


def test_one_writer_per_spool_and_recovery_sees_it_alive(tmp_path: Path) -> None:
    """A second writer is refused while the first lives; the lock is seen without taking it,
    and it goes with the process (SIGKILL included)."""
    path = tmp_path / "events.jsonl"
    read_fd, write_fd = os.pipe()

    def hold() -> None:
        SpoolWriter(path).append(_record(1))
        os.write(write_fd, b"x")
        time.sleep(60)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            hold()
        finally:
            os._exit(0)
    try:
        assert os.read(read_fd, 1) == b"x"
        fd = open_spool(path)
        assert writer_alive(fd)
        with pytest.raises(SpoolError, match="another live worker"):
            SpoolWriter(path)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
        os.close(write_fd)
    assert not writer_alive(fd)
    os.close(fd)
    SpoolWriter(path).close()


def test_a_new_attempt_appends_after_the_last_complete_record_and_clears_a_torn_one(
        tmp_path: Path) -> None:
    """Resume: the next writer starts after the last complete record; the torn remnant is
    cleared first, so the spool reads as one clean sequence."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(_record(1) + b"\n" + _record(2) + b"\n" + _record(3)[:25] + bytes(5000))
    writer = SpoolWriter(path)
    assert writer.start == writer.tail == len(_record(1)) + len(_record(2)) + 2
    writer.append(_record(3))
    writer.close()
    assert _read_all(path) == ([1, 2, 3], [])


def test_a_spool_replaced_before_the_worker_opened_it_is_refused(tmp_path: Path) -> None:
    """The worker checks it writes the very file the parent opened for reading."""
    path = tmp_path / "events.jsonl"
    fd = open_spool(path, create=True)  # held open: the replacement cannot reuse its inode
    info = os.fstat(fd)
    (tmp_path / "other").write_bytes(b"")
    os.replace(tmp_path / "other", path)
    try:
        with pytest.raises(SpoolError, match="not the file the parent opened"):
            SpoolWriter(path, identity=(info.st_dev, info.st_ino))
    finally:
        os.close(fd)


# -- the emitter: durable when emit() returns --------------------------------------------------


def _emit_then(path: Path, n: int, end: str, *, pipe_fd: int | None = None) -> None:
    emitter = Emitter("r", spool=SpoolWriter(path), pipe_fd=pipe_fd, heartbeat_interval=3600)
    for i in range(n):
        emitter.emit("custom", {"name": "burst", "i": i})
    if end == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(7)


@pytest.mark.parametrize("end", ["sigkill", "os._exit"])
@pytest.mark.parametrize("n", [1, 10, 1000, 100_000])
def test_every_event_emit_returned_survives_the_process_dying_at_once(
        tmp_path: Path, n: int, end: str) -> None:
    """A burst of events, then SIGKILL or os._exit the next instant: every one is in the spool,
    complete, in seq order (no thread had time to flush anything)."""
    path = tmp_path / "events.jsonl"
    status = _child(lambda: _emit_then(path, n, end))
    assert os.WIFSIGNALED(status) if end == "sigkill" else os.WEXITSTATUS(status) == 7
    seqs, problems = _read_all(path)
    assert seqs == list(range(1, n + 1)) and problems == []


def test_a_lone_event_rings_at_once_and_a_burst_rings_few_doorbells(tmp_path: Path) -> None:
    """After a quiet spell one event rings its doorbell without waiting out the linger (here
    30 s); the events that follow at once share few doorbells."""
    read_fd, write_fd = os.pipe()
    emitter = Emitter("r", spool=SpoolWriter(tmp_path / "events.jsonl"), pipe_fd=write_fd,
                      linger=30.0, heartbeat_interval=3600.0)
    bells = DoorbellReader(read_fd)
    try:
        emitter.emit("custom", {"name": "lone"})
        deadline = time.monotonic() + 10.0  # far below the 30 s linger
        while bells.read() == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert bells.tail == emitter.spool_tail
        rung = []
        for i in range(200):
            emitter.emit("custom", {"name": "burst", "i": i})
        emitter.flush()
        while True:
            chunk = os.read(read_fd, 1 << 16) if _readable(read_fd) else b""
            if not chunk:
                break
            rung.append(len(chunk) // DOORBELL.size)
        assert 1 <= sum(rung) <= 3
    finally:
        emitter.close()
        os.close(read_fd)


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0.2)[0])


def test_the_spool_limit_stops_the_run_and_keeps_a_reserve_for_its_end(tmp_path: Path) -> None:
    """Past max_bytes the emitter reports once; the events that end the run still fit; past the
    reserve emit() refuses instead of growing the file."""
    full: list[int] = []
    spool = SpoolWriter(tmp_path / "events.jsonl", growth=1 << 14, max_bytes=50_000,
                        reserve=20_000)
    emitter = Emitter("r", spool=spool, pipe_fd=None, on_full=full.append,
                      heartbeat_interval=3600)
    try:
        for i in range(10_000):
            emitter.emit("custom", {"name": "x", "pad": "p" * 200, "i": i})
            if full:
                break
        assert len(full) == 1 and 50_000 - (1 << 14) < full[0] <= 50_000
        emitter.emit("run_failed", {"error": "LimitExceeded: event log"})
        with pytest.raises(EmitterClosed, match="is full"):
            for _ in range(20_000):
                emitter.emit("custom", {"name": "x", "pad": "p" * 200})
    finally:
        emitter.close()
    assert (tmp_path / "events.jsonl").stat().st_size <= 50_000 + 20_000 + mmap.PAGESIZE


def test_a_spool_already_past_its_limit_is_reported_at_the_first_event(tmp_path: Path) -> None:
    """A resumed run whose earlier attempts filled the spool past max_bytes is stopped at its
    first event, not only when a new window is mapped."""
    path = tmp_path / "events.jsonl"
    first = Emitter("r", spool=SpoolWriter(path), pipe_fd=None, heartbeat_interval=3600)
    for i in range(300):
        first.emit("custom", {"name": "x", "pad": "p" * 200, "i": i})
    first.close()
    full: list[int] = []
    again = Emitter("r", spool=SpoolWriter(path, max_bytes=30_000), pipe_fd=None, start_seq=300,
                    on_full=full.append, heartbeat_interval=3600)
    before = again.spool_tail
    try:
        assert again.emit("custom", {"name": "after"}) == 301
        assert full == [before]  # reported as the event's room was made, before it was written
        again.emit("custom", {"name": "still fits in the reserve"})
        assert len(full) == 1
    finally:
        again.close()


def test_an_event_that_cannot_be_encoded_takes_no_seq(tmp_path: Path) -> None:
    """emit() that raises while encoding (here: a repr that raises BaseException) leaves no gap:
    the next event takes the seq it would have had."""

    class Interrupting:
        def __repr__(self) -> str:
            raise KeyboardInterrupt

    emitter = Emitter("r", spool=SpoolWriter(tmp_path / "events.jsonl"), pipe_fd=None,
                      heartbeat_interval=3600)
    try:
        assert emitter.emit("custom", {"name": "a"}) == 1
        with pytest.raises(KeyboardInterrupt):
            emitter.emit("custom", {"name": "b", "v": Interrupting()})
        assert emitter.emit("custom", {"name": "c", "big": 2**70}) == 2
    finally:
        emitter.close()
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["seq"] for line in lines] == [1, 2]


def test_emit_from_a_repr_inside_emit_is_stored_before_the_outer_event(tmp_path: Path) -> None:
    """A value whose __repr__ emits (re-entering emit on its thread) neither deadlocks nor fails:
    the data is encoded before the event takes its seq, so the inner event comes first."""
    emitter = Emitter("r", spool=SpoolWriter(tmp_path / "events.jsonl"), pipe_fd=None,
                      heartbeat_interval=3600)

    class Sneaky:
        def __repr__(self) -> str:
            emitter.emit("custom", {"name": "inner"})
            return "sneaky"

    try:
        emitter.emit("custom", {"name": "outer", "value": Sneaky()})
        emitter.emit("custom", {"name": "after"})
    finally:
        emitter.close()
    events = [orjson.loads(line) for line in _lines(tmp_path / "events.jsonl")]
    assert [(e["seq"], e["data"]["name"]) for e in events] == [(1, "inner"), (2, "outer"),
                                                               (3, "after")]
    assert events[1]["data"]["value"] == "sneaky"


def _lines(path: Path) -> Iterator[bytes]:
    yield from path.read_bytes().rstrip(b"\0").splitlines()


def test_a_process_forked_from_the_worker_records_nothing_and_leaves_the_spool_whole(
        tmp_path: Path) -> None:
    """A forked child inherits the emitter: its events would be written at the worker's own tail,
    over the worker's. The child's emit() returns 0 and records nothing, and its close() leaves
    the file alone; every event of the worker is intact."""
    path = tmp_path / "events.jsonl"
    emitter = Emitter("r", spool=SpoolWriter(path), pipe_fd=None, heartbeat_interval=3600)
    emitter.emit("custom", {"name": "before"})
    pid = os.fork()
    if pid == 0:  # the child: emit concurrently with the worker, then close as a worker would
        code = 0 if all(emitter.emit("custom", {"name": "child"}) == 0 for _ in range(2000)) else 1
        emitter.close()
        os._exit(code)
    for i in range(2000):
        emitter.emit("custom", {"name": "worker", "i": i})
    _, status = os.waitpid(pid, 0)
    emitter.emit("custom", {"name": "after"})
    emitter.close()
    assert os.waitstatus_to_exitcode(status) == 0
    events = [orjson.loads(line) for line in _lines(path)]
    assert [e["seq"] for e in events] == list(range(1, 2003))
    assert {e["data"]["name"] for e in events} == {"before", "worker", "after"}
