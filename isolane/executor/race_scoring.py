"""How a ``best_score`` race's completed racers get their scores (see :mod:`isolane.executor.racing`).

::

    RaceScoring.scores(racers)
      each racer: its result, its workspace (path -> sha256), its spend   (stored data only)
      scorer given by reference ──▶ one scoring run, isolane.scoring:score_racers, in a worker:
                                    it imports the scorer; its result is {"scores": {...}}
      callable from the embedding program ──▶ called here (the program's own code)
      any failure ──▶ one-line ConfigError
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from isolane.errors import ConfigError
from isolane.scoring import SCORER_WORKFLOW, score_all

if TYPE_CHECKING:
    from isolane.executor.executor import Executor
    from isolane.executor.racing import Racer

__all__ = ["RaceScoring", "Scorer"]

Scorer = Callable[[Any, dict[str, str], float | None], float]  # cost None: no call was priced


class RaceScoring:
    """How a race's completed racers get their scores: a reference in a scoring run's worker,
    an in-process callable here (see the module docstring)."""

    def __init__(self, executor: Executor, scorer: str | Scorer, *, group_id: str,
                 env: Mapping[str, str] | None, timeout: float | None) -> None:
        self._executor = executor
        self._scorer = scorer
        self._group_id = group_id
        self._env = dict(env or {})
        self._timeout = timeout

    async def scores(self, racers: Sequence[Racer]) -> dict[str, float]:
        from isolane.tracking.compare import summarize_run

        rows = []
        for racer in racers:
            assert racer.outcome is not None
            summary = await anyio.to_thread.run_sync(summarize_run, self._executor.store, racer.run_id)
            rows.append({"run_id": racer.run_id, "result": racer.outcome.result,
                         "files": dict(summary.files), "cost_usd": summary.cost_usd})
        if callable(self._scorer):
            return self._in_process(self._scorer, rows)
        return await self._in_worker(self._scorer, rows)

    @staticmethod
    def _in_process(scorer: Scorer, rows: list[dict[str, Any]]) -> dict[str, float]:
        return score_all(scorer, rows, name=getattr(scorer, "__qualname__", repr(scorer)))

    async def _in_worker(self, ref: str, rows: list[dict[str, Any]]) -> dict[str, float]:
        from isolane.executor.run import RunSpec

        handle = await self._executor.submit(RunSpec(
            workflow=SCORER_WORKFLOW, task=f"score the racers of race {self._group_id}",
            config={"scorer": ref, "racers": rows}, name=f"scorer of race {self._group_id[:12]}",
            env=self._env, timeout=self._timeout))
        outcome = await handle.wait()
        scores = outcome.result.get("scores") if isinstance(outcome.result, dict) else None
        if outcome.status != "completed" or not isinstance(scores, dict):
            error = (str(outcome.error or outcome.status).strip().splitlines() or [""])[0]
            error = error.removeprefix("isolane.errors.ConfigError: ")
            raise ConfigError(f"the race's scorer failed (scoring run {outcome.run_id[:12]}): {error}")
        return {run_id: float(score) for run_id, score in scores.items()}
