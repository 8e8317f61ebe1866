"""Several parent processes share one PostgreSQL database, as web workers on several hosts do.

Each parent is a real process with its own home and its own host id (``ISOLANE_HOST_ID``, as
containers set it); they run at once, each starting with a recovery pass over the shared
database, while the others' runs are live.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from isolane.executor.ownership import HOST_ENV, STALE_AFTER, owner_alive
from isolane.tracking.store import Store

ROOT = Path(__file__).parent.parent

_PARENT = """
import json, sys
import anyio
from isolane import Executor, RunSpec

async def main() -> None:
    home, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    async with Executor(home=home, db_url=url, recover=True) as ex:
        recovered = [[r.run_id, r.action, r.detail] for r in ex.recovered]
        runs = [await ex.submit(RunSpec(workflow="tests.flows:paced",
                                        config={"n": n, "seconds": 5.0}))
                for _ in range(2)]
        print("submitted", flush=True)  # the test starts the next parent only now
        outcomes = [await run.wait() for run in runs]
    print(json.dumps({"recovered": recovered,
                      "runs": [[o.run_id, o.status, o.result] for o in outcomes]}))

anyio.run(main)
"""


@pytest.mark.postgres
def test_parents_on_several_hosts_share_one_database(pg_schema_url: str, tmp_path: Path) -> None:
    """Three parents run six runs at once: every run completes with all its events, and no
    parent's recovery touches another's live runs."""
    n = 3000
    parents = []
    for i in range(3):
        env = {**_env(), HOST_ENV: f"host-{i}"}
        parents.append(subprocess.Popen(
            [sys.executable, "-c", _PARENT, str(tmp_path / f"home{i}"), pg_schema_url, str(n)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        # The next parent's recovery runs while this one's runs are live: wait until they are
        # submitted (however slow the start-up), not for a fixed time.
        stdout = parents[-1].stdout
        assert stdout is not None
        line = stdout.readline().strip()
        assert line == "submitted", (line, parents[-1].communicate()[1][-3000:])
    reports = []
    for proc in parents:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))

    store = Store.open(pg_schema_url, home=tmp_path / "reader")
    try:
        mine: dict[str, int] = {}
        for i, report in enumerate(reports):
            for run_id, status, result in report["runs"]:
                assert (status, result) == ("completed", n)
                mine[run_id] = i
        assert len(mine) == 6
        for i, report in enumerate(reports):
            for run_id, action, detail in report["recovered"]:
                assert run_id in mine and mine[run_id] != i, "a parent never sees its own runs there"
                assert action == "skipped" and f"host-{mine[run_id]}" in detail, detail
        assert sum(len(r["recovered"]) for r in reports) > 0, "recoveries overlapped live runs"
        for run_id, owner in mine.items():
            row = store.get_run(run_id)
            assert row.status == "completed" and row.meta["parent_host"] == f"host-{owner}"
            assert store.count_events(run_id, types=["custom"]) == n
            count, low, high = store.seq_stats(run_id)
            assert (low, count) == (1, high), run_id
            assert store.diagnostics(run_id) == []
            # Seen from another host, a finished owner's run goes stale after STALE_AFTER.
            assert owner_alive(row, now=(row.heartbeat_at or row.created_at) + 1.0)
            assert not owner_alive(row, now=(row.heartbeat_at or row.created_at) + STALE_AFTER + 1)
    finally:
        store.close()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != HOST_ENV}
