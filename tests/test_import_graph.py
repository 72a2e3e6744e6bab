"""The package's shape (docs/design.md, "Layout"), checked by scripts/import_graph.py: no import cycle, no stage
imported by a library, another stage, a study or a script, no module far over 500 lines."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)


def test_no_cycle_and_nothing_but_the_command_line_imports_a_stage():
    _, edges = import_graph.graph()
    assert import_graph.cycles(edges) == []
    assert import_graph.stage_imports(edges) == {"library": [], "stage": [], "script": []}


def test_the_checks_fail_on_a_cycle_and_on_a_stage_imported_by_a_library_a_stage_or_a_script():
    edges = {"pipeline.a": [("pipeline.b", True)], "pipeline.b": [("pipeline.a", False)],
             "pipeline.c": [("pipeline.stages.distill", True)], "pipeline.stages.x": [("pipeline.stages.distill", True)],
             "scripts.study": [("pipeline.stages.benchmark", False)], "pipeline.cli": [("pipeline.stages.x", True)]}
    assert import_graph.cycles(edges) == [["pipeline.a", "pipeline.b", "pipeline.a"]]
    assert import_graph.stage_imports(edges) == {"library": [("pipeline.c", "pipeline.stages.distill")],
                                                 "stage": [("pipeline.stages.x", "pipeline.stages.distill")],
                                                 "script": [("scripts.study", "pipeline.stages.benchmark")]}


def test_script_exits_zero_on_this_tree():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "import_graph.py"), "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "cycles: 0; library -> stage: 0; stage -> stage: 0; script -> stage: 0" in result.stdout


def test_modules_stay_small():
    lines, _ = import_graph.graph()
    lines = {m: n for m, n in lines.items() if import_graph.kind(m) != "script"}
    assert max(lines.values()) <= 520, max(lines, key=lines.get)
