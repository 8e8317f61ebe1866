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
offline mode uses them too); this module is their public face for tests, with
:class:`ListSink` for capture tests.
"""

from isolane.offline import *
from isolane.offline import __all__ as _offline_names
from isolane.testing._sink import ListSink, RecordedEvent

__all__ = [*_offline_names, "ListSink", "RecordedEvent"]  # noqa: PLE0604
