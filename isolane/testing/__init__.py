"""Public test helpers: a real OpenAI-compatible server on 127.0.0.1 that answers from a script.

::

    from isolane.testing import FakeLLM, Rule, Script, text, tool_call

    script = Script(
        Rule(system="You are planner", reply=[tool_call("add", {"a": 2, "b": 3}), text("TERMINATE")]),
        Rule.speakers("planner", "executor"),
        default="TERMINATE",
    )
    with FakeLLM(script) as llm:
        agent = ConversableAgent("planner", llm_config=LLMConfig(llm.config()), ...)
        ...
        assert llm.served.calls == ...
"""

from isolane.testing._fake import FakeLLM, ModelUsage, Served
from isolane.testing._script import (
    SPEAKER_SELECTION_MARKERS,
    ChatRequest,
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
from isolane.testing._sink import ListSink, RecordedEvent

__all__ = [
    "SPEAKER_SELECTION_MARKERS",
    "ChatRequest",
    "FakeLLM",
    "ListSink",
    "ModelUsage",
    "RecordedEvent",
    "Reply",
    "Rule",
    "Script",
    "Served",
    "ToolCallSpec",
    "count_tokens",
    "fail",
    "is_speaker_selection",
    "text",
    "tool_call",
]
