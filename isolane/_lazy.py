"""PEP 562 re-exports: a package's public names, imported on first use.

A package ``__init__`` lists where each name lives and hands the lookup to :func:`exports`::

    __getattr__, __dir__ = exports(__name__, {"Executor": "isolane.executor.executor"})

so that ``import isolane`` (or starting the CLI, or a worker) loads nothing it does not use.
A name mapped to ``None`` is a submodule of the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(package: str, names: Mapping[str, str | None]
            ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, importing each name's module on first use."""
    table = dict(names)

    def __getattr__(name: str) -> Any:
        try:
            module = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        if module is None:
            return importlib.import_module(f"{package}.{name}")
        value = getattr(importlib.import_module(module), name)
        # Cache it in the package, so the next lookup does not come back here.
        importlib.import_module(package).__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(table))

    return __getattr__, __dir__
