"""The fake LLM endpoint: a real HTTP server speaking the OpenAI protocol, driven by a script."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from autogen import Agent, ConversableAgent, GroupChat, LLMConfig

import isolane.testing
from isolane.errors import ConfigError
from isolane.testing import (
    FakeLLM,
    Reply,
    Rule,
    Script,
    ToolCallSpec,
    count_tokens,
    fail,
    is_speaker_selection,
    text,
    tool_call,
)


def _client(llm: FakeLLM, *, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.base_url, api_key="test", max_retries=max_retries)


def test_public_names_are_frozen() -> None:
    """isolane.testing exports exactly its documented helpers."""
    assert sorted(isolane.testing.__all__) == sorted([
        "SPEAKER_SELECTION_MARKERS", "ChatRequest", "FakeLLM", "ListSink", "ModelUsage", "RecordedEvent",
        "Reply", "Rule", "Script", "Served", "ToolCallSpec", "count_tokens", "fail", "is_speaker_selection",
        "text", "tool_call",
    ])


def test_text_reply_has_usage_model_echo_and_is_counted() -> None:
    """A plain reply echoes the model, carries deterministic usage, and is added to `served`."""
    messages = [{"role": "system", "content": "You are planner."}, {"role": "user", "content": "plan the work"}]
    with FakeLLM(Script(Rule(system="planner", reply=text("step one then two")))) as llm, _client(llm) as client:
        first = client.chat.completions.create(model="model-a", messages=messages)  # type: ignore[arg-type]
        second = client.chat.completions.create(model="model-b", messages=messages)  # type: ignore[arg-type]
        served = llm.served
    assert first.model == "model-a" and second.model == "model-b"
    assert first.choices[0].message.content == "step one then two"
    assert first.choices[0].finish_reason == "stop"
    expected_prompt = (1 + count_tokens("You are planner.")) + (1 + count_tokens("plan the work"))
    assert first.usage is not None and first.usage.prompt_tokens == expected_prompt == 8
    assert first.usage.completion_tokens == 4 and first.usage.total_tokens == 12
    assert (served.calls, served.prompt_tokens, served.completion_tokens, served.errors) == (2, 16, 8, 0)
    assert served.per_model["model-a"].calls == 1 and served.per_model["model-b"].total_tokens == 12


def test_tool_call_reply_uses_openai_format() -> None:
    """A tool-call reply has finish_reason tool_calls, JSON arguments and per-server call ids."""
    script = Script(Rule(reply=[tool_call("add", {"a": 2, "b": 3}), tool_call("add", {"a": 1}, id="mine")]))
    with FakeLLM(script) as llm, _client(llm) as client:
        replies = [client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}])
                   for _ in range(2)]
    first, second = (r.choices[0] for r in replies)
    assert first.finish_reason == "tool_calls" and first.message.content is None
    assert first.message.tool_calls is not None and second.message.tool_calls is not None
    call = first.message.tool_calls[0]
    assert call.type == "function" and call.id == "call_1"
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 2, "b": 3}
    assert second.message.tool_calls[0].id == "mine"


def test_rules_match_in_order_and_fall_through_when_used_up() -> None:
    """Rules match on system/last/model; a used-up sequence lets later rules and the default answer."""
    script = Script(
        Rule(system="coder", last="again", reply=text("coder again")),
        Rule(system="coder", reply=[text("first"), text("second")]),
        Rule(model="special", reply=text("special model")),
        default="fallback",
    )
    with FakeLLM(script) as llm, _client(llm) as client:
        def ask(system: str, last: str, model: str = "m") -> str | None:
            reply = client.chat.completions.create(model=model, messages=[
                {"role": "system", "content": system}, {"role": "user", "content": last}])
            return reply.choices[0].message.content

        answers = [ask("You are coder", "hi"), ask("You are coder", "do it again"), ask("You are coder", "hi"),
                   ask("You are coder", "hi"), ask("You are tester", "hi", "special"), ask("You are tester", "hi")]
    assert answers == ["first", "coder again", "second", "fallback", "special model", "fallback"]


def test_unmatched_request_without_default_is_a_loud_500() -> None:
    """With no matching rule and no default the server answers HTTP 500 naming the request."""
    with FakeLLM(Script(Rule(system="nobody", reply=text("x")))) as llm, _client(llm) as client:
        with pytest.raises(openai.InternalServerError, match="no script rule matched"):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        assert llm.served.errors == 1 and llm.served.calls == 0


def test_http_errors_from_script_and_fail_next() -> None:
    """Scripted and injected HTTP errors reach the client and are counted as errors, not calls."""
    with FakeLLM(Script(Rule(reply=[fail(429, "slow down")]), default="ok")) as llm, _client(llm) as client:
        with pytest.raises(openai.RateLimitError, match="slow down"):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        llm.fail_next(400, error="bad luck")
        with pytest.raises(openai.BadRequestError, match="bad luck"):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        ok = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        served = llm.served
    assert ok.choices[0].message.content == "ok"
    assert (served.errors, served.calls) == (2, 1)


def test_retry_after_makes_the_sdk_retry_at_once_and_errors_are_counted_by_status() -> None:
    """A 429 with retry_after_s sends retry-after-ms; the SDK's own retry then succeeds, and the
    server counts the 429 apart from the answer."""
    with FakeLLM(Script(default="ok")) as llm, _client(llm, max_retries=2) as client:
        llm.fail_next(429, times=2, retry_after_s=0.01)
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "a"}])
        served = llm.served
    assert raw.retries_taken == 2 and raw.parse().choices[0].message.content == "ok"
    assert (served.calls, served.errors, dict(served.errors_by_status)) == (1, 2, {429: 2})
    with pytest.raises(ConfigError, match="error replies"):
        Reply(content="x", retry_after_s=1.0)


def test_malformed_request_is_a_400() -> None:
    """A body without messages is refused with 400 invalid_request_error."""
    with FakeLLM() as llm, _client(llm) as client, pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="m", messages=None)  # type: ignore[call-overload]


def test_streaming_serves_sse_chunks_with_usage() -> None:
    """stream=True gets SSE chunks that reassemble into the scripted reply, then usage."""
    script = Script(Rule(reply=[text("hello there world"), tool_call("lookup", {"q": "x"})]))
    with FakeLLM(script) as llm, _client(llm) as client:
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        calls_stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True)
        call_chunks = list(calls_stream)
        served = llm.served
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello there world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    deltas = [tc for c in call_chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert deltas[0].function is not None and deltas[0].function.name == "lookup"
    assert served.calls == 2


def test_models_endpoint_lists_configured_and_requested_models() -> None:
    """GET /v1/models lists the configured models and every model requested so far."""
    with FakeLLM(models=("alpha",)) as llm, _client(llm) as client:
        client.chat.completions.create(model="beta", messages=[{"role": "user", "content": "hi"}])
        ids = [m.id for m in client.models.list()]
    assert ids == ["alpha", "beta"]


def test_latency_delays_each_answer() -> None:
    """Server latency plus per-reply latency delay the answer by at least their sum."""
    with FakeLLM(Script(default=Reply(content="slow", latency_s=0.05)), latency_s=0.05) as llm, \
            _client(llm) as client:
        started = time.perf_counter()
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert time.perf_counter() - started >= 0.1


def test_bad_options_fail_at_once() -> None:
    """Invalid options raise ConfigError stating the rule."""
    with pytest.raises(ConfigError, match="cannot be negative"):
        FakeLLM(latency_s=-1)
    with pytest.raises(ConfigError, match="HTTP error"):
        Reply(status=302)
    with pytest.raises(ConfigError, match="not started"):
        _ = FakeLLM().base_url


def test_script_from_dict() -> None:
    """A JSON-shaped script builds the same rules as the Python API."""
    script = Script.from_dict({
        "rules": [{"system": "coder", "reply": ["one", {"tool_calls": [{"name": "f", "arguments": {"x": 1}}]}]},
                  {"speaker_selection": True, "reply": "coder"}],
        "default": {"status": 503, "error": "down", "retry_after_s": 0.5},
    })
    assert script.rules[0].reply == (text("one"), Reply(tool_calls=(ToolCallSpec("f", {"x": 1}),)))
    assert script.rules[1].speaker_selection and script.default == fail(503, "down", retry_after_s=0.5)


def test_speaker_selection_markers_match_ag2_prompts() -> None:
    """AG2 0.14's own speaker-selection prompts are recognised; an agent's chat is not."""
    agents: list[Agent] = [ConversableAgent(n, llm_config=False, human_input_mode="NEVER") for n in "abc"]
    chat = GroupChat(agents=agents, messages=[], max_round=3)
    selection = [{"role": "system", "content": chat.select_speaker_msg(agents)},
                 {"role": "user", "content": "hello"},
                 {"role": "system", "content": chat.select_speaker_prompt(agents)}]
    requery = [{"role": "system", "content": "You are a."},
               {"role": "user", "content": chat.select_speaker_auto_none_template}]
    assert is_speaker_selection(selection) and is_speaker_selection(requery)
    assert not is_speaker_selection([{"role": "system", "content": "You are a."},
                                     {"role": "user", "content": "select a role"}])


def test_ag2_agent_pair_talks_to_the_fake() -> None:
    """Two real AG2 agents converse through the server; each agent's script answers it."""
    script = Script(
        Rule(system="You are the student", reply=[text("What is 2 + 2?"), text("Thanks. TERMINATE")]),
        Rule(system="You are the teacher", reply=text("It is 4.")),
    )
    with FakeLLM(script) as llm:
        config = LLMConfig(llm.config())
        student = ConversableAgent("student", system_message="You are the student.", llm_config=config,
                                   human_input_mode="NEVER")
        teacher = ConversableAgent("teacher", system_message="You are the teacher.", llm_config=config,
                                   human_input_mode="NEVER")
        result = student.initiate_chat(teacher, message="Hello teacher.", max_turns=2, silent=True)
        served = llm.served
        systems = [r.system for r in llm.requests]
    assert [m["content"] for m in result.chat_history] == ["Hello teacher.", "It is 4.", "What is 2 + 2?",
                                                           "It is 4."]
    assert systems == ["You are the teacher.", "You are the student.", "You are the teacher."]
    usage = result.cost["usage_including_cached_inference"]["fake-model"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (served.prompt_tokens, served.completion_tokens)


def test_cli_prints_base_url_and_serves_until_sigterm(tmp_path: Path) -> None:
    """`python -m isolane.testing.llm_server --port 0` prints its URL, serves, exits 0 on SIGTERM."""
    script_file = tmp_path / "script.json"
    script_file.write_text(json.dumps({"default": "from the file"}))
    proc = subprocess.Popen([sys.executable, "-m", "isolane.testing.llm_server", "--port", "0",
                             "--script", str(script_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="test", max_retries=0) as client:
            reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "from the file"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
