"""The tools the built-in workflows register with their agents, bound to the run's directory.

::

    Toolbox(work_dir)
      ├─ calculate(expression)   arithmetic on numbers (no names, no calls but a few math functions)
      ├─ read_file(path)         a text file under work_dir (never a path outside it)
      └─ list_files()            the files under work_dir, with sizes

A tool answers with text the LLM reads; a bad argument raises ``ValueError`` with the reason, which
AG2 hands back to the LLM as the tool's (failed) result so it can correct itself.
"""


import ast
import math
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final

__all__ = ["MAX_READ_CHARS", "Toolbox", "calculate"]

#: ``read_file`` returns at most this many characters (a longer file is cut, and says so).
MAX_READ_CHARS: Final = 20_000
_MAX_EXPRESSION: Final = 500
_MAX_EXPONENT: Final = 1_000

_BINARY: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Final[dict[type[ast.unaryop], Callable[[Any], Any]]] = {
    ast.UAdd: operator.pos, ast.USub: operator.neg,
}
_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "sqrt": math.sqrt, "log": math.log, "exp": math.exp, "sin": math.sin, "cos": math.cos,
    "tan": math.tan, "abs": abs, "round": round, "min": min, "max": max,
}
_CONSTANTS: Final[dict[str, float]] = {"pi": math.pi, "e": math.e}


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large (at most {_MAX_EXPONENT})")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        return _FUNCTIONS[node.func.id](*(_evaluate(arg) for arg in node.args))
    raise ValueError(f"unsupported syntax {ast.unparse(node)!r}: use numbers, + - * / // % **, "
                     f"parentheses, {', '.join(sorted(_CONSTANTS))} and {', '.join(sorted(_FUNCTIONS))}()")


def calculate(expression: Annotated[str, "an arithmetic expression, e.g. (1 + 100) * 100 / 2"]) -> str:
    """Evaluate an arithmetic expression and return the result as text."""
    if len(expression) > _MAX_EXPRESSION:
        raise ValueError(f"expression too long ({len(expression)} characters, at most {_MAX_EXPRESSION})")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an expression: {exc.msg}") from None
    try:
        value = _evaluate(tree)
    except (ArithmeticError, TypeError) as exc:
        raise ValueError(f"cannot evaluate {expression!r}: {exc}") from None
    return repr(value)


class Toolbox:
    """The tools of one run; the file tools see only ``work_dir`` (the run's directory).

    The tools are plain functions (AG2 registers functions, not bound methods), in
    :attr:`functions` by name.
    """

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = root = work_dir.resolve()

        def inside(path: str) -> Path:
            target = (root / path).resolve()
            if not target.is_relative_to(root):
                raise ValueError(f"{path!r} is outside the run's directory; give a path relative to it")
            return target

        def read_file(path: Annotated[str, "a path relative to the working directory"]) -> str:
            """Return the text of a file in the working directory."""
            target = inside(path)
            if not target.is_file():
                raise ValueError(f"no file {path!r} in the working directory (list_files shows what exists)")
            text = target.read_text(encoding="utf-8", errors="replace")
            if len(text) > MAX_READ_CHARS:
                return text[:MAX_READ_CHARS] + f"\n[... cut: {len(text) - MAX_READ_CHARS} more characters]"
            return text

        def list_files() -> str:
            """List the files in the working directory with their sizes in bytes, one per line."""
            return "\n".join(f"{name} {size}" for name, size in self.files()) or "(no files)"

        self.functions: dict[str, Callable[..., str]] = {
            "calculate": calculate, "read_file": read_file, "list_files": list_files}

    def files(self) -> list[tuple[str, int]]:
        """``(relative path, size)`` of every file under ``work_dir``, hidden ones left out."""
        found = []
        for path in sorted(self.work_dir.rglob("*")):
            relative = path.relative_to(self.work_dir)
            if path.is_file() and not any(part.startswith(".") for part in relative.parts):
                found.append((relative.as_posix(), path.stat().st_size))
        return found
