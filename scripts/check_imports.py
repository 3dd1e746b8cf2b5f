#!/usr/bin/env python3
"""The import contracts of the jdna package, checked on its source (nothing is imported or executed).

Every `import` statement counts, wherever it is: at module level, inside a function, or under TYPE_CHECKING
(an import inside a function hides a cycle from Python, not from the design). Reported:

- cycle:   a strongly connected set of jdna modules (each reaches every other through imports);
- private: a module using another module's `_private` name (`from x import _y`, or `x._y` on an imported
           module); dunder names such as `__version__` are public;
- layer:   a broken named rule (LAYERS below): the library (jdna/) never imports the CLI (jdna.commands),
           and evaluation never imports fine-tuning;
- order:   a module importing a module of a higher layer (ORDER below, the layers of docs/architecture.md);
- unplaced: a module in no layer of ORDER (a new module must be given one).

An edge goes to the module an import names (`from jdna.finetune import masking` -> jdna.finetune.masking,
`from jdna.finetune import run_finetune` -> jdna.finetune); the implicit import of parent packages is not an
edge, so the usual "package __init__ re-exports its submodules" is not a cycle unless a submodule imports the
package back. commands/ ships as jdna.commands (pyproject.toml's package-dir).

Run `python scripts/check_imports.py` to list every violation with file:line; tests/test_import_contracts.py
holds the violations tolerated today and fails on any other (or on a fixed one still listed).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Source directory -> the package name it installs as.
PACKAGES = {"jdna": "jdna", "commands": "jdna.commands"}
# (importer prefix, forbidden prefix, why): a module under the first may not import one under the second.
LAYERS = [
    ("jdna", "jdna.commands", "the library never imports the CLI"),
    ("jdna.evaluation", "jdna.finetune", "evaluation never imports fine-tuning"),
]
# `python -m jdna` is the CLI's second entry point, not library code.
LAYER_EXEMPT = {"jdna.__main__"}
# The layers of docs/architecture.md, lowest first: a module imports only modules of its own layer or a lower
# one. A module belongs to the layer of the longest prefix listed for it ("jdna" itself is the package's
# __init__); a module no prefix covers is reported as unplaced, so a new module is given a layer when it is added.
ORDER: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("jdna", "jdna.errors", "jdna.registry", "jdna.io", "jdna.paths", "jdna.outputs", "jdna.progress",
              "jdna.placement", "jdna.naming", "jdna.bitmask", "jdna.distributed")),
    # what artifacts are decoded with: quantization's number formats, packing, bit accounting and RTN codes
    ("numerics", ("jdna.quantization.spec", "jdna.quantization.rtn", "jdna.quantization.packing",
                  "jdna.quantization.accounting", "jdna.quantization.base", "jdna.sparse_formats")),
    ("artifacts", ("jdna.artifact", "jdna.kinds")),
    ("models", ("jdna.models", "jdna.prunable", "jdna.masks", "jdna.model_files", "jdna.demo")),
    ("steps", ("jdna.steps",)),
    ("data", ("jdna.tasks", "jdna.scoring", "jdna.calibration", "jdna.calibration_corpus", "jdna.metrics")),
    ("compression", ("jdna.pruning", "jdna.quantization", "jdna.layerwise", "jdna.sparsity")),
    ("evaluation", ("jdna.evaluation",)),
    ("transfer", ("jdna.finetune", "jdna.lmc")),
    ("analysis", ("jdna.analysis", "jdna.exporting", "jdna.compressed_tensors_export", "jdna.runs")),
    ("cli", ("jdna.commands", "jdna.__main__")),
]  # fmt: skip


@dataclass
class Graph:
    root: Path
    modules: dict[str, Path] = field(default_factory=dict)
    # importer -> imported -> first line of such an import
    edges: dict[str, dict[str, int]] = field(default_factory=dict)
    # (importer, "module._name") -> first line
    private: dict[tuple[str, str], int] = field(default_factory=dict)


def discover(root: Path = ROOT) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for directory, package in PACKAGES.items():
        base = root / directory
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The jdna module a dotted name refers to (itself, or the longest module prefix of it)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _source(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name a `from ... import` statement reads from."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _imports(module: str, path: Path, tree: ast.AST, modules: dict[str, Path]) -> Iterator[tuple[str, str, int]]:
    """(imported module, imported name or '' for a whole module, line) for every jdna import in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _owner(alias.name, modules)
                if target:
                    yield target, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = _source(module, path, node)
            owner = _owner(source, modules)
            if owner is None:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    yield submodule, "", node.lineno
                else:
                    yield owner, alias.name, node.lineno


def _module_aliases(module: str, path: Path, tree: ast.AST, modules: dict[str, Path]) -> dict[str, str]:
    """Local names bound to a jdna module (`from jdna import scoring`, `import jdna.scoring as s`)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _source(module, path, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    return aliases


def build(root: Path = ROOT) -> Graph:
    graph = Graph(root=root, modules=discover(root))
    for module, path in graph.modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = graph.edges.setdefault(module, {})
        for target, name, line in _imports(module, path, tree, graph.modules):
            if target != module:
                edges.setdefault(target, line)
            if name and _is_private(name) and target != module:
                graph.private.setdefault((module, f"{target}.{name}"), line)
        aliases = {
            local: target for local, target in _module_aliases(module, path, tree, graph.modules).items()
            if target != module
        }  # fmt: skip
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _is_private(node.attr)
                and f"{aliases[node.value.id]}.{node.attr}" not in graph.modules
            ):
                graph.private.setdefault((module, f"{aliases[node.value.id]}.{node.attr}"), node.lineno)
    return graph


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; sorted by first member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:  # recursion depth is bounded by the number of modules (~100)
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in edges.get(node, {}):
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
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def violations(graph: Graph, order: list[tuple[str, tuple[str, ...]]] | None = None) -> dict[str, str]:
    """Each violation (a stable text without line numbers, as listed in the test) -> where it happens."""
    found: dict[str, str] = {}
    order = ORDER if order is None else order

    def where(module: str, line: int) -> str:
        return f"{graph.modules[module].relative_to(graph.root)}:{line}"

    for component in cycles(graph.edges):
        members = set(component)
        inside = [
            f"{a} -> {b} ({where(a, line)})" for a in component for b, line in graph.edges[a].items() if b in members
        ]
        found["cycle: " + ", ".join(component)] = "; ".join(inside)
    for (module, name), line in sorted(graph.private.items()):
        found[f"private: {module} uses {name}"] = where(module, line)
    for module, targets in sorted(graph.edges.items()):
        for target, line in sorted(targets.items()):
            for importer, forbidden, why in LAYERS:
                if module in LAYER_EXEMPT or _within(module, forbidden):
                    continue
                if _within(module, importer) and _within(target, forbidden):
                    found[f"layer: {module} imports {target}"] = f"{where(module, line)} ({why})"
    for module in sorted(graph.modules):
        if layer_of(module, order) is None:
            found[f"unplaced: {module}"] = f"{where(module, 1)} (give it a layer in ORDER)"
    for module, targets in sorted(graph.edges.items()):
        for target, line in sorted(targets.items()):
            low, high = layer_of(module, order), layer_of(target, order)
            if low is not None and high is not None and high > low and f"layer: {module} imports {target}" not in found:
                found[f"order: {module} imports {target}"] = (
                    f"{where(module, line)} (layer {order[low][0]} imports layer {order[high][0]})"
                )
    return found


def layer_of(module: str, order: list[tuple[str, tuple[str, ...]]] = ORDER) -> int | None:
    """The index in `order` of a module's layer: that of the longest prefix listed for it."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(order):
        for prefix in prefixes:
            if module == prefix or (prefix != "jdna" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return best[0] if best else None


def main() -> int:
    found = violations(build())
    for text, location in found.items():
        print(f"{text}\n    {location}")
    print(f"{len(found)} import-contract violation(s)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
