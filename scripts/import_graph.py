#!/usr/bin/env python3
"""The package's shape: every module of ``pipeline/`` with its line count and the edgepick modules it imports
(at module level, and inside functions, marked ``*``), then the checks the layout promises: no import cycle and
no library importing a stage (``pipeline/stages/``). Exit status 1 when a check fails.

    python scripts/import_graph.py [--quiet]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
STAGES = "pipeline.stages"
ENTRY_POINTS = {"pipeline.cli", "pipeline.__main__"}  # the command line, above the stages


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
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
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
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


def library_to_stage(edges: dict[str, list[tuple[str, bool]]]) -> list[tuple[str, str]]:
    return [(m, t) for m, targets in edges.items() for t, _ in targets
            if t.startswith(STAGES) and not m.startswith(STAGES) and m not in ENTRY_POINTS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true", help="print only the checks")
    args = parser.parse_args()
    lines, edges = graph()
    if not args.quiet:
        for module in sorted(lines, key=lambda m: (m.startswith(STAGES), m)):
            kind = "stage  " if module.startswith(STAGES) and module != STAGES else "library"
            targets = ", ".join(t.replace("pipeline.", "") + ("" if level else "*") for t, level in edges[module])
            print(f"{kind} {module:34} {lines[module]:5d}  {targets}")
        inner = sum(not level for targets in edges.values() for _, level in targets)
        print(f"{len(lines)} modules, {sum(lines.values())} lines; largest {max(lines.values())}; "
              f"{inner} edgepick imports inside functions (*)")
    found_cycles, upward = cycles(edges), library_to_stage(edges)
    for cycle in found_cycles:
        print("cycle: " + " -> ".join(cycle))
    for module, target in upward:
        print(f"library imports a stage: {module} -> {target}")
    print(f"cycles: {len(found_cycles)}; library -> stage imports: {len(upward)}")
    return 1 if found_cycles or upward else 0


if __name__ == "__main__":
    sys.exit(main())
