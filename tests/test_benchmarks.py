"""benchmarks/: its README is what the scripts say, every script compiles, and none reaches into softprompt's
private names (benchmarks use the public API, so a refactor that keeps the API keeps them running)."""

import ast
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*/*.py")) + [BENCHMARKS / "common.py"]


def test_the_readme_is_drawn_from_the_scripts():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "readme.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_scripts_live_in_groups_and_compile():
    assert {p.name for p in BENCHMARKS.glob("*.py")} == {"common.py", "readme.py"}  # the rest sit in a group
    assert {p.parent.name for p in SCRIPTS if p.parent != BENCHMARKS} == {
        "training", "quality", "serving", "engines", "studies"}
    for script in SCRIPTS:
        compile(script.read_text(), str(script), "exec")


def test_benchmarks_import_no_private_softprompt_names():
    private = []
    for script in SCRIPTS:
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("softprompt"):
                private += [f"{script.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []
