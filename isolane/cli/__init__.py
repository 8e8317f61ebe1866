"""The command line: ``isolane`` (run, runs, show, events) and ``run-isolated``.

The CLI alone owns the terminal; the library only logs. Exit codes: :data:`EXIT_CODES`.
"""

from isolane.cli.app import app
from isolane.cli.codes import EXIT_CODES, EXIT_USAGE, exit_code_for
from isolane.cli.run import run_isolated_main

__all__ = ["EXIT_CODES", "EXIT_USAGE", "app", "exit_code_for", "run_isolated_main"]
