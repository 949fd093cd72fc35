"""The exercise notebook in two versions from one source: `make exercises`.

    python -m mocolab.ui.exercise_book notebooks/exercises/source.ipynb

The source holds the solutions between `# BEGIN SOLUTION` and `# END SOLUTION`
lines. The student version (committed as notebooks/exercises/exercises.ipynb)
replaces each such block by a line that raises NotImplementedError, so its
checkers say "not yet" until the student writes the code; the solutions
version (written to notebooks/exercises/solutions.ipynb, not committed) drops
the marker lines, and CI runs it with strict=True so that every checker must
pass it.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
TODO = 'raise NotImplementedError("your code here")'


def _strip(source: str, keep: bool) -> str:
    """The cell's code with each solution block kept (its markers dropped) or replaced by TODO."""
    out, inside = [], False
    for line in source.split("\n"):
        marker = line.strip()
        if marker == BEGIN:
            inside = True
            if not keep:
                out.append(re.match(r"\s*", line).group(0) + TODO)
            continue
        if marker == END:
            inside = False
            continue
        if keep or not inside:
            out.append(line)
    if inside:
        raise ValueError(f"a {BEGIN!r} without its {END!r} in:\n{source}")
    return "\n".join(out)


def versions(notebook: dict) -> tuple[dict, dict]:
    """(student version, solutions version) of a source notebook (its JSON as a dict)."""
    student, solutions = copy.deepcopy(notebook), copy.deepcopy(notebook)
    for s_cell, k_cell in zip(student["cells"], solutions["cells"]):
        if s_cell["cell_type"] == "code":
            text = "".join(s_cell["source"]) if isinstance(s_cell["source"], list) else s_cell["source"]
            s_cell["source"], k_cell["source"] = _strip(text, keep=False), _strip(text, keep=True)
    return student, solutions


def build(source: str | Path, folder: str | Path | None = None) -> tuple[Path, Path]:
    """Write exercises.ipynb and solutions.ipynb beside the source (or into folder); returns their paths."""
    import nbformat

    source = Path(source)
    folder = Path(folder) if folder else source.parent
    notebook = nbformat.read(source, as_version=4)
    student, solutions = versions(notebook)
    paths = folder / "exercises.ipynb", folder / "solutions.ipynb"
    for path, version in zip(paths, (student, solutions)):
        nbformat.write(nbformat.from_dict(version), path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mocolab.ui.exercise_book",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source")
    parser.add_argument("--out", default=None, help="folder for the two versions (default: beside the source)")
    args = parser.parse_args(argv)
    for path in build(args.source, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
