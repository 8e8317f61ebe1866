"""Workflows that die the instant after emitting: the durability tests of the event log."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from isolane.worker.context import RunContext


def _die(how: str) -> None:
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


def burst_then_die(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """After ``quiet`` seconds, emits ``n`` events, then dies at once (``how``)."""
    time.sleep(float(config.get("quiet", 0)))
    emit = ctx.emit
    for i in range(int(config["n"])):
        emit("burst", i=i)
    _die(str(config.get("how", "sigkill")))


def node_then_die(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """Enters a node, emits one event in it, and is SIGKILLed inside it."""
    with ctx.node("risky", label="the risky step"):
        ctx.emit("inside", note="about to die")
        _die("sigkill")


def llm_then_die(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """One real AG2 LLM call (captured as an llm_call event), then SIGKILL."""
    from autogen import ConversableAgent, LLMConfig

    llm = config["llm"]
    agent = ConversableAgent(
        "assistant", human_input_mode="NEVER",
        llm_config=LLMConfig({"model": llm["model"], "base_url": llm["base_url"],
                              "api_key": "test-key"}))
    agent.generate_reply(messages=[{"role": "user", "content": task}])
    _die("sigkill")


def steps_then_die(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """Four quick steps (each call logged to a file), SIGKILLed right after the fourth returns
    on the first attempt."""
    calls = ctx.work_dir / "calls.log"

    def square(i: int) -> int:
        with open(calls, "a") as fh:
            fh.write(f"{i}\n")
        return i * i

    total = sum(ctx.step(f"step_{i}", square, i) for i in range(1, 5))
    if ctx.attempt == 1:
        _die("sigkill")
    return total


def streams_with_receipts(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """Emits events until killed; after each emit() returns, appends its seq to a side file
    (one write call each, so what is in the file was written after emit() returned)."""
    fd = os.open(ctx.work_dir / "receipts.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    emit = ctx.emit
    i = 0
    while True:
        seq = emit("streamed", i=i)
        os.write(fd, b"%d\n" % seq)
        i += 1


def emits_from_forked_children(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """Emits while a fork-started multiprocessing pool's children emit too (and get 0 back)."""
    import multiprocessing

    global _FORKED_CTX
    _FORKED_CTX = ctx  # the children inherit it by the fork (a RunContext cannot be pickled)
    n = int(config.get("n", 2000))
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pending = pool.map_async(_emit_in_child, range(4))
        for i in range(n):
            ctx.emit("tick", i=i)
        child_seqs = pending.get(timeout=60)
    assert child_seqs == [0] * 4, child_seqs
    return n


_FORKED_CTX: RunContext | None = None


def _emit_in_child(k: int) -> int:
    assert _FORKED_CTX is not None
    return max(_FORKED_CTX.emit("from_child", k=k, i=i) for i in range(500))
