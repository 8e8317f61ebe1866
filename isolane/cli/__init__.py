"""The command line: ``isolane`` (run, runs, show, events) and ``run-isolated``.

The CLI alone owns the terminal; the library only logs. Exit codes: :data:`EXIT_CODES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "app": "isolane.cli.app",
    "EXIT_CODES": "isolane.cli.codes",
    "EXIT_USAGE": "isolane.cli.codes",
    "exit_code_for": "isolane.cli.codes",
    "run_isolated_main": "isolane.cli.run",
})

if TYPE_CHECKING:
    from isolane.cli.app import app
    from isolane.cli.codes import EXIT_CODES, EXIT_USAGE, exit_code_for
    from isolane.cli.run import run_isolated_main

__all__ = [
    "EXIT_CODES",
    "EXIT_USAGE",
    "app",
    "exit_code_for",
    "run_isolated_main",
]
