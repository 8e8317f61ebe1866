"""Workflows the tests run in real worker processes (imported by the workers as ``tests.flows``;
the other modules of this package hold the flows of one test file each)."""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import time
from typing import Any

from isolane.worker.context import RunContext


def ok(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    print("starting", task)
    with ctx.node("step_1", label="first"):
        ctx.emit("note", text="inside step 1")
        with ctx.node("step_1/sub"):
            ctx.emit("note", text="inside a sub-node")
    ctx.phase("finishing")
    return {"task": task, "answer": config.get("answer", 42)}


async def ok_async(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    import anyio

    await anyio.sleep(0.01)
    ctx.emit("note", text="async")
    return "async-done"


def raises(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    with ctx.node("boom"):
        raise ValueError("the workflow failed on purpose")


def exits(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    ctx.emit("before_exit")
    ctx._emitter.flush()
    os._exit(int(config.get("code", 3)))


def sleeps(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    ctx.emit("sleeping", pid=os.getpid())
    ctx._emitter.flush()
    time.sleep(float(config.get("seconds", 60)))


def segfault(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    ctx.emit("about_to_segfault")
    ctx._emitter.flush()
    ctypes.string_at(0)


def ignores_cancel(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """Swallows SIGTERM: cancellation must escalate to SIGKILL."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.emit("stubborn")
    ctx._emitter.flush()
    while True:
        time.sleep(0.05)


def emit_many(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    n = int(config["n"])
    emit = ctx.emit
    for i in range(n):
        emit("tick", i=i)
    return n


def spawns_child(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    import subprocess

    child = subprocess.Popen(["sleep", "300"], start_new_session=bool(config.get("detach")))
    ctx.emit("child", pid=child.pid)
    ctx._emitter.flush()
    time.sleep(300)


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def pickle_attack(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Writes a crafted pickle straight into its spool (as a record) and into its event pipe
    (where doorbells go), and a record that is not JSON."""
    payload = pickle.dumps(_Exploit(config["marker"]))
    emitter = ctx._emitter
    emitter._spool.append(payload)
    emitter._spool.append(b"not json!")
    assert emitter._pipe_fd is not None
    os.write(emitter._pipe_fd, payload)
    ctx.emit("after_attack")
    return "survived"


def environment(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    with open("/proc/self/environ", "rb") as fh:
        env["/proc/self/environ"] = fh.read().decode("utf-8", "replace")
    return env


def durable(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """Six deterministic steps; each logs its start and end (with the attempt) to a file."""
    log = ctx.work_dir / "executions.log"
    ctx.emit("restored", total=ctx.state.get("total"), trail=len(ctx.history("trail")))
    total = 0  # recomputed from step results: finished steps return their saved result
    for i in range(1, 7):
        def body(i: int = i) -> int:
            with open(log, "a") as fh:
                fh.write(f"start {i} {ctx.attempt}\n")
            acc = 0
            for k in range(int(config.get("work", 20_000))):
                acc = (acc + k * i) % 1_000_003
            for j in range(int(config.get("events", 40))):
                ctx.emit("progress", step=i, j=j)
            time.sleep(float(config.get("sleep", 0.02)))
            with open(log, "a") as fh:
                fh.write(f"end {i} {ctx.attempt}\n")
            return acc % 1000

        total += ctx.step(f"step_{i}", body)
        ctx.state["total"] = total
        ctx.log("trail", f"step {i} -> {total}")
    return total


def crash_once(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Dies by SIGKILL on its first attempt after finishing step 1; completes on the next."""
    ctx.step("step_1", lambda: "one")
    if ctx.attempt == 1:
        ctx._emitter.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    ctx.step("step_2", lambda: "two")
    return f"done on attempt {ctx.attempt}"


def paced(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """Emits ``n`` events spread over ``seconds``."""
    n, seconds = int(config["n"]), float(config["seconds"])
    for i in range(n):
        ctx.emit("paced", i=i)
        if i % 100 == 99:
            time.sleep(seconds / (n / 100))
    return n


def gated(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """Emits ``n`` events, waits until ``go`` exists in its workspace, then emits ``n`` more.

    Lets a test do something slow (restart a database) strictly inside the run.
    """
    n = int(config["n"])
    for i in range(n):
        ctx.emit("gated", i=i)
    gate = ctx.work_dir / "go"
    while not gate.exists():
        time.sleep(0.02)
    for i in range(n, 2 * n):
        ctx.emit("gated", i=i)
    return 2 * n


def three_steps(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """Three steps; each writes a file, logs its execution, and uses ``config["flavour"]``."""
    flavour = config.get("flavour", "plain")
    log = ctx.work_dir.parent / "executions.log"  # outside the workspace: one per run dir

    def step(i: int) -> str:
        with open(log, "a") as fh:
            fh.write(f"step_{i}\n")
        time.sleep(float(config.get("sleep", 0.0)))
        text = f"{flavour}-{i}"
        (ctx.work_dir / f"out_{i}.txt").write_text(text + "\n")
        return text

    results = [ctx.step(f"step_{i}", step, i) for i in (1, 2, 3)]
    return {"results": results, "flavour": flavour}


def race_flow(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """Step 1 prepares; step 2 sleeps ``delay`` seconds (the racers differ there)."""
    ctx.step("prepare", lambda: "ready")

    def work() -> float:
        ctx.emit("racer", pid=os.getpid())
        ctx._emitter.flush()
        time.sleep(float(config.get("delay", 0.0)))
        return float(config.get("quality", 0.0))

    quality = ctx.step("work", work)
    return {"quality": quality, "delay": config.get("delay")}


def score_quality(result: Any, files: dict[str, str], cost: float) -> float:
    return float(result["quality"])


#: What a worker process must never load: the parent's database, server and CLI libraries.
PARENT_STACK = ("sqlalchemy", "alembic", "starlette", "uvicorn", "typer", "rich", "psycopg")


def loaded_modules(ctx: RunContext, task: str, config: dict[str, Any]) -> list[str]:
    """The parent-stack libraries loaded in this worker process (see :data:`PARENT_STACK`)."""
    import sys

    return sorted(name for name in PARENT_STACK if name in sys.modules)
