"""Workflows of the backend contract suite (imported by the workers as ``tests.backend_flows``)."""

from __future__ import annotations

import os
import time
from typing import Any

from isolane.executor.context import RunContext


def busy_python(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """Spins in pure Python (signal handlers run between bytecodes)."""
    ctx.emit("busy", pid=os.getpid())
    ctx._emitter.flush()
    n = 0
    while True:
        n += 1


def busy_c(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """One long call into C that never returns to the interpreter: only SIGKILL ends it."""
    ctx.emit("busy", pid=os.getpid())
    ctx._emitter.flush()
    return sum(range(10 ** 14))


def node_loss(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Step 1 completes; on attempt 1 step 2 waits (for its node to be killed); then completes."""
    ctx.step("step_1", lambda: [ctx.emit("progress", i=i) for i in range(50)] and "one")

    def second() -> str:
        ctx.emit("waiting", pid=os.getpid(), attempt=ctx.attempt)
        ctx._emitter.flush()
        if ctx.attempt == 1:
            time.sleep(float(config.get("seconds", 60)))
        return "two"

    ctx.step("step_2", second)
    return f"done on attempt {ctx.attempt}"
