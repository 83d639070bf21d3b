"""Size limits outside tests: no function longer than 100 lines, no module longer than 600.

A function that does not fit on a screen is several; a module past 600 lines holds several roles.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("softrepa", "editing", "evaluation", "shapes", "data_prep", "app", "benchmarks")
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 600


def source_files() -> list[Path]:
    files = [path for name in SOURCE_DIRS for path in sorted((REPO_ROOT / name).rglob("*.py"))]
    return files + [REPO_ROOT / "app.py"]


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


def test_no_function_is_longer_than_100_lines():
    assert [found for path in source_files() for found in long_functions(path)] == []


def test_no_module_is_longer_than_600_lines():
    lengths = {str(path.relative_to(REPO_ROOT)): len(path.read_text().splitlines()) for path in source_files()}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_the_function_check_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    module = tmp_path / "long.py"
    module.write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    assert long_functions(module) == ["long.py:1 long (101 lines)"]
