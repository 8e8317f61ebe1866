"""Capture everything an AG2 workflow does as typed isolane events, without patching AG2.

::

    with capture_ag2(sink, prices={"my-model": (0.001, 0.002)}) as session:
        ...build and run AG2 agents...
        session.totals.total_cost

Channels (one module each): :mod:`~isolane.capture.iostream` (AG2's structured output events,
in whichever thread AG2 runs a chat), :mod:`~isolane.capture.llm_logger` (every LLM call, via
the runtime logger), :mod:`~isolane.capture.hooks` (silent sends; attaching agents),
:mod:`~isolane.capture.code` (code executions), :mod:`~isolane.capture.beta` (``autogen.beta``
agents), :mod:`~isolane.capture.retries` (LLM requests the OpenAI SDK retries),
:mod:`~isolane.capture.calls` (recording a call), :mod:`~isolane.capture.pricing` (cost),
:mod:`~isolane.capture.translate` (AG2 event -> isolane event mapping),
:mod:`~isolane.capture.seams` (the AG2 internals relied on, and the supported range),
:mod:`~isolane.capture.session` (installs them all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "CapturingCodeExecutor": "isolane.capture.code",
    "CaptureIOStream": "isolane.capture.iostream",
    "CaptureLogger": "isolane.capture.llm_logger",
    "COST_SOURCES": "isolane.capture.pricing",
    "CostTotals": "isolane.capture.pricing",
    "PriceBook": "isolane.capture.pricing",
    "Quote": "isolane.capture.pricing",
    "CaptureSession": "isolane.capture.session",
    "capture_ag2": "isolane.capture.session",
    "Sink": "isolane.capture.sink",
})

if TYPE_CHECKING:
    from isolane.capture.code import CapturingCodeExecutor
    from isolane.capture.iostream import CaptureIOStream
    from isolane.capture.llm_logger import CaptureLogger
    from isolane.capture.pricing import COST_SOURCES, CostTotals, PriceBook, Quote
    from isolane.capture.session import CaptureSession, capture_ag2
    from isolane.capture.sink import Sink

__all__ = [
    "COST_SOURCES",
    "CaptureIOStream",
    "CaptureLogger",
    "CaptureSession",
    "CapturingCodeExecutor",
    "CostTotals",
    "PriceBook",
    "Quote",
    "Sink",
    "capture_ag2",
]
