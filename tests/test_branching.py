"""Branching from a node, racing branches, comparing runs — with real workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from isolane import Executor, RunSpec
from isolane.errors import ConfigError
from tests.helpers import alive

pytestmark = pytest.mark.anyio


async def test_branch_from_step_two_reuses_step_one(home: Path) -> None:
    """A branch from step_2 with a changed config: step_1 is not re-run; the rest is its own."""
    async with Executor(home=home) as ex:
        parent = await ex.run(RunSpec(workflow="tests.flows:three_steps", config={"flavour": "vanilla"}))
        assert parent.status == "completed"
        child = await ex.branch(parent.run_id, "step_2", name="choc", hypothesis="chocolate is better",
                                config={"flavour": "chocolate"})
        outcome = await child.wait()
        assert outcome.status == "completed"
        assert outcome.result == {"results": ["vanilla-1", "chocolate-2", "chocolate-3"],
                                  "flavour": "chocolate"}
        row = ex.store.get_run(child.run_id)
        assert (row.parent_run_id, row.branch_point_node) == (parent.run_id, "step_2")
        executed = (Path(row.work_dir).parent / "executions.log").read_text().split()
        assert executed == ["step_2", "step_3"]
        count, low, high = ex.store.seq_stats(child.run_id)
        assert (low, count) == (1, high)
        nodes = {n.node_id: n for n in ex.store.dag(parent.run_id)[0]}
        points = [n for n in nodes.values() if n.node_type == "branch_point"]
        assert len(points) == 1 and points[0].meta["branch_run_id"] == child.run_id
        # A branch of the branch works the same way.
        grandchild = await ex.branch(child.run_id, "step_3", config={"flavour": "mint"})
        assert (await grandchild.wait()).result["results"] == ["vanilla-1", "chocolate-2", "mint-3"]


async def test_branch_from_a_node_that_never_ran_is_refused(home: Path) -> None:
    """Branching from a node the run never reached says which nodes did run."""
    async with Executor(home=home) as ex:
        parent = await ex.run(RunSpec(workflow="tests.flows:three_steps"))
        with pytest.raises(ConfigError, match="never ran.*step_1, step_2, step_3"):
            await ex.branch(parent.run_id, "step_9")


async def test_first_complete_race_stops_the_losers(home: Path) -> None:
    """The fastest racer wins; the others are cancelled and no process of theirs is left."""
    async with Executor(home=home, max_workers=4) as ex:
        parent = await ex.run(RunSpec(workflow="tests.flows:race_flow", config={"delay": 0.0}))
        # The losers would sleep far past the test's timeout: the race can only end because
        # they were stopped, whatever the cancel grace (no bound on the time it took).
        race = await ex.race(parent.run_id, "work",
                             [{"delay": 600.0}, {"delay": 0.2}, {"delay": 600.0}])
        winner = race.racers[1]["run_id"]
        assert race.winner_run_id == winner
        assert [r["status"] for r in race.racers] == ["lost", "won", "lost"]
        assert race.losers_gone_at is not None and race.decided_at is not None
        assert race.losers_gone_at >= race.decided_at
        for loser in (race.racers[0]["run_id"], race.racers[2]["run_id"]):
            types = {e.type for e in ex.store.events(loser)}
            assert "run_completed" not in types, types  # stopped, not finished
        pids = [e.data["pid"] for r in race.racers
                for e in ex.store.events(r["run_id"], types=["custom"]) if e.data["name"] == "racer"]
        assert len(pids) == 3 and not any(alive(p) for p in pids)
        statuses = {r["run_id"]: ex.store.get_run(r["run_id"]).status for r in race.racers}
        assert statuses[winner] == "won" and sorted(statuses.values()) == ["lost", "lost", "won"]


async def test_best_score_race_picks_the_scorers_favourite(home: Path) -> None:
    """best_score waits for all racers and picks the one the scorer prefers, not the fastest."""
    async with Executor(home=home, max_workers=3) as ex:
        parent = await ex.run(RunSpec(workflow="tests.flows:race_flow"))
        race = await ex.race(parent.run_id, "work",
                             [{"delay": 0.0, "quality": 1}, {"delay": 0.6, "quality": 9},
                              {"delay": 0.1, "quality": 5}],
                             strategy="best_score", scorer="tests.flows:score_quality")
        assert race.winner_run_id == race.racers[1]["run_id"]
        assert race.scores[race.racers[1]["run_id"]] == 9.0


async def test_race_needs_a_known_strategy_and_a_scorer(home: Path) -> None:
    """Bad race options fail before any racer starts, with the rule."""
    async with Executor(home=home) as ex:
        parent = await ex.run(RunSpec(workflow="tests.flows:race_flow"))
        with pytest.raises(ConfigError, match="unknown strategy"):
            await ex.race(parent.run_id, "work", [{}, {}], strategy="fastest")
        with pytest.raises(ConfigError, match="needs a scorer"):
            await ex.race(parent.run_id, "work", [{}, {}], strategy="best_score")


async def test_compare_lays_runs_side_by_side(home: Path) -> None:
    """compare shows status, nodes and the files each branch changed against the first run."""
    async with Executor(home=home) as ex:
        parent = await ex.run(RunSpec(workflow="tests.flows:three_steps", config={"flavour": "a"}))
        child = await ex.branch(parent.run_id, "step_3", config={"flavour": "b"})
        await child.wait()
        comparison = await ex.compare([parent.run_id, child.run_id])
    first, second = comparison.runs
    assert first.status == second.status == "completed"
    assert comparison.node_ids[:3] == ["step_1", "step_2", "step_3"]
    assert second.nodes["step_3"] == "completed"
    if first.files:  # file tracking present
        assert comparison.file_diff[child.run_id]["changed"] == ["out_3.txt"]
