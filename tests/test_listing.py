"""Listing runs without SQLAlchemy: the SQLite reader gives exactly the Store's rows, from the
same statements, and steps aside (to the Store) whenever it cannot serve."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from isolane import settings
from isolane.tracking import Store
from isolane.tracking.listing import RUN_JSON_FIELDS, SqliteRunReader
from isolane.tracking.models import RUNS_TABLE, JSONType

#: (status, config, meta, result) of each run: JSON of every shape, numbers included.
_RUNS: list[tuple[str, dict[str, Any], dict[str, Any], Any]] = [
    ("completed", {"answer": 42, "llm": {"model": "tiny"}}, {"k": "v"}, {"report": [1, "a"]}),
    ("failed", {}, {}, None),
    ("running", {"flag": True}, {"n": 1.5}, 5),
    ("completed", {"word": "hello"}, {}, "12"),
    ("queued", {"nested": {"list": [None, {"x": 1}]}}, {"tags": ["a"]}, [1, "a"]),
    ("crashed", {}, {"note": "é ✓"}, 1.5),
]
_FILTERS: list[dict[str, Any]] = [
    {}, {"limit": 2}, {"status": "completed"}, {"status": ["crashed", "queued"]}, {"status": []},
    {"parent_run_id": "run-0"}, {"status": "completed", "parent_run_id": "run-0", "limit": 1},
]


def _fill(store: Store) -> None:
    for i, (status, config, meta, result) in enumerate(_RUNS):
        store.create_run(run_id=f"run-{i}", workflow="wf", task=f"task {i}", config=config,
                         meta=meta, status=status, created_at=100.0 + i // 2,  # ties: id decides
                         parent_run_id="run-0" if i in (3, 5) else None)
        store.update_run(f"run-{i}", result=result)
        events = [(f"run-{i}", seq, 1.7e9 + seq, "output" if seq % 2 else "custom", None,
                   orjson.dumps({"stream": "stdout", "text": "x"}).decode())
                  for seq in range(1, i + 2)]
        store.write_batch(events=events)


def test_run_json_fields_are_the_models_json_columns() -> None:
    """The reader decodes exactly the runs columns the models declare JSON."""
    assert {c.name for c in RUNS_TABLE.c if c.type is JSONType} == RUN_JSON_FIELDS


def test_the_sqlite_reader_lists_what_the_store_lists(db_url: str, tmp_path: Path) -> None:
    """On the same runs, the reader of a SQLite home and the Store (SQLite or PostgreSQL) give
    equal rows and event counts for every filter."""
    home = tmp_path / "home"
    with Store.open(db_url) as store, Store.open(None, home=home) as local:
        _fill(store)
        _fill(local)
        reader = SqliteRunReader.open(home)
        assert reader is not None
        with closing(reader):
            for filters in _FILTERS:
                rows = reader.list_runs(**filters)
                assert rows == store.list_runs(**filters), filters
                assert rows == local.list_runs(**filters), filters
            assert [r.id for r in reader.list_runs()] == [f"run-{i}" for i in (5, 4, 3, 2, 1, 0)]
            for i in range(len(_RUNS)):
                for types in (None, ["output"], ["custom", "output"], []):
                    count = reader.count_events(f"run-{i}", types=types)
                    assert count == store.count_events(f"run-{i}", types=types), (i, types)
            assert reader.count_events("no-such-run") == 0


def test_the_reader_steps_aside_when_it_cannot_serve(tmp_path: Path) -> None:
    """No file, a file that is not a database, a schema not at head: no reader (the Store decides)."""
    assert SqliteRunReader.open(tmp_path / "none") is None
    assert not (tmp_path / "none").exists()
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    settings.default_db_file(garbage).write_bytes(b"not a database" * 100)
    assert SqliteRunReader.open(garbage) is None
    old = tmp_path / "old"
    with Store.open(None, home=old) as store:
        store.create_run(run_id="r", workflow="wf")
    with sqlite3.connect(settings.default_db_file(old)) as conn:
        conn.execute("UPDATE isolane_alembic_version SET version_num = '0003'")
    conn.close()
    assert SqliteRunReader.open(old) is None


def test_a_failed_read_is_done_again_by_the_store(tmp_path: Path) -> None:
    """A read the reader cannot do (here: a table it cannot see) goes through the Store."""
    home = tmp_path / "home"
    with Store.open(None, home=home) as store:
        _fill(store)
        expected = store.list_runs()
    reader = SqliteRunReader.open(home)
    assert reader is not None
    with closing(reader):
        reader._connection.execute("CREATE TEMP VIEW runs AS SELECT 1 AS x")  # shadows runs
        assert reader.list_runs() == expected
        assert reader.count_events("run-2") == 3


def test_isolane_runs_loads_nothing_it_does_not_use(tmp_path: Path) -> None:
    """`isolane runs` on the default SQLite file imports no SQLAlchemy or Alembic, nor
    the modules of other commands (DESIGN.md "Performance targets"); with --db it reads through
    the Store as before."""
    home = tmp_path / "home"
    with Store.open(None, home=home) as store:
        _fill(store)
    probe = ("import sys\n"
             "from isolane.cli.app import app\n"
             "code = app.main(sys.argv[1:], prog_name='isolane')\n"
             "heavy = ('sqlalchemy', 'alembic', 'isolane.executor', 'isolane.cli.run',\n"
             "         'isolane.cli.branching', 'isolane.cli.serve')\n"
             "print(code, ' '.join(n for n in heavy if n in sys.modules), file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISOLANE_")} | {"COLUMNS": "200"}
    for args, loaded in [(["--home", str(home), "-n", "3", "--status", "completed"], ""),
                         (["--db", f"sqlite:///{settings.default_db_file(home)}"], "sqlalchemy")]:
        proc = subprocess.run([sys.executable, "-c", probe, "runs", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        code, _, modules = proc.stderr.strip().splitlines()[-1].partition(" ")
        assert code == "0", proc.stderr
        assert "run-3" in proc.stdout and "run-0" in proc.stdout, proc.stdout
        assert modules.split() == ([loaded] if loaded else []), proc.stderr


@pytest.mark.parametrize("args", [("-n", "x"), ("--home", "/etc/passwd")])
def test_bad_values_keep_typers_messages(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Bad values get typer's own error, with the exit code of a usage error."""
    proc = subprocess.run([sys.executable, "-m", "isolane.cli", "runs", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: Invalid value for"), proc.stderr
    assert ("valid integer" if "-n" in args else "is a file") in proc.stderr


def test_engine_json_columns_read_as_the_reader_reads_them(tmp_path: Path) -> None:
    """A number stored in a JSON column by hand (NUMERIC affinity) reads back as that number."""
    home = tmp_path / "home"
    with Store.open(None, home=home) as store:
        store.create_run(run_id="r", workflow="wf")
    engine = sa.create_engine(f"sqlite:///{settings.default_db_file(home)}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET result = 7"))
    engine.dispose()
    reader = SqliteRunReader.open(home)
    assert reader is not None
    with closing(reader), Store.open(None, home=home) as store:
        assert reader.list_runs()[0].result == 7 == store.list_runs()[0].result
