"""No run can stall the store: content the database refuses ends only its own run.

Each bad input of :mod:`tests.flows.hostile` runs in a real worker while a well-behaved run of the
same executor (a real parent process, :mod:`tests.neighbours`) is in the middle of its work, on
SQLite and on PostgreSQL. The bad run must end, its
data stored in the documented form (U+0000 as U+FFFD) or recorded as a ``store_refused``
diagnostic, and the neighbour must complete with every one of its events.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import psutil
import pytest
import sqlalchemy as sa

from isolane import Executor, RunSpec
from isolane.errors import RunNotFound
from isolane.executor.hub import Hub
from isolane.executor.writer import StoreWriter, WriteItem
from isolane.tracking import Store
from isolane.tracking.rows import DiagnosticRow
from isolane.tracking.storable import NUL_REPLACEMENT, storable_json
from tests.conftest import fresh_pg_schema
from tests.neighbours import NEIGHBOUR_EVENTS
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.anyio

FFFD = NUL_REPLACEMENT
ROOT = Path(__file__).resolve().parent.parent
#: How long the parent of a bad run and its neighbour may take (both end within seconds).
PARENT_DEADLINE = 90


@dataclass
class Ran:
    """Bad runs, one per flow of BAD_INPUTS, that ran beside one well-behaved neighbour."""

    store: Store
    neighbour: str
    bad: dict[str, str]


@dataclass
class Evidence:
    """What a bad run left in the store."""

    store: Store
    run_id: str

    @property
    def status(self) -> str:
        return self.store.get_run(self.run_id).status

    @property
    def dialect(self) -> str:
        return self.store.dialect

    def stored(self, *, after: int = 0, types: list[str] | None = None) -> list[Any]:
        return self.store.events(self.run_id, after_seq=after, types=types)

    def diagnostics(self, kind: str) -> list[DiagnosticRow]:
        return [d for d in self.store.diagnostics(self.run_id) if d.kind == kind]


def _run_beside_a_neighbour(db_url: str, home: Path, flows: list[str]) -> dict[str, Any]:
    """Run every flow at once while a well-behaved run is half-way, in a parent process of its
    own (:mod:`tests.neighbours`); a parent that does not finish is killed with its workers."""
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.neighbours", db_url, str(home), *flows], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = parent.communicate(timeout=PARENT_DEADLINE)
    except subprocess.TimeoutExpired:
        for process in psutil.Process(parent.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        parent.kill()
        parent.communicate()
        pytest.fail(f"the parent did not finish within {PARENT_DEADLINE} s: a bad run never "
                    "ended or the neighbour stalled (a store that retries a refused row forever)")
    assert parent.returncode == 0, err.decode(errors="replace")[-3000:]
    ran: dict[str, Any] = orjson.loads(out)
    return ran


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def beside_a_neighbour(request: pytest.FixtureRequest,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    """Every bad flow run once, at once, beside a neighbour, on SQLite or on PostgreSQL."""
    home = tmp_path_factory.mktemp("neighbours")
    flows = [str(param.values[0]) for param in BAD_INPUTS]
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            db_url = f"sqlite:///{home / 'isolane.db'}"
        else:
            db_url = stack.enter_context(fresh_pg_schema(
                request.getfixturevalue("pg_admin"), request.getfixturevalue("pg_admin_url")))
        ran = _run_beside_a_neighbour(db_url, home, flows)
        with Store.open(db_url) as store:
            yield Ran(store, ran["neighbour"], ran["bad"])


def _texts(value: Any) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (k, *_texts(v))]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    return []


def _no_nul_anywhere(ev: Evidence) -> None:
    for event in ev.stored():
        assert not [t for t in _texts(orjson.loads(event.to_json())) if "\x00" in t], event
    for diagnostic in ev.store.diagnostics(ev.run_id):
        assert "\x00" not in diagnostic.reason + diagnostic.excerpt


def _printed_nul(ev: Evidence) -> None:
    assert ev.status == "completed", ev.status
    texts = [e.data["text"] for e in ev.stored(types=["output"])]
    assert f"before{FFFD}after" in texts and f"err{FFFD}" in texts
    _no_nul_anywhere(ev)


def _emitted_nul(ev: Evidence) -> None:
    assert ev.status == "completed", ev.status
    assert ev.store.get_run(ev.run_id).result == f"res{FFFD}ult"
    [custom] = ev.stored(types=["custom"])
    assert custom.node_id == f"step{FFFD}one"
    # An escaped backslash followed by "u0000" is text, not a NUL: it stays as written.
    assert custom.data == {"name": "nul", "text": f"a{FFFD}b",
                           f"key{FFFD}": [FFFD, "\\u0000 stays as written"]}
    nodes = {n.node_id: n for n in ev.store.dag(ev.run_id)[0]}
    assert nodes[f"step{FFFD}one"].label == f"label{FFFD}"
    assert nodes[f"step{FFFD}one"].status == "completed"
    _no_nul_anywhere(ev)


def _framed_raw_bytes(ev: Evidence) -> None:
    assert (ev.status, ev.store.get_run(ev.run_id).result) == ("completed", "survived")
    [invalid] = ev.diagnostics("invalid_event")
    assert invalid.excerpt.startswith(f"{FFFD}\x01raw{FFFD}bytes"), invalid
    assert [e.data["name"] for e in ev.stored(types=["custom"])] == ["after_raw_bytes"]
    _no_nul_anywhere(ev)


def _framed_huge_seqs(ev: Evidence) -> None:
    assert (ev.status, ev.store.get_run(ev.run_id).result) == ("completed", "huge seqs")
    stored = {e.seq: e for e in ev.stored(after=2**31 - 1)}
    assert sorted(stored) == [2**31, 2**62, 2**62 + 1]
    assert stored[2**62].data["name"] == "seq_2_62"
    assert ev.store.get_run(ev.run_id).last_seq == 2**62 + 1
    assert ev.store.seq_stats(ev.run_id)[2] == 2**62 + 1
    assert not ev.diagnostics("store_refused")


def _framed_unstorable(ev: Evidence) -> None:
    # The result nests deeper than any JSON column can be encoded with: the run still ends,
    # completed, and its result is a diagnostic instead.
    assert (ev.status, ev.store.get_run(ev.run_id).status) == ("completed", "completed")
    assert ev.store.get_run(ev.run_id).result is None
    refused = ev.diagnostics("store_refused")
    assert any("'result'" in d.reason and "cannot be encoded" in d.reason for d in refused), refused
    assert [e.data["name"] for e in ev.stored(after=1000, types=["custom"])] == ["after_huge_number"]
    assert [e.seq for e in ev.stored(after=1000, types=["run_completed"])] == [1002]
    long_nodes = [n for n in ev.store.dag(ev.run_id)[0] if n.label == "long"]
    if ev.dialect == "postgresql":
        # Beyond jsonb's numeric range, too long for a B-tree index: each event is refused
        # alone, the rest of its batch kept.
        [number] = [d for d in refused if "seq 1000" in d.reason]
        assert "numeric" in number.reason and "1e1000000" in number.excerpt
        [node] = [d for d in refused if "seq 999" in d.reason]
        assert "index row" in node.reason and not long_nodes
        assert ev.store.count_events(ev.run_id, types=["custom"]) == 1
    else:  # SQLite keeps JSON as text and has no index size limit
        assert ev.store.count_events(ev.run_id, types=["custom"]) == 2 and len(long_nodes) == 1


BAD_INPUTS = [
    pytest.param("prints_nul", _printed_nul, id="prints-NUL"),
    pytest.param("emits_nul", _emitted_nul, id="emits-NUL-in-data-key-node-result"),
    pytest.param("frames_raw_bytes", _framed_raw_bytes, id="frame-of-raw-bytes"),
    pytest.param("frames_huge_seqs", _framed_huge_seqs, id="seq-2^31-and-2^62"),
    pytest.param("frames_unstorable", _framed_unstorable, id="refused-node-number-and-result"),
]


@pytest.mark.parametrize(("flow", "check"), BAD_INPUTS)
def test_bad_content_ends_only_its_own_run(
        beside_a_neighbour: Ran, flow: str, check: Callable[[Evidence], None]) -> None:
    """A run whose content the database would refuse ends, stored in the documented form or as a
    store_refused diagnostic."""
    check(Evidence(beside_a_neighbour.store, beside_a_neighbour.bad[flow]))


def test_the_neighbour_of_bad_runs_completes_with_all_its_events(beside_a_neighbour: Ran) -> None:
    """A well-behaved run in the middle of its work while the bad runs go through the store
    completes, with every one of its events and nothing refused or retried."""
    store, neighbour = beside_a_neighbour.store, beside_a_neighbour.neighbour
    assert store.get_run(neighbour).status == "completed"
    assert store.count_events(neighbour, types=["custom"]) == 2 * NEIGHBOUR_EVENTS
    count, low, high = store.seq_stats(neighbour)
    assert (low, count) == (1, high), "the neighbour's log has a gap"
    assert not [d for d in store.diagnostics(neighbour)
                if d.kind in ("store_refused", "store_outage")]


@pytest.mark.postgres
async def test_nul_is_stored_identically_on_sqlite_and_postgresql(
        pg_schema_url: str, tmp_path: Path) -> None:
    """The same workflows leave the same stored text on both backends: U+FFFD for every NUL."""

    async def stored_form(db_url: str, home: Path) -> list[Any]:
        async with Executor(home=home, db_url=db_url) as ex:
            form: list[Any] = []
            for flow in ("prints_nul", "emits_nul"):
                outcome = await ex.run(RunSpec(workflow=f"tests.flows.hostile:{flow}"))
                events = ex.store.events(outcome.run_id, types=["output", "custom"])
                nodes, _ = ex.store.dag(outcome.run_id)
                # sorted: stdout and stderr are pumped by two threads, in either order; PostgreSQL
                # orders the keys of jsonb its own way
                texts = sorted(orjson.dumps([e.type, e.node_id, e.data],
                                            option=orjson.OPT_SORT_KEYS).decode() for e in events)
                form.append([outcome.status, ex.store.get_run(outcome.run_id).result, texts,
                             [(n.node_id, n.label, n.status) for n in nodes]])
            return form

    on_sqlite = await stored_form(f"sqlite:///{tmp_path / 'isolane.db'}", tmp_path / "a")
    on_postgres = await stored_form(pg_schema_url, tmp_path / "b")
    assert on_sqlite == on_postgres
    assert FFFD in orjson.dumps(on_sqlite).decode()


def test_every_text_path_stores_nul_as_u_fffd(store: Store) -> None:
    """Run fields, JSON columns, events, node ids and diagnostics written directly through the
    store hold U+FFFD where NUL was given; an escaped backslash before "u0000" stays text."""
    store.create_run(run_id="r1", workflow="w\x00", task="t\x00ask", config={"k\x00": "v\x00"},
                     name="n\x00", meta={"m": ["\x00"]})
    store.update_run("r1", error="boom\x00", error_type="E\x00", result={"r": "\x00"})
    data = orjson.dumps({"name": "x\x00", "\x00": "\\u0000"}).decode()
    store.write_batch(events=[("r1", 1, 1.0, "custom", "node\x00", data)],
                      diagnostics=[("r1", 1.0, "kind\x00", "reason\x00", "excerpt\x00")])
    run = store.get_run("r1")
    assert (run.workflow, run.task, run.name, run.error, run.error_type) == (
        f"w{FFFD}", f"t{FFFD}ask", f"n{FFFD}", f"boom{FFFD}", f"E{FFFD}")
    assert (run.config, run.meta, run.result) == ({f"k{FFFD}": f"v{FFFD}"}, {"m": [FFFD]},
                                                  {"r": FFFD})
    [event] = store.events("r1")
    assert (event.node_id, event.data) == (f"node{FFFD}", {"name": f"x{FFFD}", FFFD: "\\u0000"})
    [diagnostic] = store.diagnostics("r1")
    assert (diagnostic.kind, diagnostic.reason, diagnostic.excerpt) == (
        f"kind{FFFD}", f"reason{FFFD}", f"excerpt{FFFD}")
    with pytest.raises(RunNotFound):  # a NUL in a looked-up id is no driver error
        store.get_run("r1\x00")


@pytest.mark.parametrize("text", ['"\\u0000"', '"\\\\u0000"', '"\\\\\\u0000"', '{"\\u0000":1}',
                                  '"a\\"\\u0000"', '"\\u00000"', '"plain"'])
def test_storable_json_replaces_exactly_the_nul_escapes(text: str) -> None:
    """The stored JSON text decodes to the value with each NUL replaced, nothing else changed."""
    def replaced(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("\x00", FFFD)
        if isinstance(value, dict):
            return {replaced(k): replaced(v) for k, v in value.items()}
        return value

    assert orjson.loads(storable_json(text)) == replaced(orjson.loads(text))
    if "\\u0000" not in text:
        assert storable_json(text) is text


async def test_a_refused_row_is_isolated_and_the_rest_of_its_batch_stored(store: Store) -> None:
    """One write batch with rows the database refuses: every other row of it is stored (other
    runs' included), each refused row becomes a store_refused diagnostic, and only stored events
    are published."""
    for run_id in ("a", "b"):
        store.create_run(run_id=run_id, workflow="w", status="running")
    hub = Hub()
    subscription = hub.subscribe("a")
    writer = StoreWriter(store, hub)

    def events(run_id: str, seqs: range) -> list[tuple[str, int, float, str, None, str]]:
        return [(run_id, seq, 1.0, "custom", None, '{"name":"ok"}') for seq in seqs]

    deep: Any = []
    for _ in range(300):
        deep = [deep]
    items = [
        WriteItem(run_id="a", events=events("a", range(1, 101))),
        # seq 2**63 does not fit any integer column (the decoder never lets one through).
        WriteItem(run_id="a", events=[*events("a", range(101, 151)),
                                      ("a", 2**63, 1.0, "custom", None, '{"name":"huge"}'),
                                      *events("a", range(151, 201))]),
        WriteItem(run_id="b", events=events("b", range(1, 51)),
                  diagnostics=[DiagnosticRow("b", 1.0, "note", "kept")]),
        WriteItem(run_updates={"a": {"status": "completed", "result": deep, "error": "none"}}),
        WriteItem(run_id="c", events=events("c", range(1, 3))),  # a run nobody created
    ]
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        for item in items[:-1]:
            await writer.put(item)
        await writer.put_and_wait(items[-1])
        await writer.close()

    assert store.count_events("a") == 200 and store.count_events("b") == 50
    assert store.get_run("a").last_seq == 200
    run = store.get_run("a")
    assert (run.status, run.result, run.error) == ("completed", None, "none")
    reasons = [d.reason for d in store.diagnostics("a") if d.kind == "store_refused"]
    assert len(reasons) == 2, reasons
    assert any(f"seq {2**63}" in r for r in reasons) and any("'result'" in r for r in reasons)
    assert [d.kind for d in store.diagnostics("b")] == ["note"]
    assert [d.kind for d in store.diagnostics("c")] == ["store_refused", "store_refused"]
    assert writer.rows_refused == 4 and writer.rows_written == 250
    published = [e.seq for e in subscription.take()]
    assert published == list(range(1, 201))


# -- a store write that really fails -------------------------------------------------------------


@pytest.mark.postgres
async def test_a_write_that_really_fails_is_retried_until_the_store_is_back(
        pg_cluster: PgCluster, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A private PostgreSQL stopped mid-run: the writes really fail and are retried until it is
    back; the run completes, a store_outage diagnostic says how long it lasted, and every event
    is stored exactly once."""
    n = 2000
    async with Executor(home=home, db_url=pg_cluster.url) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:gated", config={"n": n}))
        async for event in run.events():
            if event.type == "custom" and event.data["i"] == n - 1:
                break  # the first half is stored; the run waits for its gate
        gate = Path(ex.store.get_run(run.run_id).work_dir) / "go"
        await anyio.to_thread.run_sync(pg_cluster.stop)
        try:
            with pytest.raises(sa.exc.OperationalError):  # the server is really gone
                sa.create_engine(pg_cluster.url, poolclass=sa.pool.NullPool).connect()
            gate.touch()  # the second half of the run's events, with no store to take them
            with anyio.fail_after(30):
                while not any("store write failed" in r.getMessage() for r in caplog.records):
                    await anyio.sleep(0.05)
            assert not run.done, "the run cannot end before its events are stored"
        finally:
            # Back in any case: an executor cannot shut down while its writes wait for a store.
            await anyio.to_thread.run_sync(pg_cluster.start)
        with anyio.fail_after(60):
            outcome = await run.wait()
        assert outcome.status == "completed", outcome
        assert ex.store.count_events(run.run_id, types=["custom"]) == 2 * n
        count, low, high = ex.store.seq_stats(run.run_id)
        assert (low, count) == (1, high), "a gap or a duplicate in the log"
        assert high is not None
        [last] = ex.store.events(run.run_id, after_seq=high - 1)
        assert last.type == "run_completed"  # and nothing after it was lost
        outages = [d for d in ex.store.diagnostics(run.run_id) if d.kind == "store_outage"]
        assert outages and all("store unavailable for" in d.reason for d in outages), outages


async def test_a_run_whose_rows_are_all_refused_has_a_budget(store: Store) -> None:
    """Rows of one run refused by the hundred are isolated one by one only up to a budget; the
    rest go as a whole (one diagnostic with their seq range), and other runs' rows are stored."""
    store.create_run(run_id="good", workflow="w", status="running")
    writer = StoreWriter(store, Hub())
    ghost = [("ghost", seq, 1.0, "custom", None, '{"name":"x"}') for seq in range(1, 1001)]
    good = [("good", seq, 1.0, "custom", None, '{"name":"ok"}') for seq in range(1, 1001)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        await writer.put(WriteItem(run_id="good", events=good[:500]))
        await writer.put(WriteItem(run_id="ghost", events=ghost))  # a run nobody created
        await writer.put_and_wait(WriteItem(run_id="good", events=good[500:]))
        await writer.close()
    assert store.count_events("good") == 1000
    refused = store.diagnostics("ghost")
    assert 32 <= len(refused) < 100, len(refused)
    assert any("more events of the run" in d.reason for d in refused)
    assert writer.rows_refused == 1000
