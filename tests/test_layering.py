"""The house's layering (DESIGN.md): no import cycle among bigdenoise's modules, and the pure,
low modules never reach the high ones (I/O workflows, execution, the command line).

Imports are read from the source with :mod:`ast`, module by module, rather than by importing each
module in a fresh interpreter: ``import bigdenoise.X`` first runs ``bigdenoise/__init__.py``,
which imports the public API and with it nearly every module, so a runtime import cannot tell
what ``X`` itself depends on. Relative and absolute imports are resolved to module names
(``from . import api`` -> ``bigdenoise.api``; ``from .methods import Method`` ->
``bigdenoise.methods``).

- No cycle counts the imports that run when a module is imported (module level, class bodies,
  ``try``/``if`` blocks; not inside functions, not under ``if TYPE_CHECKING``).
- The layering counts every import, also those inside functions (a hidden import is still a
  dependency), and follows them transitively.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import bigdenoise

PACKAGE = Path(bigdenoise.__file__).resolve().parent
NAME = "bigdenoise"

# The rule: a module of the first column never imports (directly or through others) a module of
# the second. A name covers a sub-package's modules too ("nets" is nets/__init__ and nets/*).
LOW = ("geometry", "errors", "axes", "normalize", "tiling", "masking", "noise_models", "nets", "files", "ome", "history")
HIGH = ("api", "cli", "cli_args", "cli_parser", "execute", "clusters", "writer", "train", "checkpoints", "demo", "convert",
        "calibration", "outputs", "export", "bioimageio_export", "bioimageio_model", "pyramid_run", "channel_models",
        "runfile", "preview", "memory")

# (importer, imported) pairs tolerated for now, each with the reason. Empty: keep it so.
ALLOWED: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([NAME, *parts])


@cache
def modules() -> dict[str, Path]:
    found = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}
    assert f"{NAME}.noise_models" in found and f"{NAME}.nets.unet" in found, sorted(found)
    return found


def _in(name: str, group: tuple[str, ...]) -> bool:
    return any(name == f"{NAME}.{g}" or name.startswith(f"{NAME}.{g}.") for g in group)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The bigdenoise modules ``node`` (in ``module``) imports."""
    known = modules()
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == NAME}
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != NAME:
        return set()
    targets = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        targets.add(sub if sub in known else base)
    missing = targets - set(known)
    assert not missing, f"{module}: import of unknown bigdenoise module(s) {sorted(missing)}"
    return targets


@cache
def imports() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Module -> (imports run when it is imported, every import in it)."""
    found = {}
    for module, path in modules().items():
        at_import: set[str] = set()
        anywhere: set[str] = set()
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, runs_at_import: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    targets = _resolve(module, is_package, child)
                    anywhere.update(targets)
                    if runs_at_import:
                        at_import.update(targets)
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    visit(child, False)
                elif isinstance(child, ast.If) and _is_type_checking(child):
                    visit(child, False)
                else:
                    visit(child, runs_at_import)

        visit(ast.parse(path.read_text(), str(path)), True)
        at_import.discard(module)
        anywhere.discard(module)
        found[module] = (frozenset(at_import), frozenset(anywhere))
    return found


def find_cycle(graph: dict[str, frozenset[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def reaches(graph: dict[str, frozenset[str]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` reaches in ``graph``, with one import chain to it."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in chains:
                chains[nxt] = chains[node] + [nxt]
                todo.append(nxt)
    del chains[start]
    return chains


def layering_violations(graph: dict[str, frozenset[str]]) -> list[str]:
    bad = []
    for module in sorted(graph):
        if not _in(module, LOW):
            continue
        for target, chain in sorted(reaches(graph, module).items()):
            if _in(target, HIGH) and (module, target) not in ALLOWED:
                bad.append(" -> ".join(chain))
    return bad


def test_the_rule_names_real_modules():
    names = set(modules())
    for group in (LOW, HIGH):
        for g in group:
            assert any(_in(n, (g,)) for n in names), f"the layering table names {g!r}, which is not a module"
    assert not set(LOW) & set(HIGH)


def test_no_import_cycle():
    graph = {m: at_import for m, (at_import, _) in imports().items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (module-level imports): " + " -> ".join(cycle)


def test_low_modules_never_import_high_ones():
    graph = {m: anywhere for m, (_, anywhere) in imports().items()}
    bad = layering_violations(graph)
    assert not bad, "a pure/low module reaches a high one (DESIGN.md layering):\n" + "\n".join(bad)


def test_allowed_exceptions_are_still_needed():
    graph = {m: anywhere for m, (_, anywhere) in imports().items()}
    for module, target in ALLOWED:
        assert target in reaches(graph, module), f"ALLOWED lists {module} -> {target}, which no longer happens"


@pytest.mark.parametrize("case", ["cycle", "layering"])
def test_the_checks_catch_a_bad_import(case):
    """The checks fail on a planted cycle and on a planted low -> high import two steps away."""
    at_import = {m: a for m, (a, _) in imports().items()}
    anywhere = {m: a for m, (_, a) in imports().items()}
    if case == "cycle":
        assert f"{NAME}.geometry" in at_import[f"{NAME}.tiling"]
        at_import[f"{NAME}.geometry"] |= {f"{NAME}.tiling"}
        assert find_cycle(at_import) is not None
    else:
        anywhere[f"{NAME}.errors"] |= {f"{NAME}.normalize"}
        anywhere[f"{NAME}.normalize"] |= {f"{NAME}.outputs"}
        assert f"{NAME}.errors -> {NAME}.normalize -> {NAME}.outputs" in layering_violations(anywhere)
