"""The code must run on Python 3.10 (Ubuntu 22.04's Python), although CI runs a newer one.

Two independent checks: every module parses with the 3.10 grammar (`ast.parse(feature_version=...)`),
and vermin finds no standard-library module, function or syntax newer than 3.10 (e.g. `tomllib`,
which arrived in 3.11 and is imported here only behind a version check).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINIMUM = (3, 10)
CHECKED = tuple(folder for folder in ("src", "tests", "benchmarks", "examples") if (ROOT / folder).is_dir())


def python_files() -> list[Path]:
    return sorted(p for folder in CHECKED for p in (ROOT / folder).rglob("*.py"))


def test_pyproject_declares_the_minimum_version():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'requires-python = ">={MINIMUM[0]}.{MINIMUM[1]}"' in text


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_parses_with_the_minimum_grammar(path: Path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=MINIMUM)


def run_vermin(*paths: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """vermin (requirements-dev.txt) on `paths`: exit code 0 when nothing needs more than the minimum.

    Where vermin is missing the test is skipped - except under CI (CI=true), where it must run.
    """
    if importlib.util.find_spec("vermin") is None:
        message = "vermin is not installed in this Python (pip install -r requirements-dev.txt)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI must run this check, not skip it")
        pytest.skip(message)
    target = f"--target={MINIMUM[0]}.{MINIMUM[1]}-"
    run = "import sys, vermin; sys.argv[0] = 'vermin'; sys.exit(vermin.main())"  # vermin has no __main__
    return subprocess.run([sys.executable, "-c", run, target, "--violations", "--no-tips", *paths],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_no_feature_newer_than_the_minimum():
    result = run_vermin(*CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_vermin_finds_a_newer_feature(tmp_path):
    """The check can fail: `import tomllib` needs 3.11, and `match` needs 3.10 (allowed)."""
    (tmp_path / "new.py").write_text("import tomllib\n", encoding="utf-8")
    (tmp_path / "ok.py").write_text("match 1:\n    case 1:\n        pass\n", encoding="utf-8")
    newer = run_vermin("new.py", cwd=tmp_path)
    assert newer.returncode != 0 and "tomllib" in newer.stdout + newer.stderr, newer.stdout + newer.stderr
    assert run_vermin("ok.py", cwd=tmp_path).returncode == 0
