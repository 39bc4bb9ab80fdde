"""The package's layering (ARCHITECTURE.md), read from the source: module-level imports only (an import inside
a function is the optional-dependency exception, and is not an edge here), with importing ``a.b.c`` counted as
importing its packages ``a.b`` and ``a`` too (Python runs their ``__init__`` first), except the packages the
importer itself belongs to (they are already being imported when it runs).

- no two modules import each other, directly or through others;
- no package imports one above it in ARCHITECTURE.md's table of layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# where each importable package lives (setup.py's package_dir)
ROOTS = {"agd": REPO / "agd", "agd.kernels": REPO / "kernels", "agd.tuning": REPO / "tuning"}

# ARCHITECTURE.md's layers: a module may import its own layer's modules or lower layers', never higher ones
LAYERS = {
    "base": ["agd", "agd.io", "agd.status", "agd.numerics", "agd.timing", "agd.machine", "agd.runs", "agd.loop"],
    "ops": ["agd.ops", "agd.kernels"],
    "inputs": ["agd.teachers", "agd.data", "agd.distill", "agd.metrics"],
    "space": ["agd.space"],
    "cost": ["agd.cost"],
    "arch": ["agd.arch"],
    "search": ["agd.search"],
    "train": ["agd.train", "agd.evaluate"],
    "deploy": ["agd.tuning"],
    "suites": ["agd.bench", "agd.backends"],
    "jobs": ["agd.jobs"],
    "cli": ["agd.commands", "agd.cli", "agd.__main__"],
}
RANK = {name: i for i, names in enumerate(LAYERS.values()) for name in names}


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (``agd.kernels`` is ``kernels/``, ``agd.tuning`` ``tuning/``)."""
    out = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                continue
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _module_level_imports(tree: ast.Module):
    """Import nodes that run when the module is imported: top level, and inside top-level if/try blocks
    (``if TYPE_CHECKING:`` blocks excluded: they never run)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if "TYPE_CHECKING" not in test:
                stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES]


def _resolve(target: str) -> str | None:
    """The module a dotted import names (``agd.ops.EpilogueCandidate`` → ``agd.ops``), or None outside agd."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _edges(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _module_level_imports(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            m = _resolve(t)
            if m is not None:  # a package the importer lives in is already being imported: no edge to it
                out.update(p for p in _with_parents(m) if not name.startswith(p + "."))
    out.discard(name)
    return out


GRAPH = {name: _edges(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _rank(name: str) -> int:
    while name not in RANK:
        name = name.rpartition(".")[0]
    return RANK[name]


def test_the_graph_is_read():
    # a broken reader would make the two tests below pass on an empty graph
    assert len(MODULES) > 100
    assert "agd.ops.library" in GRAPH["agd.ops.blocks"]
    assert {"agd.arch.genotype", "agd.space.space", "agd.space"} <= GRAPH["agd.arch.derive"]
    assert "agd.space" in GRAPH["agd.arch.genotype"]  # a submodule's import runs its package first
    assert "agd.arch" not in GRAPH["agd.arch.derive"]  # but not the importer's own package


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_every_module_has_a_layer():
    assert [m for m in MODULES if not any(m == n or m.startswith(n + ".") for n in RANK)] == []


@pytest.mark.parametrize("layer", list(LAYERS))
def test_no_package_imports_a_layer_above_it(layer):
    names = [m for m in MODULES if _rank(m) == list(LAYERS).index(layer) and m != "agd"]
    bad = [f"{m} -> {t}" for m in names for t in sorted(GRAPH[m]) if t != "agd" and _rank(t) > _rank(m)]
    assert bad == []
