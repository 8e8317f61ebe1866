"""Plain option values without pydantic, where typer would load it for nothing.

Recent typer turns every option value (even an absent one) through a pydantic ``TypeAdapter``
built on first use, and loading pydantic takes about 60 ms: a fifth of what ``isolane runs`` may
take (DESIGN.md, "Performance targets"). The values isolane's options mostly hold have a result
known without it::

    None ─▶ None        a str for a str ─▶ itself        "42" or 42 for an int ─▶ 42
    "dir" for a Path ─▶ typer's own path checks on Path("dir") (its messages, no pydantic)
    anything else (lists, choices, floats, bounds, parsers, a bad value) ─▶ typer's coercion

so every error message is still typer's. This leans on typer internals
(``_TyperParameter.type_descriptor``, ``_runtime_param``, ``build_runtime_param``,
``coerce_cli_path``), replacing ``get_runtime_param`` of typer's parameter class in the CLI's
process: when they are not there, :func:`skip_pydantic` changes nothing and the CLI is only
slower. ``tests/test_cli.py`` checks that ``isolane runs`` loads no pydantic.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

__all__ = ["skip_pydantic"]

logger = logging.getLogger(__name__)

_DEFER: Final = object()
#: A decimal integer pydantic reads the same way as ``int()`` (no sign other than "-", no "_").
_DECIMAL: Final = re.compile(r"-?[0-9]{1,18}")


class _PlainValues:
    """A parameter's runtime coercion: plain values here, the rest through typer's own."""

    def __init__(self, coerce_path: Callable[..., Any], build_runtime: Callable[[Any], Any]) -> None:
        self._coerce_path = coerce_path
        self._build_runtime = build_runtime
        self._typer: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        plain = self._plain(value, param, ctx)
        if plain is not _DEFER:
            return plain
        if self._typer is None:
            self._typer = self._build_runtime(param.type_descriptor)
        return self._typer.coerce(value, param=param, ctx=ctx)

    def _plain(self, value: Any, param: Any, ctx: Any) -> Any:
        descriptor = param.type_descriptor
        info = descriptor.parameter_info
        if (param.multiple or param.nargs != 1 or info.parser is not None or descriptor.is_choice
                or descriptor.is_file):
            return _DEFER
        if value is None:
            return None
        annotation = descriptor.annotation
        if annotation is str and type(value) is str:
            return value
        if annotation is int and info.min is None and info.max is None:
            if type(value) is int:
                return value
            if isinstance(value, str) and _DECIMAL.fullmatch(value):
                return int(value)
        if (annotation is Path and info.path_type is None and not info.allow_dash
                and isinstance(value, str) and value):
            return self._coerce_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
        return _DEFER


def skip_pydantic() -> None:
    """Let every typer parameter of this process coerce plain values without pydantic (once;
    the parameters a command makes lazily, such as ``--help``, included)."""
    try:
        from typer._coercion import build_runtime_param
        from typer._param_types import coerce_cli_path
        from typer.core import _TyperParameter
    except ImportError:  # another typer: it coerces as it always does
        logger.debug("typer has no runtime coercion to shortcut", exc_info=True)
        return
    if "get_runtime_param" not in vars(_TyperParameter) or getattr(
            _TyperParameter.get_runtime_param, "plain_values", False):
        return

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            self._runtime_param = _PlainValues(coerce_cli_path, build_runtime_param)
        return self._runtime_param

    get_runtime_param.plain_values = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
