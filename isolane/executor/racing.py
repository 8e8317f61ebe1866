"""Racing branches: several variants from one node at once, one winner, the rest stopped.

::

    start_race(run, node, variants, strategy) ──▶ Race       returns once every racer started
        └─ racing group row ─ one branch per variant (own worker, own process tree)
    Race.settle()     awaited by Executor.race, or a background task of the executor's
        │             task group (Executor.start_race; ``POST /api/runs/{id}/race``)
        ├─ budget watcher per racer: sums its llm_call costs; past its share → cancelled
        └─ strategy (registry, by name)
              first_complete: the first racer to complete wins; the others are cancelled at
                              once (their whole trees) and end ``lost``
              best_score:     every racer finishes; the scorer ranks the completed ones
    finally: winner ``won``; losers ``lost``; budget-stopped racers ``cancelled``; the group
             records its winner. A cancelled racer keeps the cost of every call it finished.

A scorer is ``scorer(result, files, cost_usd) -> float`` (``files``: path → sha256 of the racer's
workspace; ``cost_usd``: its spend in USD, ``None`` when no call was priced), on stored data only.
Named by reference (``package.module:function``, ``path/to/file.py:function``) it is user code:
the parent only checks the reference, and one scoring run (:mod:`isolane.scoring`, a worker of its
own) imports it and returns the scores. A callable passed in-process by an embedding program is
that program's own code and is called in the parent. Either way, a scorer that raises, has the
wrong signature or returns no number ends the race with a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.to_thread

from isolane.errors import ConfigError, RunStateError
from isolane.executor.race_scoring import RaceScoring, Scorer
from isolane.references import check_scorer_ref
from isolane.scoring import SIGNATURE as SCORER_SIGNATURE

# The store's modules are imported where they are used: ``STRATEGIES`` is read by the CLI's
# help, which must not load the database layer (``isolane --help`` stays fast).

if TYPE_CHECKING:
    from isolane.executor.executor import Executor, Outcome, RunHandle

__all__ = ["STRATEGIES", "Race", "RaceOutcome", "Racer", "start_race"]

log = logging.getLogger(__name__)

#: Grace for a loser between the cooperative cancel and SIGKILL: losers must go fast.
_LOSER_GRACE: Final = 0.5


@dataclass(slots=True)
class Racer:
    run_id: str
    variant: dict[str, Any]
    handle: RunHandle
    outcome: Outcome | None = None
    status: str = "racing"
    score: float | None = None
    spent_usd: float = 0.0
    stopped_for: str | None = None  # "lost" | "budget"
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class RaceOutcome:
    group_id: str
    strategy: str
    winner_run_id: str | None
    racers: list[dict[str, Any]]
    #: Monotonic time the winner was known, and the time the last loser's process was gone.
    decided_at: float | None = None
    losers_gone_at: float | None = None
    scores: dict[str, float] = field(default_factory=dict)


class _Strategy(Protocol):
    needs_scorer: bool
    decided_at: float | None

    async def judge(self, racers: list[Racer], scoring: RaceScoring | None, executor: Executor) -> Racer | None: ...


async def _wait(racer: Racer) -> None:
    racer.outcome = await racer.handle.wait(progress=False)
    racer.ended_at = time.monotonic()


class FirstComplete:
    """The first racer to complete successfully wins; the others are cancelled at once."""

    needs_scorer = False

    def __init__(self) -> None:
        self.decided_at: float | None = None

    async def judge(self, racers: list[Racer], scoring: RaceScoring | None, executor: Executor) -> Racer | None:
        winner: Racer | None = None

        async def watch(racer: Racer, tg: anyio.abc.TaskGroup) -> None:
            nonlocal winner
            await _wait(racer)
            assert racer.outcome is not None
            if winner is None and racer.outcome.status == "completed":
                winner = racer
                self.decided_at = time.monotonic()
                for other in racers:
                    if other is not racer and not other.handle.done:
                        other.stopped_for = other.stopped_for or "lost"
                        tg.start_soon(other.handle.cancel, f"lost the race to {racer.run_id}")

        async with anyio.create_task_group() as tg:
            for racer in racers:
                tg.start_soon(watch, racer, tg)
        return winner


class BestScore:
    """Every racer finishes; the completed ones are scored and the highest score wins."""

    needs_scorer = True

    def __init__(self) -> None:
        self.decided_at: float | None = None

    async def judge(self, racers: list[Racer], scoring: RaceScoring | None, executor: Executor) -> Racer | None:
        assert scoring is not None
        async with anyio.create_task_group() as tg:
            for racer in racers:
                tg.start_soon(_wait, racer)
        completed = [r for r in racers if r.outcome is not None and r.outcome.status == "completed"]
        scores = await scoring.scores(completed) if completed else {}
        best: Racer | None = None
        for racer in completed:
            racer.score = scores[racer.run_id]
            if best is None or (best.score is not None and racer.score > best.score):
                best = racer
        self.decided_at = time.monotonic()
        return best


#: Racing strategies by name.
STRATEGIES: Final[dict[str, Callable[[], FirstComplete | BestScore]]] = {
    "first_complete": FirstComplete,
    "best_score": BestScore,
}


async def _budget_watch(racer: Racer, share: float) -> None:
    async for event in racer.handle.events(types=["llm_call"]):
        racer.spent_usd += event.data.get("cost") or 0.0
        if racer.spent_usd > share:
            racer.stopped_for = "budget"
            log.info("racer %s spent $%.4f, over its $%.4f share: cancelled", racer.run_id,
                     racer.spent_usd, share)
            await racer.handle.cancel(f"over its budget share: spent ${racer.spent_usd:.4f} of "
                                      f"${share:.4f}")
            return


class Race:
    """A started race: its racing group and one running branch per variant.

    :meth:`settle` judges it and records the verdict (call it once, or let
    :meth:`Executor.start_race <isolane.executor.executor.Executor.start_race>` run it in the
    background); :meth:`wait` waits for that verdict from anywhere else.
    """

    def __init__(self, executor: Executor, group_id: str, racers: list[Racer], *, parent_run_id: str,
                 from_node: str, strategy: str, judge: _Strategy, scoring: RaceScoring | None,
                 budget_usd: float | None) -> None:
        self._executor = executor
        self.group_id = group_id
        self.parent_run_id = parent_run_id
        self.from_node = from_node
        self.strategy = strategy
        self.racers = racers
        self._judge = judge
        self._scoring = scoring
        self._budget_usd = budget_usd
        self._settling = False
        self._settled = anyio.Event()
        self._outcome: RaceOutcome | None = None
        self._error: BaseException | None = None

    @property
    def run_ids(self) -> list[str]:
        """The racers' run ids, in the order of the variants."""
        return [racer.run_id for racer in self.racers]

    @property
    def done(self) -> bool:
        return self._settled.is_set()

    @property
    def error(self) -> str | None:
        """Why the race ended without a verdict (one line), once it has; else ``None``."""
        if self._error is None:
            return None
        return (str(self._error).strip().splitlines() or [type(self._error).__name__])[0]

    async def wait(self) -> RaceOutcome:
        """Wait for the verdict; raises what stopped :meth:`settle` from reaching one."""
        await self._settled.wait()
        if self._outcome is None:
            assert self._error is not None
            raise self._error
        return self._outcome

    async def settle(self) -> RaceOutcome:
        """Judge the racers, stop the losers, record the verdict; return it (once per race)."""
        if self._settling:
            raise RunStateError(f"race {self.group_id} is already being settled; use wait()")
        self._settling = True
        try:
            self._outcome = await self._judge_and_record()
            return self._outcome
        except BaseException as exc:
            # A cancellation belongs to the task that settles; waiters get an ordinary error.
            self._error = exc if isinstance(exc, Exception) else RunStateError(
                f"race {self.group_id} was stopped before a verdict ({type(exc).__name__})")
            with anyio.CancelScope(shield=True):
                await self._abandon(f"the race stopped without a verdict ({type(exc).__name__})")
            raise
        finally:
            self._settled.set()

    async def settle_in_background(self) -> None:
        """:meth:`settle`, logging instead of raising (a background task must not fail its group)."""
        try:
            await self.settle()
        except Exception:
            log.exception("race %s ended without a verdict", self.group_id)

    async def _judge_and_record(self) -> RaceOutcome:
        from isolane.tracking import branching

        racers, executor = self.racers, self._executor
        failure: Exception | None = None
        winner: Racer | None = None
        async with anyio.create_task_group() as tg:
            if self._budget_usd is not None:
                for racer in racers:
                    tg.start_soon(_budget_watch, racer, self._budget_usd / len(racers))
            try:
                winner = await self._judge.judge(racers, self._scoring, executor)
            except Exception as exc:  # noqa: BLE001 - re-raised below as itself, not in an ExceptionGroup
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        losers_gone = max((r.ended_at or 0.0) for r in racers if r is not winner) if len(racers) > 1 else None
        statuses: dict[str, str] = {}
        for racer in racers:
            if racer is winner:
                racer.status = "won"
            elif racer.stopped_for == "budget":
                racer.status = "cancelled"
            else:
                racer.status = "lost"
            statuses[racer.run_id] = racer.status
        await anyio.to_thread.run_sync(lambda: branching.finish_racing_group(
            executor.store, self.group_id, winner_run_id=winner.run_id if winner else None,
            statuses=statuses))
        return RaceOutcome(
            group_id=self.group_id, strategy=self.strategy,
            winner_run_id=winner.run_id if winner else None,
            racers=[{"run_id": r.run_id, "variant": r.variant, "status": r.status, "score": r.score,
                     "ended": r.outcome.status if r.outcome else None, "spent_usd": r.spent_usd}
                    for r in racers],
            decided_at=self._judge.decided_at, losers_gone_at=losers_gone,
            scores={r.run_id: r.score for r in racers if r.score is not None})

    async def _abandon(self, reason: str) -> None:
        """Stop every racer still going and close the group without a winner."""
        await _abandon(self._executor, self.group_id, [r.handle for r in self.racers], reason)


async def _abandon(executor: Executor, group_id: str, handles: Sequence[RunHandle], reason: str) -> None:
    from isolane.tracking import branching

    for handle in handles:
        if not handle.done:
            await handle.cancel(reason)
    try:
        await anyio.to_thread.run_sync(lambda: branching.finish_racing_group(
            executor.store, group_id, winner_run_id=None, statuses={}))
    except Exception:  # the store may be what failed; the racers are stopped regardless
        log.exception("could not close racing group %s", group_id)


async def start_race(
    executor: Executor,
    run_id: str,
    from_node: str,
    variants: Sequence[Mapping[str, Any]],
    *,
    strategy: str = "first_complete",
    scorer: str | Scorer | None = None,
    budget_usd: float | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> Race:
    """Check the options, record the racing group and start one branch of ``run_id`` per variant.

    Returns once every racer is started; nothing is judged yet (see :meth:`Race.settle`). Bad
    options fail before anything is recorded; a racer that cannot start stops those already
    started and closes the group without a winner.
    """
    from isolane.tracking import branching

    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; use one of {', '.join(sorted(STRATEGIES))}")
    if len(variants) < 2:
        raise ConfigError("a race needs at least two variants")
    if not all(isinstance(v, Mapping) for v in variants):
        raise ConfigError("each variant must be a mapping of config keys to values")
    if budget_usd is not None and budget_usd <= 0:
        raise ConfigError(f"budget_usd must be positive, got {budget_usd!r}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"timeout must be positive seconds, got {timeout!r}")
    judge: _Strategy = STRATEGIES[strategy]()
    if judge.needs_scorer and scorer is None:
        raise ConfigError(f"strategy {strategy!r} needs a scorer ('package.module:function', "
                          f"{SCORER_SIGNATURE})")
    if isinstance(scorer, str):  # checked only: the scoring run's worker imports it
        await anyio.to_thread.run_sync(check_scorer_ref, scorer)
    # Checks the run and the node (404 / "never ran") before the group is recorded.
    plan = await anyio.to_thread.run_sync(lambda: branching.plan_branch(executor.store, run_id, from_node))
    parent = plan.parent
    group = await anyio.to_thread.run_sync(lambda: branching.create_racing_group(
        executor.store, parent_run_id=parent.id, from_node=from_node, strategy=strategy,
        budget_usd=budget_usd))
    racers: list[Racer] = []
    try:
        for i, variant in enumerate(variants, start=1):
            handle = await executor.branch(
                parent.id, from_node, name=f"racer-{i}", hypothesis=_describe(variant),
                config=variant, env=env, timeout=timeout, racing_group_id=group.id,
                cancel_grace=_LOSER_GRACE)
            racers.append(Racer(handle.run_id, dict(variant), handle))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _abandon(executor, group.id, [r.handle for r in racers],
                           "another racer of the race could not start")
        raise
    return Race(executor, group.id, racers, parent_run_id=parent.id, from_node=from_node,
                strategy=strategy, judge=judge, budget_usd=budget_usd,
                scoring=None if scorer is None else RaceScoring(executor, scorer, group_id=group.id,
                                                             env=env, timeout=timeout))


def _describe(variant: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in variant.items())
