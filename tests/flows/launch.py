"""Workflows of tests/test_launch_faults.py: steps that log each execution, a workflow that tries
the runtime's event types, and one that forges its own outcome."""

from __future__ import annotations

import os
import time
from typing import Any

from isolane.errors import InvalidEvent
from isolane.worker.context import RunContext
from tests.flows.hostile import _envelope, _raw_frames


def logged_steps(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """``n`` steps of ``seconds`` each; every execution appends ``"<step> <pid>"`` to the file
    ``config["log"]``, so a test can count how often each step really ran."""
    log = config["log"]

    def step(i: int) -> int:
        time.sleep(float(config.get("seconds", 0.05)))
        ctx.emit("working", step=i)
        with open(log, "a") as fh:
            fh.write(f"step_{i} {os.getpid()}\n")
        return i

    return sum(ctx.step(f"step_{i}", step, i) for i in range(int(config.get("n", 5))))


def tries_runtime_types(ctx: RunContext, task: str, config: dict[str, Any]) -> list[str]:
    """Emits each runtime event type through the public ``ctx.emit_event``; reports each refusal
    as a ``refused`` custom event, and returns the types that were refused."""
    refused = []
    for type_ in ("run_completed", "run_failed", "dag_node_update", "state_snapshot", "llm_call",
                  "cost_update", "human_input_response"):
        try:
            ctx.emit_event(type_, {"result": "forged", "status": "completed"})
        except InvalidEvent as exc:
            ctx.emit("refused", type=type_, message=str(exc))
            refused.append(type_)
    ctx.emit_event("agent_message", {"sender": "a", "recipient": "b", "content": "allowed"})
    return refused


def forges_completion(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """Writes its own ``run_completed`` (result ``"forged"``) into the spool, then exits 3."""
    ctx.emit("before_forgery")
    seq = ctx._emitter.last_seq + 1
    _raw_frames(ctx, _envelope(ctx, seq, "run_completed", b'{"result":"forged"}'))
    os._exit(3)
