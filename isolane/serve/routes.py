"""The REST routes: submit, list, show, cancel, resume, branch, race, events, DAG, cost, files,
human input.

::

    GET  /api/runs                       runs, newest first (?limit=, ?status=)
    POST /api/runs                       submit {"workflow", "task"?, "config"?, ...}     → 201
    GET  /api/workflows                  the workflows that may be submitted
    GET  /api/runs/{id}                  one run (an id prefix works) and its pending questions
    POST /api/runs/{id}/cancel           stop a live run                                 → 202
    POST /api/runs/{id}/resume           continue an ended run in a new worker            → 202
    POST /api/runs/{id}/branch           {"from_node", "config"?, ...}: a child run        → 201
    POST /api/runs/{id}/race             {"from_node", "variants": [{...}, ...], "strategy"?,
                                          "scorer"?, "budget_usd"?, "timeout"?}: one branch per
                                          variant, judged in the background               → 202
    GET  /api/races/{group_id}           a race: status, strategy, winner, each racer's status
    GET  /api/runs/{id}/events           stored events (?since=, ?limit=, ?type=)
    GET  /api/runs/{id}/dag | cost | files
    GET  /api/runs/{id}/requests         pending human-input requests
    POST /api/runs/{id}/answer           {"request_id", "text"}                           → 202

Every handler reads the :class:`~isolane.executor.executor.Executor` from ``app.state`` and the
store through a worker thread (no blocking call on the event loop). Errors are JSON
``{"error": message, "type": name}`` with the status of the error's kind: 400 bad input, 404
unknown run, 409 wrong state for the operation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from isolane.errors import (
    ConfigError,
    RunStateError,
)
from isolane.executor.executor import TERMINAL_STATUSES, Executor, RunHandle, RunSpec
from isolane.executor.racing import Race
from isolane.references import known_workflows
from isolane.serve.http import (
    JSONResponse,
    error_response,
    guarded,
    int_param,
    json_body,
    options_of,
)
from isolane.tracking.branching import racing_group
from isolane.tracking.cost import roll_up

__all__ = ["JSONResponse", "api_routes", "error_response", "resolve_handle"]

log = logging.getLogger(__name__)

_EVENTS_PAGE: Final = 1000
_EVENTS_MAX: Final = 10_000
_RUNS_MAX: Final = 500
#: What ``POST /api/runs`` accepts besides ``workflow``, with the type each must have.
_SUBMIT_FIELDS: Final[dict[str, type | tuple[type, ...]]] = {
    "task": str, "config": dict, "name": str, "timeout": (int, float),
    "human_timeout": (int, float), "heartbeat_timeout": (int, float),
}
#: What ``POST /api/runs/{id}/branch`` accepts besides ``from_node``.
_BRANCH_FIELDS: Final[dict[str, type | tuple[type, ...]]] = {
    "name": str, "hypothesis": str, "config": dict, "timeout": (int, float),
}
#: What ``POST /api/runs/{id}/race`` accepts besides ``from_node`` and ``variants``.
_RACE_FIELDS: Final[dict[str, type | tuple[type, ...]]] = {
    "strategy": str, "scorer": str, "budget_usd": (int, float), "timeout": (int, float),
}
#: Racers one request may start (each is a worker process).
_RACE_MAX_VARIANTS: Final = 32
#: Races started by this server whose verdict (or error) GET /api/races/{id} can report.
_RACES_KEPT: Final = 256


def _executor(request: Request) -> Executor:
    executor: Executor = request.app.state.executor
    return executor


async def resolve_handle(executor: Executor, run_id: str) -> RunHandle:
    """The handle of ``run_id`` (or a unique prefix): live if this executor runs it."""
    row = await anyio.to_thread.run_sync(lambda: executor.store.get_run(run_id))
    return executor.get(row.id)


def _run_dict(row: Any, executor: Executor) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    data["live"] = executor.is_live(row.id)
    data["ended"] = row.status in TERMINAL_STATUSES
    return data


# -- handlers --------------------------------------------------------------------------------------


async def list_runs(request: Request) -> Response:
    executor = _executor(request)
    limit = int_param(request, "limit", 50, low=1, high=_RUNS_MAX)
    status = request.query_params.get("status")
    rows = await anyio.to_thread.run_sync(lambda: executor.store.list_runs(limit=limit, status=status))
    return JSONResponse({"runs": [_run_dict(row, executor) for row in rows]})


async def submit_run(request: Request) -> Response:
    executor = _executor(request)
    body = await json_body(request)
    workflow = body.get("workflow")
    if not isinstance(workflow, str) or not workflow.strip():
        raise ConfigError("'workflow' is required: a registered name or 'package.module:function'")
    allowed: Collection[str] | None = request.app.state.workflows
    if allowed is not None and workflow not in allowed:
        raise ConfigError(f"workflow {workflow!r} may not be submitted here; allowed: "
                          f"{', '.join(sorted(allowed)) or 'none'}")
    options = options_of({k: v for k, v in body.items() if k != "workflow"}, _SUBMIT_FIELDS,
                         required="workflow")
    handle = await executor.submit(RunSpec(workflow=workflow, **options))
    return JSONResponse({"run_id": handle.run_id}, status_code=201)


async def show_run(request: Request) -> Response:
    executor = _executor(request)
    run_id = request.path_params["run_id"]
    row = await anyio.to_thread.run_sync(lambda: executor.store.get_run(run_id))
    handle = executor.get(row.id)
    pending = await handle.pending_requests()
    return JSONResponse({"run": _run_dict(row, executor),
                         "pending_requests": [p.as_dict() for p in pending]})


async def cancel_run(request: Request) -> Response:
    executor = _executor(request)
    handle = await resolve_handle(executor, request.path_params["run_id"])
    if handle.done:
        raise RunStateError(f"run {handle.run_id} is not running in this service; nothing to cancel")
    reason = "cancelled through the API"
    await handle.cancel(reason)
    return JSONResponse({"run_id": handle.run_id, "status": "cancelling"}, status_code=202)


async def resume_run(request: Request) -> Response:
    executor = _executor(request)
    run_id = request.path_params["run_id"]
    handle = await executor.resume(run_id)
    return JSONResponse({"run_id": handle.run_id, "status": "queued"}, status_code=202)


def _from_node(body: dict[str, Any], what: str) -> str:
    from_node = body.pop("from_node", None)
    if not isinstance(from_node, str) or not from_node:
        raise ConfigError(f"'from_node' is required: the DAG node id {what}")
    return from_node


async def branch_run(request: Request) -> Response:
    executor = _executor(request)
    body = await json_body(request)
    from_node = _from_node(body, "the branch starts from")
    options = options_of(body, _BRANCH_FIELDS, required="from_node")
    handle = await executor.branch(request.path_params["run_id"], from_node, **options)
    return JSONResponse({"run_id": handle.run_id, "parent_run_id": request.path_params["run_id"],
                         "from_node": from_node}, status_code=201)


async def race_run(request: Request) -> Response:
    executor = _executor(request)
    body = await json_body(request)
    from_node = _from_node(body, "the racers start from")
    variants = body.pop("variants", None)
    if not isinstance(variants, list) or len(variants) < 2:
        raise ConfigError("'variants' is required: a list of at least two objects, each one "
                          'racer\'s config changes (e.g. [{"model": "a"}, {"model": "b"}])')
    if len(variants) > _RACE_MAX_VARIANTS:
        raise ConfigError(f"a race has at most {_RACE_MAX_VARIANTS} variants, got {len(variants)}")
    if not all(isinstance(v, dict) for v in variants):
        raise ConfigError("each variant must be a JSON object of config changes, "
                          "e.g. {\"model\": \"a\"}")
    options = options_of(body, _RACE_FIELDS, required="from_node, variants")
    scorer = options.get("scorer")
    allowed: Collection[str] | None = request.app.state.workflows
    if scorer is not None and allowed is not None and scorer not in allowed:
        # A scorer is user code (imported in a scoring worker only): the allow-list covers it too.
        raise ConfigError(f"scorer {scorer!r} may not be used here; allowed: "
                          f"{', '.join(sorted(allowed)) or 'none'}")
    race = await executor.start_race(request.path_params["run_id"], from_node, variants, **options)
    races: dict[str, Race] = request.app.state.races  # for GET /api/races/{id} to say why it failed
    races[race.group_id] = race
    while len(races) > _RACES_KEPT:
        races.pop(next(iter(races)))
    return JSONResponse({"racing_group_id": race.group_id, "parent_run_id": race.parent_run_id,
                         "from_node": race.from_node, "strategy": race.strategy,
                         "run_ids": race.run_ids, "status": "racing"}, status_code=202)


async def run_events(request: Request) -> Response:
    executor = _executor(request)
    run_id = request.path_params["run_id"]
    since = int_param(request, "since", 0)
    limit = int_param(request, "limit", _EVENTS_PAGE, low=1, high=_EVENTS_MAX)
    types = request.query_params.getlist("type") or None
    row = await anyio.to_thread.run_sync(lambda: executor.store.get_run(run_id))
    events = await anyio.to_thread.run_sync(
        lambda: executor.store.events(row.id, after_seq=since, limit=limit, types=types))
    body = b'{"run_id":' + orjson.dumps(row.id) + b',"events":[' + b",".join(
        e.to_json() for e in events) + b'],"next_since":' + orjson.dumps(
        events[-1].seq if events else since) + b',"more":' + (b"true" if len(events) == limit else b"false") + b"}"
    return Response(body, media_type="application/json")


async def run_dag(request: Request) -> Response:
    executor = _executor(request)
    run_id = request.path_params["run_id"]

    def read() -> dict[str, Any]:
        row = executor.store.get_run(run_id)
        nodes, edges = executor.store.dag(row.id)
        return {"run_id": row.id, "status": row.status, "parent_run_id": row.parent_run_id,
                "branch_point_node": row.branch_point_node,
                "nodes": [dataclasses.asdict(n) for n in nodes],
                "edges": [dataclasses.asdict(e) for e in edges]}

    return JSONResponse(await anyio.to_thread.run_sync(read))


async def show_race(request: Request) -> Response:
    executor = _executor(request)
    group_id = request.path_params["group_id"]
    try:
        group = await anyio.to_thread.run_sync(racing_group, executor.store, group_id)
    except RunStateError:
        return JSONResponse({"error": f"no race {group_id!r}; POST /api/runs/{{id}}/race answers "
                                      "with its racing_group_id", "type": "RaceNotFound"},
                            status_code=404)
    race: Race | None = request.app.state.races.get(group["id"])
    if race is not None and race.done and race.error is not None:
        group["error"] = race.error
    return JSONResponse(group)


async def run_cost(request: Request) -> Response:
    executor = _executor(request)
    run_id = request.path_params["run_id"]

    def read() -> dict[str, Any]:
        row = executor.store.get_run(run_id)
        return {"run_id": row.id, **roll_up(executor.store.llm_calls(row.id)).as_data()}

    return JSONResponse(await anyio.to_thread.run_sync(read))


async def run_files(request: Request) -> Response:
    executor = _executor(request)
    run_id = request.path_params["run_id"]

    def read() -> dict[str, Any]:
        row = executor.store.get_run(run_id)
        return {"run_id": row.id, "files": [dataclasses.asdict(f) for f in executor.store.files(row.id)]}

    return JSONResponse(await anyio.to_thread.run_sync(read))


async def run_requests(request: Request) -> Response:
    executor = _executor(request)
    handle = await resolve_handle(executor, request.path_params["run_id"])
    pending = await handle.pending_requests()
    return JSONResponse({"run_id": handle.run_id, "pending_requests": [p.as_dict() for p in pending]})


async def answer_request(request: Request) -> Response:
    executor = _executor(request)
    body = await json_body(request)
    request_id, text = body.get("request_id"), body.get("text")
    if not isinstance(request_id, str) or not isinstance(text, str):
        raise ConfigError('send {"request_id": "...", "text": "..."}; both are strings')
    handle = await resolve_handle(executor, request.path_params["run_id"])
    await executor.answer(handle.run_id, request_id, text, source="api")
    return JSONResponse({"run_id": handle.run_id, "request_id": request_id, "status": "sent"},
                        status_code=202)


async def list_workflows(request: Request) -> Response:
    allowed: Collection[str] | None = request.app.state.workflows
    known = await anyio.to_thread.run_sync(known_workflows)  # loads no entry point's code
    return JSONResponse({"workflows": [
        {"name": name, "description": description}
        for name, description in sorted(known.items()) if allowed is None or name in allowed]})


def api_routes() -> list[Route]:
    """The ``/api`` routes."""
    table: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("/api/runs", list_runs, ["GET"]),
        ("/api/runs", submit_run, ["POST"]),
        ("/api/workflows", list_workflows, ["GET"]),
        ("/api/runs/{run_id}", show_run, ["GET"]),
        ("/api/runs/{run_id}/cancel", cancel_run, ["POST"]),
        ("/api/runs/{run_id}/resume", resume_run, ["POST"]),
        ("/api/runs/{run_id}/branch", branch_run, ["POST"]),
        ("/api/runs/{run_id}/race", race_run, ["POST"]),
        ("/api/races/{group_id}", show_race, ["GET"]),
        ("/api/runs/{run_id}/events", run_events, ["GET"]),
        ("/api/runs/{run_id}/dag", run_dag, ["GET"]),
        ("/api/runs/{run_id}/cost", run_cost, ["GET"]),
        ("/api/runs/{run_id}/files", run_files, ["GET"]),
        ("/api/runs/{run_id}/requests", run_requests, ["GET"]),
        ("/api/runs/{run_id}/answer", answer_request, ["POST"]),
    ]
    return [Route(path, guarded(handler), methods=methods) for path, handler, methods in table]
