"""The terminal, which the CLI alone owns: its consoles and how a command ends with an error.

Every command runs inside :class:`CliApp`, which turns what a user can get wrong into ONE line on
stderr that starts with ``error:`` and says what to do, and exit code 2, never a traceback:

* click/typer usage errors (missing option, bad value),
* :class:`~isolane.errors.IsolaneError` (unknown run or workflow, bad ``--config``, bad URL),
* database errors (unreachable server, unreadable file) and OS errors (unwritable ``--home``).

Anything else is a bug and keeps its (plain, not pretty) traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Final, NoReturn

import typer
from rich.console import Console

from isolane.cli.codes import EXIT_USAGE
from isolane.errors import IsolaneError, WorkflowNotFound

__all__ = ["CliApp", "UsageFailure", "err", "fail", "one_line", "out"]

log = logging.getLogger(__name__)

#: Human output (tables, the live view). Machine output (``--json``) bypasses rich.
out: Final = Console(highlight=False)
#: Errors and notes, never mixed into stdout.
err: Final = Console(stderr=True, highlight=False, soft_wrap=True)


def _click_class(name: str) -> type[Exception]:
    # typer vendors click in recent versions and depends on it in older ones: find the class
    # through a public exception's ancestry instead of importing either location.
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name:
            return cls
    raise RuntimeError(f"typer.BadParameter has no {name} ancestor")  # pragma: no cover


_ClickException: Final = _click_class("ClickException")

_WORKFLOW_FORMS: Final = "a registered name, 'package.module:function' or 'path/to/file.py:function'"

#: What to do next, by error class, appended when the message does not already say it (the
#: first string is what the message says when it already does).
_HINTS: Final[dict[type[Exception], tuple[str, str]]] = {
    WorkflowNotFound: ("'path/to/file.py:function'", f"check --workflow: {_WORKFLOW_FORMS}"),
}


#: OS errors that come from a path the user gave (``--home``, a workflow file), not from a bug.
_PATH_ERRORS: Final = (FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError,
                       IsADirectoryError)


class UsageFailure(IsolaneError):
    """A CLI argument broke a rule; the message states the rule and the fix."""


def one_line(text: str) -> str:
    """Collapse ``text`` to a single line (an error must not spill over several)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _message_for(exc: BaseException) -> str:
    message = one_line(str(exc)) or type(exc).__name__
    for cls, (marker, hint) in _HINTS.items():
        if isinstance(exc, cls) and marker not in message:
            message = f"{message}; {hint}"
    return message


def fail(message: str) -> NoReturn:
    """End the command with a usage error (exit 2)."""
    raise UsageFailure(message)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _user_error(exc: BaseException) -> str | None:
    """The one-line message for an error the user caused, or ``None`` for a bug."""
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, IsolaneError):
            return _message_for(leaf)
    # A database error means SQLAlchemy is loaded; the CLI never imports it just to check.
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    db_error: type[BaseException] | tuple[()] = getattr(sqlalchemy_exc, "SQLAlchemyError", ())
    for leaf in leaves:
        if isinstance(leaf, db_error):
            detail = one_line(str(getattr(leaf, "orig", None) or leaf)).split(" (Background", 1)[0]
            return (f"cannot use the database: {detail}; check --db / $ISOLANE_DB_URL "
                    "(and that the server is up) or --home")
        if isinstance(leaf, _PATH_ERRORS):
            return f"{one_line(str(leaf))}; check --home and the paths you gave"
    return None


def _configure_logging() -> None:
    """Library warnings go to stderr as plain lines (stdout may be carrying JSON)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")


class CliApp(typer.Typer):
    """A :class:`typer.Typer` whose usage and input errors are one ``error:`` line and exit 2."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("pretty_exceptions_enable", False)
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("no_args_is_help", False)
        super().__init__(**kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        sys.exit(self.main(*args, **kwargs))

    def main(self, args: Sequence[str] | None = None, *, prog_name: str | None = None) -> int:
        """Run the command line ``args`` (default ``sys.argv[1:]``); return the exit code."""
        _configure_logging()
        command = typer.main.get_command(self)
        try:
            rv = command.main(args=list(args) if args is not None else None, prog_name=prog_name,
                              standalone_mode=False)
        except _ClickException as exc:
            code = int(getattr(exc, "exit_code", EXIT_USAGE))
            if type(exc).__name__ == "NoArgsIsHelpError":
                # The help is the message; with rich it has been printed already.
                text = exc.format_message()  # type: ignore[attr-defined]
                if text.strip():
                    err.print(text, markup=False)
                return code
            message = one_line(exc.format_message())  # type: ignore[attr-defined]
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else (prog_name or "isolane")
            err.print(f"error: {message} (see `{where} --help`)", markup=False)
            return code
        except typer.Abort:
            err.print("error: aborted", markup=False)
            return 1
        except Exception as exc:  # ExceptionGroup included: the executor runs a task group
            problem = _user_error(exc)
            if problem is None:
                raise
            log.debug("command failed on user input", exc_info=True)
            err.print(f"error: {problem}", markup=False)
            return EXIT_USAGE
        # In non-standalone mode click returns the command's return value, or the code of a
        # typer.Exit; commands here return None or raise typer.Exit.
        return rv if isinstance(rv, int) else 0
