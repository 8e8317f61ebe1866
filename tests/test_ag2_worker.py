"""A real AG2 group chat in a real worker: what capture stores, in order, on which node, at what cost.

The workflow is ``examples/research_flow.py`` -- plain AG2 code with no tracking calls but a node
per step -- run through :class:`isolane.SyncExecutor` against a FakeLLM in this process. Three
agents (analyst, coder, runner) with AG2 choosing every speaker, a registered tool, a code block
executed; then a two-agent chat writes the report.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from isolane import RunSpec, SyncExecutor
from isolane.schemas.envelope import Event
from isolane.testing import FakeLLM, Served
from isolane.tracking.rows import DagEdgeRow, DagNodeRow, LlmCallRow
from tests.helpers import visible

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "research_flow.py"
TASK = "How spread out are the measurements?"
FINDING = "The 8 measurements have mean 10.0375 and standard deviation 0.2669: they are tightly spread. TERMINATE"
REPORT = "The measurements cluster tightly around 10.04 (standard deviation 0.27)."
PRICE = (0.25, 2.0)  # USD per 1k prompt / completion tokens, set through config["prices"]


def load_sample() -> ModuleType:
    """The sample workflow module, imported from its file (as the worker does)."""
    spec = importlib.util.spec_from_file_location("research_flow_sample", SAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class SampleRun:
    status: str
    result: Any
    events: list[Event]
    calls: list[LlmCallRow]
    nodes: list[DagNodeRow]
    edges: list[DagEdgeRow]
    served: Served
    work_dir: Path


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleRun]:
    """The sample run once, priced by config, against a FakeLLM serving its offline script."""
    home = tmp_path_factory.mktemp("ag2-worker")
    with FakeLLM(load_sample().offline_script()) as llm, SyncExecutor(home=home) as ex:
        outcome = ex.run(RunSpec(
            workflow=f"{SAMPLE}:main", task=TASK,
            config={"llm": {"model": "fake-model", "base_url": llm.base_url},
                    "prices": {"fake-model": list(PRICE)}},
            env={"OPENAI_API_KEY": "test-key"}))
        store = ex.executor.store
        row = store.get_run(outcome.run_id)
        nodes, edges = store.dag(outcome.run_id)
        yield SampleRun(outcome.status, outcome.result, store.events(outcome.run_id),
                        store.llm_calls(outcome.run_id), nodes, edges, llm.served, Path(row.work_dir))


def test_the_sample_run_completes(sample_run: SampleRun) -> None:
    """The user-style AG2 workflow completes in its worker and leaves its files."""
    assert sample_run.status == "completed", sample_run.result
    assert sample_run.result["report"] == "report.md"
    assert (sample_run.work_dir / "report.md").read_text().startswith(f"# {TASK}")
    assert (sample_run.work_dir / "stats.json").is_file()


def test_the_sample_dag_is_its_two_steps(sample_run: SampleRun) -> None:
    """The DAG is the workflow's two steps, in order, both completed; every agent event is on one."""
    assert [(n.node_id, n.status, n.depth) for n in sample_run.nodes] == [
        ("research", "completed", 0), ("report", "completed", 0)]
    assert [(e.source, e.target, e.kind) for e in sample_run.edges] == [("research", "report", "next")]
    agent_types = {"agent_message", "handoff", "tool_call", "tool_result", "code_execution", "llm_call",
                   "cost_update"}
    assert {e.node_id for e in sample_run.events if e.type in agent_types} == {"research", "report"}


def test_group_chat_is_stored_in_order_on_its_node(sample_run: SampleRun) -> None:
    """Every message, tool call/result, code run and handoff is stored once, in order, on its step's node."""
    stored = [(e.node_id, v) for e in sample_run.events if (v := visible(e, first_line=True)) is not None]
    data = "[9.8, 10.1, 10.4, 9.6, 10.0, 10.3, 9.9, 10.2]"
    stats = "{'mean': 10.0375, 'stdev': 0.26692695630078284}"
    assert stored == [
        ("research", ("message", "runner", TASK)),
        ("research", ("handoff", "runner", "analyst")),
        ("research", ("tool_call", "analyst", "load_measurements", {})),
        ("research", ("handoff", "analyst", "runner")),
        ("research", ("tool_result", "runner", "load_measurements", data, False)),
        ("research", ("handoff", "runner", "coder")),
        ("research", ("message", "coder", "```python")),
        ("research", ("handoff", "coder", "runner")),
        ("research", ("code", "runner", "python", 0, stats)),
        ("research", ("message", "runner", "exitcode: 0 (execution succeeded)")),
        ("research", ("handoff", "runner", "analyst")),
        ("research", ("message", "analyst", FINDING)),
        ("report", ("message", "editor", f"Question: {TASK}")),
        ("report", ("message", "writer", REPORT)),
    ]


def test_silent_broadcasts_are_stored_on_the_same_node(sample_run: SampleRun) -> None:
    """Each group text message's silent broadcast to the two other agents is stored, on the chat's node."""
    members = {"analyst", "coder", "runner"}
    said = [e.data for e in sample_run.events
            if e.type == "agent_message" and not e.data.get("silent") and e.node_id == "research"]
    expected = sorted((d["sender"], other, d["content"]) for d in said for other in members - {d["sender"]})
    silent = [e for e in sample_run.events if e.type == "agent_message" and e.data.get("silent")]
    assert {(e.node_id, e.data["sender"]) for e in silent} == {("research", "chat_manager")}
    assert sorted((e.data["author"], e.data["recipient"], e.data["content"]) for e in silent) == expected
    assert len(silent) == 4 * 2


def test_stored_tokens_equal_what_the_endpoint_served(sample_run: SampleRun) -> None:
    """Stored calls and token totals equal the FakeLLM's own count, speaker selections included."""
    calls, served = sample_run.calls, sample_run.served
    assert served.errors == 0 and served.speaker_selection_calls == 4
    assert len(calls) == served.calls == 8
    assert sum(c.prompt_tokens for c in calls) == served.prompt_tokens
    assert sum(c.completion_tokens for c in calls) == served.completion_tokens
    assert sum(c.total_tokens for c in calls) == served.total_tokens
    per_agent = {agent: sum(c.agent == agent for c in calls) for agent in {c.agent for c in calls}}
    assert per_agent == {"speaker_selection_agent": 4, "analyst": 2, "coder": 1, "writer": 1}
    assert [c.node_id for c in calls] == ["research"] * 7 + ["report"]


def test_stored_cost_is_the_configured_price_of_what_was_served(sample_run: SampleRun) -> None:
    """Each call is priced from config; the stored total is the price of the served tokens."""
    calls, served = sample_run.calls, sample_run.served
    assert {(c.cost_source, c.cached) for c in calls} == {("config", False)}
    for call in calls:
        assert call.cost == (call.prompt_tokens * PRICE[0] + call.completion_tokens * PRICE[1]) / 1000
    expected = (served.prompt_tokens * PRICE[0] + served.completion_tokens * PRICE[1]) / 1000
    assert math.isclose(math.fsum(c.cost or 0.0 for c in calls), expected, rel_tol=1e-12)
    last = [e.data for e in sample_run.events if e.type == "cost_update"][-1]
    assert (last["prompt_tokens"], last["completion_tokens"]) == (served.prompt_tokens, served.completion_tokens)
    assert math.isclose(last["total_cost"], expected, rel_tol=1e-12) and last.get("unpriced_calls", 0) == 0


def test_the_llm_key_reaches_the_worker_but_is_never_stored(sample_run: SampleRun) -> None:
    """The key given in the worker's environment appears in no stored event."""
    assert all("test-key" not in e.to_json().decode() for e in sample_run.events)
