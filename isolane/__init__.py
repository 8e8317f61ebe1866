"""isolane: run multi-agent LLM workflows durably, each run in its own worker process.

Quick use::

    async with isolane.Executor(home=".isolane", max_workers=4) as ex:
        run = await ex.submit(isolane.RunSpec(workflow="pkg.flow:main", task="..."))
        async for event in run.events():
            ...
        outcome = await run.wait()
"""

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
from isolane.executor.context import RunContext
from isolane.executor.executor import Executor, Outcome, RunHandle, RunSpec
from isolane.executor.limits import Limits
from isolane.executor.sync import SyncExecutor, SyncRun
from isolane.schemas.envelope import Event
from isolane.workflow import DagTemplate, TemplateEdge, TemplateNode, workflow

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "DagTemplate",
    "Event",
    "Executor",
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
