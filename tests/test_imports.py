"""The shape of the code, read from its imports with `ast` (nothing is imported).

An import counts wherever it is, at a module's top or inside a function, but for those under
`if TYPE_CHECKING:`, which never run (they name types for annotations). The rules:

- no import circle among the modules of tuner/ and model/;
- model/ imports nothing of tuner/, Ray, Optuna, MLflow or pydantic: the trainer stands alone;
- no module of tuner/search imports tuner/inspect: a study writes, the commands read;
- no module of tuner/store imports tuner/search: the store lies below the study that writes it;
- only tuner/store imports MLflow (and only tuner.store.connect its client): elsewhere only
  `mlflow.exceptions`, to tell a store's failure, and, in tuner.inspect.ui, `mlflow.server`,
  whose server `tuner ui` starts;
- the layout (docs/layout.md): the command line is the package tuner/cli (no tuner/cli_*.py), and
  tuner/search keeps at most 8 files beside its sub-packages (its rooms), which import one another
  in no circle and never the modules at its top.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tuner", "model")
STANDALONE = ("tuner", "ray", "optuna", "mlflow", "pydantic")
MLFLOW_ANYWHERE = ("mlflow.exceptions",)
MLFLOW_ALSO = {"tuner.inspect.ui": ("mlflow.server",)}
MAX_SEARCH_TOP = 8  # files at tuner/search's top, __init__.py among them


def _modules() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module that run, at any depth."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _imported(name: str, path: Path) -> set[str]:
    """The dotted names module `name` imports: `from a import b` gives a.b, whether b is a
    module or a name defined in a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            names.add(f"{base}.{alias.name}")
    return names


def _graph() -> dict[str, set[str]]:
    """Each module of the packages -> the modules of the packages it imports."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for imported in _imported(name, path):
            while imported not in modules and "." in imported:
                imported = imported.rpartition(".")[0]
            if imported in modules and imported != name:
                edges.add(imported)
        graph[name] = edges
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of `graph`: its strongly connected components of more than one module
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = [stack.pop()]
            while component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_module_imports_itself_back_through_others() -> None:
    assert _circles(_graph()) == []


def test_the_trainer_imports_nothing_of_the_service() -> None:
    for name, path in _modules().items():
        if _within(name, ("model",)):
            assert {i for i in _imported(name, path) if _within(i, STANDALONE)} == set(), name


def test_a_study_imports_none_of_the_commands_that_read_it() -> None:
    for name, edges in _graph().items():
        if _within(name, ("tuner.search",)):
            assert {e for e in edges if _within(e, ("tuner.inspect",))} == set(), name


def test_the_store_imports_nothing_of_the_study_above_it() -> None:
    for name, edges in _graph().items():
        if _within(name, ("tuner.store",)):
            assert {e for e in edges if _within(e, ("tuner.search",))} == set(), name


def test_only_the_store_imports_mlflow() -> None:
    for name, path in _modules().items():
        mlflow = {i for i in _imported(name, path) if _within(i, ("mlflow",))}
        if _within(name, ("tuner.store",)):
            assert name == "tuner.store.connect" or "mlflow.MlflowClient" not in mlflow, name
            continue
        allowed = MLFLOW_ANYWHERE + MLFLOW_ALSO.get(name, ())
        assert {i for i in mlflow if not _within(i, allowed)} == set(), name


def test_the_command_line_is_one_package_and_the_study_has_rooms() -> None:
    tuner = REPO / "tuner"
    assert sorted(p.name for p in tuner.glob("cli_*.py")) == []
    assert (tuner / "cli" / "__init__.py").is_file()
    top = sorted(p.name for p in (tuner / "search").glob("*.py"))
    assert len(top) <= MAX_SEARCH_TOP, top


def test_the_rooms_of_the_study_import_one_another_in_no_circle() -> None:
    """tuner/search's modules collapsed to their room (its sub-package, or "top" for a module
    beside them): a circle among the rooms, or a room importing a top module, fails."""
    search = REPO / "tuner" / "search"
    paths = _modules()

    def room(name: str) -> str:
        parts = paths[name].relative_to(search).parts
        return parts[0] if len(parts) > 1 else "top"

    rooms: dict[str, set[str]] = {}
    for name, edges in _graph().items():
        if _within(name, ("tuner.search",)) and name != "tuner.search":
            rooms.setdefault(room(name), set()).update(
                room(e) for e in edges if _within(e, ("tuner.search",)) and room(e) != room(name))
    assert len(rooms) > 1
    assert _circles(rooms) == []


def test_the_rules_see_a_circle_and_a_stray_import(tmp_path: Path) -> None:
    """The checks above would fail where the code broke a rule."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import optuna\n"
                      "def f():\n    from mlflow import MlflowClient\n")
    assert _imported("tuner.m", module) == {"typing.TYPE_CHECKING", "mlflow.MlflowClient"}


def _top_level(path: Path) -> set[str]:
    """The names a module imports as it loads: at its top, not inside a function or class."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in tree.body:
        if _type_checking(node) or isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        for imp in _imports(node):
            found |= ({a.name for a in imp.names} if isinstance(imp, ast.Import)
                      else {imp.module or ""})
    return found


def test_import_tuner_and_its_api_stay_light() -> None:
    """`import tuner` (and tuner.api, which it loads on first use) imports no heavy library: the
    API's functions import what each needs."""
    heavy = ("ray", "torch", "mlflow", "optuna", "pandas", "pydantic", "matplotlib", "tuner.space",
             "tuner.search", "tuner.inspect")
    for name in ("tuner", "tuner.api"):
        loaded = _top_level(_modules()[name])
        assert {i for i in loaded if _within(i, heavy)} == set(), name
