"""The structure rules of python/src (ARCHITECTURE.md, "Dependency rule").

* Imports: the contracts live in python/pyproject.toml ([tool.importlinter]); `lint-imports`
  reads them and the import graph of the whole package (function-level imports included).
* Size: no function (or method) longer than MAX_FUNCTION_LINES, from its ``def`` line to its last line.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / "python"
SRC = PYTHON / "src" / "llm_finetune"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_FUNCTION_LINES = 60


def lint_imports(project: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    assert LINT_IMPORTS.is_file(), (f"{LINT_IMPORTS} is missing: pip install -c python/constraints.txt "
                                    "-r python/requirements-test.txt (make test does)")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, capture_output=True, text=True, env=env,
                          timeout=300)


def test_import_contracts_are_kept():
    proc = lint_imports(PYTHON)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken." in proc.stdout, proc.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("core/volume.py", "from ..validate import rules", "cli above the rooms"),  # core imports the validator
    ("core/config.py", "from .. import cli", "cli above the rooms"),  # core imports the dispatcher
    ("validate/rules.py", "from ..trainer import args", "cli above the rooms"),  # the validator imports a room
    ("trainer/export.py", "from ..initializer import hf", "the rooms never import each other"),
    ("local/report.py", "from ..trainer.data.splits import load_splits", "the rooms never import each other"),
])
def test_a_broken_rule_is_reported(tmp_path, module, line, contract):
    """A copy of the package with one forbidden import (inside a function, as lazy imports are) fails."""
    project = tmp_path / "python"
    shutil.copytree(SRC, project / "src" / "llm_finetune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PYTHON / "pyproject.toml", project / "pyproject.toml")
    target = project / "src" / "llm_finetune" / module
    target.write_text(target.read_text() + f"\n\ndef _injected():\n    {line}  # noqa\n")
    proc = lint_imports(project, {**os.environ, "PYTHONPATH": str(project / "src")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{contract}" in proc.stdout and "BROKEN" in proc.stdout, proc.stdout
    importer = "llm_finetune." + module[:-3].replace("/", ".")
    assert importer in proc.stdout, proc.stdout


def long_functions(source: str, where: str = "") -> list[str]:
    """``where:line name (N lines)`` for every function in ``source`` longer than MAX_FUNCTION_LINES."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_over_60_lines():
    too_long = [f for path in sorted(SRC.rglob("*.py"))
                for f in long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(SRC)))]
    assert not too_long, "split these into named steps: " + ", ".join(too_long)


@pytest.mark.parametrize("body_lines, nested, expected", [(59, False, 0), (60, False, 1), (60, True, 2)])
def test_the_size_rule_counts_from_def_to_the_last_line(body_lines, nested, expected):
    """A function of 61 lines (def + 60) is reported; one of 60 is not; a long method or inner function too."""
    body = "".join(f"    x{i} = {i}\n" for i in range(body_lines))
    source = f"def f():\n{body}"
    if nested:
        source = "class C:\n" + "".join("    " + line + "\n" for line in source.splitlines())
        source += "    def g(self):\n" + "".join(f"        y{i} = {i}\n" for i in range(body_lines))
    assert len(long_functions(source)) == expected, long_functions(source)
