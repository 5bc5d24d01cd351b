"""The package's import graph, read from the source with ``ast``: no module
imports a module that imports it back (directly or through others, lazy
imports inside functions included), and no module imports another's
private names."""

import ast
import pathlib

import pytest
from helpers.paths import REPO_ROOT

ROOT = pathlib.Path(REPO_ROOT)
PACKAGE = "apr_jax"


def module_names() -> dict[str, pathlib.Path]:
    names = {}
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(path: pathlib.Path, modules: dict) -> list[tuple[str, list[str]]]:
    """(imported package module, names taken from it) for every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [alias.name for alias in node.names]
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in modules]
            found += [(m, []) for m in submodules]
            attributes = [n for n in names if f"{node.module}.{n}" not in modules]
            if node.module in modules and attributes:
                found.append((node.module, attributes))
    return found


def import_graph(modules: dict) -> dict[str, set[str]]:
    graph = {}
    for name, path in modules.items():
        # An empty package __init__ is imported on the way to its modules; it adds no edge.
        graph[name] = {m for m, _ in imports_of(path, modules) if m != name and m != PACKAGE}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_imports_have_no_cycle():
    modules = module_names()
    assert "apr_jax.train" in modules and "apr_jax.rl.train_rl" in modules
    cycle = find_cycle(import_graph(modules))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_name_is_imported_across_modules():
    modules = module_names()
    private = [
        f"{name}: from {module} import {n}"
        for name, path in modules.items()
        for module, names in imports_of(path, modules)
        for n in names
        if n.startswith("_")
    ]
    assert not private, private


@pytest.mark.parametrize("lazy", [False, True])
def test_a_cycle_through_a_lazy_import_is_found(tmp_path, lazy):
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from apr_jax.b import f\n")
    body = "def g():\n    from apr_jax.a import f\n" if lazy else "from apr_jax import a\n"
    (package / "b.py").write_text(body)
    modules = {f"{PACKAGE}.{p.stem}": p for p in package.glob("[ab].py")}
    assert find_cycle(import_graph(modules)) is not None


# ---- layers: the generic pipeline imports no task ----------------------------------

GENERIC_LAYERS = (
    "config",
    "data",
    "model",
    "pretrained",
    "training",
    "decode",
    "evaluation",
    "rl",
    "runtime",
    "protocol",
    "threads",
    "cli",
)
TASK_INTERFACE = ("apr_jax.tasks.base", "apr_jax.tasks.registry")  # how generic code reaches a task
ENTRY_POINTS = ("apr_jax.data.__main__",)  # python -m apr_jax.data composes a task's tools too


def is_generic(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 1 and parts[1] in GENERIC_LAYERS and module not in ENTRY_POINTS


def task_imports(graph: dict[str, set[str]]) -> list[str]:
    """``generic -> task`` for every import of a task module (anything under
    ``apr_jax.tasks`` but its interface) by a module of a generic layer."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if is_generic(module)
        for target in targets
        if target.startswith(f"{PACKAGE}.tasks") and target not in TASK_INTERFACE and target != f"{PACKAGE}.tasks"
    )


def test_no_generic_layer_imports_a_task_module():
    modules = module_names()
    assert "apr_jax.tasks.countdown.traces" in modules and "apr_jax.data.build" in modules
    found = task_imports(import_graph(modules))
    assert not found, "generic layers import task modules: " + "; ".join(found)


def test_a_task_import_from_a_generic_layer_is_found(tmp_path):
    """A lazy import inside a function counts as much as a module-level one."""
    package = tmp_path / PACKAGE
    for folder in ("data", "tasks", "tasks/countdown"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "tasks" / "countdown" / "traces.py").write_text("X = 1\n")
    (package / "tasks" / "registry.py").write_text("from apr_jax.tasks.countdown import traces\n")
    (package / "data" / "build.py").write_text(
        "from apr_jax.tasks import registry\n\ndef f():\n    from apr_jax.tasks.countdown.traces import X\n"
    )
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    assert task_imports(import_graph(modules)) == ["apr_jax.data.build -> apr_jax.tasks.countdown.traces"]


COMMANDS = tuple(f"{PACKAGE}.{name}" for name in ("train", "evaluate", "compare", "convert", "aot", "failures"))


def test_no_module_imports_a_command():
    """The entry points are thin: libraries (RL included) never import one."""
    graph = import_graph(module_names())
    found = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if target in COMMANDS or target.endswith(".__main__")
    )
    assert not found, "modules import command-line entry points: " + "; ".join(found)
