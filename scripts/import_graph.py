#!/usr/bin/env python3
"""The package's shape: every module of ``pipeline/`` and every script of ``scripts/`` with its line count and the
edgepick modules it imports (at module level, and inside functions, marked ``*``), then the checks the layout
promises (docs/design.md, "Layout"): no import cycle, and a stage (``pipeline/stages/``) imported by nothing but
the command line: no library, no other stage and no script imports one. Exit status 1 when a check fails.

    python scripts/import_graph.py [--quiet]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipeline"
SCRIPTS = REPO / "scripts"
STAGES = "pipeline.stages"
ENTRY_POINTS = {"pipeline.cli", "pipeline.__main__"}  # the command line, above the stages


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> list[tuple[str, bool]]:
    """(imported edgepick module, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import submodule` imports the submodule; any other name comes from the module itself
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "pipeline":
                found.append((name, id(node) in top))
    return sorted(set(found))


def graph() -> tuple[dict[str, int], dict[str, list[tuple[str, bool]]]]:
    """(lines per module, imports per module) of the package's modules and the scripts (``scripts.<name>``)."""
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) + sorted(SCRIPTS.glob("*.py"))}
    modules = set(files)
    lines = {m: len(p.read_text().splitlines()) for m, p in files.items()}
    edges = {m: [(t, level) for t, level in imports(p, modules) if t != m] for m, p in files.items()}
    return lines, edges


def cycles(edges: dict[str, list[tuple[str, bool]]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target, _ in edges.get(node, []):
            if state.get(target) == 1:
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node)
    return found


def kind(module: str) -> str:
    if module.startswith(("scripts.", "pipeline.studies.")):  # the studies sit above the libraries, as scripts
        return "script"
    if module.startswith(STAGES + ".") and module != STAGES:
        return "stage"
    return "entry" if module in ENTRY_POINTS else "library"


def stage_imports(edges: dict[str, list[tuple[str, bool]]]) -> dict[str, list[tuple[str, str]]]:
    """The imports of a stage by anything but the command line, by the importer's kind: ``library``, ``stage``
    (a stage importing another stage) and ``script``; empty lists when the layout holds."""
    found = {"library": [], "stage": [], "script": []}
    for module, targets in edges.items():
        for target, _ in targets:
            if kind(target) == "stage" and kind(module) in found:
                found[kind(module)].append((module, target))
    return found


def library_to_stage(edges: dict[str, list[tuple[str, bool]]]) -> list[tuple[str, str]]:
    return stage_imports(edges)["library"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true", help="print only the checks")
    args = parser.parse_args()
    lines, edges = graph()
    if not args.quiet:
        order = {"entry": 0, "library": 1, "stage": 2, "script": 3}
        for module in sorted(lines, key=lambda m: (order[kind(m)], m)):
            targets = ", ".join(t.replace("pipeline.", "") + ("" if level else "*") for t, level in edges[module])
            print(f"{kind(module):7} {module:40} {lines[module]:5d}  {targets}")
        package = {m: n for m, n in lines.items() if kind(m) != "script"}
        inner = sum(not level for targets in edges.values() for _, level in targets)
        print(f"{len(package)} modules, {sum(package.values())} lines, largest {max(package.values())}; "
              f"{len(lines) - len(package)} scripts; {inner} edgepick imports inside functions (*)")
    found_cycles, upward = cycles(edges), stage_imports(edges)
    for cycle in found_cycles:
        print("cycle: " + " -> ".join(cycle))
    for importer, pairs in upward.items():
        for module, target in pairs:
            print(f"{importer} imports a stage: {module} -> {target}")
    print(f"cycles: {len(found_cycles)}; library -> stage: {len(upward['library'])}; "
          f"stage -> stage: {len(upward['stage'])}; script -> stage: {len(upward['script'])}")
    return 1 if found_cycles or any(upward.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
