"""The built-in workflows (one-shot, planning-control), LLM selection, and ``isolane cost`` / ``dag``.

Workflows run in real workers against a real FakeLLM (in the worker for ``llm="offline"``, in this
process otherwise); the CLI runs as subprocesses on a temporary home.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest

from isolane import Executor, RunSpec, SyncExecutor
from isolane.cli.console import UsageFailure
from isolane.cli.dag import DagView, to_dot, to_json, to_mermaid
from isolane.cli.llm import llm_for_stored_run
from isolane.cli.options import Location, open_store
from isolane.errors import ConfigError
from isolane.schemas.envelope import Event
from isolane.testing import FakeLLM, Reply, Rule, Script, Served
from isolane.tracking.rows import DagEdgeRow, DagNodeRow, LlmCallRow, RunRow
from isolane.tracking.urls import DB_FILENAME
from isolane.workflow import registered_workflows
from isolane.workflows import OFFLINE_URL_ENV, LlmSettings, offline_script_for
from isolane.workflows._agents import MARK_PLAN, MARK_STEP, ROLES
from isolane.workflows._tools import Toolbox, calculate

TASK = "Add up the integers from 1 to 100."

PLANNING_NODES = [
    "planning", "control",
    "planning/planner#1", "planning/executor#1", "planning/planner#2",
    "step_1", "step_2", "step_3",
    "step_1/researcher#1", "step_1/executor#1", "step_1/researcher#2",
    "step_2/engineer#1", "step_2/executor#1", "step_2/engineer#2",
    "step_2.redo_1",
    "step_2.redo_1/engineer#1", "step_2.redo_1/executor#1", "step_2.redo_1/engineer#2",
    "step_2.redo_1/executor#2", "step_2.redo_1/engineer#3",
    "step_3/executor#1",
]


@dataclass(frozen=True)
class Stored:
    status: str
    result: Any
    error: str | None
    events: list[Event]
    nodes: list[DagNodeRow]
    edges: list[DagEdgeRow]
    calls: list[LlmCallRow]
    config: dict[str, Any]
    served: Served | None = None


def _run(home: Path, spec: RunSpec, served_by: FakeLLM | None = None) -> Stored:
    with SyncExecutor(home=home) as ex:
        outcome = ex.run(spec)
        store = ex.executor.store
        nodes, edges = store.dag(outcome.run_id)
        return Stored(outcome.status, outcome.result, outcome.error, store.events(outcome.run_id), nodes,
                      edges, store.llm_calls(outcome.run_id), store.get_run(outcome.run_id).config,
                      served_by.served if served_by is not None else None)


def _served_run(home: Path, workflow: str, **config: Any) -> Stored:
    """``workflow`` against a FakeLLM in this process serving its offline script."""
    script = offline_script_for(registered_workflows()[workflow])
    assert script is not None
    with FakeLLM(script) as llm:
        return _run(home, RunSpec(workflow=workflow, task=TASK, env={"OPENAI_API_KEY": "sk-test"},
                                  config={"llm": {"model": "fake-model", "base_url": llm.base_url}, **config}),
                    served_by=llm)


@pytest.fixture(scope="module")
def planning(tmp_path_factory: pytest.TempPathFactory) -> Stored:
    """planning-control with config llm="offline": the worker serves its own offline script."""
    return _run(tmp_path_factory.mktemp("planning"),
                RunSpec(workflow="planning-control", task=TASK, config={"llm": "offline"}))


@pytest.fixture(scope="module")
def planning_served(tmp_path_factory: pytest.TempPathFactory) -> Stored:
    """planning-control against a FakeLLM in this process (an endpoint given by URL)."""
    return _served_run(tmp_path_factory.mktemp("planning-served"), "planning-control")


def _node(stored: Stored, node_id: str) -> DagNodeRow:
    return next(n for n in stored.nodes if n.node_id == node_id)


def _on(stored: Stored, type_: str) -> list[tuple[str | None, dict[str, Any]]]:
    return [(e.node_id, e.data) for e in stored.events if e.type == type_]


# -- registration, options, tools ------------------------------------------------------------------


def test_builtin_workflows_are_registered_with_templates_and_offline_scripts() -> None:
    """one-shot and planning-control are registered by name with a DAG template and a script."""
    known = registered_workflows()
    assert [n.id for n in known["planning-control"].template.nodes] == ["planning", "control"]  # type: ignore[union-attr]
    assert [n.id for n in known["one-shot"].template.nodes] == ["solve"]  # type: ignore[union-attr]
    assert known["planning-control"].defaults["max_redos"] == 1
    for name in ("one-shot", "planning-control"):
        assert offline_script_for(known[name]) is not None


@pytest.mark.parametrize(("value", "match"), [
    ({"model": "m", "api_key": "sk-x"}, "must not hold an API key"),
    ({"base_url": "http://h/v1"}, "must name a model"),
    ({"model": "m", "base_url": "ftp://h"}, "http"),
    ({"model": "m", "temperature": 0}, "unknown key"),
    ("online", "must be 'offline' or a mapping"),
])
def test_llm_settings_refuse_keys_and_bad_values(value: Any, match: str) -> None:
    """config["llm"] is validated with a message stating the rule; a key in it is refused."""
    with pytest.raises(ConfigError, match=match):
        LlmSettings.from_config(value)


def test_llm_settings_round_trip() -> None:
    """Settings written to config read back the same, and hold no key."""
    settings = LlmSettings("gpt-4o-mini", "https://api.example/v1")
    assert LlmSettings.from_config(settings.as_config()) == settings
    assert "api_key" not in settings.as_config()


@pytest.mark.parametrize(("expression", "expected"), [
    ("100 * (100 + 1) / 2", "5050.0"), ("2 ** 10 - 1", "1023"), ("round(sqrt(2), 3)", "1.414"), ("-7 // 2", "-4"),
])
def test_calculate_evaluates_arithmetic(expression: str, expected: str) -> None:
    """The calculate tool evaluates arithmetic and a few math functions."""
    assert calculate(expression) == expected


@pytest.mark.parametrize(("expression", "match"), [
    ("__import__('os')", "unsupported"), ("9 ** 9 ** 9", "too large"), ("1 / 0", "cannot evaluate"),
    ("1 +", "not an expression"),
])
def test_calculate_refuses_what_is_not_arithmetic(expression: str, match: str) -> None:
    """Names, calls, huge powers and errors are refused with the reason (the LLM reads it)."""
    with pytest.raises(ValueError, match=match):
        calculate(expression)


def test_file_tools_stay_in_the_run_directory(tmp_path: Path) -> None:
    """read_file and list_files see the run's directory only; a path outside is refused."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "a.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("no")
    tools = Toolbox(tmp_path / "work").functions
    assert tools["read_file"]("a.txt") == "hello"
    assert tools["list_files"]() == "a.txt 5"
    with pytest.raises(ValueError, match="outside the run's directory"):
        tools["read_file"]("../secret.txt")
    with pytest.raises(ValueError, match="no file"):
        tools["read_file"]("missing.txt")


@pytest.mark.parametrize("module", ["isolane.workflows", "isolane.workflows._agents", "isolane.workflows._llm",
                                    "isolane.workflows._offline", "isolane.workflows._steps",
                                    "isolane.workflows._tools", "isolane.workflows.one_shot",
                                    "isolane.workflows.planning_control"])
def test_workflow_modules_declare_all(module: str) -> None:
    """Every workflows module declares its public names in __all__, and they exist."""
    mod = importlib.import_module(module)
    assert all(hasattr(mod, name) for name in mod.__all__)


# -- planning-control in a worker ------------------------------------------------------------------


def test_planning_control_completes_offline(planning: Stored) -> None:
    """planning-control completes offline: a 3-step plan, step 2 redone once, results kept."""
    assert planning.status == "completed", planning.error
    assert [s["agent"] for s in planning.result["plan"]] == ["researcher", "engineer", "executor"]
    assert [(s["node"], s["attempts"]) for s in planning.result["steps"]] == [
        ("step_1", 1), ("step_2.redo_1", 2), ("step_3", 1)]


def test_planning_then_control_phases(planning: Stored) -> None:
    """The phases planning and control are entered in that order (phase_change events)."""
    assert [d["phase"] for _, d in _on(planning, "phase_change")] == ["planning", "control"]


def test_dag_has_plan_steps_turns_and_a_redo_branch_point(planning: Stored) -> None:
    """Plan steps are appended under control, turns are sub-nodes, the redo is a branch point."""
    assert [n.node_id for n in planning.nodes] == PLANNING_NODES
    assert {n.node_id: n.status for n in planning.nodes if n.status != "completed"} == {"step_2": "failed"}
    step_2, redo, turn = _node(planning, "step_2"), _node(planning, "step_2.redo_1"), _node(planning, "step_2/engineer#1")
    assert (step_2.parent_node_id, step_2.depth, step_2.meta["agent"]) == ("control", 1, "engineer")
    assert "the last code execution exited 1" in (step_2.error or "")
    assert (redo.node_type, redo.parent_node_id, redo.meta["source_node_id"]) == ("branch_point", "control", "step_2")
    assert (turn.node_type, turn.parent_node_id, turn.depth) == ("agent", "step_2", 2)
    edges = {(e.source, e.target): (e.kind, e.condition) for e in planning.edges}
    assert edges[("step_2", "step_2.redo_1")] == ("conditional", "step_2 failed")
    assert edges[("step_2.redo_1", "step_3")] == ("next", None)
    assert edges[("planning", "control")] == edges[("step_1", "step_2")] == ("next", None)


def test_agent_actions_land_on_their_turn_nodes(planning: Stored) -> None:
    """Tool calls, code executions (with exit codes) and handoffs are stored on the turn's node."""
    calls = [(node, d["agent"], d["tool"]) for node, d in _on(planning, "tool_call")]
    assert calls == [("planning/planner#1", "planner", "submit_plan"),
                     ("step_1/researcher#1", "researcher", "calculate"),
                     ("step_2.redo_1/engineer#2", "engineer", "read_file")]
    results = [(node, d["tool"], d.get("is_error", False)) for node, d in _on(planning, "tool_result")]
    assert results == [("planning/executor#1", "submit_plan", False), ("step_1/executor#1", "calculate", False),
                       ("step_2.redo_1/executor#2", "read_file", False)]
    runs = [(node, d["exit_code"]) for node, d in _on(planning, "code_execution")]
    assert runs == [("step_2/executor#1", 1), ("step_2.redo_1/executor#1", 0), ("step_3/executor#1", 0)]
    handoffs = [(node, d["to_agent"]) for node, d in _on(planning, "handoff")]
    assert all(node is not None and node.endswith(f"/{to}#" + node.rsplit("#", 1)[1]) for node, to in handoffs)
    assert len(handoffs) == sum(1 for n in planning.nodes if n.node_type == "agent")


def test_every_llm_call_is_on_a_turn_node(planning: Stored) -> None:
    """Each LLM call is stored on the agent turn that made it (none unattributed)."""
    assert len(planning.calls) == 9
    for call in planning.calls:
        assert call.node_id is not None and call.node_id.rsplit("/", 1)[1].startswith(f"{call.agent}#")


def test_node_ids_are_stable_across_runs(planning: Stored, planning_served: Stored) -> None:
    """Two runs of the workflow (two ways of reaching the endpoint) have the same nodes and edges."""
    assert planning_served.status == "completed", planning_served.error
    assert [n.node_id for n in planning_served.nodes] == [n.node_id for n in planning.nodes]
    assert {(e.source, e.target, e.kind) for e in planning_served.edges} == {
        (e.source, e.target, e.kind) for e in planning.edges}


def test_stored_tokens_equal_what_the_endpoint_served(planning_served: Stored) -> None:
    """The built-in workflow's stored calls and tokens equal the FakeLLM's count exactly."""
    served = planning_served.served
    assert served is not None and served.errors == 0
    assert len(planning_served.calls) == served.calls
    assert sum(c.prompt_tokens for c in planning_served.calls) == served.prompt_tokens
    assert sum(c.completion_tokens for c in planning_served.calls) == served.completion_tokens
    assert {c.cost_source for c in planning_served.calls} == {"unknown_model"}
    assert all(c.cost is None for c in planning_served.calls)


def test_no_redo_left_fails_the_run(tmp_path: Path) -> None:
    """With max_redos=0 the failing step ends the run failed, its reason in the error."""
    stored = _run(tmp_path, RunSpec(workflow="planning-control", task=TASK,
                                    config={"llm": "offline", "max_redos": 0}))
    assert stored.status == "failed"
    assert "step_2: failed after 0 redos: the last code execution exited 1" in (stored.error or "")
    assert not [n for n in stored.nodes if n.node_type == "branch_point"]
    assert {n.node_id: n.status for n in stored.nodes if n.status != "completed"} == {
        "step_2": "failed", "control": "failed", "step_3": "pending"}


def test_a_bad_option_fails_with_the_rule(tmp_path: Path) -> None:
    """A malformed option or a missing LLM fails the run with a message saying what to give."""
    bad = _run(tmp_path, RunSpec(workflow="planning-control", config={"llm": "offline", "max_redos": -1}))
    assert bad.status == "failed" and "config['max_redos'] must be a whole number >= 0" in (bad.error or "")
    missing = _run(tmp_path, RunSpec(workflow="one-shot"))
    assert missing.status == "failed" and "--llm offline" in (missing.error or "")


# -- one-shot --------------------------------------------------------------------------------------


def test_one_shot_writes_runs_and_checks_code(tmp_path: Path) -> None:
    """one-shot: the engineer's code runs (exit 0), a tool reads its output, the run completes."""
    stored = _served_run(tmp_path, "one-shot")
    assert stored.status == "completed", stored.error
    assert stored.result["exit_codes"] == [0] and "primes.txt" in stored.result["files"]
    assert [n.node_id for n in stored.nodes] == ["solve", "solve/engineer#1", "solve/executor#1",
                                                 "solve/engineer#2", "solve/executor#2", "solve/engineer#3"]
    assert [(node, d["exit_code"]) for node, d in _on(stored, "code_execution")] == [("solve/executor#1", 0)]
    assert [(node, d["content"]) for node, d in _on(stored, "tool_result")] == [
        ("solve/executor#2", "2 3 5 7 11 13 17 19 23 29 31 37 41 43 47\n")]
    assert stored.served is not None and len(stored.calls) == stored.served.calls == 3
    assert stored.config["llm"]["model"] == "fake-model" and "api_key" not in stored.config["llm"]


# -- DAG rendering (pure) ---------------------------------------------------------------------------


def _view() -> DagView:
    run = RunRow(id="r1", workflow="w", task="", config={}, status="completed", created_at=0.0, work_dir="",
                 last_seq=0, attempt=1, meta={})

    def node(node_id: str, status: str, *, kind: str = "step", parent: str | None = None, pos: int = 0) -> DagNodeRow:
        return DagNodeRow(run_id="r1", node_id=node_id, label='say "hi"', node_type=kind, parent_node_id=parent,
                          depth=0 if parent is None else 1, status=status, error=None, started_at=None,
                          ended_at=None, meta={}, position=pos)

    nodes = [node("step_1", "failed"), node("step_1/engineer#1", "completed", kind="agent", parent="step_1", pos=1),
             node("step_1.redo_1", "completed", kind="branch_point", pos=2), node("step_2", "pending", pos=3)]
    edges = [DagEdgeRow(run_id="r1", source="step_1", target="step_1.redo_1", kind="conditional",
                        condition="step_1 failed"),
             DagEdgeRow(run_id="r1", source="step_1.redo_1", target="step_2", kind="next", condition=None)]
    return DagView(run, nodes, edges)


def test_dag_renderers_show_statuses_and_branch_points() -> None:
    """mermaid, dot and json carry every node's status, the branch point and its condition."""
    mermaid = to_mermaid(_view())
    assert mermaid.startswith("flowchart TD")
    assert 'n2{"step_1.redo_1: say #quot;hi#quot;<br/>branch_point · completed"}' in mermaid
    assert 'n0 -.->|"step_1 failed"| n2' in mermaid and "n2 --> n3" in mermaid
    assert 'subgraph gn0 [" "]' in mermaid and 'n1("step_1/engineer#35;1<br/>completed")' in mermaid
    assert "class n0 failed" in mermaid and "class n3 pending" in mermaid
    dot = to_dot(_view())
    assert '"step_1" -> "step_1.redo_1" [style=dashed, label="step_1 failed"];' in dot
    assert 'subgraph "cluster_step_1"' in dot and "shape=diamond" in dot and 'say \\"hi\\"' in dot
    data = json.loads(to_json(_view()))
    assert [(n["node_id"], n["status"]) for n in data["nodes"]] == [
        ("step_1", "failed"), ("step_1/engineer#1", "completed"), ("step_1.redo_1", "completed"),
        ("step_2", "pending")]
    assert data["edges"][0]["kind"] == "conditional"


# -- the command line ------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ISOLANE_DB_URL", "ISOLANE_HOME", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return {**env, "COLUMNS": "200", **extra}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isolane.cli", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=110, check=False)


@pytest.fixture(scope="module")
def offline_cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`run-isolated TASK --workflow planning-control --llm offline --home home --json`."""
    cwd = tmp_path_factory.mktemp("cli")
    proc = cli("run-isolated", TASK, "--workflow", "planning-control", "--llm", "offline", "--home", "home",
               "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout.splitlines()[-1])["outcome"]
    assert outcome["status"] == "completed"
    return cwd, outcome["run_id"]


def test_run_isolated_offline_completes_and_show_describes_it(offline_cli_run: tuple[Path, str]) -> None:
    """`run-isolated ... --llm offline` completes; `isolane show` gives its DAG, cost and config."""
    cwd, run_id = offline_cli_run
    shown = cli("show", run_id, "--home", "home", cwd=cwd)
    assert shown.returncode == 0, shown.stderr
    for expected in ("planning-control", "completed", "step_2.redo_1", "9 calls", "cost unpriced (9 calls)"):
        assert expected in shown.stdout
    data = json.loads(cli("show", run_id, "--home", "home", "--json", cwd=cwd).stdout)
    llm = data["run"]["config"]["llm"]
    assert llm == {"model": "fake-model", "offline": True}  # no key, and no URL of a server that is gone
    dump = cli("events", run_id, "--home", "home", "--json", cwd=cwd).stdout
    assert "isolane-offline" not in dump  # the dummy key reached the worker's environment only


def test_isolane_cost_says_unpriced_instead_of_zero(offline_cli_run: tuple[Path, str]) -> None:
    """`isolane cost` totals the stored calls and says the fake model is unpriced, never $0."""
    cwd, run_id = offline_cli_run
    text = cli("cost", run_id[:8], "--home", "home", cwd=cwd)
    assert text.returncode == 0, text.stderr
    assert "9 LLM calls" in text.stdout and "unpriced (9 calls)" in text.stdout
    assert "$0" not in text.stdout and "prices.fake-model=" in text.stdout
    by_node = json.loads(cli("cost", run_id, "--by", "node", "--home", "home", "--json", cwd=cwd).stdout)
    assert by_node["total"]["calls"] == 9 and by_node["total"]["cost"] is None
    assert by_node["total"]["unpriced_models"] == ["fake-model"] and by_node["total"]["complete"] is False
    assert sum(g["prompt_tokens"] for g in by_node["groups"]) == by_node["total"]["prompt_tokens"]
    assert [g["key"] for g in by_node["groups"]][:2] == ["planning/planner#1", "planning/planner#2"]
    by_agent = json.loads(cli("cost", run_id, "--by", "agent", "--home", "home", "--json", cwd=cwd).stdout)
    assert {g["key"]: g["calls"] for g in by_agent["groups"]} == {"planner": 2, "researcher": 2, "engineer": 5}


@pytest.mark.parametrize("fmt", ["mermaid", "dot", "json"])
def test_isolane_dag_exports_statuses_and_the_branch_point(offline_cli_run: tuple[Path, str], fmt: str) -> None:
    """`isolane dag --format F` exports every node with its status and the redo's conditional edge."""
    cwd, run_id = offline_cli_run
    proc = cli("dag", run_id, "--format", fmt, "--home", "home", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    if fmt == "json":
        data = json.loads(proc.stdout)
        assert [n["node_id"] for n in data["nodes"]] == PLANNING_NODES
        assert {"source": "step_2", "target": "step_2.redo_1", "kind": "conditional",
                "condition": "step_2 failed", "run_id": run_id} in data["edges"]
    elif fmt == "mermaid":
        assert proc.stdout.startswith("flowchart TD")
        assert "branch_point · completed" in proc.stdout and '-.->|"step_2 failed"|' in proc.stdout
        assert "step_2: Write and run" in proc.stdout and "<br/>failed" in proc.stdout
    else:
        assert proc.stdout.startswith(f'digraph "run {run_id}"')
        assert '"step_2" -> "step_2.redo_1" [style=dashed, label="step_2 failed"];' in proc.stdout


def test_run_isolated_with_model_uses_the_provider_and_its_prices(tmp_path: Path) -> None:
    """--model M --base-url URL talks to that endpoint with $OPENAI_API_KEY; known models are priced."""
    script = offline_script_for(registered_workflows()["one-shot"])
    assert script is not None
    with FakeLLM(script) as provider:
        proc = cli("run-isolated", TASK, "-w", "one-shot", "--model", "gpt-4o-mini", "--base-url",
                   provider.base_url, "--home", "home", "--json", cwd=tmp_path,
                   env=_env(OPENAI_API_KEY="sk-from-the-environment"))
        served, url = provider.served, provider.base_url
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout.splitlines()[-1])["outcome"]["run_id"]
    assert served.per_model["gpt-4o-mini"].calls == served.calls == 3
    cost = json.loads(cli("cost", run_id, "--home", "home", "--json", cwd=tmp_path).stdout)
    assert cost["total"]["complete"] is True and cost["total"]["cost"] > 0
    assert cost["total"]["prompt_tokens"] == served.prompt_tokens
    shown = cli("show", run_id, "--home", "home", "--json", cwd=tmp_path).stdout
    assert json.loads(shown)["run"]["config"]["llm"] == {"model": "gpt-4o-mini", "base_url": url}
    assert "sk-from-the-environment" not in shown + cli("events", run_id, "--home", "home", "--json", cwd=tmp_path).stdout


@pytest.fixture(scope="module")
def no_script_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plain") / "plain.py"
    path.write_text("def main(ctx, task, config):\n    return task\n")
    return path


@pytest.mark.parametrize(("args", "extra_env", "contains"), [
    (("run-isolated", "t", "-w", "one-shot", "--llm", "online"), {}, "unknown --llm 'online'"),
    (("run-isolated", "t", "-w", "one-shot", "--model", "gpt-4o"), {}, "--model needs $OPENAI_API_KEY"),
    (("run-isolated", "t", "-w", "one-shot", "--model", "m", "--base-url", "nope"), {"OPENAI_API_KEY": "k"},
     "must be an http(s) URL"),
    (("run-isolated", "t", "-w", "one-shot", "--llm", "offline", "--base-url", "http://x/v1"), {},
     "--base-url cannot be combined"),
    (("run-isolated", "t", "-w", "one-shot", "--base-url", "http://x/v1"), {}, "--base-url needs --model"),
    (("run-isolated", "t", "-w", "one-shot", "-c", "llm.model=m", "-c", "llm.api_key=sk"), {}, "llm.api_key"),
    (("run-isolated", "t", "-w", "PLAIN", "--llm", "offline"), {}, "ships no offline script"),
    (("branch", "RUN", "--from", "step_2", "-c", "llm.model=m", "-c", "llm.api_key=sk"), {}, "llm.api_key"),
    (("cost", "RUN", "--by", "colour"), {}, "unknown --by 'colour'"),
    (("dag", "RUN", "--format", "png"), {}, "unknown --format 'png'"),
    (("cost", "ffffffffffff"), {}, "no run with id 'ffffffffffff'"),
])
def test_bad_llm_cost_and_dag_input_is_one_error_line(offline_cli_run: tuple[Path, str], no_script_file: Path,
                                                      args: tuple[str, ...], extra_env: dict[str, str],
                                                      contains: str) -> None:
    """Bad --llm/--model/--base-url, --by or --format input: one `error:` line, exit 2, no run."""
    cwd, run_id = offline_cli_run
    args = tuple(run_id if a == "RUN" else f"{no_script_file}:main" if a == "PLAIN" else a for a in args)
    proc = cli(*args, "--home", "home", cwd=cwd, env=_env(**extra_env))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and contains in proc.stderr, proc.stderr


# -- offline runs continued by the CLI: resume, branch, race ----------------------------------------

OFFLINE_LLM = {"model": "fake-model", "offline": True}  # what run-isolated --llm offline stores
PLANNING_RESULT_NODES = ["step_1", "step_2.redo_1", "step_3"]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _calls_by_agent(cwd: Path, run_id: str) -> dict[str, int]:
    proc = cli("cost", run_id, "--by", "agent", "--home", "home", "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return {g["key"]: g["calls"] for g in json.loads(proc.stdout)["groups"]}


async def _killed_in_step_2(home: Path, llm: FakeLLM) -> str:
    """An offline planning-control run whose worker is SIGKILLed while step 2 waits for the LLM."""
    # The file the CLI reads under --home, even when $ISOLANE_DB_URL names another store.
    async with Executor(db_url=f"sqlite:///{home / DB_FILENAME}", home=home) as ex:
        handle = await ex.submit(RunSpec(workflow="planning-control", task=TASK, config={"llm": OFFLINE_LLM},
                                         env={OFFLINE_URL_ENV: llm.base_url}))
        async for event in handle.events():
            if event.type == "run_started":
                pid = event.data["pid"]
            if event.type == "dag_node_update" and event.node_id == "step_2/engineer#1":
                os.kill(pid, signal.SIGKILL)
                break
        outcome = await handle.wait()
    assert outcome.status == "crashed" and "SIGKILL" in (outcome.error or ""), outcome
    return outcome.run_id


def test_resume_serves_the_offline_script_again(tmp_path: Path) -> None:
    """`isolane resume` of a SIGKILLed offline run serves its script anew and completes it; done steps stay done."""
    script = offline_script_for(registered_workflows()["planning-control"])
    assert script is not None
    stuck = Rule(system=ROLES["engineer"].marker, last=MARK_STEP, reply=Reply(content="never sent", latency_s=300))
    with FakeLLM(Script(stuck, *script.rules)) as first:  # the first endpoint never answers step 2
        run_id = anyio.run(_killed_in_step_2, tmp_path / "home", first)
    assert _calls_by_agent(tmp_path, run_id) == {"planner": 2, "researcher": 2}

    proc = cli("resume", run_id[:10], "--home", "home", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    *events, last = json_lines(proc.stdout)
    outcome = last["outcome"]
    assert outcome["status"] == "completed" and outcome["run_id"] == run_id
    assert [s["node"] for s in outcome["result"]["steps"]] == PLANNING_RESULT_NODES
    starts = [i for i, e in enumerate(events) if e["type"] == "run_started"]
    assert [events[i]["data"]["attempt"] for i in starts] == [1, 2]
    resumed_nodes = {e["node_id"] for e in events[starts[1]:] if e["type"] == "llm_call"}
    assert not any(n.startswith(("planning", "step_1")) for n in resumed_nodes), resumed_nodes
    assert _calls_by_agent(tmp_path, run_id) == {"planner": 2, "researcher": 2, "engineer": 5}
    shown = json.loads(cli("show", run_id, "--home", "home", "--json", cwd=tmp_path).stdout)
    assert shown["run"]["config"]["llm"] == OFFLINE_LLM and shown["run"]["attempt"] == 2


@pytest.mark.parametrize(("command", "extra"), [
    ("branch", ("--from", "step_2", "--hypothesis", "the same script answers again")),
    ("play-from", ("--from", "step_3")),
])
def test_branch_of_an_offline_run_completes(offline_cli_run: tuple[Path, str], command: str,
                                            extra: tuple[str, ...]) -> None:
    """`isolane branch` / `play-from` of a run-isolated --llm offline run serve its script and complete."""
    cwd, run_id = offline_cli_run
    proc = cli(command, run_id, *extra, "--home", "home", "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    outcome = json_lines(proc.stdout)[-1]["outcome"]
    assert outcome["status"] == "completed" and outcome["run_id"] != run_id
    assert [s["node"] for s in outcome["result"]["steps"]] == PLANNING_RESULT_NODES
    shown = json.loads(cli("show", outcome["run_id"], "--home", "home", "--json", cwd=cwd).stdout)
    assert shown["run"]["parent_run_id"] == run_id and shown["run"]["config"]["llm"] == OFFLINE_LLM


def test_race_of_an_offline_run_has_a_winner(offline_cli_run: tuple[Path, str]) -> None:
    """`isolane race` of an offline run serves every racer from the script; one completes and wins."""
    cwd, run_id = offline_cli_run
    proc = cli("race", run_id, "--from", "step_3", "--variant", "max_turns=9", "--variant", "max_turns=10",
               "--home", "home", "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    race = json.loads(proc.stdout)
    assert race["winner_run_id"] in {r["run_id"] for r in race["racers"]}


def test_offline_config_without_an_endpoint_is_served_in_the_worker(tmp_path: Path) -> None:
    """An offline run whose starter serves no endpoint (recover, serve, the API) serves its script itself."""
    stored = _run(tmp_path, RunSpec(workflow="one-shot", task=TASK, config={"llm": OFFLINE_LLM}))
    assert stored.status == "completed", stored.error
    assert stored.config["llm"] == OFFLINE_LLM and len(stored.calls) == 3


def test_new_workers_of_a_stored_offline_run_get_a_fresh_endpoint(offline_cli_run: tuple[Path, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """llm_for_stored_run serves the run's script while its block runs; a provider change gets the key instead."""
    cwd, run_id = offline_cli_run
    with open_store(Location(db=f"sqlite:///{cwd / 'home' / DB_FILENAME}", home=cwd / "home")) as store:
        row = store.get_run(run_id)
    plan_request: dict[str, Any] = {"model": "fake-model", "messages": [
        {"role": "system", "content": ROLES["planner"].marker}, {"role": "user", "content": MARK_PLAN}]}
    with llm_for_stored_run(row) as env:
        client = openai.OpenAI(base_url=env[OFFLINE_URL_ENV], api_key=env["OPENAI_API_KEY"], max_retries=0)
        message = client.chat.completions.create(**plan_request).model_dump()["choices"][0]["message"]
        assert message["tool_calls"][0]["function"]["name"] == "submit_plan"
    with client, pytest.raises(openai.APIConnectionError):  # the endpoint lived as long as the block
        client.chat.completions.create(**plan_request)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-caller")
    with llm_for_stored_run(row, [{"llm": {"model": "gpt-4o-mini"}}]) as env:
        assert env == {"OPENAI_API_KEY": "sk-caller"}
    with pytest.raises(UsageFailure, match="api_key"), llm_for_stored_run(row, [{"llm": {"model": "m", "api_key": "k"}}]):
        pass
