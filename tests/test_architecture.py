"""The layering rules, checked on the source: gallery (lower) never imports retrieval (upper), service
code never imports the measurement tooling in bench/, and no two modules import each other."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("gallery", "retrieval", "imaginaition_site")
# The one command that is, by design, a thin front for bench's evaluation (quality tooling).
MAY_IMPORT_BENCH = {"retrieval/management/commands/evaluate.py"}


def source_files() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[str, ast.stmt, bool]]:
    """(imported module, statement, inside a function) for each import outside `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[str, ast.stmt, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: no import at run time
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child, in_function
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                yield base, child, in_function
                for alias in child.names:  # `from retrieval import search` imports a module too
                    yield f"{base}.{alias.name}", child, in_function
            yield from visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    yield from visit(tree, False)


def test_gallery_imports_nothing_from_retrieval_or_bench():
    offending = [f"{path.relative_to(REPO)}:{statement.lineno}: {ast.unparse(statement)}"
                 for path in (REPO / "gallery").rglob("*.py")
                 for name, statement, _ in imports(path) if name.split(".")[0] in ("retrieval", "bench")]
    assert offending == []


def test_service_code_never_imports_bench():
    offending = [f"{path.relative_to(REPO)}:{statement.lineno}" for path in source_files()
                 if str(path.relative_to(REPO)) not in MAY_IMPORT_BENCH
                 for name, statement, _ in imports(path) if name.split(".")[0] == "bench"]
    assert offending == []


def test_project_modules_are_imported_at_the_top_of_a_module():
    """A function-local import of our own code is how cycles get hidden; AppConfig.ready is where
    Django wants app code imported after the registry is ready."""
    offending = [f"{path.relative_to(REPO)}:{statement.lineno}: {ast.unparse(statement)}"
                 for path in source_files() if path.name != "apps.py"
                 for name, statement, in_function in imports(path)
                 if in_function and name.split(".")[0] in PACKAGES]
    assert offending == []


def test_no_import_cycle_between_modules():
    modules = {module_name(path): path for path in source_files()}
    graph = {name: sorted({imported for imported, _, _ in imports(path) if imported in modules and imported != name})
             for name, path in modules.items()}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def walk(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for neighbour in graph[node]:
            if state.get(neighbour) == "open":
                cycles.append(trail[trail.index(neighbour):] + [neighbour])
            elif neighbour not in state:
                walk(neighbour, [*trail, neighbour])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert cycles == []


def test_the_import_checks_see_imports():
    """The checks above would pass vacuously if the parser missed imports: it must find known ones."""
    found = {name for name, _, _ in imports(REPO / "retrieval" / "search.py")}
    assert {"gallery.models", "retrieval.policy", "retrieval.policy.merge", "numpy"} <= found
    relative = {name for name, _, _ in imports(REPO / "retrieval" / "encoders" / "registry.py")}
    assert "retrieval.encoders.catalog" in relative
