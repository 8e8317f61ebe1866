"""Every AG2 internal that capture relies on, in one place, checked against the supported range.

Capture prefers AG2's public extension points (the runtime logger, agent hooks, the IOStream
protocol, the ``CodeExecutor`` protocol, beta ``BaseMiddleware``). Two paths offer none:

::

    AG2 run()/a_run()/run_iter()/run_group_chat()...        autogen.beta Agent.ask()/reply.ask()
      thread or task: with IOStream.set_default(ThreadIOStream()):       every turn, whatever the
        events go to AG2's own queue, not to capture                     entry point, goes through
                 │                                                        Agent._turn_scope(...,
      context_stream() / set_context_stream(tee)                           additional_middleware)
      read and replace the default of *this* context only                        │
      (AG2's ``IOStream._default_io_stream`` ContextVar; the          add_turn_middleware(factory)
      ``with`` block that set it resets it on exit)                   appends one middleware per turn

Both are private in AG2 0.14; :data:`SUPPORTED_AG2` is the range they were checked against, and
:func:`check` names whatever no longer matches (``tests/test_ag2_seams.py`` fails loudly on it).
A seam that does not match at run time is not used: capture reports that path as uncaptured
(an ``error`` event) instead of failing the run.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any, Final

import autogen
from autogen.io.base import IOStream

__all__ = [
    "SUPPORTED_AG2",
    "add_turn_middleware",
    "can_set_context_stream",
    "check",
    "context_stream",
    "global_stream",
    "set_context_stream",
    "supported_range",
]

logger = logging.getLogger(__name__)

#: The AG2 versions these seams were checked against (``pyproject.toml`` pins the same range).
SUPPORTED_AG2: Final = ((0, 14), (1, 0))


def supported_range() -> str:
    """:data:`SUPPORTED_AG2` as people read it: ``0.14 <= AG2 < 1.0``."""
    low, high = SUPPORTED_AG2
    return f"{'.'.join(map(str, low))} <= AG2 < {'.'.join(map(str, high))}"


def _version() -> tuple[int, ...]:
    parts = []
    for piece in str(getattr(autogen, "__version__", "0")).split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# -- the IOStream default of the current context ---------------------------------------------------


def _default_var() -> contextvars.ContextVar[Any] | None:
    var = getattr(IOStream, "_default_io_stream", None)
    return var if isinstance(var, contextvars.ContextVar) else None


_DEFAULT_VAR: Final = _default_var()  # looked up once: context_stream() runs on every capture callback


def context_stream() -> Any:
    """The IOStream AG2 would use in this thread or task, if one is set for it (else ``None``:
    AG2 then uses the global default)."""
    return None if _DEFAULT_VAR is None else _DEFAULT_VAR.get()


def can_set_context_stream() -> bool:
    """Whether :func:`set_context_stream` works with the installed AG2."""
    return _DEFAULT_VAR is not None


def set_context_stream(stream: Any) -> bool:
    """Make ``stream`` the IOStream of this thread or task only; returns whether it could.

    AG2 sets a context's stream with ``with IOStream.set_default(s)``, whose exit resets the
    variable to what it was before that ``with``: a stream set here inside such a block ends
    with the block.
    """
    if _DEFAULT_VAR is None:
        return False
    _DEFAULT_VAR.set(stream)
    return True


def global_stream() -> Any:
    """AG2's process-wide default IOStream, or ``None`` (``get_global_default`` raises then)."""
    return getattr(IOStream, "_global_default", None)


# -- beta Agent turns ------------------------------------------------------------------------------

_TURN_LOCK = threading.Lock()
_TURN_PARAMETER: Final = "additional_middleware"


def _turn_scope_owner() -> Any:
    from autogen.beta import Agent

    return Agent


def _turn_scope_problem() -> str | None:
    try:
        agent_cls = _turn_scope_owner()
    except ImportError as exc:
        return f"autogen.beta cannot be imported ({exc})"
    scope = getattr(agent_cls, "_turn_scope", None)
    if not callable(scope):
        return "autogen.beta.Agent has no _turn_scope method"
    try:
        parameters = inspect.signature(scope).parameters
    except (TypeError, ValueError):
        return "autogen.beta.Agent._turn_scope has no readable signature"
    parameter = parameters.get(_TURN_PARAMETER)
    if parameter is None or parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
        return f"autogen.beta.Agent._turn_scope takes no keyword {_TURN_PARAMETER!r}"
    return None


def add_turn_middleware(factory: Callable[[Any], Any | None]) -> Callable[[], None]:
    """Give every beta ``Agent`` turn one more (innermost) middleware; returns the undo.

    ``factory(agent)`` returns the middleware factory (AG2's ``MiddlewareFactory``) for a turn of
    ``agent``, or ``None`` to add nothing. Raises :class:`LookupError` naming the mismatch when
    the installed AG2 lacks the seam.
    """
    problem = _turn_scope_problem()
    if problem is not None:
        raise LookupError(problem)
    agent_cls = _turn_scope_owner()
    with _TURN_LOCK:
        original = agent_cls.__dict__["_turn_scope"]

        @functools.wraps(original)
        def _turn_scope(self: Any, event: Any, *args: Any, **kwargs: Any) -> Any:
            middleware = factory(self)
            if middleware is not None:
                kwargs[_TURN_PARAMETER] = (*kwargs.get(_TURN_PARAMETER, ()), middleware)
            return original(self, event, *args, **kwargs)

        agent_cls._turn_scope = _turn_scope

    def undo() -> None:
        with _TURN_LOCK:
            if agent_cls.__dict__.get("_turn_scope") is _turn_scope:
                agent_cls._turn_scope = original

    return undo


# -- the whole list --------------------------------------------------------------------------------


def check() -> list[str]:
    """What no longer matches in the installed AG2 (empty when every seam is as expected)."""
    problems = []
    low, high = SUPPORTED_AG2
    if not low <= _version()[:2] < high:
        problems.append(f"AG2 {autogen.__version__} is outside the supported range {supported_range()}")
    if _default_var() is None:
        problems.append("autogen.io.base.IOStream._default_io_stream is not a ContextVar")
    if not hasattr(IOStream, "_global_default"):
        problems.append("autogen.io.base.IOStream has no _global_default")
    beta = _turn_scope_problem()
    if beta is not None:
        problems.append(beta)
    return problems
