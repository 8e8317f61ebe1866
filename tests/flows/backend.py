"""Workflows of the backend contract suite (imported by the workers as ``tests.flows.backend``)."""

from __future__ import annotations

import os
import time
from typing import Any

from isolane.worker.context import RunContext


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
    """Step 1 writes a file; on attempt 1 step 2 waits (for its node to be killed); then step 2
    reads step 1's file, wherever it runs, and completes."""
    def first() -> str:
        for i in range(50):
            ctx.emit("progress", i=i)
        (ctx.work_dir / "notes.txt").write_text("written by step 1")
        return "one"

    ctx.step("step_1", first)

    def second() -> str:
        ctx.emit("waiting", pid=os.getpid(), attempt=ctx.attempt)
        ctx._emitter.flush()
        if ctx.attempt == 1:
            time.sleep(float(config.get("seconds", 60)))
        notes = (ctx.work_dir / "notes.txt").read_text()
        (ctx.work_dir / "result.txt").write_text(notes.upper())
        return notes

    notes = ctx.step("step_2", second)
    return f"done on attempt {ctx.attempt}: {notes}"


def chain_files(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Three steps; each reads the previous step's file and writes its own (``a-1|a-2|a-3``)."""
    flavour = config.get("flavour", "a")

    def step(i: int) -> str:
        before = (ctx.work_dir / f"out_{i - 1}.txt").read_text() + "|" if i > 1 else ""
        text = f"{before}{flavour}-{i}"
        (ctx.work_dir / f"out_{i}.txt").write_text(text)
        return text

    results = [ctx.step(f"step_{i}", step, i) for i in (1, 2, 3)]
    return results[-1]
