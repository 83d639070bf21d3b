"""The project installs as one package: pins agree, entry points exist, nothing edits sys.path, and
a benchmark runs from outside the repository with no PYTHONPATH (the editable install finds it).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_requirements_txt_pins_the_same_core_as_pyproject():
    # requirements.txt is what a Hugging Face Space installs; pyproject.toml is what `make install` does
    assert sorted(requirement_lines(REPO_ROOT / "requirements.txt")) == sorted(PYPROJECT["project"]["dependencies"])


def test_console_scripts_name_functions_that_exist():
    for name, target in PYPROJECT["project"]["scripts"].items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_no_code_outside_tests_edits_sys_path():
    offenders = [str(path.relative_to(REPO_ROOT)) for path in REPO_ROOT.rglob("*.py")
                 if not {".venv", "tests", "build"} & set(path.relative_to(REPO_ROOT).parts)
                 and re.search(r"sys\.path\.(insert|append)|sys\.path\s*[+]?=", path.read_text())]
    assert offenders == []


def test_a_benchmark_runs_from_elsewhere_without_pythonpath(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "token_overhead.py"), "--help"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout
