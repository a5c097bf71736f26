"""Import hygiene of the interscale package: no import circle, no reaching into another
package's privates.

Every ``.py`` file under ``interscale/`` is parsed (nothing is imported) and every import is
collected, those inside functions included; only imports under ``if TYPE_CHECKING:`` are left
out, as they never run.

- Module graph: ``import interscale.a.b`` and ``from interscale.a import b`` point to
  ``interscale.a.b`` when that module exists, else to ``interscale.a`` (``from interscale.a
  import name``). Importing a module does not add edges to its parent packages' ``__init__``.
- Package graph: the same edges between subpackages (``interscale.evaluation``,
  ``interscale.pl``, ...) and root-level modules (``interscale.cli``, ...).
- Private imports: a module of ``interscale/A/`` may import from ``interscale.B`` (B != A) only
  public modules (no path segment from B on starting with ``_``) and public names. The shared
  floor modules in ``SHARED_MODULES`` may be imported from anywhere.
- Floors (README, "Architecture"): a package imports only from its own floor and the floors
  below. ``import interscale`` inside a package reaches every package through the root's
  attributes, so it counts as an import of the top floor; ``UPWARD_ALLOWED`` lists the one
  module allowed to do that, and why.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "interscale"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE
# Root-level private modules that are the lowest floor: shared by every package.
SHARED_MODULES = (
    "_anndata",
    "_compat",
    "_components",
    "_io",
    "_plotting",
    "_r2",
    "_ridge",
    "_version",
)
# The floors of README's "Architecture" table, by package (the root's shared modules are floor 0).
FLOORS = {
    "interscale.names": 0,
    "interscale.config": 0,
    "interscale._anndata": 0,
    "interscale._compat": 0,
    "interscale._io": 0,
    "interscale._plotting": 0,
    "interscale._ridge": 0,
    "interscale._r2": 0,
    "interscale._components": 0,
    "interscale._version": 0,
    "interscale.datasets": 1,
    "interscale.pp": 1,
    "interscale.graphs": 2,
    "interscale.nn": 3,
    "interscale.train": 4,
    "interscale.model": 4,
    "interscale.evaluation": 5,
    "interscale.tl": 5,
    "interscale.pl": 6,
    "interscale.cli": 7,
    "interscale.__main__": 7,
    "interscale": 7,  # the root re-exports every package: the top floor, with the command line
}
# Modules that may reach upward, each with the reason (a README row says the same).
UPWARD_ALLOWED = {
    # the report behind `interscale evaluate` draws with pl and enriches with tl at call time,
    # through the root package, so that its public name stays interscale.evaluation's
    ("interscale.evaluation._report", "interscale"): "evaluate_to_folder draws and enriches",
}


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``module`` imports ``target`` (and ``names`` from it)."""

    module: str
    target: str
    names: tuple[str, ...]
    line: int

    def describe(self) -> str:
        if self.names:
            what = f"from {self.target} import {', '.join(self.names)}"
        else:
            what = f"import {self.target}"
        return f"{self.module}: {what} (line {self.line})"


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    """Import statements anywhere in a file, except under ``if TYPE_CHECKING:``."""

    def __init__(self) -> None:
        self.nodes: list[ast.Import | ast.ImportFrom] = []

    def visit_If(self, node: ast.If) -> None:  # noqa: N802 (ast.NodeVisitor API)
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802
        self.nodes.append(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        self.nodes.append(node)


def _existing(name: str, modules: dict[str, Path]) -> str:
    """``name`` if it is a module of the package, else its longest prefix that is one."""
    parts = name.split(".")
    while len(parts) > 1 and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def collect_imports(root: Path, package: str = PACKAGE) -> list[Import]:
    """Every import of the package's modules that points into the package itself."""
    modules = module_files(root, package)
    found = []
    for module, path in modules.items():
        collector = _Collector()
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        is_package = path.name == "__init__.py"
        for node in collector.nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        target = _existing(alias.name, modules)
                        found.append(Import(module, target, (), node.lineno))
                continue
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if not (base == package or base.startswith(package + ".")):
                continue
            from_module = _existing(base, modules)
            names = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    found.append(Import(module, submodule, (), node.lineno))
                else:
                    names.append(alias.name)
            if names:
                found.append(Import(module, from_module, tuple(names), node.lineno))
    return found


def package_of(module: str) -> str:
    """The subpackage (``interscale.pl``) or root-level module (``interscale.cli``) of a module."""
    return ".".join(module.split(".")[:2])


def find_cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Cycle paths ``[a, b, ..., a]`` that together pass through every node on a cycle.

    Self-loops are ignored. Each strongly connected group of nodes gets a shortest cycle
    through its first node, then through the first node not yet on a reported cycle, and so on.
    """
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        if src != dst:
            graph.setdefault(src, set()).add(dst)
            graph.setdefault(dst, set())
    # Tarjan's strongly connected components, iterative.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    cycles = []
    for group in sorted(groups):
        members = set(group)
        uncovered = list(group)
        while uncovered:
            cycle = _shortest_cycle(graph, members, uncovered[0])
            cycles.append(cycle)
            uncovered = [node for node in uncovered if node not in cycle]
    return cycles


def _shortest_cycle(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """The shortest way from ``start`` back to itself inside ``members`` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in previous:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    path = [start]
    node = previous[start]
    while node != start:
        path.append(node)
        node = previous[node]
    path.append(start)
    return path[::-1]


def module_cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Import cycles between modules."""
    return find_cycles((imp.module, imp.target) for imp in imports)


def package_cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Import cycles between subpackages and root-level modules."""
    return find_cycles((package_of(imp.module), package_of(imp.target)) for imp in imports)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(imports: Iterable[Import], package: str = PACKAGE) -> list[Import]:
    """Imports of another package's private module or private name."""
    shared = {f"{package}.{name}" for name in SHARED_MODULES}
    bad = []
    for imp in imports:
        own = imp.module.split(".")[1:2]
        parts = imp.target.split(".")[1:]
        if not parts or parts[:1] == own:
            continue  # the package root itself, or inside one's own package
        private_path = imp.target not in shared and any(_private(p) for p in parts)
        if private_path or any(_private(name) for name in imp.names):
            bad.append(imp)
    return bad


def _format_cycles(cycles: list[list[str]]) -> str:
    return "\n".join("  " + " -> ".join(cycle) for cycle in cycles)


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return collect_imports(SOURCE)


def test_the_package_is_found(imports):
    modules = module_files(SOURCE)
    assert {"interscale", "interscale.evaluation", "interscale.pl"} <= set(modules)
    assert any(imp.module.startswith("interscale.pl.") for imp in imports)


def test_no_import_cycle_between_modules(imports):
    cycles = module_cycles(imports)
    assert not cycles, f"{len(cycles)} import cycle(s) between modules:\n" + _format_cycles(cycles)


def test_no_import_cycle_between_packages(imports):
    cycles = package_cycles(imports)
    assert not cycles, f"{len(cycles)} import cycle(s) between packages:\n" + _format_cycles(cycles)


def test_no_import_of_another_package_private(imports):
    bad = private_imports(imports)
    assert not bad, (
        f"{len(bad)} import(s) of another package's private module or name (make it a public "
        "name of that package's __init__):\n" + "\n".join("  " + imp.describe() for imp in bad)
    )


def upward_imports(imports: Iterable[Import]) -> list[Import]:
    """Imports of a package on a higher floor than the importing module's package."""
    bad = []
    for imp in imports:
        own, other = package_of(imp.module), package_of(imp.target)
        if own == PACKAGE:
            continue  # the root package itself sits above everything
        if FLOORS[other] > FLOORS[own] and (imp.module, imp.target) not in UPWARD_ALLOWED:
            bad.append(imp)
    return bad


def test_every_package_has_a_floor():
    packages = {package_of(module) for module in module_files(SOURCE)}
    assert packages == set(FLOORS), "add the package to FLOORS (and README's Architecture)"


def test_no_import_from_a_higher_floor(imports):
    bad = upward_imports(imports)
    assert not bad, f"{len(bad)} import(s) from a higher floor:\n" + "\n".join(
        "  " + imp.describe() for imp in bad
    )


def test_allowed_upward_imports_still_exist(imports):
    """An exception that no longer happens is removed from the list (and README)."""
    found = {(imp.module, imp.target) for imp in imports}
    assert set(UPWARD_ALLOWED) <= found


# ------------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / PACKAGE


_PLANTED = {
    "__init__.py": "from interscale._version import __version__\n",
    "_version.py": "__version__ = '0'\n",
    "_anndata.py": "def layer_matrix(): ...\n",
    "a/__init__.py": "from interscale.a._x import f\n",
    "a/_x.py": (
        "from interscale._anndata import layer_matrix\n"
        "def f():\n"
        "    from interscale.b import g  # inside a function: still an edge\n"
        "    return g\n"
    ),
    "b/__init__.py": "from .y import g\n",
    "b/y.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from interscale.c._z import _hidden  # never runs: ignored\n"
        "else:\n"
        "    from interscale.c import h\n"
        "def g():\n"
        "    from ..a._x import f  # relative, private module of package a\n"
        "    import interscale.c._z\n"
        "    return f\n"
    ),
    "c/__init__.py": "from interscale.c._z import h, _helper\n",
    "c/_z.py": "def h(): ...\ndef _helper(): ...\n",
    "d.py": "from interscale.c import _helper\nfrom interscale.c import h\n",
}


def test_checker_resolves_imports(tmp_path):
    root = _write(tmp_path, _PLANTED)
    found = {(imp.module, imp.target, imp.names) for imp in collect_imports(root)}
    assert ("interscale.a._x", "interscale.b", ("g",)) in found  # inside a function
    assert ("interscale.b", "interscale.b.y", ("g",)) in found  # relative, one level
    assert ("interscale.b.y", "interscale.a._x", ("f",)) in found  # relative, two levels
    assert ("interscale.b.y", "interscale.c._z", ()) in found  # `import interscale.c._z`
    assert ("interscale.b.y", "interscale.c", ("h",)) in found  # the TYPE_CHECKING else branch
    assert not any("_hidden" in names for _, _, names in found)  # under TYPE_CHECKING
    assert ("interscale", "interscale._version", ("__version__",)) in found


def test_checker_finds_planted_cycles_and_private_imports(tmp_path):
    imports = collect_imports(_write(tmp_path, _PLANTED))
    cycles = module_cycles(imports)
    assert cycles == [["interscale.a._x", "interscale.b", "interscale.b.y", "interscale.a._x"]]
    assert package_cycles(imports) == [["interscale.a", "interscale.b", "interscale.a"]]
    bad = sorted(imp.describe() for imp in private_imports(imports))
    assert bad == [
        "interscale.b.y: from interscale.a._x import f (line 7)",
        "interscale.b.y: import interscale.c._z (line 8)",
        "interscale.d: from interscale.c import _helper (line 1)",
    ]
    # the shared floor module, a dunder name and one's own privates are allowed
    assert not {imp.module for imp in private_imports(imports)} & {"interscale", "interscale.a"}


def test_checker_passes_a_clean_tree(tmp_path):
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "from interscale.low._impl import f\n",
            "low/_impl.py": "def f(): ...\n",
            "high/__init__.py": "from interscale.high._impl import g\n",
            "high/_impl.py": "from interscale.low import f\ndef g():\n    return f\n",
        },
    )
    imports = collect_imports(root)
    assert not module_cycles(imports)
    assert not package_cycles(imports)
    assert not private_imports(imports)


def test_find_cycles_reports_every_node_of_a_tangle():
    edges = [("a", "b"), ("b", "a"), ("c", "a"), ("a", "c"), ("c", "d"), ("e", "e")]
    assert find_cycles(edges) == [["a", "b", "a"], ["c", "a", "c"]]
    assert find_cycles([("a", "b"), ("b", "c")]) == []


def test_floor_checker_flags_upward_imports_only():
    planted = [
        Import("interscale.nn._local", "interscale.model", ("CombinedModel",), 1),  # 3 -> 4
        Import("interscale.pl._ranks", "interscale", (), 2),  # `import interscale` in pl
        Import("interscale.model._base", "interscale.train", ("fit",), 3),  # same floor
        Import("interscale.pl._ranks", "interscale.evaluation", ("driven_genes",), 4),  # down
        Import("interscale.cli", "interscale", (), 5),  # the top floor uses the root
        Import("interscale.evaluation._report", "interscale", (), 6),  # the allowed one
    ]
    flagged = {imp.line for imp in upward_imports(planted)}
    assert flagged == {1, 2}
