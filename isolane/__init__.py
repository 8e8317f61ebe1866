"""isolane: run multi-agent LLM workflows durably, each run in its own worker process.

Quick use::

    async with isolane.Executor(home=".isolane", max_workers=4) as ex:
        run = await ex.submit(isolane.RunSpec(workflow="pkg.flow:main", task="..."))
        async for event in run.events():
            ...
        outcome = await run.wait()

Names are imported on first use (PEP 562): ``import isolane`` loads nothing heavy, so a worker
process or the CLI pays only for what it touches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__version__ = "0.1.0"

_ERRORS = "isolane.errors"
_RUN = "isolane.executor.run"
_WORKFLOW = "isolane.workflow"

__getattr__, __dir__ = exports(__name__, {
    "BudgetExceeded": _ERRORS, "ConfigError": _ERRORS, "InvalidEvent": _ERRORS,
    "IsolaneError": _ERRORS, "LimitExceeded": _ERRORS, "PathEscape": _ERRORS,
    "RunNotFound": _ERRORS, "RunStateError": _ERRORS, "StoreUnavailable": _ERRORS,
    "WorkerCrashed": _ERRORS, "WorkflowError": _ERRORS, "WorkflowNotFound": _ERRORS,
    "RunContext": "isolane.worker.context",
    "EventSubscription": "isolane.executor.feed", "Feed": "isolane.executor.feed",
    "FeedCursor": "isolane.executor.feed",
    "Executor": "isolane.executor.executor", "Outcome": _RUN, "RunHandle": _RUN, "RunSpec": _RUN,
    "Limits": "isolane.schemas.limits",
    "SyncExecutor": "isolane.executor.sync", "SyncRun": "isolane.executor.sync",
    "Event": "isolane.schemas.envelope",
    "DagTemplate": _WORKFLOW, "TemplateEdge": _WORKFLOW, "TemplateNode": _WORKFLOW,
    "workflow": _WORKFLOW,
    # subpackages, reachable as attributes (``isolane.serve.create_app``)
    "backends": None, "capture": None, "cli": None, "executor": None, "metrics": None, "offline": None,
    "schemas": None, "serve": None, "settings": None,
    "testing": None, "tracking": None, "worker": None, "workflows": None,
})

if TYPE_CHECKING:
    from isolane.errors import (
        BudgetExceeded,
        ConfigError,
        InvalidEvent,
        IsolaneError,
        LimitExceeded,
        PathEscape,
        RunNotFound,
        RunStateError,
        StoreUnavailable,
        WorkerCrashed,
        WorkflowError,
        WorkflowNotFound,
    )
    from isolane.executor.executor import Executor
    from isolane.executor.feed import EventSubscription, Feed, FeedCursor
    from isolane.executor.run import Outcome, RunHandle, RunSpec
    from isolane.executor.sync import SyncExecutor, SyncRun
    from isolane.schemas.envelope import Event
    from isolane.schemas.limits import Limits
    from isolane.worker.context import RunContext
    from isolane.workflow import DagTemplate, TemplateEdge, TemplateNode, workflow

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "DagTemplate",
    "Event",
    "EventSubscription",
    "Executor",
    "Feed",
    "FeedCursor",
    "InvalidEvent",
    "IsolaneError",
    "LimitExceeded",
    "Limits",
    "Outcome",
    "PathEscape",
    "RunContext",
    "RunHandle",
    "RunNotFound",
    "RunSpec",
    "RunStateError",
    "StoreUnavailable",
    "SyncExecutor",
    "SyncRun",
    "TemplateEdge",
    "TemplateNode",
    "WorkerCrashed",
    "WorkflowError",
    "WorkflowNotFound",
    "__version__",
    "workflow",
]
