"""The CLI's exit codes: one per final run status, plus usage errors and interruptions.

Scripts branch on these, so they are part of the public contract: add codes, never renumber.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "EXIT_CODES",
    "EXIT_CODES_HELP",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNKNOWN_STATUS",
    "EXIT_USAGE",
    "exit_code_for",
]

EXIT_OK: Final = 0
#: Bad input: unknown run or workflow, malformed option, unreachable database.
EXIT_USAGE: Final = 2
#: A read-only command (``isolane events --follow``) stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED: Final = 130
#: A status this version of the CLI does not know (a newer store); treated as a failure.
EXIT_UNKNOWN_STATUS: Final = 1

#: The exit code of ``run-isolated`` for each final run status.
EXIT_CODES: Final[Mapping[str, int]] = MappingProxyType({
    "completed": 0,
    "won": 0,
    "failed": 1,
    "crashed": 3,
    "timed_out": 4,
    "cancelled": 5,
    "lost": 6,
})


def exit_code_for(status: str) -> int:
    """The exit code for a run that ended with ``status``."""
    return EXIT_CODES.get(status, EXIT_UNKNOWN_STATUS)


def _help_table() -> str:
    by_code: dict[int, list[str]] = {EXIT_USAGE: ["bad input (usage, unknown run/workflow, database)"]}
    for status, code in EXIT_CODES.items():
        by_code.setdefault(code, []).append(status)
    return "\n".join(f"  {code}  {', '.join(names)}" for code, names in sorted(by_code.items()))


#: The exit-code table as it appears in ``--help`` (one code per line).
EXIT_CODES_HELP: Final = "Exit codes:\n" + _help_table()
