"""The offline LLM: a real OpenAI-compatible server on 127.0.0.1 that answers from a script.

The built-in workflows' ``--llm offline`` mode and the CLI serve their scripts with it;
:mod:`isolane.testing` re-exports it as the public test helper.
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

__all__ = [
    "SPEAKER_SELECTION_MARKERS",
    "ChatRequest",
    "FakeLLM",
    "ModelUsage",
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
