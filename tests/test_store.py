"""Conformance suite of :class:`isolane.tracking.Store`, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import isolane
import isolane.tracking
from isolane.errors import ConfigError, RunNotFound, StoreUnavailable
from isolane.tracking import DiagnosticRow, EventRow, Store, resolve_url
from isolane.tracking._migrate import HEAD_REVISION, SCRIPT_LOCATION, VERSION_TABLE, at_head
from isolane.tracking.models import METADATA
from isolane.tracking.urls import ENV_URL, normalize_url

REPO_ROOT = Path(isolane.__file__).resolve().parent.parent


def ev(run_id: str, seq: int, type_: str = "output", data: dict[str, Any] | None = None,
       node_id: str | None = None, ts: float | None = None) -> EventRow:
    """One event tuple as the monitor hands it to the store."""
    payload = {"stream": "stdout", "text": f"line {seq}"} if data is None else data
    return (run_id, seq, 1.7e9 + seq if ts is None else ts, type_, node_id,
            orjson.dumps(payload).decode())


def outputs(run_id: str, first: int, last: int) -> list[EventRow]:
    """``output`` events with seq ``first..last``."""
    return [ev(run_id, seq) for seq in range(first, last + 1)]


# -- schema ----------------------------------------------------------------------------------------


def test_migrations_produce_the_model_schema(store: Store, db_url: str) -> None:
    """Migrating an empty database yields exactly the models' tables, columns and indexes."""
    engine = sa.create_engine(normalize_url(db_url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
            assert compare_metadata(context, METADATA) == []
            assert context.get_current_revision() is not None
    finally:
        engine.dispose()


def test_reopening_a_migrated_database_keeps_its_rows(store: Store, db_url: str) -> None:
    """A second open of a database at head migrates nothing and sees the stored runs."""
    store.create_run(run_id="keep-me-1", workflow="wf")
    with Store.open(db_url) as again:
        assert again.get_run("keep-me-1").workflow == "wf"
        assert again.dialect == store.dialect


def test_two_processes_open_a_fresh_database_at_once(db_url: str) -> None:
    """Processes opening the same empty database together all migrate it without error."""
    script = (
        "import sys\n"
        "from isolane.tracking import Store\n"
        "sys.stdin.readline()\n"  # the gate: every child has imported before any opens
        "with Store.open(sys.argv[1]) as s:\n"
        "    s.create_run(run_id=sys.argv[2], workflow='wf')\n"
    )
    children = [
        subprocess.Popen([sys.executable, "-c", script, db_url, f"proc-{i}"], cwd=REPO_ROOT,
                         stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        for i in range(3)
    ]
    for child in children:
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
    errors = []
    for child in children:
        _, err = child.communicate(timeout=60)
        if child.returncode != 0:
            errors.append(err.decode(errors="replace")[-2000:])
    assert errors == []
    with Store.open(db_url) as store:
        assert sorted(r.id for r in store.list_runs()) == ["proc-0", "proc-1", "proc-2"]


# -- URLs and failures -----------------------------------------------------------------------------


def test_default_store_is_sqlite_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a URL or $ISOLANE_DB_URL the store is <home>/isolane.db, its directory created."""
    monkeypatch.delenv(ENV_URL, raising=False)
    home = tmp_path / "nested" / "home"
    with Store.open(home=home) as store:
        assert store.dialect == "sqlite"
        assert store.url.endswith(f"{home}/isolane.db")
    assert (home / "isolane.db").is_file()


def test_env_url_is_used_when_no_url_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$ISOLANE_DB_URL names the database when no URL is passed."""
    monkeypatch.setenv(ENV_URL, f"sqlite:///{tmp_path / 'from-env.db'}")
    assert resolve_url(home=tmp_path / "ignored").database == str(tmp_path / "from-env.db")


def test_postgres_urls_are_pinned_to_psycopg_and_shown_without_password() -> None:
    """postgresql:// and postgres:// use psycopg 3; the displayed URL masks the password."""
    for raw in ("postgresql://u:s3cret@db.example:5432/runs", "postgres://u:s3cret@db.example/runs"):
        url = normalize_url(raw)
        assert url.drivername == "postgresql+psycopg"
        assert "s3cret" not in isolane.tracking.display_url(url)


@pytest.mark.parametrize("url", [
    "not a url",
    "mysql://root@localhost/isolane",
    "postgresql+psycopg2://u@localhost/isolane",
    "sqlite://",
    "sqlite:///:memory:",
    "https://u:s3cret@host/x:y",
])
def test_malformed_or_unsupported_url_raises_config_error(url: str) -> None:
    """A URL isolane cannot use is a ConfigError that names the accepted forms, password masked."""
    with pytest.raises(ConfigError) as info:
        Store.open(url)
    assert "s3cret" not in str(info.value)
    assert "sqlite" in str(info.value)


def test_unreachable_postgres_raises_store_unavailable() -> None:
    """A PostgreSQL nobody listens on is StoreUnavailable saying what to check, password masked."""
    with pytest.raises(StoreUnavailable) as info:
        Store.open("postgresql://isolane:s3cret@127.0.0.1:1/isolane?connect_timeout=3")
    message = str(info.value)
    assert "s3cret" not in message
    assert "127.0.0.1:1" in message and ENV_URL in message and "--db" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unusable_sqlite_path_raises_store_unavailable(tmp_path: Path) -> None:
    """A SQLite path under a regular file is StoreUnavailable, not an OSError."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="a-file"):
        Store.open(f"sqlite:///{blocker / 'isolane.db'}")


# -- runs ------------------------------------------------------------------------------------------


def test_create_and_get_run_by_id_and_prefix(store: Store) -> None:
    """A created run reads back by exact id and by a unique prefix of >= 4 characters."""
    created = store.create_run(run_id="a1b2c3d4e5", workflow="planning", task="do it",
                               config={"model": "m", "n": 2}, work_dir="/tmp/w", name="first",
                               meta={"who": "test"}, created_at=123.5)
    assert created.status == "queued" and created.attempt == 1 and created.last_seq == 0
    assert store.get_run("a1b2c3d4e5") == created
    assert store.get_run("a1b2") == created
    assert store.get_run("a1b2c3d4e5").config == {"model": "m", "n": 2}


def test_ambiguous_prefix_raises_config_error_listing_candidates(store: Store) -> None:
    """A prefix matching several runs is a ConfigError naming each candidate."""
    store.create_run(run_id="feed0001", workflow="wf")
    store.create_run(run_id="feed0002", workflow="wf")
    with pytest.raises(ConfigError, match="feed0001.*feed0002"):
        store.get_run("feed")


def test_unknown_run_raises_run_not_found(store: Store) -> None:
    """No match, a too-short prefix and a case-mismatched prefix are RunNotFound."""
    store.create_run(run_id="abcdef99", workflow="wf")
    for key in ("zzzz", "abc", "ABCD"):
        with pytest.raises(RunNotFound):
            store.get_run(key)


def test_create_run_rejects_duplicates_bad_status_and_unknown_parent(store: Store) -> None:
    """Duplicate ids and unknown statuses are ConfigError; an unknown parent is RunNotFound."""
    store.create_run(run_id="dup-run", workflow="wf")
    with pytest.raises(ConfigError, match="already exists"):
        store.create_run(run_id="dup-run", workflow="wf")
    with pytest.raises(ConfigError, match="status"):
        store.create_run(run_id="other", workflow="wf", status="sleeping")
    with pytest.raises(RunNotFound):
        store.create_run(run_id="child", workflow="wf", parent_run_id="nope")


def test_branch_and_session_links_are_stored(store: Store) -> None:
    """A branch keeps its parent and branch node; a new session id creates the session."""
    store.create_run(run_id="parent-1", workflow="wf", session_id="sess-1")
    child = store.create_run(run_id="child-1", workflow="wf", parent_run_id="parent-1",
                             branch_point_node="step_2", session_id="sess-1", attempt=2)
    assert store.get_run("child-1") == child
    assert [r.id for r in store.list_runs(parent_run_id="parent-1")] == ["child-1"]


def test_update_run_sets_known_fields_and_rejects_unknown(store: Store) -> None:
    """update_run sets named columns; unknown names, last_seq and unknown runs are refused."""
    store.create_run(run_id="upd-run", workflow="wf")
    store.update_run("upd-run", status="failed", error="boom", error_type="ValueError",
                     exit_code=3, ended_at=99.0, result={"partial": [1, 2]}, worker_pid=42,
                     worker_create_time=1.25, meta={"k": "v"})
    row = store.get_run("upd-run")
    assert (row.status, row.error, row.exit_code, row.result, row.meta) == (
        "failed", "boom", 3, {"partial": [1, 2]}, {"k": "v"})
    with pytest.raises(ConfigError, match="colour"):
        store.update_run("upd-run", colour="red")
    with pytest.raises(ConfigError, match="last_seq"):
        store.update_run("upd-run", last_seq=5)
    with pytest.raises(RunNotFound):
        store.update_run("no-such-run", status="running")


def test_json_result_keeps_scalars(store: Store) -> None:
    """A scalar or list result reads back as the same JSON value (not text, not a number string)."""
    for i, result in enumerate([5, 1.5, "12", [1, "a"], True, None]):
        store.create_run(run_id=f"json-{i}", workflow="wf")
        store.update_run(f"json-{i}", result=result)
        assert store.get_run(f"json-{i}").result == result


def test_list_runs_newest_first_with_filters_and_unfinished(store: Store) -> None:
    """list_runs is newest first and filters; unfinished_runs is queued/starting/running only."""
    for i, status in enumerate(["queued", "running", "completed", "starting", "crashed"]):
        store.create_run(run_id=f"run-{i}", workflow="wf", status=status, created_at=100.0 + i)
    assert [r.id for r in store.list_runs()] == ["run-4", "run-3", "run-2", "run-1", "run-0"]
    assert [r.id for r in store.list_runs(limit=2)] == ["run-4", "run-3"]
    assert [r.id for r in store.list_runs(status="completed")] == ["run-2"]
    assert [r.id for r in store.list_runs(status=["crashed", "queued"])] == ["run-4", "run-0"]
    assert [r.id for r in store.unfinished_runs()] == ["run-0", "run-1", "run-3"]


# -- the event log ---------------------------------------------------------------------------------


def test_write_batch_is_idempotent(store: Store) -> None:
    """The same batch twice stores its rows once; the second write returns 0."""
    store.create_run(run_id="idem", workflow="wf")
    batch = outputs("idem", 1, 50)
    assert store.write_batch(events=batch) == 50
    assert store.write_batch(events=batch) == 0
    assert store.seq_stats("idem") == (50, 1, 50)
    assert store.get_run("idem").last_seq == 50


def test_overlapping_and_repeated_events_are_stored_once(store: Store) -> None:
    """A batch overlapping stored seqs, or repeating a seq, adds only the new (first) rows."""
    store.create_run(run_id="overlap", workflow="wf")
    store.write_batch(events=outputs("overlap", 1, 10))
    batch = [*outputs("overlap", 5, 15), ev("overlap", 15, data={"stream": "stderr", "text": "dup"})]
    assert store.write_batch(events=batch) == 5
    assert store.seq_stats("overlap") == (15, 1, 15)
    assert store.events("overlap", after_seq=14)[0].data["stream"] == "stdout"


def test_hundred_thousand_events_have_no_gaps_or_duplicates(store: Store) -> None:
    """100,000 events in 1,000-row batches are exactly 100,000 rows, seq 1..100,000."""
    store.create_run(run_id="bulk", workflow="wf")
    total = 0
    for first in range(1, 100_001, 1000):
        total += store.write_batch(events=[("bulk", seq, 1.7e9 + seq, "output", None,
                                            '{"stream":"stdout","text":"x"}')
                                           for seq in range(first, first + 1000)])
    assert total == 100_000
    assert store.seq_stats("bulk") == (100_000, 1, 100_000)
    assert store.count_events("bulk") == 100_000
    assert store.get_run("bulk").last_seq == 100_000


def test_events_read_in_seq_order_with_filters(store: Store) -> None:
    """events() is ordered by seq and honours after_seq, limit and types; count_events agrees."""
    store.create_run(run_id="reader", workflow="wf")
    batch = [ev("reader", 3, "phase_change", {"phase": "plan"}),
             ev("reader", 1, data={"stream": "stdout", "text": "a"}),
             ev("reader", 2, "heartbeat", {"rss_bytes": 1}, node_id="n1")]
    store.write_batch(events=batch)
    assert [e.seq for e in store.events("reader")] == [1, 2, 3]
    first = store.events("reader")[1]
    assert (first.run_id, first.type, first.node_id, first.data, first.ts) == (
        "reader", "heartbeat", "n1", {"rss_bytes": 1}, 1.7e9 + 2)
    assert [e.seq for e in store.events("reader", after_seq=1, limit=1)] == [2]
    assert [e.type for e in store.events("reader", types=["phase_change"])] == ["phase_change"]
    assert store.count_events("reader", types=["output", "heartbeat"]) == 2
    assert store.seq_stats("nobody") == (0, None, None)


def test_write_batch_for_unknown_run_writes_nothing(store: Store) -> None:
    """Events naming an unknown run raise RunNotFound and nothing of the batch is kept."""
    store.create_run(run_id="known", workflow="wf")
    with pytest.raises(RunNotFound, match="ghost"):
        store.write_batch(events=[*outputs("known", 1, 3), *outputs("ghost", 1, 3)],
                          diagnostics=[("known", 1.0, "seq_gap", "never stored", "")])
    assert store.count_events("known") == 0
    assert store.diagnostics() == []


def test_run_updates_commit_with_the_events(store: Store) -> None:
    """run_updates apply in the batch's transaction; an unknown field rejects the whole batch."""
    store.create_run(run_id="upd-batch", workflow="wf")
    store.write_batch(events=outputs("upd-batch", 1, 2),
                      run_updates={"upd-batch": {"status": "running", "heartbeat_at": 5.0}})
    row = store.get_run("upd-batch")
    assert (row.status, row.heartbeat_at, row.last_seq) == ("running", 5.0, 2)
    with pytest.raises(ConfigError):
        store.write_batch(events=outputs("upd-batch", 3, 4), run_updates={"upd-batch": {"x": 1}})
    assert store.seq_stats("upd-batch") == (2, 1, 2)


def test_diagnostics_are_recorded_with_truncated_excerpts(store: Store) -> None:
    """Diagnostics (tuples or rows, with or without a run) are kept, excerpts cut to 200 chars."""
    store.create_run(run_id="diag", workflow="wf")
    store.write_batch(diagnostics=[
        ("diag", 1.0, "invalid_event", "payload of 'output' is invalid", "x" * 500),
        DiagnosticRow(None, 2.0, "store_outage", "down for 3 s"),
        ("not-a-stored-run", 3.0, "invalid_event", "unknown run", "{}"),
    ])
    everything = store.diagnostics()
    assert [d.kind for d in everything] == ["invalid_event", "store_outage", "invalid_event"]
    assert everything[0].excerpt == "x" * 200 and everything[0].id is not None
    assert [d.reason for d in store.diagnostics("diag")] == ["payload of 'output' is invalid"]


def test_one_writer_and_reader_threads_share_a_store(store: Store) -> None:
    """A writer thread and reader threads use one Store at once without errors or lost rows."""
    store.create_run(run_id="threads", workflow="wf")
    done = threading.Event()

    def write() -> None:
        try:
            for first in range(1, 5001, 250):
                store.write_batch(events=outputs("threads", first, first + 249))
        finally:
            done.set()

    def read() -> int:
        reads = 0
        while not done.is_set():
            count, low, high = store.seq_stats("threads")
            assert count == 0 or (low, high) == (1, count)
            store.events("threads", after_seq=max(count - 10, 0))
            reads += 1
        return reads

    with ThreadPoolExecutor(max_workers=3) as pool:
        readers = [pool.submit(read) for _ in range(2)]
        pool.submit(write).result(timeout=60)  # re-raises the writer's error, if any
        assert all(reader.result(timeout=60) >= 0 for reader in readers)
    assert store.seq_stats("threads") == (5000, 1, 5000)


# -- projections -----------------------------------------------------------------------------------


def _dag_batch(run_id: str) -> list[EventRow]:
    return [
        ev(run_id, 1, "dag_created", {
            "nodes": [{"id": "planning", "label": "Plan", "node_type": "planning"},
                      {"id": "control", "label": "Control"}],
            "edges": [{"source": "planning", "target": "control", "condition": "ok"}]}),
        ev(run_id, 2, "dag_node_update", {"status": "running", "meta": {"a": 1}}, "planning", 10.0),
        ev(run_id, 3, "dag_node_added", {"label": "Step 1", "parent_node_id": "control",
                                         "depth": 1, "after": ["planning"],
                                         "meta": {"goal": "x"}}, "step_1"),
        ev(run_id, 4, "dag_node_update", {"status": "completed", "meta": {"b": 2}}, "planning",
           12.0),
        ev(run_id, 5, "dag_node_update", {"status": "failed", "error": "bad"}, "step_1", 13.0),
    ]


def test_dag_projection_builds_nodes_edges_and_status(store: Store) -> None:
    """dag_created/added/update project nodes (ordered), edges, status, times and merged meta."""
    store.create_run(run_id="dag", workflow="wf")
    store.write_batch(events=_dag_batch("dag"))
    nodes, edges = store.dag("dag")
    by_id = {n.node_id: n for n in nodes}
    assert [n.node_id for n in nodes] == ["planning", "control", "step_1"]
    assert [n.position for n in nodes] == [0, 1, 2]
    planning = by_id["planning"]
    assert (planning.status, planning.started_at, planning.ended_at, planning.meta,
            planning.node_type, planning.label) == (
        "completed", 10.0, 12.0, {"a": 1, "b": 2}, "planning", "Plan")
    assert (by_id["control"].status, by_id["control"].node_type) == ("pending", "step")
    step = by_id["step_1"]
    assert (step.status, step.error, step.parent_node_id, step.depth, step.meta, step.ended_at) == (
        "failed", "bad", "control", 1, {"goal": "x"}, 13.0)
    assert {(e.source, e.target, e.kind, e.condition) for e in edges} == {
        ("planning", "control", "next", "ok"), ("planning", "step_1", "next", None)}


def test_reapplying_a_projected_batch_changes_nothing(store: Store) -> None:
    """Writing a projected batch again leaves nodes, edges, phase and rows exactly as they were."""
    store.create_run(run_id="again", workflow="wf")
    batch = [*_dag_batch("again"), ev("again", 6, "phase_change", {"phase": "control"}),
             ev("again", 7, "llm_call", {"model": "m", "prompt_tokens": 1, "completion_tokens": 2,
                                         "cost": 0.5, "cost_source": "table"})]
    store.write_batch(events=batch)
    before = (store.dag("again"), store.get_run("again"), store.llm_calls("again"))
    assert store.write_batch(events=batch) == 0
    assert (store.dag("again"), store.get_run("again"), store.llm_calls("again")) == before


def test_late_events_do_not_undo_newer_state(store: Store) -> None:
    """A gap refilled late (older seq) never overwrites the status or phase newer events set."""
    store.create_run(run_id="late", workflow="wf")
    store.write_batch(events=[
        ev("late", 1, "dag_node_added", {"label": "S"}, "s1"),
        ev("late", 4, "dag_node_update", {"status": "completed", "meta": {"k": "new"}}, "s1", 40.0),
        ev("late", 5, "phase_change", {"phase": "control"}),
    ])
    store.write_batch(events=[
        ev("late", 2, "dag_node_update", {"status": "running", "meta": {"k": "old", "o": 1}},
           "s1", 20.0),
        ev("late", 3, "phase_change", {"phase": "planning"}),
    ])
    (node,), _ = store.dag("late")
    assert (node.status, node.started_at, node.ended_at, node.meta) == (
        "completed", 20.0, 40.0, {"k": "new", "o": 1})
    assert store.get_run("late").phase == "control"
    assert store.seq_stats("late") == (5, 1, 5)


def test_update_of_an_undeclared_node_adds_it(store: Store) -> None:
    """A dag_node_update naming an unknown node adds that node with the update applied."""
    store.create_run(run_id="undeclared", workflow="wf")
    store.write_batch(events=[
        ev("undeclared", 1, "dag_node_update", {"status": "running"}, "step_9", 3.0),
        ev("undeclared", 2, "dag_node_added", {"label": "Nine", "depth": 1}, "step_9"),
    ])
    (node,), edges = store.dag("undeclared")
    assert (node.node_id, node.status, node.started_at, node.label, node.depth) == (
        "step_9", "running", 3.0, "Nine", 1)
    assert edges == []


def test_phase_change_sets_run_phase(store: Store) -> None:
    """The last phase_change of a batch sets runs.phase."""
    store.create_run(run_id="phase", workflow="wf")
    store.write_batch(events=[ev("phase", 1, "phase_change", {"phase": "planning"}),
                              ev("phase", 2, "phase_change", {"phase": "control",
                                                              "previous": "planning"})])
    assert store.get_run("phase").phase == "control"


def test_llm_call_and_file_projections(store: Store) -> None:
    """llm_call events become llm_calls rows (null cost kept); file events become files rows."""
    store.create_run(run_id="proj", workflow="wf")
    store.write_batch(events=[
        ev("proj", 1, "llm_call", {"model": "gpt-x", "prompt_tokens": 10, "completion_tokens": 5,
                                   "cost": None, "cost_source": "unknown_model",
                                   "agent": "engineer", "duration_s": 0.5, "cached": True},
           "step_1", 5.0),
        ev("proj", 2, "file_created", {"path": "a.py", "size": 3, "sha256": "ab" * 32,
                                       "phase": "control", "agent": "engineer"}, "step_1", 6.0),
        ev("proj", 3, "file_modified", {"path": "a.py", "size": 4, "sha256": "cd" * 32,
                                        "version": 2}, None, 7.0),
    ])
    (call,) = store.llm_calls("proj")
    assert (call.seq, call.node_id, call.agent, call.model, call.total_tokens, call.cost,
            call.cost_source, call.duration_s, call.cached, call.ts) == (
        1, "step_1", "engineer", "gpt-x", 15, None, "unknown_model", 0.5, True, 5.0)
    created, modified = store.files("proj")
    assert (created.kind, created.path, created.version, created.node_id, created.phase,
            created.agent, created.size) == ("created", "a.py", 1, "step_1", "control",
                                             "engineer", 3)
    assert (modified.kind, modified.version, modified.sha256, modified.ts) == (
        "modified", 2, "cd" * 32, 7.0)


def test_bad_projected_payload_becomes_a_diagnostic(store: Store) -> None:
    """A projected event with a wrong payload or no node is stored, unprojected, and diagnosed."""
    store.create_run(run_id="badproj", workflow="wf")
    inserted = store.write_batch(events=[
        ev("badproj", 1, "llm_call", {"model": "m"}),
        ev("badproj", 2, "dag_node_update", {"status": "running"}),
        ev("badproj", 3, "phase_change", {"phase": "ok"}),
    ])
    assert inserted == 3
    assert store.llm_calls("badproj") == [] and store.dag("badproj") == ([], [])
    assert store.get_run("badproj").phase == "ok"
    problems = store.diagnostics("badproj")
    assert [d.kind for d in problems] == ["projection_error", "projection_error"]
    assert "seq 1" in problems[0].reason and "node_id" in problems[1].reason


def test_exported_names_are_frozen() -> None:
    """isolane.tracking exports exactly its documented surface."""
    assert sorted(isolane.tracking.__all__) == sorted([
        "ENV_URL", "MIN_PREFIX", "UNFINISHED_STATUSES", "DagEdgeRow", "DagNodeRow",
        "DiagnosticRow", "EventRow", "FileRow", "LlmCallRow", "RunRow", "Store",
        "display_url", "resolve_url"])


def test_the_head_revision_constant_is_the_newest_migration() -> None:
    """HEAD_REVISION (what a store checks to open without Alembic) is the scripts' head."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]


def test_a_store_at_head_opens_without_loading_alembic(db_url: str, tmp_path: Path) -> None:
    """A database already at head is opened with one plain query: Alembic is not even imported
    (what keeps `isolane runs` fast); an empty one is not at head and gets migrated."""
    empty = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        assert not at_head(empty)
    finally:
        empty.dispose()
    with Store.open(db_url):
        pass
    code = ("import sys; from isolane.tracking import Store; Store.open(sys.argv[1]).close(); "
            "print('alembic' in sys.modules)")
    probe = subprocess.run([sys.executable, "-c", code, db_url], check=True, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert probe.stdout.strip() == "False", probe.stderr
