"""The one exception root of isolane and its few leaves.

Every error a user can meet derives from :class:`IsolaneError`. Messages say what happened, the
likely cause and what to do next; structured attributes carry the same facts for programs.
"""

from __future__ import annotations

__all__ = [
    "BlobError",
    "BudgetExceeded",
    "ConfigError",
    "InvalidEvent",
    "IsolaneError",
    "LimitExceeded",
    "PathEscape",
    "RunNotFound",
    "RunStateError",
    "StoreRefused",
    "StoreUnavailable",
    "WorkerCrashed",
    "WorkflowError",
    "WorkflowNotFound",
]


class IsolaneError(Exception):
    """Root of every error isolane raises on purpose."""


class ConfigError(IsolaneError, ValueError):
    """A configuration value, option or argument is invalid; the message states the rule."""


class RunNotFound(IsolaneError, LookupError):
    """No run has the given id (or id prefix)."""

    def __init__(self, run_id: str, *, hint: str | None = None) -> None:
        self.run_id = run_id
        msg = f"no run with id {run_id!r}"
        msg += f"; {hint}" if hint else "; list the known runs with `isolane runs`"
        super().__init__(msg)


class RunStateError(IsolaneError):
    """The run is in a state that does not allow the requested operation."""


class WorkflowNotFound(IsolaneError, LookupError):
    """A workflow reference could not be resolved to a callable."""


class InvalidEvent(IsolaneError, ValueError):
    """A frame or event from a worker broke the wire contract."""

    def __init__(self, reason: str, *, excerpt: bytes | str = b"") -> None:
        self.reason = reason
        if isinstance(excerpt, bytes):
            excerpt = excerpt[:200].decode("utf-8", "replace")
        self.excerpt = excerpt[:200]
        super().__init__(reason)


class WorkflowError(IsolaneError):
    """The workflow raised inside its worker; ``remote_traceback`` holds the child's traceback."""

    def __init__(self, message: str, *, remote_traceback: str | None = None) -> None:
        self.remote_traceback = remote_traceback
        super().__init__(message)


class WorkerCrashed(IsolaneError):
    """The worker process died without reporting an outcome (signal, ``os._exit``, OOM kill)."""

    def __init__(self, run_id: str, exitcode: int | None, *, cause: str | None = None) -> None:
        self.run_id = run_id
        self.exitcode = exitcode
        self.cause = cause
        super().__init__(
            f"worker of run {run_id} died with {describe_exit(exitcode)}"
            + (f" ({cause})" if cause else "")
            + "; `isolane resume` continues it from its last checkpoint"
        )


class StoreUnavailable(IsolaneError):
    """The database cannot be reached or written; events stay in the run's spool meanwhile."""


class StoreRefused(IsolaneError):
    """The database refused what was written for its content (a value out of range, a row too
    large, text it cannot hold), not for an outage: writing it again cannot succeed. ``reason``
    is the database's one-line explanation."""

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class BudgetExceeded(IsolaneError):
    """A run or racer spent more than its budget allows."""


class LimitExceeded(IsolaneError):
    """A run passed one of its resource limits (``limit``: memory, cpu, open_files, processes,
    output); the message names the limit and its value."""

    def __init__(self, message: str, *, limit: str) -> None:
        self.limit = limit
        super().__init__(message)


class BlobError(IsolaneError):
    """A stored file content (blob) is missing, was not stored, or does not match its hash
    (``reason``: ``missing``, ``not_stored``, ``corrupt``, ``invalid``)."""

    def __init__(self, message: str, *, sha256: str, reason: str) -> None:
        self.sha256 = sha256
        self.reason = reason
        super().__init__(message)


class PathEscape(IsolaneError, ValueError):
    """A path leads outside the directory it must stay in (``..``, an absolute path, a link)."""

    def __init__(self, message: str, *, path: str, root: str) -> None:
        self.path = path
        self.root = root
        super().__init__(message)


def describe_exit(exitcode: int | None) -> str:
    """Render a process exit code the way people read it: ``SIGKILL(-9)`` or ``exit code 3``."""
    import signal

    if exitcode is None:
        return "an unknown exit code"
    if exitcode < 0:
        try:
            return f"{signal.Signals(-exitcode).name}({exitcode})"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"
