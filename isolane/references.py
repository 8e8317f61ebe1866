"""Checking a workflow or scorer reference in the parent, without running any of its code.

::

    parent (executor, CLI, server)                       worker (scrubbed environment)
    check_workflow_ref("pkg.mod:main")                   resolve_workflow("pkg.mod:main")
      ├─ registered name? built-ins (isolane's own)        imports the module, runs its top
      │    and in-process registrations: by name             level, finds the callable; an
      ├─ entry point? its "module:attr", checked as         error ends the run ``failed``
      │    below, never loaded
      ├─ "pkg.mod:attr": the module's file found on
      │    sys.path (PathFinder: no package __init__ runs)
      └─ "path/file.py:attr": a regular file
         then: the source parses (ast) and binds ``attr`` at its top level

A module's top-level code is user code: it must never run with the parent's environment (its
database URL, ``PGPASSWORD``, provider keys, the server's token) or on the server's event loop.
So the parent reads the source as text and judges it; only the worker imports it. The check
refuses what is certainly wrong (no such file or module, a syntax error, a name the module never
binds); what only running could tell (a module ``__getattr__``, ``from x import *``, an extension
module) passes, and the worker reports it.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.machinery import BuiltinImporter, FrozenImporter, PathFinder
from pathlib import Path
from typing import Any, Final, Literal

from isolane.errors import ConfigError, WorkflowNotFound
from isolane.workflow import WorkflowFn, builtin_workflows, entry_point_workflows, resolve_workflow

__all__ = ["CheckedRef", "check_scorer_ref", "check_workflow_ref", "known_workflows"]

#: A source file larger than this is refused unread (a workflow module is small).
MAX_SOURCE_BYTES: Final = 16 * 1024 * 1024

Kind = Literal["callable", "registered", "entry_point", "module", "file"]


@dataclass(frozen=True, slots=True)
class CheckedRef:
    """What the parent knows of a reference after checking it (nothing of it has run)."""

    ref: str | WorkflowFn
    #: The name the store records (a registered name, else the reference as given).
    name: str
    kind: Kind
    #: Defaults of a registered workflow (a module's own are merged in the worker).
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Whether the module binds ``offline_script`` at its top level (``None``: cannot tell).
    has_offline_script: bool | None = None


def check_workflow_ref(ref: str | WorkflowFn) -> CheckedRef:
    """Check ``ref`` without importing user code; raise :class:`WorkflowNotFound` when it is bad.

    A callable (an embedding program's own code, pickled to the worker) is taken as it is.
    """
    if callable(ref):
        wf = resolve_workflow(ref)  # imports nothing: the callable is already here
        return CheckedRef(ref, wf.name, "callable", dict(wf.defaults))
    if not isinstance(ref, str) or not ref.strip():
        raise WorkflowNotFound("a workflow reference must be a non-empty string or a callable")
    if ":" not in ref:
        known = builtin_workflows()
        if ref in known:
            wf = known[ref]
            module = sys.modules.get(getattr(wf.func, "__module__", "") or "")
            return CheckedRef(ref, ref, "registered", dict(wf.defaults),
                              callable(getattr(module, "offline_script", None)))
        points = entry_point_workflows()
        if ref in points:
            offline = _check_target(points[ref], f"entry point {ref!r}", WorkflowNotFound)
            return CheckedRef(ref, ref, "entry_point", {}, offline)
        names = ", ".join(sorted({*known, *points})) or "none registered"
        raise WorkflowNotFound(
            f"unknown workflow {ref!r}: give a registered name ({names}), "
            "'package.module:function' or 'path/to/file.py:function'")
    offline = _check_target(ref, f"workflow {ref!r}", WorkflowNotFound)
    kind: Kind = "file" if _is_path(ref.rpartition(":")[0]) else "module"
    return CheckedRef(ref, ref, kind, {}, offline)


def check_scorer_ref(ref: str) -> None:
    """Check a scorer reference (``package.module:function`` or ``file.py:function``) as
    :func:`check_workflow_ref` does; raise :class:`ConfigError` when it is bad."""
    if not isinstance(ref, str) or ":" not in ref or not all(ref.rpartition(":")[::2]):
        raise ConfigError(f"scorer {ref!r} must be 'package.module:function' or 'path/to/file.py:function'")
    _check_target(ref, f"cannot load scorer {ref!r}", ConfigError)


def known_workflows() -> dict[str, str]:
    """Registered workflow names and their descriptions (entry points unloaded: no description)."""
    return {**{name: "" for name in entry_point_workflows()},
            **{name: wf.description for name, wf in builtin_workflows().items()}}


# -- checking a target ----------------------------------------------------------------------------


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _check_target(ref: str, what: str, error: type[Exception]) -> bool | None:
    """Check ``target:attr``; return whether its module binds ``offline_script`` (None: unknown)."""
    target, _, attr = ref.rpartition(":")
    if not target or not attr.isidentifier():
        raise error(f"{what} must be 'package.module:function' or 'path/to/file.py:function'")
    if _is_path(target):
        path = Path(target)
        if not path.is_file():
            raise error(f"{what}: file {target!r} does not exist (or is not a regular file)")
        source: Path | None = path
    else:
        source = _module_source(target, what, error)
    if source is None:
        return None  # a built-in or extension module: only importing it could tell
    tree = _parse(source, what, error)
    binds = _binds(tree.body, attr)
    if binds is False:
        raise error(f"{what}: {target!r} has no callable {attr!r} (no top-level def, class, "
                    "assignment or import binds it)")
    return _binds(tree.body, "offline_script")


def _search_path() -> list[str]:
    """The parent's ``sys.path`` as the worker gets it (``""`` made the working directory)."""
    cwd = os.getcwd()
    return [cwd if entry == "" else entry for entry in sys.path]


def _module_source(dotted: str, what: str, error: type[Exception]) -> Path | None:
    """The source file of module ``dotted``, found without importing it or its packages.

    ``importlib.util.find_spec("a.b")`` would import ``a`` (running its ``__init__``), so each
    level is looked up with :class:`PathFinder` in the locations of the level above.
    """
    parts = dotted.split(".")
    if not all(part.isidentifier() for part in parts):
        raise error(f"{what}: {dotted!r} is not a module name")
    loaded = sys.modules.get(dotted)
    if loaded is not None:  # already imported here (by the embedding program): nothing new runs
        origin = getattr(getattr(loaded, "__spec__", None), "origin", None)
        return Path(origin) if isinstance(origin, str) and origin.endswith(".py") else None
    if len(parts) == 1 and (BuiltinImporter.find_spec(dotted) or FrozenImporter.find_spec(dotted)):
        return None
    search: Sequence[str] = _search_path()
    spec = None
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        spec = PathFinder.find_spec(name, list(search))
        if spec is None:
            raise error(f"{what}: cannot import {dotted!r}: no module {name!r} on the Python path "
                        "(is it installed, or is the working directory right?)")
        if depth < len(parts):
            if spec.submodule_search_locations is None:
                raise error(f"{what}: {name!r} is a module, not a package")
            search = list(spec.submodule_search_locations)
    assert spec is not None
    if spec.origin is None or spec.origin == "namespace":
        raise error(f"{what}: {dotted!r} is a namespace package, which defines no function")
    return Path(spec.origin) if spec.origin.endswith(".py") else None


def _parse(path: Path, what: str, error: type[Exception]) -> ast.Module:
    try:
        size = path.stat().st_size
        if size > MAX_SOURCE_BYTES:
            raise error(f"{what}: {path} is {size} bytes, more than a workflow module should be "
                        f"({MAX_SOURCE_BYTES})")
        return ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise error(f"{what}: {path} does not parse: {exc.msg} (line {exc.lineno})") from None
    except (OSError, ValueError) as exc:
        raise error(f"{what}: cannot read {path}: {exc}") from None


def _binds(body: Iterable[ast.stmt], name: str) -> bool | None:
    """Whether top-level statements bind ``name`` (``None``: a star import or a module
    ``__getattr__`` may, and only running the module could tell)."""
    unknown = False
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return True
            unknown |= node.name == "__getattr__"
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                return True
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    unknown = True
                elif (alias.asname or alias.name.partition(".")[0]) == name:
                    return True
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            blocks: list[list[ast.stmt]] = [node.body, getattr(node, "orelse", []),
                                            getattr(node, "finalbody", [])]
            blocks += [h.body for h in getattr(node, "handlers", [])]
            found = [_binds(block, name) for block in blocks]
            if True in found:
                return True
            unknown |= None in found
    return None if unknown else False
