"""Workflows: what a run executes, how it is named, and the DAG template it declares.

A workflow is a function ``main(ctx, task, config)``, sync or async. It is referred to by

* a registered short name (``"one-shot"``), registered with :func:`workflow` or through the
  ``isolane.workflows`` entry-point group;
* ``"package.module:function"``;
* ``"path/to/file.py:function"``;
* or, from Python, the callable itself (it is pickled to the worker with dill, so closures work).

Registration carries the workflow's DAG template, so no code anywhere branches on the workflow's
name: the registry is the only place that knows what a name means.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from isolane.errors import WorkflowNotFound

__all__ = [
    "DagTemplate",
    "TemplateEdge",
    "TemplateNode",
    "WorkflowDef",
    "builtin_workflows",
    "entry_point_workflows",
    "registered_workflows",
    "resolve_workflow",
    "workflow",
]

WorkflowFn = Callable[..., Any]

ENTRY_POINT_GROUP: Final = "isolane.workflows"
#: Modules that register isolane's built-in workflows when imported.
_BUILTIN_MODULES: Final = ("isolane.workflows",)


@dataclass(frozen=True, slots=True)
class TemplateNode:
    """A node a workflow declares up front. Ids are stable strings (``planning``, ``step_3``)."""

    id: str
    label: str = ""
    node_type: str = "step"
    parent_node_id: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateEdge:
    source: str
    target: str
    kind: str = "next"
    condition: str | None = None


@dataclass(frozen=True, slots=True)
class DagTemplate:
    """The nodes and edges a workflow starts with; it may add more as it runs."""

    nodes: Sequence[TemplateNode] = ()
    edges: Sequence[TemplateEdge] = ()

    @classmethod
    def chain(cls, *node_ids: str) -> DagTemplate:
        """A straight line of step nodes, each depending on the one before."""
        nodes = [TemplateNode(node_id, label=node_id) for node_id in node_ids]
        edges = [TemplateEdge(a, b) for a, b in itertools.pairwise(node_ids)]
        return cls(nodes, edges)

    def as_payload(self) -> dict[str, Any]:
        """The ``dag_created`` payload for this template."""
        depth = {n.id: 0 for n in self.nodes}
        for node in self.nodes:
            if node.parent_node_id is not None:
                depth[node.id] = depth.get(node.parent_node_id, 0) + 1
        return {
            "nodes": [
                {"id": n.id, "label": n.label or n.id, "node_type": n.node_type,
                 "parent_node_id": n.parent_node_id, "depth": depth[n.id]}
                for n in self.nodes
            ],
            "edges": [
                {"source": e.source, "target": e.target, "kind": e.kind, "condition": e.condition}
                for e in self.edges
            ],
        }


@dataclass(frozen=True, slots=True)
class WorkflowDef:
    """A resolved workflow: the callable, the name it is known by, and its DAG template."""

    name: str
    func: WorkflowFn
    template: DagTemplate | None = None
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, WorkflowDef] = {}
_loaded_builtins = False


def workflow(
    name: str | None = None,
    *,
    template: DagTemplate | None = None,
    description: str = "",
    defaults: dict[str, Any] | None = None,
) -> Callable[[WorkflowFn], WorkflowFn]:
    """Register a workflow under ``name`` (default: the function's name, ``_`` as ``-``)."""

    def register(func: WorkflowFn) -> WorkflowFn:
        key = name or func.__name__.replace("_", "-")
        _REGISTRY[key] = WorkflowDef(
            key, func, template, description or (func.__doc__ or "").strip().split("\n")[0],
            dict(defaults or {}),
        )
        func.__isolane_workflow__ = _REGISTRY[key]  # type: ignore[attr-defined]
        return func

    return register


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:  # isolane's own code: the parent may import it
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def _load_registrations() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    _load_builtins()
    from importlib.metadata import entry_points  # scanning installed packages: only when needed

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def builtin_workflows() -> dict[str, WorkflowDef]:
    """The workflows registered in this process: isolane's built-ins and the embedding program's
    own :func:`workflow` registrations. Loads no entry point (third-party code)."""
    _load_builtins()
    return dict(_REGISTRY)


def entry_point_workflows() -> dict[str, str]:
    """Entry-point workflows by name, as their ``module:attr`` values, read from package metadata
    without loading them (see :mod:`isolane.references`)."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def registered_workflows() -> dict[str, WorkflowDef]:
    """Every workflow known by a short name (built-ins and entry points included)."""
    _load_registrations()
    return dict(_REGISTRY)


def _load_file(path: Path) -> Any:
    module_name = f"isolane_user_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise WorkflowNotFound(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def resolve_workflow(ref: str | WorkflowFn) -> WorkflowDef:
    """Turn a workflow reference into a :class:`WorkflowDef`; raise :class:`WorkflowNotFound`."""
    if callable(ref):
        existing = getattr(ref, "__isolane_workflow__", None)
        if isinstance(existing, WorkflowDef):
            return existing
        return WorkflowDef(getattr(ref, "__qualname__", repr(ref)), ref)
    if not isinstance(ref, str) or not ref.strip():
        raise WorkflowNotFound("a workflow reference must be a non-empty string or a callable")
    if ref in _REGISTRY:
        return _REGISTRY[ref]
    if ":" not in ref:
        # A short name: the built-ins and entry points register theirs when loaded. A
        # 'module:function' reference loads only its module (a worker running one imports no
        # AG2 unless the workflow does).
        _load_registrations()
        if ref in _REGISTRY:
            return _REGISTRY[ref]
        known = ", ".join(sorted(_REGISTRY)) or "none registered"
        raise WorkflowNotFound(
            f"unknown workflow {ref!r}: give a registered name ({known}), "
            "'package.module:function' or 'path/to/file.py:function'"
        )
    target, _, attr = ref.rpartition(":")
    try:
        if target.endswith(".py") or "/" in target or "\\" in target:
            path = Path(target)
            if not path.is_file():
                raise WorkflowNotFound(f"workflow file {target!r} does not exist")
            module = _load_file(path)
        else:
            module = importlib.import_module(target)
    except WorkflowNotFound:
        raise
    except ImportError as exc:
        raise WorkflowNotFound(f"cannot import {target!r} for workflow {ref!r}: {exc}") from exc
    func = getattr(module, attr, None)
    if func is None or not callable(func):
        raise WorkflowNotFound(f"{target!r} has no callable {attr!r} (workflow {ref!r})")
    existing = getattr(func, "__isolane_workflow__", None)
    if isinstance(existing, WorkflowDef):
        return existing
    return WorkflowDef(ref, func)
