"""Workers, their supervisor and the parent monitor (see :mod:`isolane.executor.executor`)."""

from isolane.executor.executor import (
    TERMINAL_STATUSES,
    Executor,
    Outcome,
    RunHandle,
    RunSpec,
)
from isolane.executor.sync import SyncExecutor, SyncRun

__all__ = ["TERMINAL_STATUSES", "Executor", "Outcome", "RunHandle", "RunSpec", "SyncExecutor", "SyncRun"]
