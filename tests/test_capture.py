"""AG2 capture: real AG2 agents against the fake LLM server, a list-backed sink, no mocks."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import openai
import orjson
import pytest
from autogen import (
    ConversableAgent,
    GroupChat,
    GroupChatManager,
    LLMConfig,
    register_function,
    runtime_logging,
)
from autogen.beta import Agent as BetaAgent
from autogen.coding import LocalCommandLineCodeExecutor
from autogen.events.agent_events import InputRequestEvent
from autogen.io.base import IOStream
from autogen.logger.base_logger import BaseLogger
from autogen.oai.openai_utils import OAI_PRICE1K

import isolane.capture
from isolane.capture import CapturingCodeExecutor, capture_ag2
from isolane.errors import ConfigError, RunStateError
from isolane.schemas.payloads import validate_payload
from isolane.testing import FakeLLM, ListSink, Rule, Script, text, tool_call

TASK = "Add 2 and 3, then print the sum."
AG2_TURN_SCOPE = BetaAgent.__dict__["_turn_scope"]  # as AG2 defines it, before any capture


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@dataclass
class GroupRun:
    sink: ListSink
    llm: FakeLLM
    agents: dict[str, ConversableAgent]


def _group_script() -> Script:
    return Script(
        Rule(system="You are planner", reply=[tool_call("add", {"a": 2, "b": 3}), text("TERMINATE")]),
        Rule(system="You are coder", reply=text("```python\nprint(2 + 3)\n```")),
        Rule.speakers("planner", "coder", "executor", "planner"),
    )


def _run_group_chat(llm: FakeLLM, work_dir: Path, *, model: str = "fake-model") -> dict[str, ConversableAgent]:
    """Three agents and a manager choosing speakers with the LLM: a tool call, a code block, TERMINATE."""
    config = LLMConfig(llm.config(model))
    planner = ConversableAgent("planner", system_message="You are planner.", llm_config=config,
                               human_input_mode="NEVER")
    coder = ConversableAgent("coder", system_message="You are coder.", llm_config=config, human_input_mode="NEVER")
    executor = ConversableAgent("executor", llm_config=False, human_input_mode="NEVER",
                                code_execution_config={"executor": LocalCommandLineCodeExecutor(work_dir=work_dir)})
    register_function(add, caller=planner, executor=executor, description="Add two integers.")
    chat = GroupChat(agents=[planner, coder, executor], messages=[], max_round=10)
    manager = GroupChatManager(chat, llm_config=config)
    executor.initiate_chat(manager, message=TASK)
    return {"planner": planner, "coder": coder, "executor": executor, "chat_manager": manager}


@pytest.fixture
def group_run(tmp_path: Path) -> Iterator[GroupRun]:
    sink = ListSink()
    with FakeLLM(_group_script()) as llm:
        with capture_ag2(sink):
            agents = _run_group_chat(llm, tmp_path)
        yield GroupRun(sink, llm, agents)


def _summary(event_type: str, d: dict[str, Any]) -> tuple[Any, ...]:
    if event_type == "agent_message":
        return ("message", d["sender"], d["content"])
    if event_type == "handoff":
        return ("handoff", d["from_agent"], d["to_agent"])
    if event_type == "tool_call":
        return ("tool_call", d["agent"], d["tool"], d["call_id"], d["arguments"])
    if event_type == "tool_result":
        return ("tool_result", d["agent"], d["tool"], d["call_id"], d["content"], d.get("is_error", False))
    if event_type == "code_execution":
        return ("code", d["agent"], d["language"], d["code"], d["exit_code"], d["output"].strip())
    raise AssertionError(event_type)


def test_public_names_are_frozen() -> None:
    """isolane.capture exports exactly its documented API."""
    assert sorted(isolane.capture.__all__) == sorted([
        "COST_SOURCES", "CaptureIOStream", "CaptureLogger", "CaptureSession", "CapturingCodeExecutor",
        "CostTotals", "PriceBook", "Quote", "Sink", "capture_ag2",
    ])


def test_group_chat_is_captured_in_order(group_run: GroupRun) -> None:
    """Every message, tool call, tool result, code execution and handoff arrives once, in order."""
    visible = [
        _summary(e.type, e.data) for e in group_run.sink.events
        if e.type in {"handoff", "tool_call", "tool_result", "code_execution"}
        or (e.type == "agent_message" and not e.data.get("silent"))
    ]
    assert visible == [
        ("message", "executor", TASK),
        ("handoff", "executor", "planner"),
        ("tool_call", "planner", "add", "call_1", {"a": 2, "b": 3}),
        ("handoff", "planner", "executor"),
        ("tool_result", "executor", "add", "call_1", "5", False),
        ("handoff", "executor", "coder"),
        ("message", "coder", "```python\nprint(2 + 3)\n```"),
        ("handoff", "coder", "executor"),
        ("code", "executor", "python", "print(2 + 3)", 0, "5"),
        ("message", "executor", "exitcode: 0 (execution succeeded)\nCode output: 5\n"),
        ("handoff", "executor", "planner"),
        ("message", "planner", "TERMINATE"),
    ]


def test_every_captured_event_fits_the_wire_contract(group_run: GroupRun) -> None:
    """Each captured payload validates against its declared schema and survives JSON encoding."""
    assert group_run.sink.events
    for event in group_run.sink.events:
        validate_payload(event.type, orjson.dumps(event.data))
        assert event.node_id is None


def test_silent_group_broadcasts_are_captured(group_run: GroupRun) -> None:
    """The manager's silent broadcasts of each message reach the sink as silent agent messages."""
    silent = [(e.data["recipient"], e.data["content"], e.data.get("author")) for e in group_run.sink.of("agent_message")
              if e.data.get("silent")]
    assert ("planner", "```python\nprint(2 + 3)\n```", "coder") in silent
    assert ("executor", "```python\nprint(2 + 3)\n```", "coder") in silent
    assert all(e.data["sender"] == "chat_manager" for e in group_run.sink.of("agent_message") if e.data.get("silent"))


def test_llm_call_tokens_equal_what_the_server_served(group_run: GroupRun) -> None:
    """Captured llm_call token totals equal the endpoint's, speaker-selection calls included."""
    calls = [e.data for e in group_run.sink.of("llm_call")]
    served = group_run.llm.served
    assert len(calls) == served.calls == 7
    assert sum(c["prompt_tokens"] for c in calls) == served.prompt_tokens
    assert sum(c["completion_tokens"] for c in calls) == served.completion_tokens
    assert sum(c["total_tokens"] for c in calls) == served.total_tokens
    assert [c["agent"] for c in calls] == ["speaker_selection_agent", "planner", "speaker_selection_agent", "coder",
                                          "speaker_selection_agent", "speaker_selection_agent", "planner"]
    assert sum(c["agent"] == "speaker_selection_agent" for c in calls) == served.speaker_selection_calls == 4
    last_update = group_run.sink.of("cost_update")[-1].data
    assert (last_update["prompt_tokens"], last_update["completion_tokens"]) == (served.prompt_tokens,
                                                                                served.completion_tokens)
    # Each llm_call is followed directly by its cost_update.
    types = group_run.sink.types()
    assert all(types[i + 1] == "cost_update" for i, t in enumerate(types) if t == "llm_call")


def test_unknown_model_costs_none_and_warns_once(group_run: GroupRun) -> None:
    """A model nobody prices gives cost None / unknown_model, and one error event for that model."""
    calls = [e.data for e in group_run.sink.of("llm_call")]
    assert {(c["cost"], c["cost_source"]) for c in calls} == {(None, "unknown_model")}
    warnings = [e.data for e in group_run.sink.of("error") if e.data.get("error_type") == "UnknownModelPrice"]
    assert len(warnings) == 1 and warnings[0]["model"] == "fake-model"
    assert "prices=" in warnings[0]["message"]
    assert group_run.sink.of("cost_update")[-1].data.get("unpriced_calls") == 7


def test_configured_price_gives_the_computed_cost(tmp_path: Path) -> None:
    """prices={model: (prompt, completion)} prices every call from config, totals included."""
    sink = ListSink()
    with FakeLLM(_group_script()) as llm:
        with capture_ag2(sink, prices={"fake-model": (1.5, 4.0)}) as session:
            _run_group_chat(llm, tmp_path)
        served = llm.served
    calls = [e.data for e in sink.of("llm_call")]
    for call in calls:
        assert call["cost_source"] == "config"
        assert call["cost"] == pytest.approx((call["prompt_tokens"] * 1.5 + call["completion_tokens"] * 4.0) / 1000)
    expected_total = (served.prompt_tokens * 1.5 + served.completion_tokens * 4.0) / 1000
    assert sink.of("cost_update")[-1].data["total_cost"] == pytest.approx(expected_total)
    assert session.totals.total_cost == pytest.approx(expected_total) and session.totals.unpriced_calls == 0
    assert not [e for e in sink.of("error") if e.data.get("error_type") == "UnknownModelPrice"]


def test_ag2_price_table_is_used_for_known_models() -> None:
    """A model in AG2's OAI_PRICE1K is priced from that table (cost_source ag2_price_table)."""
    sink = ListSink()
    with FakeLLM(Script(default="It is 4.")) as llm, capture_ag2(sink):
        config = LLMConfig(llm.config("gpt-4o-mini"))
        asker = ConversableAgent("asker", llm_config=False, human_input_mode="NEVER")
        answerer = ConversableAgent("answerer", llm_config=config, human_input_mode="NEVER")
        asker.initiate_chat(answerer, message="What is 2 + 2?", max_turns=1)
    (call,) = [e.data for e in sink.of("llm_call")]
    prompt_price, completion_price = cast(tuple[float, float], OAI_PRICE1K["gpt-4o-mini"])
    assert call["cost_source"] == "ag2_price_table" and call["agent"] == "answerer"
    assert call["cost"] == pytest.approx((call["prompt_tokens"] * prompt_price
                                          + call["completion_tokens"] * completion_price) / 1000)


def test_bad_price_is_refused() -> None:
    """A malformed price fails at once with ConfigError."""
    with pytest.raises(ConfigError, match="non-negative"), capture_ag2(ListSink(), prices={"m": (-1.0, 0.0)}):
        pass
    assert not runtime_logging.logging_enabled()


def test_everything_is_uninstalled_on_exit(group_run: GroupRun) -> None:
    """After the block: runtime logging off, IOStream defaults restored, hooks and wrappers removed,
    the beta turn seam and the watched loggers as they were."""
    assert not runtime_logging.logging_enabled()
    assert not isinstance(IOStream.get_global_default(), isolane.capture.CaptureIOStream)
    assert not isinstance(IOStream.get_default(), isolane.capture.CaptureIOStream)
    for agent in group_run.agents.values():
        for hooks in agent.hook_lists.values():
            assert not [h for h in hooks if h.__name__ in ("capture_silent_send", "name_llm_caller",
                                                           "forget_llm_caller")]
    executor = group_run.agents["executor"].code_executor
    assert isinstance(executor, LocalCommandLineCodeExecutor)
    assert BetaAgent.__dict__["_turn_scope"] is AG2_TURN_SCOPE
    for name in ("httpx", "openai._base_client"):
        watched = logging.getLogger(name)
        assert watched.level == logging.NOTSET
        assert not [f for f in watched.filters if type(f).__module__.startswith("isolane")]


def test_a_failing_llm_call_is_an_error_event() -> None:
    """An HTTP error from the endpoint becomes an LlmCallFailed error event, not an llm_call."""
    sink = ListSink()
    with FakeLLM(Script(default="fine")) as llm:
        llm.fail_next(400, error="rejected by the fake")
        with capture_ag2(sink):
            asker = ConversableAgent("asker", llm_config=False, human_input_mode="NEVER")
            answerer = ConversableAgent("answerer", llm_config=LLMConfig(llm.config()), human_input_mode="NEVER")
            with pytest.raises(openai.BadRequestError):
                asker.initiate_chat(answerer, message="hi", max_turns=1)
    (error,) = [e.data for e in sink.of("error") if e.data.get("error_type") == "LlmCallFailed"]
    assert error["agent"] == "answerer" and error["model"] == "fake-model"
    assert not sink.of("llm_call")


def test_failed_code_and_tool_errors_keep_their_status(tmp_path: Path) -> None:
    """A non-zero exit code and a raising tool are captured as such."""

    def explode(x: int) -> int:
        """Always fails."""
        raise ValueError(f"cannot handle {x}")

    script = Script(
        Rule(system="You are caller", reply=[tool_call("explode", {"x": 7}),
                                             text("```python\nimport sys\nsys.exit(3)\n```"), text("TERMINATE")]),
    )
    sink = ListSink()
    with FakeLLM(script) as llm, capture_ag2(sink):
        caller = ConversableAgent("caller", system_message="You are caller.", llm_config=LLMConfig(llm.config()),
                                  human_input_mode="NEVER")
        runner = ConversableAgent("runner", llm_config=False, human_input_mode="NEVER",
                                  code_execution_config={"executor": LocalCommandLineCodeExecutor(work_dir=tmp_path)})
        register_function(explode, caller=caller, executor=runner, description="Always fails.")
        runner.initiate_chat(caller, message="start", max_turns=3)
    (result,) = [e.data for e in sink.of("tool_result")]
    assert result["is_error"] is True and "cannot handle 7" in result["content"]
    (code,) = [e.data for e in sink.of("code_execution")]
    assert code["exit_code"] == 3 and code["agent"] == "runner"


def test_human_input_request_is_captured_and_answered_by_the_previous_stream() -> None:
    """An agent asking a human emits human_input_request; the stream installed before answers it."""

    class Answering:
        def __init__(self) -> None:
            self.prompts: list[str] = []

        def print(self, *objects: Any, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
            pass

        def send(self, message: Any) -> None:
            pass

        def input(self, prompt: str = "", *, password: bool = False) -> str:
            self.prompts.append(prompt)
            return "exit"

    answering = Answering()
    sink = ListSink()
    with FakeLLM(Script(default="Hello human.")) as llm, IOStream.set_default(answering), capture_ag2(sink):
        human = ConversableAgent("human", llm_config=False, human_input_mode="ALWAYS")
        bot = ConversableAgent("bot", llm_config=LLMConfig(llm.config()), human_input_mode="NEVER")
        human.initiate_chat(bot, message="hi")
    (request,) = [e.data for e in sink.of("human_input_request")]
    assert answering.prompts == [request["prompt"]] and request.get("kind", "text") == "text"


def test_bare_threads_reach_the_capture_stream() -> None:
    """Output sent from threads without a context default is captured (global default), thread-safely."""
    sink = ListSink()
    with capture_ag2(sink):
        threads = [threading.Thread(target=lambda i=i: IOStream.get_default().print("line", i)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lines = sorted(e.data["text"] for e in sink.of("output"))
    assert lines == sorted(f"line {i}\n" for i in range(8))


def test_agents_made_before_capture_can_be_attached(tmp_path: Path) -> None:
    """attach() hooks an agent created earlier: its code executor is wrapped, then unwrapped."""
    runner = ConversableAgent("runner", llm_config=False, human_input_mode="NEVER",
                              code_execution_config={"executor": LocalCommandLineCodeExecutor(work_dir=tmp_path)})
    sink = ListSink()
    with capture_ag2(sink) as session:
        session.attach_all([runner])
        session.attach(runner)  # idempotent
        assert isinstance(runner.code_executor, CapturingCodeExecutor)
        with pytest.raises(ConfigError, match="ConversableAgent"):
            session.attach(object())
    assert isinstance(runner.code_executor, LocalCommandLineCodeExecutor)
    with pytest.raises(RunStateError, match="ended"):
        session.attach(runner)


def test_only_one_capture_per_process() -> None:
    """A second capture while one is active raises RunStateError and leaves the first intact."""
    with capture_ag2(ListSink()):
        with pytest.raises(RunStateError, match="already active"), capture_ag2(ListSink()):
            pass
        assert runtime_logging.logging_enabled()
    assert not runtime_logging.logging_enabled()


def test_a_runtime_logger_running_before_keeps_its_records_and_comes_back() -> None:
    """A logger started before capture receives every call meanwhile and is active again after."""

    class Counting(BaseLogger):
        def __init__(self) -> None:
            self.completions = 0
            self.stopped = False

        def start(self) -> str:
            return "counting"

        def log_chat_completion(self, *args: Any, **kwargs: Any) -> None:
            self.completions += 1

        def log_new_agent(self, agent: Any, init_args: dict[str, Any]) -> None:
            pass

        def log_event(self, source: Any, name: str, **kwargs: Any) -> None:
            pass

        def log_new_wrapper(self, wrapper: Any, init_args: Any) -> None:
            pass

        def log_new_client(self, client: Any, wrapper: Any, init_args: Any) -> None:
            pass

        def log_function_use(self, source: Any, function: Any, args: Any, returns: Any) -> None:
            pass

        def stop(self) -> None:
            self.stopped = True

        def get_connection(self) -> None:
            return None

    counting = Counting()
    runtime_logging.start(logger=counting)
    try:
        sink = ListSink()
        with FakeLLM(Script(default="ok")) as llm, capture_ag2(sink):
            asker = ConversableAgent("asker", llm_config=False, human_input_mode="NEVER")
            answerer = ConversableAgent("answerer", llm_config=LLMConfig(llm.config()), human_input_mode="NEVER")
            asker.initiate_chat(answerer, message="hi", max_turns=1)
        assert counting.completions == len(sink.of("llm_call")) == 1
        assert runtime_logging.logging_enabled() and runtime_logging.autogen_logger is counting
        assert not counting.stopped
    finally:
        runtime_logging.stop()


def test_echo_forwards_output_to_the_previous_stream() -> None:
    """With echo on, every AG2 event also reaches the stream that was the default before capture."""

    class Recording:
        def __init__(self) -> None:
            self.sent: list[Any] = []

        def print(self, *objects: Any, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
            self.sent.append(sep.join(map(str, objects)))

        def send(self, message: Any) -> None:
            self.sent.append(message)

        def input(self, prompt: str = "", *, password: bool = False) -> str:
            return ""

    previous = Recording()
    sink = ListSink()
    with FakeLLM(Script(default="Echoed answer.")) as llm, IOStream.set_default(previous), \
            capture_ag2(sink) as session:
        session.echo = True
        asker = ConversableAgent("asker", llm_config=False, human_input_mode="NEVER")
        answerer = ConversableAgent("answerer", llm_config=LLMConfig(llm.config()), human_input_mode="NEVER")
        asker.initiate_chat(answerer, message="Say something.", max_turns=1)
        session.echo = False
        IOStream.get_default().print("not echoed")
    echoed = [getattr(m.content, "content", None) for m in previous.sent if getattr(m, "type", "") == "text"]
    assert echoed == ["Say something.", "Echoed answer."]
    assert "not echoed" not in previous.sent
    assert [e.data["content"] for e in sink.of("agent_message")] == ["Say something.", "Echoed answer."]


# -- AG2's run() family: its own threads and streams -----------------------------------------------


def _travel(llm: FakeLLM) -> ConversableAgent:
    def get_weather(city: str) -> str:
        """Get the weather of a city."""
        return f"{city}: sunny"

    return ConversableAgent("assistant", system_message="You are travel.", llm_config=LLMConfig(llm.config()),
                            functions=[get_weather])


def _travel_script() -> Script:
    return Script(Rule(system="You are travel", reply=[tool_call("get_weather", {"city": "Oslo"}),
                                                       text("Oslo is sunny. TERMINATE")]))


def test_run_events_reach_the_caller_unchanged_and_in_order() -> None:
    """With capture on, response.events yields the same events, in the same order, as without it."""

    def event_names(capture: bool) -> tuple[list[str], ListSink]:
        sink = ListSink()
        with FakeLLM(_travel_script()) as llm:
            agent = _travel(llm)
            with (capture_ag2(sink) if capture else contextlib.nullcontext()):
                response = agent.run(message="Weather in Oslo?", max_turns=2, user_input=False)
                names = [type(event).__name__ for event in response.events]
        return names, sink

    plain, _ = event_names(capture=False)
    captured, sink = event_names(capture=True)
    assert captured == plain and "ToolCallEvent" in plain and plain[-1] == "RunCompletionEvent"
    assert [e.data["tool"] for e in sink.of("tool_call")] == ["get_weather"]
    assert [e.data["content"] for e in sink.of("tool_result")] == ["Oslo: sunny"]
    (completion,) = [e.data for e in sink.of("custom") if e.data["name"] == "ag2.run_completion"]
    assert set(completion["fields"]) == {"summary", "last_speaker"}  # not the whole history again


def test_a_run_asks_the_human_through_the_worker_channel_when_one_is_set() -> None:
    """In a worker (iostream.human set), input asked in AG2's run() thread goes there, not to the caller."""
    asked: list[str] = []

    def human(prompt: str, *, password: bool = False) -> str:
        asked.append(prompt)
        return "exit"

    sink = ListSink()
    with FakeLLM(Script(default="Hello.")) as llm, capture_ag2(sink) as session:
        assert session.iostream is not None
        session.iostream.human = human
        agent = ConversableAgent("greeter", llm_config=LLMConfig(llm.config()))
        response = agent.run(message="hi", max_turns=2, user_input=True)
        seen = [type(event).__name__ for event in response.events]
    assert len(asked) == 1 and InputRequestEvent.__name__ not in seen
    assert [e.data["content"] for e in sink.of("agent_message")] == ["hi", "Hello."]


def test_retries_are_observed_without_new_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """A retried 429 is an llm_retry event; no httpx/openai record reaches the root handlers."""
    sink = ListSink()
    with FakeLLM(Script(default="fine")) as llm, capture_ag2(sink):
        llm.fail_next(429, times=2, retry_after_s=0.01)
        asker = ConversableAgent("asker", llm_config=False, human_input_mode="NEVER")
        answerer = ConversableAgent("answerer", llm_config=LLMConfig(llm.config("m-1")), human_input_mode="NEVER")
        asker.initiate_chat(answerer, message="hi", max_turns=1)
    retries = [e.data for e in sink.of("llm_retry")]
    assert [(r["status"], r["agent"], r["model"]) for r in retries] == [(429, "answerer", "m-1")] * 2
    assert len(sink.of("llm_call")) == 1
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "openai"))]
