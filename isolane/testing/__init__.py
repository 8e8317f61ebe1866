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

The server and its script language live in :mod:`isolane.offline` (the built-in workflows'
offline mode uses them too); this module is their public face for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "FakeLLM": "isolane.offline.server",
    "ModelUsage": "isolane.offline.server",
    "Served": "isolane.offline.server",
    "SPEAKER_SELECTION_MARKERS": "isolane.offline.script",
    "ChatRequest": "isolane.offline.script",
    "Reply": "isolane.offline.script",
    "Rule": "isolane.offline.script",
    "Script": "isolane.offline.script",
    "ToolCallSpec": "isolane.offline.script",
    "count_tokens": "isolane.offline.script",
    "fail": "isolane.offline.script",
    "is_speaker_selection": "isolane.offline.script",
    "text": "isolane.offline.script",
    "tool_call": "isolane.offline.script",
    "ListSink": "isolane.testing._sink",
    "RecordedEvent": "isolane.testing._sink",
})

if TYPE_CHECKING:
    from isolane.offline.script import (
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
    from isolane.offline.server import FakeLLM, ModelUsage, Served
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
