"""Workflows the serving and human-input tests run in real worker processes."""

from __future__ import annotations

import time
from typing import Any

from isolane.worker.context import RunContext
from isolane.worker.human import HumanInputTimeout


def asks(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """Plan, ask a person in node ``review``, then finish in ``report``."""
    with ctx.node("plan", label="plan"):
        ctx.emit("note", text="planned")
    with ctx.node("review", label="human review"):
        answer = ctx.ask(config.get("prompt", "What should the report say?"))
    with ctx.node("report", label="report"):
        ctx.emit("note", text=f"report: {answer}")
    return {"answer": answer}


def approves(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """Asks for approval; a rejection's text is the feedback for a redo."""
    first = ctx.approve("Approve the plan?")
    feedback = ctx.human.last_answer
    second = ctx.approve("Approve the revised plan?")
    return {"first": first, "feedback": feedback, "second": second}


def times_out(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """A question with a default falls back to it; one without raises HumanInputTimeout."""
    fallback = ctx.ask("Anyone there?", timeout=0.2, default="nobody")
    try:
        ctx.ask("Still there?")  # the run's policy: RunSpec(human_timeout=...)
    except HumanInputTimeout as exc:
        return {"fallback": fallback, "error": str(exc)}
    return {"fallback": fallback, "error": None}


def ag2_human(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """An AG2 agent with human_input_mode=ALWAYS asks through the control pipe."""
    from autogen import ConversableAgent, LLMConfig

    with ctx.node("chat", label="chat with a human"):
        human = ConversableAgent("human", llm_config=False, human_input_mode="ALWAYS")
        bot = ConversableAgent("bot", llm_config=LLMConfig(config["llm"]), human_input_mode="NEVER")
        result = human.initiate_chat(bot, message=task, max_turns=2)
    return {"history": [m.get("content") for m in result.chat_history]}


def ticks(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """Emits ``n`` events in ``bursts`` with a pause between them (a run that streams a while)."""
    n, bursts = int(config.get("n", 2000)), int(config.get("bursts", 20))
    pause = float(config.get("pause", 0.02))
    pad = "x" * int(config.get("pad", 0))
    gate = config.get("gate_at")  # ask a person before this burst: the run waits mid-stream
    per = n // bursts
    for b in range(bursts):
        if b == gate:
            ctx.ask("Continue streaming?")
        with ctx.node(f"burst_{b}"):
            for i in range(per):
                ctx.emit("tick", i=b * per + i, pad=pad)
        time.sleep(pause)
    return n


def gated_steps(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Node ``build`` runs, ``review`` waits for a person, then ``ship`` completes."""
    with ctx.node("build", label="build"):
        ctx.emit("note", text="built")
    with ctx.node("review", label="review"):
        answer = ctx.ask("Ship it?")
    with ctx.node("ship", label="ship"):
        ctx.emit("note", text=answer)
    return answer


def asks_then_crashes(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """Asks, then dies on its first attempt; a resumed attempt gets the answer from the log."""
    import os

    name = ctx.ask("Your name?")
    if ctx.attempt == 1:
        ctx._emitter.flush()
        os._exit(9)
    return {"name": name, "attempt": ctx.attempt}
