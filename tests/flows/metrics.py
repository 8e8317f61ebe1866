"""Workflows for the metrics tests (tests/test_metrics.py)."""

from __future__ import annotations

from typing import Any

from isolane.worker.context import RunContext, runtime_emit


def claims_many_models(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """Reports ``n`` LLM calls, each of a model with a new (and long) name: what a hostile or
    buggy worker could send to blow up the metrics' label sets."""
    n = int(config["n"])
    emit = runtime_emit(ctx)  # llm_call is the runtime's type: what capture (or a forger) writes
    for i in range(n):
        emit("llm_call", {"model": f"model-{i}-" + "x" * 500, "prompt_tokens": 1,
                         "completion_tokens": 1, "cost": 0.5, "cost_source": "worker"})
    return n
