"""An import-linter contract type the built-in ones lack: no private names across a wall.

``[[tool.importlinter.contracts]]`` with ``type = "private_names"`` (registered in
``pyproject.toml`` under ``contract_types``) checks that no module of ``source_modules`` imports
a private name (``_x``) or a private module (``pkg._x``) of ``target_modules``: the parent's
private state stays private to it (see issue 14's "serve and cli use only the public parent API").
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from grimp import ImportGraph
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck

__all__ = ["PrivateNamesContract"]


def _is_private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _source(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin else None


class PrivateNamesContract(Contract):
    """No module of ``source_modules`` imports a private name or module of ``target_modules``."""

    type_name = "private_names"

    source_modules = fields.SetField(subfield=fields.ModuleExpressionField())
    target_modules = fields.SetField(subfield=fields.ModuleExpressionField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        sources = sorted({m for expr in self.source_modules  # type: ignore[attr-defined]
                          for m in ({expr.expression} | graph.find_descendants(expr.expression))})
        targets = tuple(expr.expression for expr in self.target_modules)  # type: ignore[attr-defined]
        found: list[str] = []
        for module in sources:
            path = _source(module)
            if path is None:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    if not node.module.startswith(targets):
                        continue
                    names = [a.name for a in node.names]
                    bad = [f"{node.module}.{n}" for n in names if n.startswith("_")]
                    if _is_private(node.module.removeprefix(_prefix(node.module, targets))):
                        bad = [f"{node.module}.{n}" for n in names]
                    found += [f"{module}:{node.lineno} imports {b}" for b in bad]
                elif isinstance(node, ast.Import):
                    found += [f"{module}:{node.lineno} imports {a.name}" for a in node.names
                              if a.name.startswith(targets)
                              and _is_private(a.name.removeprefix(_prefix(a.name, targets)))]
        return ContractCheck(kept=not found, metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        from importlinter.application import output

        for line in check.metadata["found"]:
            output.print_error(f"- {line}")
        output.new_line()


def _prefix(module: str, targets: tuple[str, ...]) -> str:
    return next(t for t in targets if module.startswith(t))
