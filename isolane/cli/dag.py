"""``isolane dag RUN --format mermaid|dot|json``: a run's DAG as stored, with node statuses.

::

    Store.dag(run) ──▶ nodes (in the order they were added) + edges ──▶ FORMATS[format] ──▶ stdout

* ``json``: ``{"run_id", "workflow", "status", "nodes": [...], "edges": [...]}``.
* ``mermaid``: a ``flowchart TD``; a node with sub-nodes is drawn in a box with them; shapes by
  node type (a ``branch_point`` is a rhombus), a class per status, conditional edges dashed and
  labelled with their condition.
* ``dot``: Graphviz, the same layout rules (clusters for sub-nodes, dashed conditional edges).

Formats are a registry (:data:`FORMATS`); adding one is adding an entry.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import orjson
import typer

from isolane.cli.console import fail
from isolane.cli.options import DbOption, HomeOption, Location, open_store
from isolane.tracking.rows import DagEdgeRow, DagNodeRow, RunRow

__all__ = ["FORMATS", "DagView", "dag_command", "to_dot", "to_json", "to_mermaid"]

#: Fill and stroke colours per node status (both renderers).
_COLOURS: Final[Mapping[str, tuple[str, str]]] = {
    "pending": ("#f5f5f5", "#9e9e9e"),
    "running": ("#e3f2fd", "#1565c0"),
    "completed": ("#e8f5e9", "#2e7d32"),
    "failed": ("#ffebee", "#c62828"),
    "skipped": ("#fafafa", "#bdbdbd"),
    "cancelled": ("#fff8e1", "#f9a825"),
}
#: Mermaid node shapes (opening, closing) per node type; anything else is a rectangle.
_MERMAID_SHAPES: Final[Mapping[str, tuple[str, str]]] = {
    "branch_point": ("{", "}"),
    "agent": ("(", ")"),
    "planning": ("([", "])"),
    "control": ("([", "])"),
}
#: Graphviz node shapes per node type.
_DOT_SHAPES: Final[Mapping[str, str]] = {"branch_point": "diamond", "agent": "box", "planning": "box",
                                          "control": "box"}


@dataclass(frozen=True, slots=True)
class DagView:
    """A run's DAG ready to render: the run, its nodes (added order) and edges."""

    run: RunRow
    nodes: Sequence[DagNodeRow]
    edges: Sequence[DagEdgeRow]

    def children(self) -> dict[str | None, list[DagNodeRow]]:
        """Nodes by parent id (``None``: top level), in added order; an unknown parent counts as
        top level so no node is lost."""
        known = {n.node_id for n in self.nodes}
        by_parent: dict[str | None, list[DagNodeRow]] = {}
        for node in self.nodes:
            parent = node.parent_node_id if node.parent_node_id in known else None
            by_parent.setdefault(parent, []).append(node)
        return by_parent


def to_json(view: DagView) -> str:
    """The DAG as one JSON object."""
    return orjson.dumps({
        "run_id": view.run.id, "workflow": view.run.workflow, "status": view.run.status,
        "nodes": [dataclasses.asdict(n) for n in view.nodes],
        "edges": [dataclasses.asdict(e) for e in view.edges],
    }).decode()


# -- mermaid ---------------------------------------------------------------------------------------


_MERMAID_ESCAPES: Final = {"&": "#38;", "#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;"}


def _mermaid_text(text: str) -> str:
    """Text safe inside a quoted mermaid label (entity codes for the characters it reserves)."""
    return "".join(_MERMAID_ESCAPES.get(c, c) for c in " ".join(text.split()))


def _title(node: DagNodeRow, separator: str) -> str:
    """The node id, then its label unless that says nothing more (an agent turn's label)."""
    if node.label in ("", node.node_id) or node.node_type == "agent":
        return node.node_id
    return f"{node.node_id}{separator}{node.label}"


def _mermaid_label(node: DagNodeRow) -> str:
    title = _title(node, ": ")
    kind = "" if node.node_type in ("step", "agent") else f"{node.node_type} · "
    return f'"{_mermaid_text(title)}<br/>{kind}{node.status}"'


def to_mermaid(view: DagView) -> str:
    """The DAG as a mermaid ``flowchart``."""
    ids = {node.node_id: f"n{i}" for i, node in enumerate(view.nodes)}
    children = view.children()
    lines = ["flowchart TD"]
    for status, (fill, stroke) in _COLOURS.items():
        lines.append(f"  classDef {status} fill:{fill},stroke:{stroke}")

    def draw(node: DagNodeRow, indent: str) -> Iterator[str]:
        opening, closing = _MERMAID_SHAPES.get(node.node_type, ("[", "]"))
        shape = f"{ids[node.node_id]}{opening}{_mermaid_label(node)}{closing}"
        kids = children.get(node.node_id, [])
        if not kids:
            yield f"{indent}{shape}"
            return
        yield f'{indent}subgraph g{ids[node.node_id]} [" "]'
        yield f"{indent}  {shape}"
        for kid in kids:
            yield from draw(kid, indent + "  ")
        yield f"{indent}end"

    for node in children.get(None, []):
        lines.extend(draw(node, "  "))
    for edge in view.edges:
        if edge.source not in ids or edge.target not in ids:
            continue
        source, target = ids[edge.source], ids[edge.target]
        if edge.kind == "next" and edge.condition is None:
            lines.append(f"  {source} --> {target}")
        else:
            label = _mermaid_text(edge.condition or edge.kind)
            lines.append(f'  {source} -.->|"{label}"| {target}')
    by_status: dict[str, list[str]] = {}
    for node in view.nodes:
        by_status.setdefault(node.status, []).append(ids[node.node_id])
    for status, members in by_status.items():
        if status in _COLOURS:
            lines.append(f"  class {','.join(members)} {status}")
    return "\n".join(lines)


# -- dot -------------------------------------------------------------------------------------------


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(view: DagView) -> str:
    """The DAG as a Graphviz ``digraph``."""
    children = view.children()
    lines = [f"digraph {_dot_quote('run ' + view.run.id)} {{",
             "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']

    def draw(node: DagNodeRow, indent: str) -> Iterator[str]:
        fill, stroke = _COLOURS.get(node.status, ("#ffffff", "#000000"))
        title = _title(node, "\n")
        kind = "" if node.node_type in ("step", "agent") else f"{node.node_type} · "
        label = _dot_quote(f"{title}\n{kind}{node.status}")
        attributes = (f"label={label}, shape={_DOT_SHAPES.get(node.node_type, 'box')}, "
                      f'fillcolor="{fill}", color="{stroke}"')
        kids = children.get(node.node_id, [])
        if not kids:
            yield f"{indent}{_dot_quote(node.node_id)} [{attributes}];"
            return
        yield f"{indent}subgraph {_dot_quote('cluster_' + node.node_id)} {{"
        yield f'{indent}  label=""; style="dashed"; color="#bdbdbd";'
        yield f"{indent}  {_dot_quote(node.node_id)} [{attributes}];"
        for kid in kids:
            yield from draw(kid, indent + "  ")
        yield f"{indent}}}"

    for node in children.get(None, []):
        lines.extend(draw(node, "  "))
    for edge in view.edges:
        attributes = ""
        if edge.kind != "next" or edge.condition is not None:
            attributes = f" [style=dashed, label={_dot_quote(edge.condition or edge.kind)}]"
        lines.append(f"  {_dot_quote(edge.source)} -> {_dot_quote(edge.target)}{attributes};")
    lines.append("}")
    return "\n".join(lines)


#: ``--format`` choices.
FORMATS: Final[Mapping[str, Callable[[DagView], str]]] = {
    "mermaid": to_mermaid,
    "dot": to_dot,
    "json": to_json,
}


def dag_command(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A run id or a unique prefix of one.")],
    format_: Annotated[str, typer.Option("--format", "-f", metavar="mermaid|dot|json",
                                         help="Output format.")] = "mermaid",
    db: DbOption = None,
    home: HomeOption = None,
) -> None:
    """Export the run's DAG with node statuses (mermaid, Graphviz dot or JSON)."""
    render = FORMATS.get(format_)
    if render is None:
        fail(f"unknown --format {format_!r}; use one of {', '.join(FORMATS)}")
    with open_store(Location.of(db, home)) as store:
        row = store.get_run(run)
        nodes, edges = store.dag(row.id)
    sys.stdout.write(render(DagView(row, nodes, edges)) + "\n")
