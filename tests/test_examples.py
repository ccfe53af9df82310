"""examples/train_minimal.py, the learner's own training script, run as a user runs it: a real
subprocess on a small text. It must learn (the loss falls), print a sample, and refuse a bad file in
one line with exit code 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, make_story

SCRIPT = REPO_ROOT / "examples" / "train_minimal.py"


def run_script(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ)  # with conftest's OMP_NUM_THREADS=1
    env.pop("PYTHONPATH", None)  # the script finds src/ by itself, as when run from PyCharm or a shell
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.slow
def test_minimal_script_learns_and_prints_a_sample(tmp_path):
    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=40), encoding="utf-8")
    result = run_script(str(story), "--steps", "30", cwd=tmp_path)  # another folder: no reliance on the cwd
    assert result.returncode == 0, result.stderr
    losses = [float(x) for x in re.findall(r"^step \d+ loss ([\d.]+)", result.stdout, flags=re.MULTILINE)]
    assert len(losses) >= 5
    assert losses[-1] < losses[0] - 1.0  # from about ln(vocabulary) towards the text's statistics
    val = [float(x) for x in re.findall(r"^step \d+ val loss ([\d.]+)", result.stdout, flags=re.MULTILINE)]
    assert val[-1] < val[0] - 1.0
    sample = result.stdout.split("sample:\n", 1)[1]
    assert sample.startswith(story.read_text(encoding="utf-8")[:8]) and len(sample) > 100


@pytest.mark.parametrize("content", [None, b"\x93\xff binary"])
def test_minimal_script_refuses_a_bad_text_file_in_one_line(tmp_path, content):
    path = tmp_path / "text.txt"
    if content is not None:
        path.write_bytes(content)
    result = run_script(str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and str(path) in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
