"""The workflow that runs a ``best_score`` race's scorer in a worker process of its own.

::

    parent (racing.BestScore)                          worker (scrubbed environment, own process)
    every racer ended ──▶ submit RunSpec(               score_racers(ctx, task, config)
        workflow="isolane.scoring:score_racers",          imports config["scorer"] (user code),
        config={"scorer": "mod:fn",                       checks it takes (result, files, cost_usd),
                "racers": [{run_id, result,               calls it once per racer
                            files, cost_usd}, ...]})  ◀── run_completed {"scores": {run_id: float}}
    a failed scoring run ──▶ the race ends with its one-line error      or run_failed, one line

A scorer named by reference is user code: importing it in the parent would run its module's top
level with the parent's credentials. It gets only stored data (the racers' results, their
workspaces' ``path -> sha256`` and their spend), and its verdict comes back as the run's result.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Final

from isolane.errors import ConfigError, WorkflowNotFound
from isolane.workflow import resolve_workflow

__all__ = ["SCORER_WORKFLOW", "SIGNATURE", "score_all", "score_racers"]

#: The reference the parent submits (a module of isolane's: nothing of the user's is named).
SCORER_WORKFLOW: Final = "isolane.scoring:score_racers"
#: How a scorer is called, as the errors and the README state it.
SIGNATURE: Final = "scorer(result, files, cost_usd) -> float"


def score_racers(ctx: Any, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """Import ``config["scorer"]`` and score every racer of ``config["racers"]``."""
    ref = config.get("scorer")
    racers = config.get("racers")
    if not isinstance(ref, str) or not isinstance(racers, list):
        raise ConfigError("score_racers needs config {'scorer': 'module:function', 'racers': [...]}")
    try:
        scorer = resolve_workflow(ref).func
    except WorkflowNotFound as exc:
        raise ConfigError(f"cannot load scorer {ref!r}: {exc}") from None
    return {"scores": score_all(scorer, racers, name=repr(ref))}


def score_all(scorer: Any, racers: list[dict[str, Any]], *, name: str) -> dict[str, float]:
    """``{run_id: score}`` of each racer (``{run_id, result, files, cost_usd}``), by ``scorer``;
    a wrong signature, an exception or a score that is not a number is one :class:`ConfigError`
    line naming the scorer ``name``."""
    try:
        inspect.signature(scorer).bind(None, {}, None)
    except TypeError:
        raise ConfigError(f"scorer {name} has the signature {_signature(scorer)}; a scorer is "
                          f"{SIGNATURE}") from None
    except ValueError:
        pass  # no signature to read (a builtin): the call says
    scores: dict[str, float] = {}
    for racer in racers:
        try:
            value = scorer(racer["result"], racer["files"], racer["cost_usd"])
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(f"scorer {name} raised {type(exc).__name__}: {first} "
                              f"(scoring racer {str(racer['run_id'])[:12]})") from exc
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ConfigError(f"scorer {name} returned {value!r} for racer {racer['run_id']}; "
                              f"a scorer is {SIGNATURE}")
        scores[racer["run_id"]] = float(value)
    return scores


def _signature(func: Any) -> str:
    try:
        return str(inspect.signature(func))
    except (TypeError, ValueError):
        return "(unknown)"
