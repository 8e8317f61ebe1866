"""The command line, run for real: ``python -m isolane.cli`` subprocesses on a temporary home."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from isolane.cli import EXIT_CODES
from isolane.cli.codes import EXIT_CODES_HELP
from isolane.cli.console import UsageFailure
from isolane.cli.options import parse_config

WORKFLOWS = '''
import os
import time


def main(ctx, task, config):
    print("hello", task, flush=True)
    with ctx.node("step_1", label="first"):
        ctx.emit("note", text="inside step 1")
    ctx.phase("done")
    return {"task": task, "config": config}


def fails(ctx, task, config):
    with ctx.node("boom"):
        raise ValueError("the workflow failed on purpose")


def crashes(ctx, task, config):
    ctx.emit("before_exit")
    ctx._emitter.flush()
    os._exit(3)


def sleeps(ctx, task, config):
    for i in range(int(config.get("ticks", 1))):
        ctx.emit("tick", i=i)
        ctx._emitter.flush()
        time.sleep(float(config.get("seconds", 0.2)))
    ctx.emit("sleeping")
    ctx._emitter.flush()
    time.sleep(float(config.get("last", 0)))
    return "slept"
'''


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ISOLANE_DB_URL", "ISOLANE_HOME")}
    env["COLUMNS"] = "200"
    return env


def cli(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isolane.cli", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *, contains: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert contains in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    (path / "flows_cli.py").write_text(WORKFLOWS)
    return path


@pytest.fixture(scope="module")
def completed(workdir: Path) -> dict[str, Any]:
    """One completed run stored under ``workdir/home``; returns its outcome line."""
    proc = cli("run", "the task", "--workflow", "flows_cli.py:main", "--home", "home",
               "--config", "answer=42", "--config", "llm.model=tiny", "--config", "flag=true",
               "--config", "word=hello", "--json", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    return {"proc": proc, "lines": json_lines(proc.stdout)}


def test_run_json_streams_every_event_then_the_outcome(completed: dict[str, Any]) -> None:
    """--json prints only JSON lines: the events in seq order, then {"outcome": ...}; exit 0."""
    lines = completed["lines"]
    *events, last = lines
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    lifecycle = [e["type"] for e in events if e["type"] != "heartbeat"]  # heartbeats: by the clock
    assert lifecycle[0] == "run_started" and lifecycle[-1] == "run_completed"
    assert {"custom", "dag_node_update", "phase_change", "output"} <= {e["type"] for e in events}
    outcome = last["outcome"]
    assert outcome["status"] == "completed" and outcome["run_id"] == events[0]["run_id"]
    assert outcome["result"] == {"task": "the task", "config": {
        "answer": 42, "llm": {"model": "tiny"}, "flag": True, "word": "hello"}}


def test_run_isolated_entry_prints_text_lines_when_not_a_terminal(workdir: Path) -> None:
    """Without --json and without a terminal, run-isolated prints one plain line per event."""
    proc = cli("run-isolated", "plain", "-w", "flows_cli.py:main", "--home", "home", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("run ") and "submitted" in lines[0]
    assert any("run_started" in line for line in lines)
    assert any("[stdout] hello plain" in line for line in lines)
    assert any(line.startswith("run ") and " completed " in line for line in lines)
    assert "{" not in lines[1]  # text, not JSON


@pytest.mark.parametrize(("workflow", "extra", "status"), [
    ("flows_cli.py:fails", (), "failed"),
    ("flows_cli.py:crashes", (), "crashed"),
    ("flows_cli.py:sleeps", ("--timeout", "1", "-c", "last=30"), "timed_out"),
])
def test_exit_code_follows_the_final_status(workdir: Path, workflow: str, extra: tuple[str, ...],
                                            status: str) -> None:
    """A failed run exits 1, a crashed one 3, a timed-out one 4, with the outcome last."""
    proc = cli("run", "t", "-w", workflow, "--home", "home", "--json", *extra, cwd=workdir)
    assert proc.returncode == EXIT_CODES[status], proc.stderr
    assert json_lines(proc.stdout)[-1]["outcome"]["status"] == status
    assert "Traceback" not in proc.stderr


def test_ctrl_c_cancels_the_run(workdir: Path) -> None:
    """SIGINT to run-isolated cancels the run, which ends cancelled with exit code 5."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "isolane.cli", "run", "t", "-w", "flows_cli.py:sleeps",
         "--home", "home", "--json", "-c", "last=60"],
        cwd=workdir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line)["data"].get("name") == "sleeping":
                break
        proc.send_signal(signal.SIGINT)
        rest, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 5, stderr
    assert json_lines(rest)[-1]["outcome"]["status"] == "cancelled"
    assert "Traceback" not in stderr


@pytest.mark.parametrize(("args", "contains"), [
    (("run", "t", "-w", "no-such-workflow"), "unknown workflow 'no-such-workflow'"),
    (("run", "t", "-w", "missing.py:main"), "--workflow"),
    (("run", "t", "-w", "flows_cli.py:absent"), "has no callable 'absent'"),
    (("run", "t", "-w", "flows_cli.py:main", "--config", "novalue"), "has no '='"),
    (("run", "t", "-w", "flows_cli.py:main", "--timeout", "-1"), "timeout must be positive"),
    (("run", "t", "-w", "flows_cli.py:main", "--db", "mysql://x/y"), "unsupported database"),
    (("run", "t"), "--workflow"),
    (("run-isolated", "t", "-w", "no-such-workflow"), "unknown workflow"),
    (("runs", "--status", "weird"), "unknown status 'weird'"),
    (("runs", "--limit", "zero"), "--limit"),
])
def test_bad_input_is_one_error_line_and_exit_2(workdir: Path, args: tuple[str, ...],
                                                 contains: str) -> None:
    """Bad input prints one `error:` line on stderr, nothing on stdout, exits 2, no traceback."""
    assert_one_line_error(cli(*args, "--home", "home", cwd=workdir), contains=contains)


@pytest.mark.parametrize("command", ["show", "events"])
def test_unknown_run_id_is_one_error_line(workdir: Path, completed: dict[str, Any],
                                          command: str) -> None:
    """An id that matches no run is an `error:` line naming it and exit 2."""
    assert_one_line_error(cli(command, "ffffffffffff", "--home", "home", cwd=workdir),
                          contains="no run with id 'ffffffffffff'")


def test_missing_database_is_not_created_by_reading(workdir: Path) -> None:
    """Reading from a home without a database says where it looked and creates nothing."""
    assert_one_line_error(cli("runs", "--home", "elsewhere", cwd=workdir),
                          contains="no isolane database")
    assert not (workdir / "elsewhere").exists()


def test_runs_lists_the_stored_run(workdir: Path, completed: dict[str, Any]) -> None:
    """`isolane runs` shows the run's short id and status; --json gives one object per run."""
    run_id = completed["lines"][-1]["outcome"]["run_id"]
    text = cli("runs", "--home", "home", cwd=workdir)
    assert text.returncode == 0, text.stderr
    row = next(line for line in text.stdout.splitlines() if line.startswith(run_id[:12]))
    assert "completed" in row and "flows_cli.py:main" in row and run_id not in row
    as_json = cli("runs", "--home", "home", "--json", "--status", "completed", cwd=workdir)
    runs = {r["id"]: r for r in json_lines(as_json.stdout)}
    assert runs[run_id]["status"] == "completed"
    assert runs[run_id]["events"] == len(completed["lines"]) - 1


def test_show_describes_the_run(workdir: Path, completed: dict[str, Any]) -> None:
    """`isolane show PREFIX` gives fields, result, DAG and counts; --json the same as data."""
    run_id = completed["lines"][-1]["outcome"]["run_id"]
    text = cli("show", run_id[:8], "--home", "home", cwd=workdir)
    assert text.returncode == 0, text.stderr
    for expected in (run_id, "completed", "the task", "step_1", "events by type", "custom"):
        assert expected in text.stdout
    data = json.loads(cli("show", run_id, "--home", "home", "--json", cwd=workdir).stdout)
    assert data["run"]["id"] == run_id and data["run"]["status"] == "completed"
    worker = data["run"]["meta"]["worker"]
    assert (worker["backend"], worker["location"]) == ("local", "local")
    assert f"local pid {worker['pid']}" in text.stdout
    assert data["run"]["result"]["config"]["answer"] == 42
    assert data["events"] == len(completed["lines"]) - 1
    assert data["event_counts"]["custom"] == 1
    assert [(n["node_id"], n["status"]) for n in data["dag"]["nodes"]] == [("step_1", "completed")]
    assert data["diagnostics"] == []


def test_events_filters_by_type_and_seq(workdir: Path, completed: dict[str, Any]) -> None:
    """`isolane events --type custom --json` prints only those events; --since skips older."""
    run_id = completed["lines"][-1]["outcome"]["run_id"]
    proc = cli("events", run_id, "--home", "home", "--type", "custom", "--json", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    events = json_lines(proc.stdout)
    assert [(e["type"], e["data"]["name"]) for e in events] == [("custom", "note")]
    stored = completed["lines"][:-1]
    since = cli("events", run_id, "--home", "home", "--since", "2", "--json", cwd=workdir)
    assert [e["seq"] for e in json_lines(since.stdout)] == [e["seq"] for e in stored[2:]]
    text = cli("events", run_id, "--home", "home", cwd=workdir)
    assert len(text.stdout.splitlines()) == len(stored)
    assert_one_line_error(cli("events", run_id, "--home", "home", "--type", "nope", cwd=workdir),
                          contains="unknown event type 'nope'")


def test_events_follow_tails_a_run_in_another_process(workdir: Path) -> None:
    """`events --follow` reads a run another process is executing until the run has ended."""
    runner = subprocess.Popen(
        [sys.executable, "-m", "isolane.cli", "run", "t", "-w", "flows_cli.py:sleeps",
         "--home", "home", "--json", "-c", "ticks=8", "-c", "seconds=0.25"],
        cwd=workdir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert runner.stdout is not None
        run_id = json.loads(runner.stdout.readline())["run_id"]
        follower = cli("events", run_id[:10], "--home", "home", "--follow", "--json", cwd=workdir)
        runner.communicate(timeout=60)
    finally:
        runner.kill()
        runner.wait()
    assert follower.returncode == 0, follower.stderr
    followed = json_lines(follower.stdout)
    assert [e["seq"] for e in followed] == list(range(1, len(followed) + 1))
    assert followed[-1]["type"] == "run_completed"
    assert sum(e["data"].get("name") == "tick" for e in followed) == 8


@pytest.mark.parametrize(("items", "expected"), [
    ([], {}),
    (["n=3", "f=0.5", "b=false", "l=[1,2]", "s=text", "e=", "q=\"7\""],
     {"n": 3, "f": 0.5, "b": False, "l": [1, 2], "s": "text", "e": "", "q": "7"}),
    (["a.b=1", "a.c.d=x", "a.b=2"], {"a": {"b": 2, "c": {"d": "x"}}}),
    (["url=http://h/?x=1"], {"url": "http://h/?x=1"}),
])
def test_parse_config_values(items: list[str], expected: dict[str, Any]) -> None:
    """--config values are JSON when they parse, else strings; dotted keys nest; last wins."""
    assert parse_config(items) == expected


@pytest.mark.parametrize("items", [["novalue"], ["=1"], ["a..b=1"], ["a=1", "a.b=2"], ["a.b=1", "a=2"]])
def test_parse_config_rejects_malformed_items(items: list[str]) -> None:
    """A --config item without '=', with an empty key part or a key clash is a usage error."""
    with pytest.raises(UsageFailure):
        parse_config(items)


def test_exit_code_table_is_in_the_help(workdir: Path) -> None:
    """Both programs' --help lists every exit code of the documented table."""
    assert EXIT_CODES == {"completed": 0, "won": 0, "failed": 1, "crashed": 3, "timed_out": 4,
                          "cancelled": 5, "lost": 6}
    for args in (("--help",), ("run-isolated", "--help")):
        proc = cli(*args, cwd=workdir)
        assert proc.returncode == 0
        assert "Exit codes:" in proc.stdout
        for status, code in EXIT_CODES.items():
            assert any(line.strip().startswith(str(code)) and status in line
                       for line in proc.stdout.splitlines()), (status, proc.stdout)
    assert "2  bad input" in EXIT_CODES_HELP


def test_help_lists_every_command_in_order(workdir: Path) -> None:
    """`isolane --help` lists the commands whose module loads only when used, in their order,
    then those of isolane.cli.app; each one's own --help works."""
    names = ["run", "resume", "branch", "play-from", "race", "compare", "recover", "cost", "dag",
             "serve", "files", "checkout", "export", "requests", "answer", "runs", "show", "events"]
    listed = [line.split()[1] for line in cli("--help", cwd=workdir).stdout.splitlines()
              if line.startswith("│ ") and len(line.split()) > 2 and line.split()[1] in names]
    assert listed == names
    for name in ("race", "serve", "answer"):
        proc = cli(name, "--help", cwd=workdir)
        assert proc.returncode == 0 and f"isolane {name}" in proc.stdout, proc.stderr


def _cli_modules() -> Iterator[str]:
    for path in sorted((Path(__file__).parent.parent / "isolane" / "cli").glob("*.py")):
        yield "isolane.cli" if path.stem == "__init__" else f"isolane.cli.{path.stem}"


@pytest.mark.parametrize("module", list(_cli_modules()))
def test_cli_modules_declare_all(module: str) -> None:
    """Every CLI module declares its public names in __all__, and they exist."""
    mod = importlib.import_module(module)
    assert hasattr(mod, "__all__")
    assert all(hasattr(mod, name) for name in mod.__all__)


def test_the_readme_example_runs_offline(tmp_path: Path) -> None:
    """README's `examples/research_flow.py:main --llm offline` completes, its report written."""
    example = Path(__file__).parent.parent / "examples" / "research_flow.py"
    proc = cli("run-isolated", "How spread out are the measurements?", "-w", f"{example}:main",
               "--llm", "offline", "--home", "home", "--json", cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json_lines(proc.stdout)[-1]["outcome"]
    assert outcome["status"] == "completed" and outcome["result"]["report"] == "report.md"
