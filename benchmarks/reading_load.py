"""How much code a reader follows to understand MoCo pretraining: the import closure of a module.

    python benchmarks/reading_load.py                  # mocolab.train: the training loop (CPU path)
    python benchmarks/reading_load.py mocolab.pretraining   # the whole run: preflight, processes, resume, signals
    python benchmarks/reading_load.py mocolab.moco      # any module
    python benchmarks/reading_load.py mocolab.train mocolab.data.device   # the loop on the device path

Counts the mocolab modules that the named module imports, directly or through others (function-level
imports and `if TYPE_CHECKING:` blocks included: a reader follows those too), with their lines: all
lines, and code lines (neither blank nor comment nor docstring). Read from the source with `ast`;
nothing is imported. `from . import x` counts module x, not the package's `__init__`.

The fast data paths (mocolab.data.FAST_PATHS) are imported by name when a run takes one, so they
are not in the closure of mocolab.train; name the path's module after it to count a run on that path.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mocolab"


def module_path(name: str) -> Path | None:
    base = PACKAGE.parent / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imported(name: str, path: Path) -> set[str]:
    """The mocolab modules `path` (module `name`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import x` reads the module x when there is one, not the package
                found.add(f"{target}.{alias.name}" if module_path(f"{target}.{alias.name}") else target)
            if node.module:
                found.add(target)
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(2, m.count(".") + 1)}
    return {m for m in found | parents if m.startswith("mocolab") and module_path(m) and m != name}


def closure(*start: str) -> list[str]:
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported(name, module_path(name)))
    return sorted(seen)


def code_lines(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not a docstring."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (
            tokenize.COMMENT,
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


def main(*start: str) -> None:
    start = start or ("mocolab.train",)
    names = closure(*start)
    total = code = 0
    for name in names:
        path = module_path(name)
        n, c = len(path.read_text().splitlines()), code_lines(path)
        total, code = total + n, code + c
        print(f"{name:40s} {n:5d} lines {c:5d} code")
    print(f"{' + '.join(start)}: {len(names)} modules, {total} lines, {code} code lines")


if __name__ == "__main__":
    main(*sys.argv[1:])
