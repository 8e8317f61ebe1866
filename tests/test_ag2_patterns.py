"""Every way people write AG2, captured: real AG2 programs in real worker processes, one FakeLLM each.

The programs (``tests/ag2_programs/``) are written as AG2's docs write them, with no isolane code
inside; each runs as an isolane workflow through :class:`isolane.SyncExecutor`, the endpoint
given to it as any OpenAI-compatible server is (``OPENAI_BASE_URL``). For each, what isolane
stored is compared with what the FakeLLM served (calls, prompt and completion tokens) and with
what the program did (messages, tool calls and results, code runs, handoffs, retries).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from isolane import RunSpec, SyncExecutor
from isolane.schemas.envelope import Event
from isolane.serve import BackgroundServer
from isolane.testing import FakeLLM, Rule, Script, Served, fail, text, tool_call
from isolane.tracking.cost import totals_of_update
from isolane.tracking.rows import LlmCallRow
from tests.cdp import Chromium
from tests.helpers import visible as visible_event

PROGRAMS = Path(__file__).resolve().parent / "ag2_programs"


@dataclass(frozen=True)
class Program:
    task: str
    script: Script


PROGRAM_SPECS: dict[str, Program] = {
    "run_tools": Program("What is the weather and the time in Paris?", Script(Rule(
        system="travel assistant", reply=[tool_call("get_weather", {"city": "Paris"}),
                                          tool_call("get_time", {"city": "Paris"}),
                                          text("Sunny, 22 degrees, 14:05 in Paris. TERMINATE")]))),
    "a_run_async_tool": Program("What does ACME trade at?", Script(Rule(
        system="market analyst", reply=[tool_call("fetch_stock_price", {"symbol": "ACME"}),
                                        text("ACME trades at 187.20 USD. TERMINATE")]))),
    "group_handoffs": Program("Where is my order 42?", Script(
        Rule(system="triage agent", reply=[tool_call("transfer_to_support_1", {})]),
        Rule(system="order support", reply=[tool_call("lookup_order", {"order_id": "42"}),
                                            text("Your order 42 shipped yesterday.")]))),
    "run_iter_code": Program("Compute 6 times 7 in Python.", Script(Rule(
        system="helpful AI assistant", reply=[text("```python\nprint(6 * 7)\n```"),
                                              text("The answer is 42. TERMINATE")]))),
    "beta_tool": Program("Convert 100 euros to USD.", Script(Rule(
        system="currency converter", reply=[tool_call("convert", {"amount": 100, "currency": "USD"}),
                                            text("100 EUR is 110.00 USD."), text("One hundred ten US dollars.")]))),
    "cache_disk": Program("", Script(
        Rule(last="photosynthesis", reply=text("Plants turn light into sugar.")),
        Rule(last="sky", reply=text("Air scatters blue light the most.")))),
    "local_model_retry": Program("A haiku about autumn, please.", Script(Rule(
        system="write haiku", reply=[fail(429, "rate limited", retry_after_s=0.05), text("Autumn moon rises")]))),
}


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    status: str
    result: Any
    error: str | None
    events: list[Event]
    calls: list[LlmCallRow]
    served: Served

    def of(self, *types: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.type in types]


class Runs:
    """Runs each program once, in its own worker, on first use (one executor and home per module)."""

    def __init__(self, executor: SyncExecutor) -> None:
        self.executor = executor
        self._done: dict[str, StoredRun] = {}

    def __getitem__(self, name: str) -> StoredRun:
        if name not in self._done:
            program = PROGRAM_SPECS[name]
            env = {"OPENAI_API_KEY": "test-key"}
            with FakeLLM(program.script) as llm, pytest.MonkeyPatch.context() as patch:
                # Executor.submit imports a file workflow in this process to check it, and AG2
                # agents made at import time want a key; the endpoint is only the worker's.
                patch.setenv("OPENAI_API_KEY", env["OPENAI_API_KEY"])
                outcome = self.executor.run(RunSpec(
                    workflow=f"{PROGRAMS / name}.py:main", task=program.task,
                    env={**env, "OPENAI_BASE_URL": llm.base_url}))
                served = llm.served
            store = self.executor.executor.store
            self._done[name] = StoredRun(outcome.run_id, outcome.status, outcome.result, outcome.error,
                                         store.events(outcome.run_id), store.llm_calls(outcome.run_id), served)
        return self._done[name]


@pytest.fixture(scope="module")
def ag2_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ag2-patterns") / "home"


@pytest.fixture(scope="module")
def runs(ag2_home: Path) -> Iterator[Runs]:
    with SyncExecutor(home=ag2_home) as ex:
        yield Runs(ex)


def visible(run: StoredRun) -> list[tuple[Any, ...]]:
    return [v for e in run.events if (v := visible_event(e)) is not None]


def assert_billed_calls_are_what_was_served(run: StoredRun, *, cached: int = 0) -> None:
    """Stored calls not answered from cache are exactly the calls the endpoint answered, token for token."""
    assert run.status == "completed", run.error
    billed = [c for c in run.calls if not c.cached]
    assert len(billed) == run.served.calls and len(run.calls) - len(billed) == cached
    assert sum(c.prompt_tokens for c in billed) == run.served.prompt_tokens
    assert sum(c.completion_tokens for c in billed) == run.served.completion_tokens
    assert len(run.of("llm_call")) == len(run.calls)


def test_run_with_tools_then_process(runs: Runs) -> None:
    """agent.run(tools) + response.process(): the thread's tool calls, results and messages are stored."""
    run = runs["run_tools"]
    assert_billed_calls_are_what_was_served(run)
    assert run.served.calls == 3
    assert visible(run) == [
        ("message", "user", "What is the weather and the time in Paris?"),
        ("tool_call", "assistant", "get_weather", {"city": "Paris"}),
        ("tool_result", "user", "get_weather", "The weather in Paris is sunny, 22 degrees.", False),
        ("tool_call", "assistant", "get_time", {"city": "Paris"}),
        ("tool_result", "user", "get_time", "It is 14:05 in Paris.", False),
        ("message", "assistant", "Sunny, 22 degrees, 14:05 in Paris. TERMINATE"),
    ]


def test_a_run_with_an_async_tool(runs: Runs) -> None:
    """await agent.a_run() + await response.process(): the async tool's call and result are stored."""
    run = runs["a_run_async_tool"]
    assert_billed_calls_are_what_was_served(run)
    assert visible(run) == [
        ("message", "user", "What does ACME trade at?"),
        ("tool_call", "analyst", "fetch_stock_price", {"symbol": "ACME"}),
        ("tool_result", "user", "fetch_stock_price", "ACME: 187.20 USD", False),
        ("message", "analyst", "ACME trades at 187.20 USD. TERMINATE"),
    ]


def test_run_group_chat_with_a_pattern_and_handoffs(runs: Runs) -> None:
    """run_group_chat(DefaultPattern): every handoff, the transfer tool, the agent's tool and messages."""
    run = runs["group_handoffs"]
    assert_billed_calls_are_what_was_served(run)
    executor = "_Group_Tool_Executor"
    assert visible(run) == [
        ("message", "user", "Where is my order 42?"),
        ("handoff", "user", "triage"),
        ("tool_call", "triage", "transfer_to_support_1", {}),
        ("handoff", "triage", executor),
        ("tool_result", executor, "transfer_to_support_1", {"agent_name": "support"}, False),
        ("handoff", executor, "support"),
        ("tool_call", "support", "lookup_order", {"order_id": "42"}),
        ("handoff", "support", executor),
        ("tool_result", executor, "lookup_order", "Order 42 shipped yesterday.", False),
        ("handoff", executor, "support"),
        ("message", "support", "Your order 42 shipped yesterday."),
    ]
    # The manager's broadcasts to the other members are stored too, as silent messages.
    assert len([d for d in run.of("agent_message") if d.get("silent")]) == 2 * 3


def test_run_iter_with_code_execution(runs: Runs) -> None:
    """Stepping through run_iter: the code block run and every message are stored; iteration is unchanged."""
    run = runs["run_iter_code"]
    assert_billed_calls_are_what_was_served(run)
    assert run.result == ["TextEvent", "TextEvent", "GenerateCodeExecutionReplyEvent", "TextEvent", "TextEvent",
                          "TerminationEvent"]
    assert visible(run) == [
        ("message", "user_proxy", "Compute 6 times 7 in Python."),
        ("message", "coder", "```python\nprint(6 * 7)\n```"),
        ("code", "user_proxy", "python", 0, "42"),
        ("message", "user_proxy", "exitcode: 0 (execution succeeded)\nCode output: 42\n"),
        ("message", "coder", "The answer is 42. TERMINATE"),
    ]


def test_beta_agent_with_a_tool(runs: Runs) -> None:
    """autogen.beta Agent: agent.ask then reply.ask give priced llm_calls, the tool's call and result."""
    run = runs["beta_tool"]
    assert_billed_calls_are_what_was_served(run)
    assert run.result == ["100 EUR is 110.00 USD.", "One hundred ten US dollars."]
    assert {(c.agent, c.model, c.cost_source) for c in run.calls} == {("converter", "gpt-4o-mini", "ag2_price_table")}
    assert all(c.cost is not None and c.cost > 0 for c in run.calls)
    assert visible(run) == [
        ("message", "user", "Convert 100 euros to USD."),
        ("tool_call", "converter", "convert", {"amount": 100, "currency": "USD"}),
        ("tool_result", "converter", "convert", "110.00 USD", False),
        ("message", "converter", "100 EUR is 110.00 USD."),
        ("message", "user", "Say it in five words."),
        ("message", "converter", "One hundred ten US dollars."),
    ]


def test_cache_hit_is_a_cached_call_whose_tokens_are_not_billed(runs: Runs) -> None:
    """Cache.disk() shared by three chats: the repeated question is one cached call at cost 0, unbilled."""
    run = runs["cache_disk"]
    assert_billed_calls_are_what_was_served(run, cached=1)
    assert [(c.cached, c.cost_source) for c in run.calls] == [
        (False, "ag2_price_table"), (False, "ag2_price_table"), (True, "cache")]
    assert run.calls[2].cost == 0.0 and run.calls[2].prompt_tokens == run.calls[0].prompt_tokens
    last = run.of("cost_update")[-1]
    assert (last["prompt_tokens"], last["completion_tokens"]) == (run.served.prompt_tokens,
                                                                  run.served.completion_tokens)
    assert (last["calls"], last["cached_calls"]) == (3, 1)


def test_a_429_then_success_is_one_retry_event_and_one_unpriced_call(runs: Runs) -> None:
    """The SDK's own retry after a 429 is an llm_retry naming status, agent and model; the call is unpriced."""
    run = runs["local_model_retry"]
    assert_billed_calls_are_what_was_served(run)
    assert dict(run.served.errors_by_status) == {429: 1}
    (retry,) = run.of("llm_retry")
    assert (retry["status"], retry["agent"], retry["model"], retry["endpoint"]) == (
        429, "writer", "llama3.1-local", "/chat/completions")
    assert retry["retry_in_s"] == pytest.approx(0.05, abs=0.01)
    (call,) = run.calls
    assert (call.cost, call.cost_source) == (None, "unknown_model")
    types = [e.type for e in run.events]
    assert types.index("llm_retry") < types.index("llm_call")


# -- every reader says the same ------------------------------------------------------------------


def _cli_json(*args: str, home: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in ("ISOLANE_DB_URL", "ISOLANE_HOME")}
    proc = subprocess.run([sys.executable, "-m", "isolane.cli", *args, "--home", str(home), "--json"],
                          env=env, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _facts(d: Mapping[str, Any], cost_key: str = "cost") -> tuple[Any, ...]:
    """What every reader must agree on: billed tokens, cached calls, unpriced calls, cost."""
    return (d["calls"], d["prompt_tokens"], d["completion_tokens"], d["cached_calls"], d["unpriced_calls"],
            d[cost_key])


@pytest.fixture(scope="module")
def rest(ag2_home: Path) -> Iterator[httpx.Client]:
    """The REST API (what the page reads its cost from) over the same home as the runs."""
    with BackgroundServer(executor_options={"home": ag2_home}) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _truth(name: str, run: StoredRun) -> tuple[Any, ...]:
    """The facts as the endpoint and the program know them: calls, billed tokens, cached, unpriced."""
    cached = 1 if name == "cache_disk" else 0
    unpriced = len(run.calls) if name == "local_model_retry" else 0
    return (run.served.calls + cached, run.served.prompt_tokens, run.served.completion_tokens, cached, unpriced)


@pytest.mark.parametrize("name", list(PROGRAM_SPECS))
def test_cli_rest_page_and_the_worker_agree(name: str, runs: Runs, ag2_home: Path, rest: httpx.Client) -> None:
    """isolane cost and show, REST /cost (the page's cost data) and the worker's last cost_update agree."""
    run = runs[name]
    readers = {
        "cli cost": _facts(_cli_json("cost", run.run_id, home=ag2_home)["total"]),
        "cli show": _facts(_cli_json("show", run.run_id, home=ag2_home)["cost"]),
        "rest": _facts(rest.get(f"/api/runs/{run.run_id}/cost").json()),
    }
    assert len(set(readers.values())) == 1, readers
    facts, truth = readers["rest"], _truth(name, run)
    assert facts[:5] == truth
    if truth[4]:
        assert facts[5] is None  # an unpriced-only run costs null everywhere, never 0.0
    else:
        assert facts[5] == pytest.approx(sum(c.cost or 0.0 for c in run.calls), rel=1e-9) and facts[5] > 0
    update = totals_of_update(run.of("cost_update")[-1])
    assert (update.calls, update.prompt_tokens, update.completion_tokens, update.cached_calls,
            update.unpriced_calls) == truth
    assert update.cost == (None if truth[4] else pytest.approx(facts[5], rel=1e-9))


def test_compare_agrees_with_the_other_readers(runs: Runs, ag2_home: Path, rest: httpx.Client) -> None:
    """isolane compare over every run gives each run the facts REST /cost gives it."""
    stored = {name: runs[name] for name in PROGRAM_SPECS}
    compared = {row["run_id"]: row for row in
                _cli_json("compare", *(r.run_id for r in stored.values()), home=ag2_home)["runs"]}
    for name, run in stored.items():
        assert _facts(compared[run.run_id], "cost_usd") == _facts(rest.get(f"/api/runs/{run.run_id}/cost").json()), name
        assert _facts(compared[run.run_id], "cost_usd")[:5] == _truth(name, run), name


@pytest.mark.parametrize("name", ["cache_disk", "local_model_retry"])
def test_the_page_shows_the_rollup_rest_gives(name: str, runs: Runs, rest: httpx.Client, chromium: Chromium) -> None:
    """The page's cost panel holds the REST /cost answer: the cached call, and null for an unpriced run."""
    run = runs[name]
    chromium.navigate(f"{str(rest.base_url).rstrip('/')}/runs/{run.run_id}")
    chromium.wait_for("window.isolanePage.state() && window.isolanePage.state().cost !== null")
    assert chromium.evaluate("window.isolanePage.state().cost") == rest.get(f"/api/runs/{run.run_id}/cost").json()
    total = chromium.evaluate("document.getElementById('cost-total').textContent")
    if name == "cache_disk":
        assert total.startswith("$") and total.endswith("· 1 cached")
    else:
        assert total == "unpriced (1 calls)"
