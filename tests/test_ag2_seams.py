"""The AG2 internals capture relies on (isolane.capture.seams) still hold in the installed AG2.

These fail loudly when an AG2 release changes what capture needs: read the failure, re-check the
seam against the new AG2 source, then move ``SUPPORTED_AG2`` and the pin in ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from autogen.beta import Agent
from autogen.beta.config import OpenAIConfig
from autogen.beta.middleware import BaseMiddleware
from autogen.io.base import IOStream

from isolane.capture import capture_ag2, seams
from isolane.testing import FakeLLM, ListSink, Script

ROOT = Path(__file__).resolve().parent.parent


def test_every_seam_matches_the_installed_ag2() -> None:
    """seams.check() finds nothing amiss: version in range, IOStream ContextVar, beta turn scope."""
    assert seams.check() == []


def test_the_supported_range_is_the_pinned_range() -> None:
    """pyproject.toml pins AG2 to exactly the range the seams were checked against."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if d.startswith("ag2")]
    low, high = re.fullmatch(r"ag2\[openai\]>=([\d.]+),<([\d.]+)", pin).groups()  # type: ignore[union-attr]
    as_tuple = [tuple(int(x) for x in v.split(".")) for v in (low, high)]
    assert [(v + (0,))[:2] for v in as_tuple] == list(seams.SUPPORTED_AG2)


def test_a_stream_set_for_this_context_ends_with_ags_own_with_block() -> None:
    """set_context_stream inside `with IOStream.set_default(s)` replaces s there only, until the block ends."""

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def print(self, *objects: Any, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
            pass

        def send(self, message: Any) -> None:
            pass

        def input(self, prompt: str = "", *, password: bool = False) -> str:
            return ""

    outer, inner, tee = Named("outer"), Named("inner"), Named("tee")
    with IOStream.set_default(outer):  # type: ignore[arg-type]
        with IOStream.set_default(inner):  # type: ignore[arg-type]
            assert seams.context_stream() is inner
            assert seams.set_context_stream(tee)
            assert IOStream.get_default() is tee
        assert seams.context_stream() is outer


def test_turn_middleware_reaches_every_beta_turn_and_is_undone() -> None:
    """A middleware added through the seam sees the LLM call of agent.ask; undo restores AG2's method."""
    seen: list[str] = []

    class Spy(BaseMiddleware):
        async def on_llm_call(self, call_next: Any, events: Any, context: Any) -> Any:
            response = await call_next(events, context)
            seen.append(str(response.message.content if response.message else ""))
            return response

    async def ask_twice(base_url: str) -> None:
        async with httpx.AsyncClient() as http:  # closed here: the beta client never closes its own
            agent = Agent("echo", prompt="Answer.",
                          config=OpenAIConfig("m", base_url=base_url, api_key="k", http_client=http))
            undo = seams.add_turn_middleware(lambda a: Spy if a is agent else None)
            try:
                await agent.ask("ping")
            finally:
                undo()
            await agent.ask("ping again")

    original = Agent.__dict__["_turn_scope"]
    with FakeLLM(Script(default="pong")) as llm:
        asyncio.run(ask_twice(llm.base_url))
    assert seen == ["pong"]
    assert Agent.__dict__["_turn_scope"] is original


def test_a_missing_beta_seam_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """If AG2 drops Agent._turn_scope, capture still runs and says beta agents are not captured."""
    monkeypatch.delattr(Agent, "_turn_scope")
    assert any("_turn_scope" in problem for problem in seams.check())
    sink = ListSink()
    with capture_ag2(sink):
        pass
    (error,) = [e.data for e in sink.of("error")]
    assert error["error_type"] == "CaptureUnavailable" and "_turn_scope" in error["message"]
