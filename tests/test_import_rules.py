"""The import rules of DESIGN.md, read statically (``ast``) from every module of the project, lazy imports
inside functions included: no import runs against the data flow, and no two modules import each other.

- attacks import no method, runner or report;
- methods import no runner, report or store;
- the report imports only the store (and the shared one-line errors);
- train imports only the Method interface (the ``methods`` package face or ``methods.base``), never a
  concrete method file;
- train, selection, evaluation and the executors receive the plan and never import the configuration;
- data never imports selection or train;
- nothing outside ``benchmark/tools`` imports ``benchmark/tools`` (tools are not part of the pipeline);
- no import cycle between modules of the project.
"""
from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "methods", "attacks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (top level, functions, try blocks)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in MODULES:  # `import a.b.c` where only a.b is a module of ours
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in MODULES else source)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}

# (importer pattern, forbidden target patterns, why)
FORBIDDEN = [
    ("attacks*", ["methods*", "benchmark.runner", "benchmark.report*"], "attacks import no method, runner or report"),
    ("methods*", ["benchmark.runner", "benchmark.report*", "benchmark.store"],
     "methods import no runner, report or store"),
    ("benchmark.data*", ["benchmark.selection", "benchmark.train"], "data never imports selection or train"),
    ("benchmark.train", ["methods.?*"], "train imports only the Method interface"),
    ("benchmark.train", ["benchmark.config"], "train receives the plan, never the configuration"),
    ("benchmark.selection", ["benchmark.config"], "selection receives the plan, never the configuration"),
    ("benchmark.evaluate", ["benchmark.config"], "evaluation receives the plan, never the configuration"),
    ("benchmark.executors", ["benchmark.config"], "the executors receive plans, never the configuration"),
]
ALLOWED_FOR_TRAIN = {"methods", "methods.base"}
REPORT_MAY_IMPORT = ["benchmark.report*", "benchmark.store", "benchmark.errors"]


def _violations() -> list[str]:
    out = []
    for importer, targets in GRAPH.items():
        for target in sorted(targets):
            for pattern, forbidden, why in FORBIDDEN:
                if not fnmatch(importer, pattern) or not any(fnmatch(target, f) for f in forbidden):
                    continue
                if importer == "benchmark.train" and target in ALLOWED_FOR_TRAIN:
                    continue
                out.append(f"{importer} imports {target}: {why}")
            if fnmatch(importer, "benchmark.report*") and not any(fnmatch(target, p) for p in REPORT_MAY_IMPORT):
                out.append(f"{importer} imports {target}: the report imports only the store")
            if fnmatch(target, "benchmark.tools*") and not fnmatch(importer, "benchmark.tools*"):
                out.append(f"{importer} imports {target}: nothing imports tools/")
    return out


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-loops, as sorted lists.
    A package's ``__init__`` handing on its own submodules' names is an edge down, not a cycle, unless a
    submodule imports the package face back."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in GRAPH.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return components


def test_the_rules_see_the_whole_project():
    assert {"benchmark.train", "benchmark.runner", "benchmark.config", "benchmark.plan", "methods.base",
            "attacks", "benchmark.report.site"} <= set(MODULES)
    assert "benchmark.plan" in GRAPH["benchmark.train"] and "benchmark.plan" in GRAPH["benchmark.runner"]
    assert "methods.base" in GRAPH["methods"]  # a package face's own imports are edges too


def test_no_import_runs_against_the_data_flow():
    assert _violations() == []


def test_no_import_cycle_between_modules():
    assert _cycles() == []


@pytest.mark.parametrize("source, expected", [
    ("from benchmark import config\n", {"benchmark.config"}),
    ("def f():\n    from .config import Config\n", {"benchmark.config"}),  # lazy, relative
    ("import methods.at\n", {"methods.at"}),
    ("from ..errors import UsageError\n", {"benchmark.errors"}),
])
def test_the_parser_finds_lazy_relative_and_dotted_imports(tmp_path, source, expected):
    name = "benchmark.data.fake" if source.startswith("from ..") else "benchmark.fake"
    path = tmp_path / "fake.py"
    path.write_text(source)
    assert _imports(name, path) == expected


def test_a_forbidden_import_and_a_cycle_would_be_caught(monkeypatch):
    monkeypatch.setitem(GRAPH, "attacks.pgd", GRAPH["attacks.pgd"] | {"methods.base"})
    monkeypatch.setitem(GRAPH, "benchmark.plan", GRAPH["benchmark.plan"] | {"benchmark.config"})
    assert any(v.startswith("attacks.pgd imports methods.base") for v in _violations())
    assert ["benchmark.config", "benchmark.plan"] in _cycles()
