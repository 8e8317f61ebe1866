"""Commands whose module is imported only when they are used (or when the help lists them).

``isolane runs`` should not import, nor (in a checkout) compile, the modules behind ``run``,
``race`` or ``serve``: DESIGN.md, "Performance targets" (the CLI imports nothing it does not use).
:func:`lazy_group` makes the ``cls`` of a :class:`typer.Typer` whose group knows some commands
by name only::

    isolane runs ──get_command("runs")──▶ the command defined in isolane.cli.app (eager)
    isolane race ──get_command("race")──▶ import isolane.cli.branching, build race_command
    isolane --help ──list_commands──▶ every command, each built as above (all modules load)

A lazy command is built by typer itself, as a one-command :class:`typer.Typer` with the app's
markup mode, so it parses, helps and fails exactly as if it had been registered eagerly.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperGroup

__all__ = ["LazyCommand", "lazy_group"]


@dataclass(frozen=True, slots=True)
class LazyCommand:
    """``function`` of ``module`` is the command; ``help``, when given, names the module's
    constant holding its help (else typer takes the function's docstring)."""

    module: str
    function: str
    help: str | None = None

    def build(self, name: str, rich_markup_mode: Any) -> Any:
        """The click command typer makes of the function."""
        module = importlib.import_module(self.module)
        one = typer.Typer(rich_markup_mode=rich_markup_mode, add_completion=False,
                          pretty_exceptions_enable=False)
        one.command(name, help=getattr(module, self.help) if self.help else None)(
            getattr(module, self.function))
        return typer.main.get_command(one)


class _Commands(MutableMapping[str, Any]):
    """A group's commands: the lazy ones (first, in their order) built on first lookup, then
    the eager ones. Listing names loads nothing; ``items()``/``values()`` load every command."""

    def __init__(self, eager: MutableMapping[str, Any], lazy: Mapping[str, LazyCommand],
                 rich_markup_mode: Any) -> None:
        self._built = eager
        self._lazy = lazy
        self._markup = rich_markup_mode

    def __getitem__(self, name: str) -> Any:
        if name not in self._built and name in self._lazy:
            self._built[name] = self._lazy[name].build(name, self._markup)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._lazy
        yield from (name for name in self._built if name not in self._lazy)

    def __len__(self) -> int:
        return len(set(self._lazy) | set(self._built))

    def __contains__(self, name: object) -> bool:
        return name in self._lazy or name in self._built


def lazy_group(commands: Mapping[str, LazyCommand]) -> type[TyperGroup]:
    """A :class:`TyperGroup` class that also holds ``commands``, each built when first used."""

    class LazyGroup(TyperGroup):
        def __init__(self, **attrs: Any) -> None:
            super().__init__(**attrs)
            self.commands = _Commands(self.commands, commands, self.rich_markup_mode)

    return LazyGroup
