"""slimface's imports form layers (docs/DESIGN.md, "Layers"): no circles, and nothing imports upward.

Every ``import`` of the package is read with ``ast`` -- at module level, inside functions and under
``if TYPE_CHECKING:`` -- and resolved to the module it names (``from pkg import sub`` names the
submodule ``pkg.sub``; a package's own ``__init__`` is not counted as imported by its submodules).

* **Circles**: the imports that run (all but the type-checking ones) must form no cycle, so
  ``import slimface.cli`` (or any module) never depends on import order.
* **Layers**: a module may import modules of its own layer or of lower ones, never of a higher one --
  type-only imports included (a lower layer that names a higher one's types depends on it all the same).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "slimface"

#: lowest first; a module belongs to the layer of the longest prefix that names it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("slimface", "slimface.errors", "slimface.fileio", "slimface.config")),
    ("nn, data", ("slimface.nn", "slimface.data")),
    ("models", ("slimface.models",)),
    ("train", ("slimface.train",)),
    ("families", ("slimface.families", "slimface.export_format")),
    ("compress", ("slimface.compress",)),
    ("deploy", ("slimface.deploy",)),
    ("evaluate", ("slimface.evaluate",)),
    ("run", ("slimface.stage_keys", "slimface.shipped", "slimface.shipped_pack", "slimface.pipeline_config", "slimface.pipeline")),
    ("cli", ("slimface.cli", "slimface.cli_reports", "slimface.__main__")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, typing_only: bool = False):  # noqa: ANN202 - yields (import node, typing_only)
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, typing_only
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), True)
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), typing_only)
        else:
            yield from _walk(child, typing_only)


def _resolve(name: str) -> str | None:
    """The slimface module ``name`` refers to (the longest existing prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, typing_only)`` for every slimface import in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node, typing_only in _walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # a submodule is what is imported when one is named
                full = f"{base}.{alias.name}"
                targets.append(full if full in MODULES else base)
        for target in targets:
            if not target.startswith("slimface"):
                continue
            resolved = _resolve(target)
            # the package itself, or one's own parent package (its __init__ runs first anyway)
            if resolved and resolved != module and not module.startswith(resolved + "."):
                out.append((resolved, node.lineno, typing_only))
    return out


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            matches = module == p or (p != "slimface" and module.startswith(p + "."))
            if matches and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


#: cycles known and owned elsewhere, each with who resolves it. Empty is the goal; an entry that no
#: longer matches a cycle fails below, so it is removed as soon as its cycle is gone.
KNOWN_CYCLES: dict[frozenset[str], str] = {
}


def test_every_module_has_a_layer() -> None:
    assert not [m for m in MODULES if layer_of(m) < 0], "add the module's package to LAYERS and to DESIGN.md"


def test_no_import_cycles() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], int] = {}
    for module in MODULES:
        edges[module]
        for target, line, typing_only in imports(module):
            if not typing_only:
                edges[module].add(target)
                where.setdefault((module, target), line)
    found = _cycles(edges)
    stale = [sorted(k) for k in KNOWN_CYCLES if k not in {frozenset(c) for c in found}]
    assert not stale, f"KNOWN_CYCLES lists cycles that are gone: {stale}; remove them"
    cycles = [c for c in found if frozenset(c) not in KNOWN_CYCLES]
    detail = [" -> ".join(c) + ": " + ", ".join(f"{a} imports {b} (line {where[(a, b)]})"
                                                 for a in c for b in sorted(edges[a]) if b in c)
              for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_no_import_from_a_higher_layer() -> None:
    bad = []
    for module in MODULES:
        own = layer_of(module)
        for target, line, typing_only in imports(module):
            if layer_of(target) > own:
                bad.append(f"{MODULES[module].relative_to(SRC.parent)}:{line}: {module} ({LAYERS[own][0]}) imports "
                           f"{target} ({LAYERS[layer_of(target)][0]}){' for type checking' if typing_only else ''}")
    assert not bad, "imports from a higher layer (docs/DESIGN.md, Layers):\n" + "\n".join(bad)


def test_the_walker_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    """The checks above would pass vacuously if imports inside functions or TYPE_CHECKING went unseen."""
    seen = {(t, typing_only) for t, _, typing_only in imports("slimface.pipeline")}
    assert ("slimface.evaluate.run_eval", False) in seen  # imported inside stage_evaluate
    assert ("slimface.evaluate.context", True) in seen  # a type-only import
    assert ("slimface.families.tpgan", False) in {(t, o) for t, _, o in imports("slimface.families.registry")}
