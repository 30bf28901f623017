"""The code gates (docs/architecture.md): ruff's lint, import order and format, and mypy (strict on the boundary
values, the file format and the job events; checked everywhere else), over the package, tests and benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["neuron_explorer", "tests", "bench"]


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: the dev set-up (requirements-dev.txt) installs it")
    return found


def check(*argv: str) -> None:
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"


def test_ruff_lint_and_import_order():
    check(tool("ruff"), "check", *SOURCES)


def test_ruff_format():
    check(tool("ruff"), "format", "--check", *SOURCES)


def test_mypy():
    check(tool("mypy"))  # files and per-module strictness: pyproject.toml's [tool.mypy]
