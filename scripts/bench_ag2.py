"""``python scripts/bench.py ag2``: what tracking costs a real AG2 group chat, measured in one run.

::

    this process: FakeLLM (the sample's offline script, stateless) + Executor
      round r = 1..R, order alternating:  untracked run  |  tracked run    (same worker kind)
        worker: the group chat of examples/research_flow.py, `chats` times in a row, timed
                tracked:   AG2 capture on (every message, tool, code run, LLM call → events)
                untracked: capture off (capture_ag2=False), AG2's console output discarded
      figures: median seconds per run of each kind and their ratio (the target), the median of
               the per-round ratios, the ratio of the fastest runs (load on a shared machine only
               adds time), the worker's CPU seconds of each kind, and the runs' event counts

Both kinds run the same chat (3 agents, LLM speaker selection, a tool call, a code block run by
a subprocess) against the same endpoint, in worker processes started the same way; only the
capture differs. The FakeLLM answers at once, so the chat is as short as it can be and the ratio
is the harshest one: with a real provider's seconds per call the overhead shrinks accordingly.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio

from isolane import Executor, RunSpec
from isolane.testing import FakeLLM

__all__ = ["ag2_chats", "run_ag2_benchmark"]

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "research_flow.py"
MODEL = "gpt-4o-mini"  # priced by AG2's table, so neither kind logs an unknown-model warning


def _sample() -> ModuleType:
    spec = importlib.util.spec_from_file_location("research_flow_bench", SAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Discard:
    """An AG2 IOStream that drops everything (the untracked baseline prints nowhere)."""

    def print(self, *objects: Any, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
        pass

    def send(self, message: Any) -> None:
        pass

    def input(self, prompt: str = "", *, password: bool = False) -> str:
        return ""


def ag2_chats(ctx: Any, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """The benchmark workflow: the sample's group chat ``config["chats"]`` times, timed."""
    from autogen.io.base import IOStream

    sample = _sample()
    llm_config = sample.llm_config_from(config)
    chats = int(config["chats"])
    quiet = IOStream.set_default(_Discard()) if not config.get("capture_ag2", True) else None
    if quiet is not None:
        quiet.__enter__()
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(chats):
            work = ctx.work_dir / f"chat_{i}"
            work.mkdir()
            sample.research(task, llm_config, work)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        if quiet is not None:
            quiet.__exit__(None, None, None)
    return {"seconds": elapsed, "cpu_seconds": cpu, "chats": chats}


async def _rounds(home: Path, base_url: str, chats: int, rounds: int) -> dict[str, list[Any]]:
    figures: dict[str, list[Any]] = {f"{kind}{what}": [] for kind in ("tracked", "untracked")
                                     for what in ("", "_cpu", "_events")}
    async with Executor(home=home) as ex:
        llm = {"model": MODEL, "base_url": base_url}
        # `python` for the code blocks is this interpreter, not a slow shim: the chat, not process
        # start-up, should dominate what both kinds share.
        env = {"OPENAI_API_KEY": "bench", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        await ex.run(RunSpec(workflow=ag2_chats, config={"llm": llm, "chats": 1}, env=env))  # warm up
        for r in range(rounds):
            kinds = ("untracked", "tracked") if r % 2 == 0 else ("tracked", "untracked")
            for kind in kinds:
                outcome = await ex.run(RunSpec(
                    workflow=ag2_chats, task="How spread out are the measurements?", env=env,
                    config={"llm": llm, "chats": chats, "capture_ag2": kind == "tracked"}))
                if outcome.status != "completed":
                    raise RuntimeError(f"{kind} run {outcome.run_id} ended {outcome.status}: {outcome.error}")
                figures[kind].append(outcome.result["seconds"])
                figures[f"{kind}_cpu"].append(outcome.result["cpu_seconds"])
                figures[f"{kind}_events"].append(ex.store.count_events(outcome.run_id))
    return figures


def run_ag2_benchmark(*, chats: int = 8, rounds: int = 5) -> dict[str, Any]:
    """The ``ag2`` figures: median seconds per run tracked and untracked, and their ratio."""
    with tempfile.TemporaryDirectory() as d, FakeLLM(_sample().offline_script()) as llm:
        figures = anyio.run(_rounds, Path(d) / "home", llm.base_url, chats, rounds)
        served = llm.served
    tracked, untracked = statistics.median(figures["tracked"]), statistics.median(figures["untracked"])
    cpu_tracked, cpu_untracked = statistics.median(figures["tracked_cpu"]), statistics.median(figures["untracked_cpu"])
    paired = [t / u for t, u in zip(figures["tracked"], figures["untracked"], strict=True)]
    return {
        "tracked_s": round(tracked, 4),
        "untracked_s": round(untracked, 4),
        "overhead_ratio": round(tracked / untracked, 4),
        "overhead_pct": round((tracked / untracked - 1) * 100, 2),
        "paired_ratio_median": round(statistics.median(paired), 4),
        "min_ratio": round(min(figures["tracked"]) / min(figures["untracked"]), 4),
        "worker_cpu_tracked_s": round(cpu_tracked, 4),
        "worker_cpu_untracked_s": round(cpu_untracked, 4),
        "worker_cpu_ratio": round(cpu_tracked / cpu_untracked, 4),
        "chats_per_run": chats,
        "runs_per_kind": rounds,
        "llm_calls_per_chat": served.calls // (1 + 2 * rounds * chats),
        "tracked_events_per_run": statistics.median(figures["tracked_events"]),
        "untracked_events_per_run": statistics.median(figures["untracked_events"]),
        "tracked_s_samples": [round(x, 4) for x in figures["tracked"]],
        "untracked_s_samples": [round(x, 4) for x in figures["untracked"]],
    }
