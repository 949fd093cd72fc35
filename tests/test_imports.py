"""The package's import graph: no module imports one that imports it back, not even inside a function."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mocolab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The mocolab modules `path` imports anywhere in its body (function-level imports included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import x` imports the module x when there is one
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "mocolab.run.job" in graph["mocolab.pretraining"] and "mocolab.run.launch" in graph["mocolab.run.job"]
    assert "mocolab.run.cache_file" in graph["mocolab.evaluate.feature_cache"]  # `from ..run import cache_file`
    assert "mocolab.run.checkpoint" in graph["mocolab.run.cache_file"]  # `from . import checkpoint as ckpt`


def test_no_module_imports_one_that_imports_it_back():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_launcher_and_the_fine_tuning_job_do_not_import_the_training_loop():
    graph = import_graph()

    def reaches(start, target):
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == target:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    for module in ("mocolab.run.launch", "mocolab.run.job", "mocolab.run.device", "mocolab.transfer.job"):
        assert not reaches(module, "mocolab.train"), module
    # and the loop knows nothing of the run kept around it: no folder, lock, checkpoint or signal handling
    kept = ("mocolab.pretraining", "mocolab.runlog", "mocolab.run.job", "mocolab.run.checkpoint", "mocolab.run.lock")
    for module in kept + ("mocolab.run.launch",):
        assert not reaches("mocolab.train", module), module
    assert all(reaches("mocolab.pretraining", module) for module in kept[1:] + ("mocolab.train",))


def test_the_layers_show_in_the_tree():
    """The run machinery (mocolab.run) stands beneath the algorithm: it imports only the validation helpers
    and the process group, never MoCo, the config or the data. The algorithm's modules do not import the
    faces (mocolab.ui)."""
    graph = import_graph()
    for module, imports in graph.items():
        if module == "mocolab.run" or module.startswith("mocolab.run."):
            outside = {m for m in imports if not m.startswith("mocolab.run.")}
            assert outside <= {"mocolab.settings", "mocolab.distributed"}, (module, outside)
    algorithm = (
        "mocolab.moco",
        "mocolab.queue",
        "mocolab.models",
        "mocolab.train",
        "mocolab.pretraining",
        "mocolab.config",
        "mocolab.runlog",
        "mocolab.data",
        "mocolab.augment",
        "mocolab.evaluate",
    )
    for module, imports in graph.items():
        if module.startswith(algorithm):
            assert not {m for m in imports if m.startswith("mocolab.ui")}, module
