"""User code never runs in the parent: workflow and scorer references are checked there and
imported only by workers (real executor, CLI and server processes, real workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from isolane import Executor, RunSpec
from isolane.errors import ConfigError, WorkflowNotFound
from isolane.references import check_scorer_ref, check_workflow_ref
from isolane.serve import BackgroundServer
from isolane.tracking.store import Store

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
#: A credential of the parent's that no worker may see (not ``sk-``-shaped, not allow-listed).
SECRET_ENV = "MY_SERVICE_TOKEN"
SECRET = "svc-7f3a9c2e-parent-only"

#: A workflow module whose top level records who ran it (pid, the parent's secrets) and sleeps.
FLOW = '''\
import json, os, time

with open({marker!r}, "a") as out:
    out.write(json.dumps({{"stage": "start", "pid": os.getpid(),
                          "secret": os.environ.get({secret_env!r}),
                          "pg": os.environ.get("PGPASSWORD")}}) + "\\n")
time.sleep({sleep})
with open({marker!r}, "a") as out:
    out.write(json.dumps({{"stage": "end", "pid": os.getpid()}}) + "\\n")


def main(ctx, task, config):
    return {{"pid": os.getpid()}}
'''


def _flow(tmp_path: Path, *, sleep: float = 0.0, name: str = "flow.py") -> tuple[Path, Path]:
    """A workflow file with the recording top level; returns (file, its marker file)."""
    marker = tmp_path / f"{name}.marker"
    path = tmp_path / name
    path.write_text(FLOW.format(marker=str(marker), secret_env=SECRET_ENV, sleep=sleep))
    return path, marker


def _records(marker: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in marker.read_text().splitlines()] if marker.exists() else []


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The parent's environment holds credentials a module's top level would love to read."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv("PGPASSWORD", "pg-parent-password")
    yield


def _assert_worker_only(marker: Path, parent_pid: int, *, runs: int = 1) -> list[dict[str, Any]]:
    records = _records(marker)
    starts = [r for r in records if r["stage"] == "start"]
    assert len(starts) == runs, records
    for record in starts:
        assert record["pid"] != parent_pid, "the module's top level ran in the parent"
        assert record["secret"] is None and record["pg"] is None, record
    return records


async def test_executor_submit_imports_the_workflow_only_in_the_worker(tmp_path: Path, secrets: None) -> None:
    """Executor.submit checks a file reference; its top level runs once, in the worker, without the parent's secrets."""
    path, marker = _flow(tmp_path)
    async with Executor(home=tmp_path / "home") as ex:
        handle = await ex.submit(RunSpec(workflow=f"{path}:main"))
        outcome = await handle.wait()
    assert outcome.status == "completed", outcome.error
    records = _assert_worker_only(marker, os.getpid())
    assert records[0]["pid"] == outcome.result["pid"]


async def test_a_package_reference_runs_no_package_init_in_the_parent(tmp_path: Path, secrets: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """'pkg.flow:main' is found on sys.path without running pkg/__init__.py; the worker runs both."""
    package = tmp_path / "userpkg_iso"
    package.mkdir()
    marker = tmp_path / "init.marker"
    (package / "__init__.py").write_text(
        f"import os\nopen({str(marker)!r}, 'a').write(str(os.getpid()) + '\\n')\n")
    (package / "flow.py").write_text("def main(ctx, task, config):\n    return 'ok'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    checked = check_workflow_ref("userpkg_iso.flow:main")
    assert checked.kind == "module" and not marker.exists()
    with pytest.raises(WorkflowNotFound, match="has no callable 'nope'"):
        check_workflow_ref("userpkg_iso.flow:nope")
    with pytest.raises(WorkflowNotFound, match="no module 'userpkg_iso.missing'"):
        check_workflow_ref("userpkg_iso.missing:main")
    assert not marker.exists() and "userpkg_iso" not in sys.modules
    assert check_workflow_ref("this:s").kind == "module" and "this" not in sys.modules  # the example
    async with Executor(home=tmp_path / "home") as ex:
        outcome = await ex.run(RunSpec(workflow="userpkg_iso.flow:main"))
    assert outcome.status == "completed", outcome.error
    assert [int(p) for p in marker.read_text().split()] != [os.getpid()] and len(marker.read_text().split()) == 1


@pytest.mark.parametrize(("source", "ref_attr", "message"), [
    ("def main(ctx, task, config):\n    pass\n", "other", "has no callable 'other'"),
    ("def main(ctx, task, config)\n    pass\n", "main", "does not parse: .* \\(line 2\\)"),
    (None, "main", "does not exist"),
])
async def test_a_bad_reference_fails_at_submit_and_is_never_imported(tmp_path: Path, source: str | None,
                                                                      ref_attr: str, message: str) -> None:
    """A missing file, a syntax error or an unbound name fail submit with a clear message; nothing is run or stored."""
    marker = tmp_path / "ran.marker"
    path = tmp_path / "bad.py"
    if source is not None:
        path.write_text(f"open({str(marker)!r}, 'w').write('imported')\n{source}")
    async with Executor(home=tmp_path / "home") as ex:
        with pytest.raises(WorkflowNotFound, match=message):
            await ex.submit(RunSpec(workflow=f"{path}:{ref_attr}"))
        assert ex.store.list_runs() == []
    assert not marker.exists()


@pytest.mark.parametrize(("source", "message"), [
    ("raise RuntimeError('boom at import time')\ndef main(ctx, task, config):\n    pass\n",
     "RuntimeError: boom at import time"),
    ("main = 3\n", "has no callable 'main'"),
    ("import no_such_module_iso\ndef main(ctx, task, config):\n    pass\n", "no_such_module_iso"),
])
async def test_a_reference_that_fails_in_the_worker_ends_the_run_failed(tmp_path: Path, source: str,
                                                                        message: str) -> None:
    """A reference that passes the parent's check but does not resolve in the worker ends `failed`, saying why."""
    path = tmp_path / "late.py"
    path.write_text(source)
    async with Executor(home=tmp_path / "home") as ex:
        outcome = await ex.run(RunSpec(workflow=f"{path}:main"))
    assert outcome.status == "failed"
    assert message in (outcome.error or ""), outcome.error


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
         ) -> tuple[subprocess.CompletedProcess[str], int]:
    """``python -m isolane.cli ARGS`` as a real process; returns it and its pid."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("ISOLANE_DB_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "isolane.cli", *args], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def test_run_isolated_imports_the_workflow_only_in_the_worker(tmp_path: Path) -> None:
    """run-isolated checks the file; its top level runs in the worker, whose env lacks the CLI's secrets."""
    path, marker = _flow(tmp_path)
    proc, cli_pid = _cli("run-isolated", "task", "--workflow", f"{path}:main", "--home", "home", "--json",
                         cwd=tmp_path, env={SECRET_ENV: SECRET, "PGPASSWORD": "pg-parent-password"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["outcome"]["status"] == "completed"
    _assert_worker_only(marker, cli_pid)
    bad, _ = _cli("run-isolated", "task", "--workflow", f"{path}:absent", "--home", "home", cwd=tmp_path)
    assert bad.returncode == 2 and "has no callable 'absent'" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and len(_records(marker)) == 2  # start + end, once


def test_the_server_answers_while_a_submitted_module_sleeps_at_import(tmp_path: Path, secrets: None) -> None:
    """POST /api/runs does not import the module; GET /api/runs answers while the worker's import sleeps."""
    path, marker = _flow(tmp_path, sleep=4.0)
    with BackgroundServer(executor_options={"home": tmp_path / "home"}) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        posted = client.post("/api/runs", json={"workflow": f"{path}:main"})
        assert posted.status_code == 201, posted.text
        run_id = posted.json()["run_id"]
        deadline = time.monotonic() + 60
        while not _records(marker) and time.monotonic() < deadline:  # the worker's import began
            time.sleep(0.05)
        listed = client.get("/api/runs")
        assert listed.status_code == 200
        assert [r["stage"] for r in _records(marker)] == ["start"], "GET waited for the module's import"
        assert {r["id"]: r for r in listed.json()["runs"]}[run_id]["status"] in ("queued", "running")
        while client.get(f"/api/runs/{run_id}").json()["run"]["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.get(f"/api/runs/{run_id}").json()["run"]["status"] == "completed"
    _assert_worker_only(marker, os.getpid())


def test_the_server_refuses_a_reference_outside_its_allow_list_without_importing_it(tmp_path: Path) -> None:
    """A reference the allow-list refuses, or that does not check, is answered 400 and never imported."""
    path, marker = _flow(tmp_path)
    with BackgroundServer(executor_options={"home": tmp_path / "home"}, workflows=["one-shot"]) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        refused = client.post("/api/runs", json={"workflow": f"{path}:main"})
        assert refused.status_code == 400 and "may not be submitted here" in refused.json()["error"]
        assert {w["name"] for w in client.get("/api/workflows").json()["workflows"]} == {"one-shot"}
    with BackgroundServer(executor_options={"home": tmp_path / "home"}) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        bad = client.post("/api/runs", json={"workflow": f"{path}:absent"})
        assert bad.status_code in (400, 404) and "has no callable 'absent'" in bad.json()["error"], bad.text
    assert not marker.exists()


# -- scorers ----------------------------------------------------------------------------------------

SCORER = '''\
import os
open({marker!r}, "a").write(str(os.getpid()) + "\\n")


def score(result, files, cost_usd):
    return float(result["quality"])


def raises(result, files, cost_usd):
    raise ValueError("no quality here\\nsecond line")


def one_arg(result):
    return 1.0
'''


def _scorer(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "scorer.marker"
    path = tmp_path / "scorer.py"
    path.write_text(SCORER.format(marker=str(marker)))
    return path, marker


async def test_a_scorer_runs_in_a_worker_and_its_errors_are_one_line(tmp_path: Path) -> None:
    """best_score imports a scorer reference in a scoring worker only; raising or a wrong signature is one ConfigError line."""
    path, marker = _scorer(tmp_path)
    async with Executor(home=tmp_path / "home", max_workers=3) as ex:
        parent = await ex.run(RunSpec(workflow="tests.flows:race_flow"))
        race = await ex.race(parent.run_id, "work", [{"quality": 2}, {"quality": 7}],
                             strategy="best_score", scorer=f"{path}:score")
        assert race.winner_run_id == race.racers[1]["run_id"] and race.scores[race.winner_run_id] == 7.0
        pids = marker.read_text().split()
        assert len(pids) == 1 and int(pids[0]) != os.getpid()
        with pytest.raises(ConfigError) as raised:
            await ex.race(parent.run_id, "work", [{}, {}], strategy="best_score", scorer=f"{path}:raises")
        assert "ValueError: no quality here" in str(raised.value) and "\n" not in str(raised.value)
        with pytest.raises(ConfigError, match=r"a scorer is scorer\(result, files, cost_usd\)") as raised:
            await ex.race(parent.run_id, "work", [{}, {}], strategy="best_score", scorer=f"{path}:one_arg")
        assert "\n" not in str(raised.value)
        with pytest.raises(ConfigError, match="has no callable 'absent'"):
            await ex.race(parent.run_id, "work", [{}, {}], strategy="best_score", scorer=f"{path}:absent")
    assert len(marker.read_text().split()) == 3  # one scoring worker per judged race, none here
    with pytest.raises(ConfigError, match="must be 'package.module:function'"):
        check_scorer_ref("not a reference")


def test_isolane_race_reports_a_raising_scorer_in_one_line(tmp_path: Path) -> None:
    """`isolane race --scorer` with a scorer that raises exits with one error line, no traceback or ExceptionGroup."""
    path, marker = _scorer(tmp_path)
    proc, _ = _cli("run-isolated", "t", "--workflow", "tests.flows:race_flow", "--home", "home", "--json",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout.splitlines()[-1])["outcome"]["run_id"]
    raced, cli_pid = _cli("race", run_id, "--from", "work", "--variant", "quality=1", "--variant", "quality=2",
                          "--strategy", "best_score", "--scorer", f"{path}:raises", "--home", "home",
                          cwd=tmp_path)
    assert raced.returncode != 0
    # (Other lines, such as cgroup notices of the racers' workers, are not this test's business.)
    lines = [line for line in raced.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "ValueError: no quality here" in lines[0], raced.stderr
    assert "Traceback" not in raced.stderr and "ExceptionGroup" not in raced.stderr
    assert [int(p) for p in marker.read_text().split()] != [cli_pid]


def test_the_api_reports_a_raising_scorer_in_one_line(tmp_path: Path) -> None:
    """POST race with a raising scorer is accepted; GET /api/races/{id} then says why it has no winner."""
    path, _ = _scorer(tmp_path)
    home = tmp_path / "home"
    with BackgroundServer(executor_options={"home": home, "max_workers": 3}) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        parent = client.post("/api/runs", json={"workflow": "tests.flows:race_flow"}).json()["run_id"]
        deadline = time.monotonic() + 60
        while client.get(f"/api/runs/{parent}").json()["run"]["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        bad = client.post(f"/api/runs/{parent}/race", json={
            "from_node": "work", "strategy": "best_score", "scorer": f"{path}:absent", "variants": [{}, {}]})
        assert bad.status_code == 400 and "has no callable 'absent'" in bad.json()["error"]
        started = client.post(f"/api/runs/{parent}/race", json={
            "from_node": "work", "strategy": "best_score", "scorer": f"{path}:raises", "variants": [{}, {}]})
        assert started.status_code == 202, started.text
        group = started.json()["racing_group_id"]
        while (verdict := client.get(f"/api/races/{group}").json())["status"] == "running":
            assert time.monotonic() < deadline + 60
            time.sleep(0.1)
    assert verdict["status"] == "no_winner" and verdict["winner_run_id"] is None
    assert "ValueError: no quality here" in verdict["error"] and "\n" not in verdict["error"]
    with Store.open(None, home=home) as store:
        assert store.get_run(parent).status == "completed"


# -- the offline LLM of a user's workflow -------------------------------------------------------------

OFFLINE_FLOW = '''\
import json, os, urllib.request

open({marker!r}, "a").write(str(os.getpid()) + "\\n")


def offline_script():
    return {{"rules": [{{"reply": {{"content": "scripted answer"}}}}]}}


def main(ctx, task, config):
    request = urllib.request.Request(
        os.environ["ISOLANE_OFFLINE_LLM_URL"] + "/chat/completions",
        data=json.dumps({{"model": "fake-model", "messages": [{{"role": "user", "content": task}}]}}).encode(),
        headers={{"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)["choices"][0]["message"]["content"]
'''


def test_run_isolated_llm_offline_serves_a_user_script_from_the_worker(tmp_path: Path) -> None:
    """--llm offline with a user's file: the parent checks it binds offline_script; the worker serves it."""
    marker = tmp_path / "offline.marker"
    path = tmp_path / "offline_flow.py"
    path.write_text(OFFLINE_FLOW.format(marker=str(marker)))
    proc, cli_pid = _cli("run-isolated", "hello", "--workflow", f"{path}:main", "--llm", "offline",
                         "--home", "home", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout.splitlines()[-1])["outcome"]
    assert (outcome["status"], outcome["result"]) == ("completed", "scripted answer"), outcome
    pids = [int(p) for p in marker.read_text().split()]
    assert len(pids) == 1 and pids[0] != cli_pid
    plain, _ = _flow(tmp_path)
    refused, _ = _cli("run-isolated", "hello", "--workflow", f"{plain}:main", "--llm", "offline",
                      "--home", "home", cwd=tmp_path)
    assert refused.returncode == 2 and "ships no offline script" in refused.stderr, refused.stderr
    assert not _records(plain.with_name("flow.py.marker"))
