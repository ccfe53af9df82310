"""The code must run on Python 3.10 (Ubuntu 22.04's Python), although CI runs a newer one.

Two independent checks: every module parses with the 3.10 grammar (`ast.parse(feature_version=...)`),
and vermin finds no standard-library module, function or syntax newer than 3.10 (e.g. `tomllib`,
which arrived in 3.11 and is imported here only behind a version check).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINIMUM = (3, 10)
CHECKED = ("src", "tests", "benchmarks")


def python_files() -> list[Path]:
    return sorted(p for folder in CHECKED for p in (ROOT / folder).rglob("*.py"))


def test_pyproject_declares_the_minimum_version():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'requires-python = ">={MINIMUM[0]}.{MINIMUM[1]}"' in text


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_parses_with_the_minimum_grammar(path: Path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=MINIMUM)


def test_no_feature_newer_than_the_minimum():
    vermin = shutil.which("vermin") or shutil.which("vermin", path=str(Path(sys.executable).parent))
    if vermin is None:
        pytest.skip("vermin is not installed (pip install -r requirements-dev.txt)")
    target = f"--target={MINIMUM[0]}.{MINIMUM[1]}-"
    result = subprocess.run([vermin, target, "--violations", "--no-tips", *CHECKED], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
