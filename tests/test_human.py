"""Human input across the process boundary: real workers ask, the parent answers."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest

from isolane import Executor, RunHandle, RunSpec
from isolane.errors import ConfigError, RunStateError
from isolane.executor.human import pending_requests, recorded_answers
from isolane.schemas.envelope import Event
from isolane.testing import FakeLLM, Script
from isolane.worker.human import (
    HumanChannel,
    HumanInputTimeout,
    HumanInputUnavailable,
    parse_approval,
)
from isolane.workflow import registered_workflows
from tests.helpers import executor_on

pytestmark = pytest.mark.anyio

with warnings.catch_warnings():
    # Importing AG2 (through the workflow registry) can warn about optional third-party extras
    # installed in the environment; do it once here, outside every test's strict filter.
    warnings.simplefilter("ignore")
    registered_workflows()


async def _next_request(run: RunHandle, since: int = 0) -> Event:
    with anyio.fail_after(30):
        async for event in run.events(since=since, types=["human_input_request"]):
            return event
    raise AssertionError("the run ended without asking")


# -- the worker's channel, in process ---------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        self.node: str | None = None
        self.asked = threading.Event()

    def emit(self, type_: str, data: dict[str, Any], node_id: str | None) -> int:
        self.events.append((type_, data, node_id))
        if type_ == "human_input_request":
            self.asked.set()
        return len(self.events)


def _channel(**options: Any) -> tuple[HumanChannel, _Recorder]:
    rec = _Recorder()
    return HumanChannel(rec.emit, current_node=lambda: rec.node, **options), rec


def test_request_ids_are_deterministic_per_node() -> None:
    """The n-th question in a node is '<node>:<n>', so a replaying worker asks the same ids."""
    channel, rec = _channel(answers={"run:1": "a", "step_1:1": "b", "step_1:2": "c"})
    assert channel.ask("q") == "a"
    rec.node = "step_1"
    assert [channel.ask("q"), channel.ask("q")] == ["b", "c"]
    assert rec.events == []  # answered from the log: nothing asked again


def test_answer_wakes_the_waiting_question_and_is_recorded() -> None:
    """deliver() from another thread wakes ask(); the response event names the source."""
    channel, rec = _channel()
    got: list[str] = []
    asker = threading.Thread(target=lambda: got.append(channel.ask("Name?")))
    asker.start()
    assert rec.asked.wait(5)
    assert channel.waiting == ["run:1"]
    assert channel.deliver("nope", "x") is False
    assert channel.deliver("run:1", "Ada", source="test") is True
    asker.join(5)
    assert got == ["Ada"]
    assert [t for t, _, _ in rec.events] == ["human_input_request", "human_input_response"]
    assert rec.events[1][1] == {"request_id": "run:1", "timed_out": False, "text": "Ada", "source": "test"}


def test_parent_gone_wakes_the_question_with_a_clear_error() -> None:
    """When the control pipe closes, a waiting question raises HumanInputUnavailable, and so do new ones."""
    channel, rec = _channel()
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            channel.ask("Name?")
        except HumanInputUnavailable as exc:
            errors.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    assert rec.asked.wait(5)
    channel.disconnect()
    asker.join(5)
    assert len(errors) == 1 and "resume the run" in str(errors[0])
    with pytest.raises(HumanInputUnavailable):
        channel.ask("again?")
    assert [t for t, _, _ in rec.events] == ["human_input_request"]  # still pending in the log


def test_timeout_returns_the_default_or_raises() -> None:
    """A timed-out question returns its default, else raises HumanInputTimeout; both are recorded."""
    channel, rec = _channel(timeout=0.05)
    assert channel.ask("q", default="fallback") == "fallback"
    with pytest.raises(HumanInputTimeout, match="human_timeout"):
        channel.ask("q")
    responses = [d for t, d, _ in rec.events if t == "human_input_response"]
    assert [r["timed_out"] for r in responses] == [True, True]
    with pytest.raises(ConfigError, match="positive"):
        channel.ask("q", timeout=0)


def test_pending_and_recorded_answers_from_events() -> None:
    """Pending = requests minus responses (a re-asked request once); answers skip timeouts."""
    def ev(seq: int, type_: str, **data: Any) -> Event:
        return Event(run_id="r", seq=seq, ts=0.0, type=type_, data=data)

    log = [ev(1, "human_input_request", request_id="a", prompt="A?"),
           ev(2, "human_input_request", request_id="b", prompt="B?"),
           ev(3, "human_input_response", request_id="a", text="yes"),
           ev(4, "human_input_request", request_id="b", prompt="B again?"),
           ev(5, "human_input_request", request_id="c", prompt="C?"),
           ev(6, "human_input_response", request_id="c", timed_out=True)]
    assert [(p.request_id, p.prompt, p.seq) for p in pending_requests(log)] == [("b", "B again?", 4)]
    assert recorded_answers(log) == {"a": "yes"}
    assert parse_approval(" Approved. ") and parse_approval("lgtm") and not parse_approval("no, redo")


# -- real workers ------------------------------------------------------------------------------------


async def test_answer_reaches_the_workflow_and_the_run_completes(backend_name: str, home: Path) -> None:
    """ctx.ask in a worker emits a request; Executor.answer sends the text through the control
    channel (the control pipe; through the relay actor on Ray)."""
    async with executor_on(backend_name, home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.human:asks", config={"capture_ag2": False}))
        request = await _next_request(run)
        assert request.node_id == "review" and request.data["request_id"] == "review:1"
        (pending,) = await run.pending_requests()
        assert pending.request_id == "review:1" and pending.prompt == "What should the report say?"
        with pytest.raises(RunStateError, match="no pending human-input request 'other'"):
            await run.answer("other", "x")
        await ex.answer(run.run_id, "review:1", "all good")
        with pytest.raises(RunStateError, match="already answered|no pending"):
            await run.answer("review:1", "twice")
        outcome = await run.wait()
        assert outcome.status == "completed" and outcome.result == {"answer": "all good"}
        assert await run.pending_requests() == []
        (response,) = ex.store.events(run.run_id, types=["human_input_response"])
        assert response.data == {"request_id": "review:1", "text": "all good", "timed_out": False,
                                 "source": "api"}
        with pytest.raises(RunStateError, match="not running in this executor"):
            await run.answer("review:1", "late")


async def test_approval_and_feedback(home: Path) -> None:
    """ctx.approve is True for an approval; a rejection's text is kept as feedback."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.human:approves"))
        first = await _next_request(run)
        assert first.data["kind"] == "approval"
        await run.answer(first.data["request_id"], "add a test step first")
        second = await _next_request(run, since=first.seq)
        await run.answer(second.data["request_id"], "approve")
        outcome = await run.wait()
    assert outcome.result == {"first": False, "feedback": "add a test step first", "second": True}


async def test_run_timeout_policy(home: Path) -> None:
    """RunSpec(human_timeout=...) bounds a question; a per-question default wins over raising."""
    async with Executor(home=home) as ex:
        outcome = await ex.run(RunSpec(workflow="tests.flows.human:times_out", human_timeout=0.3))
    assert outcome.status == "completed"
    assert outcome.result["fallback"] == "nobody"
    assert "no answer to human-input request 'run:2' within 0.3 s" in outcome.result["error"]


async def test_ag2_agent_asks_through_the_control_pipe(home: Path) -> None:
    """An AG2 agent with human_input_mode=ALWAYS gets the parent's answer as its reply."""
    with FakeLLM(Script(default="Hello, human.")) as llm:
        async with Executor(home=home) as ex:
            run = await ex.submit(RunSpec(workflow="tests.flows.human:ag2_human", task="hi bot",
                                          config={"llm": llm.config()}))
            request = await _next_request(run)
            assert request.data["agent"] == "human" and request.node_id == "chat"
            await run.answer(request.data["request_id"], "tell me a joke")
            outcome = await run.wait()
            said = [e.data["content"] for e in ex.store.events(run.run_id, types=["agent_message"])
                    if e.data["sender"] == "human"]
    assert outcome.status == "completed", outcome.error
    assert outcome.result["history"] == ["hi bot", "Hello, human.", "tell me a joke", "Hello, human."]
    assert said == ["hi bot", "tell me a joke"]


async def test_resumed_run_takes_recorded_answers_from_the_log(home: Path) -> None:
    """A run that crashed after an answer is resumed without asking the same question again."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.human:asks_then_crashes"))
        request = await _next_request(run)
        await run.answer(request.data["request_id"], "Grace")
        assert (await run.wait()).status == "crashed"
        resumed = await ex.resume(run.run_id)
        outcome = await resumed.wait()
        assert outcome.status == "completed" and outcome.result == {"name": "Grace", "attempt": 2}
        assert ex.store.count_events(run.run_id, types=["human_input_request"]) == 1
