"""Answering a run where people are: at the terminal that follows it (a real pty), and from a
second process (`isolane requests` / `isolane answer`) while `run-isolated` drives the run."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pexpect
import pytest

ROOT = Path(__file__).resolve().parent.parent

FLOW = '''
def asks(ctx, task, config):
    with ctx.node("plan", label="plan"):
        ctx.emit("note", text="planned")
    with ctx.node("review", label="human review"):
        color = ctx.ask("Which color?")
    with ctx.node("report", label="report"):
        secret = ctx.human.ask("Passphrase?", kind="password") if config.get("password") else None
    return {"color": color, "secret": secret}
'''


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ISOLANE_DB_URL", "ISOLANE_HOME")}
    env.update(COLUMNS="120", TERM="xterm")
    # The CLI of this checkout, whichever isolane the environment installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    return env


def _cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isolane.cli", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "flow.py").write_text(FLOW)
    return tmp_path


@pytest.fixture
def follower(workdir: Path) -> Iterator[subprocess.Popen[str]]:
    """`run-isolated` following an asking run with no terminal (plain lines on a pipe)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "isolane.cli", "run", "go", "-w", "flow.py:asks", "-c", "password=true",
         "--home", "home"], cwd=workdir, env=_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def _read_until(proc: subprocess.Popen[str], needle: str) -> list[str]:
    """Lines of ``proc``'s stdout up to the first one holding ``needle``."""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never came; output: {''.join(lines)}")


def test_run_isolated_on_a_tty_prompts_and_the_run_completes_with_the_answer(workdir: Path) -> None:
    """On a real terminal each question is asked in place; the typed line is the answer (a
    password's is not echoed)."""
    child = pexpect.spawn(sys.executable, ["-m", "isolane.cli", "run", "go", "-w", "flow.py:asks",
                                           "-c", "password=true", "--home", "home", "--timeout", "60"],
                          cwd=str(workdir), env=_env(), timeout=60, encoding="utf-8",
                          dimensions=(40, 120))
    try:
        child.expect(r"review asks: (\x1b\[[0-9;]*m)*Which color\?")  # styled: codes between
        child.expect(r"answer review:1> ")
        child.sendline("blue")
        child.expect(r"answer report:1> ")
        child.sendline("hunter2")
        child.expect(r'result: \{"color":"blue","secret":"hunter2"\}')
        assert "hunter2" not in child.before  # a password is not echoed
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_a_tty_prompt_is_abandoned_when_the_question_is_answered_elsewhere(workdir: Path) -> None:
    """While the terminal prompts, `isolane answer` from another process answers; the prompt
    gives way and the run completes with that answer."""
    child = pexpect.spawn(sys.executable, ["-m", "isolane.cli", "run", "go", "-w", "flow.py:asks",
                                           "--home", "home", "--timeout", "60"],
                          cwd=str(workdir), env=_env(), timeout=60, encoding="utf-8",
                          dimensions=(40, 120))
    try:
        child.expect(r"answer review:1> ")
        (run_id,) = [row["id"] for row in map(json.loads, _cli(
            "runs", "--home", "home", "--json", cwd=workdir).stdout.splitlines())]
        proc = _cli("answer", run_id, "review:1", "from afar", "--home", "home", cwd=workdir)
        assert proc.returncode == 0, proc.stderr
        child.expect("answered elsewhere or timed out")
        child.expect(r'result: \{"color":"from afar"')
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_requests_and_answer_reach_a_run_that_run_isolated_drives(
        workdir: Path, follower: subprocess.Popen[str]) -> None:
    """`isolane requests` lists what waits; `isolane answer` is delivered by the run's owner
    (the answer travels through the store), refused with the reason when it cannot be."""
    first = _read_until(follower, "submitted")[0]
    run_id = first.split()[1]
    _read_until(follower, "Which color?")

    listed = _cli("requests", run_id[:10], "--home", "home", "--json", cwd=workdir)
    assert listed.returncode == 0, listed.stderr
    (request,) = map(json.loads, listed.stdout.splitlines())
    assert request["request_id"] == "review:1" and request["prompt"] == "Which color?"
    table = _cli("requests", run_id, "--home", "home", cwd=workdir)
    assert "review:1" in table.stdout and f"isolane answer {run_id[:12]} review:1" in table.stdout

    wrong = _cli("answer", run_id, "review:9", "x", "--home", "home", cwd=workdir)
    assert wrong.returncode == 2 and "no pending human-input request 'review:9'" in wrong.stderr
    assert "pending: review:1" in wrong.stderr and "Traceback" not in wrong.stderr

    started = time.monotonic()
    answered = _cli("answer", run_id, "review:1", "green", "--home", "home", cwd=workdir)
    assert answered.returncode == 0, answered.stderr
    assert f"answered review:1 of run {run_id}" in answered.stdout
    assert time.monotonic() - started < 10

    _read_until(follower, "Passphrase?")
    secret = subprocess.run([sys.executable, "-m", "isolane.cli", "answer", run_id, "report:1", "-",
                             "--home", "home"], cwd=workdir, env=_env(), input="hunter2\n",
                            capture_output=True, text=True, timeout=60, check=False)
    assert secret.returncode == 0, secret.stderr
    rest = follower.communicate(timeout=60)[0]
    assert follower.returncode == 0
    assert 'result {"color":"green","secret":"hunter2"}' in rest
    assert "answer review:1>" not in rest  # no terminal: nothing prompts, stdin is not read

    # Delivered answers are settled and their text erased (the passphrase is not kept).
    with sqlite3.connect(workdir / "home" / "isolane.db") as db:
        rows = db.execute("SELECT request_id, source, text, settled_at IS NOT NULL, refused "
                          "FROM posted_answers ORDER BY id").fetchall()
    assert rows == [("review:1", "cli", "", 1, None), ("report:1", "cli", "", 1, None)]
    late = _cli("answer", run_id, "review:1", "late", "--home", "home", cwd=workdir)
    assert late.returncode == 2 and "has ended (completed)" in late.stderr
    assert _cli("requests", run_id, "--home", "home", cwd=workdir).stdout.startswith(
        f"run {run_id} (completed) has no question")


def _owner_killed_while_asking(workdir: Path) -> str:
    """`run-isolated` starts an asking run and is SIGKILLed once the question is out; the run's id."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "isolane.cli", "run", "go", "-w", "flow.py:asks", "--home", "home"],
        cwd=workdir, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    try:
        run_id: str = _read_until(proc, "submitted")[0].split()[1]
        _read_until(proc, "Which color?")
    finally:
        proc.kill()  # the owner dies (SIGKILL); its worker ends with it (its control pipe closes)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    return run_id


def test_an_answer_for_a_run_nobody_drives_is_refused_at_once(workdir: Path) -> None:
    """A run whose owner died cannot receive an answer: the CLI says to resume it, and posts
    nothing."""
    run_id = _owner_killed_while_asking(workdir)
    refused = _cli("answer", run_id, "review:1", "green", "--home", "home", cwd=workdir)
    assert refused.returncode == 2, refused.stderr
    assert "not running in this executor or any other live process" in refused.stderr
    assert "isolane resume RUN" in refused.stderr
    with sqlite3.connect(workdir / "home" / "isolane.db") as db:
        assert db.execute("SELECT count(*) FROM posted_answers").fetchone() == (0,)


def test_an_answer_its_owner_never_delivered_is_erased_when_the_run_is_settled(workdir: Path) -> None:
    """The owner dies after an answer was posted and before it delivered it: when recovery
    settles the run, the answer is refused with the reason and its text (maybe a password) erased."""
    from isolane import Executor
    from isolane.tracking import answers
    from isolane.tracking.store import Store

    run_id = _owner_killed_while_asking(workdir)
    home = workdir / "home"
    with Store.open(home=home) as store:  # what `isolane answer` wrote an instant before
        answers.post(store, run_id, "review:1", "hunter2", source="cli")

    async def recover() -> None:
        with anyio.fail_after(60):
            async with Executor(home=home, recover=True) as ex:
                await ex.join()

    anyio.run(recover)
    with sqlite3.connect(home / "isolane.db") as db:
        rows = db.execute("SELECT text, settled_at IS NOT NULL, refused FROM posted_answers").fetchall()
    assert rows == [("", 1, "the run ended before the answer reached it")]


@pytest.mark.anyio
async def test_executor_answer_reaches_a_run_another_process_drives(
        workdir: Path, follower: subprocess.Popen[str]) -> None:
    """Executor.answer (RunHandle.answer, the REST route) on a run it does not drive posts the
    answer for the run's owner, and returns once the owner delivered it."""
    from isolane import Executor

    run_id = _read_until(follower, "submitted")[0].split()[1]
    _read_until(follower, "Which color?")
    async with Executor(home=workdir / "home") as ex:
        handle = ex.get(run_id)
        assert not ex.is_live(run_id)
        assert [r.request_id for r in await handle.pending_requests()] == ["review:1"]
        await handle.answer("review:1", "violet")
        with anyio.fail_after(30):  # delivered: the worker goes on to its next question
            while [r.request_id for r in await handle.pending_requests()] != ["report:1"]:
                await anyio.sleep(0.1)
        await handle.answer("report:1", "s3cret", source="api")
    rest = follower.communicate(timeout=60)[0]
    assert follower.returncode == 0
    assert 'result {"color":"violet","secret":"s3cret"}' in rest


def test_a_live_view_without_a_person_at_stdin_names_the_answer_command(workdir: Path) -> None:
    """stdout is a terminal but stdin is not: nothing prompts; the view names the exact
    `isolane answer` command, and running it completes the run."""
    child = pexpect.spawn("/bin/sh", ["-c", (f"exec {sys.executable} -m isolane.cli run go -w flow.py:asks "
                                            "--home home --timeout 60 < /dev/null")],
                          cwd=str(workdir), env=_env(), timeout=60, encoding="utf-8", dimensions=(40, 120))
    try:
        child.expect(r"answer with: isolane answer ([0-9a-f]{12}) review:1 TEXT")
        prefix = child.match.group(1)
        proc = _cli("answer", prefix, "review:1", "amber", "--home", "home", cwd=workdir)
        assert proc.returncode == 0, proc.stderr
        child.expect(r'result: \{"color":"amber"')
        child.expect(pexpect.EOF)
        assert "answer review:1>" not in child.before
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
