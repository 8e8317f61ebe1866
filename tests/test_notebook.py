"""A run in a Jupyter notebook, executed for real: nbclient drives an IPython kernel that defines a
workflow in a cell, runs it with SyncExecutor and with top-level ``await``, and displays it."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from isolane.executor.display import outcome_html
from isolane.executor.run import Outcome

ROOT = Path(__file__).resolve().parent.parent

CELLS = [
    # 1: a workflow defined in a cell, one that asks, and one whose events carry markup
    '''
import anyio
from isolane import Executor, RunSpec, SyncExecutor

HOME = "home"

def greet(ctx, task, config):
    with ctx.node("hello", label="say hello"):
        ctx.emit("note", text="<img src=x onerror=alert(1)>")
    return {"greeting": f"hello {task}"}

def asks(ctx, task, config):
    with ctx.node("review", label="human review"):
        color = ctx.ask("Which <b>color</b>?")
    return {"color": color}
''',
    # 2: SyncExecutor; waiting shows progress (in place); the handle and the outcome display
    '''
with SyncExecutor(home=HOME) as ex:
    run = ex.submit(RunSpec(workflow=greet, task="sync"))
    outcome = run.wait()
    display(run)
outcome
''',
    # 3: top-level await with Executor
    '''
async with Executor(home=HOME) as aex:
    handle = await aex.submit(RunSpec(workflow=greet, task="async"))
    outcome = await handle.wait()
    display(handle)
outcome
''',
    # 4: an AG2 agent that asks a person (human_input_mode) and calls a (fake) LLM: the display
    # offers the question and the call that answers it, then shows the cost table
    '''
from isolane.testing import FakeLLM, Script

with FakeLLM(Script(default="Hello, <human>.")) as llm:
    async with Executor(home=HOME) as aex:
        handle = await aex.submit(RunSpec(workflow="tests.flows.human:ag2_human", task="hi bot",
                                          config={"llm": llm.config()}))
        with anyio.fail_after(60):
            while not await handle.pending_requests():
                await anyio.sleep(0.1)
        display(handle)
        (request,) = await handle.pending_requests()
        await handle.answer(request.request_id, "tell me a joke")
        outcome = await handle.wait(progress=False)
        display(handle)
outcome
''',
    # 5: the cell waits on a run that asks; a person answers from a terminal meanwhile
    '''
async with Executor(home=HOME) as aex:
    handle = await aex.submit(RunSpec(workflow=asks))
    outcome = await handle.wait()
outcome
''',
]


def _answer_from_a_terminal(home: Path, done: threading.Event, answered: list[str]) -> None:
    """What a person at a terminal does while the notebook waits: `isolane runs`, `isolane
    requests`, `isolane answer` (each a process of its own)."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "isolane.cli", *args, "--home", str(home)],
                              capture_output=True, text=True, timeout=60, check=False)

    while not done.wait(0.5):
        if not (home / "isolane.db").exists():
            continue
        for line in cli("runs", "--status", "running", "--json").stdout.splitlines():
            run_id = json.loads(line)["id"]
            for request in map(json.loads, cli("requests", run_id, "--json").stdout.splitlines()):
                if request["prompt"] == "Which <b>color</b>?":
                    proc = cli("answer", run_id, request["request_id"], "from a terminal")
                    answered.append(proc.stdout + proc.stderr)
                    return


def _html_outputs(cell: Any) -> list[str]:
    return [out["data"]["text/html"] for out in cell["outputs"]
            if out["output_type"] in ("display_data", "execute_result") and "text/html" in out.get("data", {})]


@pytest.fixture
def executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The notebook, run top to bottom by a real kernel (this checkout on its path)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    for name in ("ISOLANE_HOME", "ISOLANE_DB_URL"):
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    client = NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}})
    done, answered = threading.Event(), []
    person = threading.Thread(target=_answer_from_a_terminal, args=(tmp_path / "home", done, answered))
    person.start()
    try:
        client.execute()
    finally:
        done.set()
        person.join(90)
    assert len(answered) == 1 and "answered review:1" in answered[0], answered
    return nb


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_notebook_runs_and_displays_runs(executed: Any) -> None:
    """Both executors run a cell-defined workflow; the handle shows status, DAG, cost and last
    events as HTML, waiting updates one display in place, the outcome shows its result, a
    waiting question shows with its answer call, `isolane answer` from another process reaches a
    run a waiting cell drives, every worker-written text is escaped, and no cell writes to
    stderr."""
    _, sync_cell, async_cell, asking, waiting = executed.cells
    for cell in executed.cells:
        streams = [out for out in cell["outputs"] if out["output_type"] == "stream"]
        assert [out for out in streams if out["name"] == "stderr"] == [], streams
        assert not [out for out in cell["outputs"] if out["output_type"] == "error"]

    # SyncExecutor: the progress display (one output, updated in place to the end), the handle,
    # the outcome: three outputs, however many times the progress changed.
    progress, handle, outcome = _html_outputs(sync_cell)
    assert 'class="isolane-run"' in progress and ">completed</span>" in progress
    assert 'class="isolane-run"' in handle and ">completed</span>" in handle
    assert "DAG (1 nodes)" in handle and "<code>hello</code> say hello" in handle
    assert re.search(r"<summary>last \d+ events</summary>", handle) and "<code>run_completed</code>" in handle
    assert "<img" not in handle and html.escape("<img src=x onerror=alert(1)>") in handle
    assert 'class="isolane-outcome"' in outcome and "hello sync" in outcome

    # top-level await: the same, without an explicit progress flag
    progress, handle, outcome = _html_outputs(async_cell)
    assert 'class="isolane-run"' in progress and ">completed</span>" in progress
    assert 'class="isolane-run"' in handle and "<code>hello</code> say hello" in handle
    assert 'class="isolane-outcome"' in outcome and "hello async" in outcome

    # the question waits in the display, with the exact call that answers it; then the cost
    asked, final, ended = _html_outputs(asking)
    assert "<b>? human asks:</b>" in asked and "Provide feedback to bot" in asked
    assert html.escape("await handle.answer('chat:1', \"your answer\")") in asked
    assert re.search(r"isolane answer [0-9a-f]{12} chat:1 &#x27;your answer&#x27; --home /\S+/home</code>", asked)
    assert "<summary>cost</summary>" in final and ">completed</span>" in final
    assert re.search(r"<td[^>]*>total</td><td[^>]*>2</td>", final)  # two LLM calls in the table
    assert "Hello, &lt;human&gt;." in final and "<human>" not in final
    assert 'class="isolane-outcome"' in ended and "tell me a joke" in ended

    # answered from a terminal while the cell waited: the progress and the outcome say so
    progress, outcome = _html_outputs(waiting)
    assert ">completed</span>" in progress and "from a terminal" in progress
    assert "from a terminal" in outcome


def test_an_outcome_escapes_what_the_worker_wrote() -> None:
    """A failed outcome's error and traceback are escaped text, never markup."""
    page = outcome_html(Outcome(run_id="r1", status="failed", error="<script>alert(1)</script>",
                                error_type="ValueError", traceback="Traceback <b>x</b>"))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Traceback &lt;b&gt;x&lt;/b&gt;" in page and ">failed</span>" in page


@pytest.mark.anyio
async def test_waiting_with_progress_outside_a_notebook_writes_plain_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """wait(progress=True) in a terminal or a log writes one plain line per change (no repaint
    codes, no line per tick); by default nothing is written outside a notebook."""
    from isolane import Executor, RunSpec

    async with Executor(home=tmp_path / "home") as ex:
        quiet = await ex.submit(RunSpec(workflow="tests.flows.human:ticks",
                                        config={"n": 40, "bursts": 4, "pause": 0.3}))
        assert (await quiet.wait()).status == "completed"
        assert capsys.readouterr().err == ""
        run = await ex.submit(RunSpec(workflow="tests.flows.human:ticks",
                                      config={"n": 40, "bursts": 4, "pause": 0.3}))
        outcome = await run.wait(progress=True)
    assert outcome.status == "completed"
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith(f"run {run.run_id[:12]} ") for line in lines)
    assert lines[-1].startswith(f"run {run.run_id[:12]} completed · ")
    assert len(lines) == len(set(lines)) and len(lines) < 40  # a line per change, not per tick
    assert not any("\x1b" in line or "\r" in line for line in lines)


NESTED = '''
def nested(ctx, task, config):
    with ctx.node("outer", label="outer step"):
        with ctx.node("inner", label="inner step"):
            ctx.emit("note", text="deep")
    with ctx.node("last"):
        pass
    return "ok"
'''


@pytest.mark.anyio
async def test_the_dag_picture_nests_sub_nodes_under_their_parent(tmp_path: Path) -> None:
    """A node's sub-nodes are drawn inside its list item, each with its status."""
    from isolane import Executor, RunSpec

    (tmp_path / "nested.py").write_text(NESTED)
    async with Executor(home=tmp_path / "home") as ex:
        run = await ex.submit(RunSpec(workflow=f"{tmp_path / 'nested.py'}:nested"))
        assert (await run.wait()).status == "completed"
        page = run._repr_html_()
    done = ">completed</span>"
    assert re.search(r"<li><code>outer</code> outer step <span[^>]*" + done + r'<ul[^>]*><li><code>inner</code> '
                     r"inner step <span[^>]*" + done + r"</li></ul></li><li><code>last</code> <span", page), page


ASKING_SCRIPT = '''
import sys
from isolane import RunSpec, SyncExecutor

with SyncExecutor(home=sys.argv[1]) as ex:
    run = ex.submit(RunSpec(workflow="tests.flows.human:asks", config={"prompt": "Which color?"}))
    outcome = run.wait(ask=True, progress=False)
print("RESULT", outcome.status, outcome.result)
'''


def test_sync_wait_asks_pending_questions_with_input(tmp_path: Path) -> None:
    """SyncRun.wait(ask=True) puts the run's question to input() and sends the line typed."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", ASKING_SCRIPT, str(tmp_path / "home")], input="teal\n",
                          env=env, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "? review asks: Which color?" in proc.stdout
    assert "RESULT completed {'answer': 'teal'}" in proc.stdout
