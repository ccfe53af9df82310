"""The benchmark scripts stay runnable: the GPU script's syntax, and model_bench's training tables on a
tiny shape (CI has no GPU; `bash benchmarks/gpu_check.sh --device cpu` is the full dry run)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import REPO_ROOT


def test_gpu_check_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(REPO_ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_model_bench_training_tables_on_a_tiny_shape(capsys):
    pytest.importorskip("transformers")
    from benchmarks.model_bench import main

    assert main(["--device", "cpu", "--preset", "tiny", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
                 "--block-size", "16", "--batch-size", "2", "--repeats", "1", "--steps", "1", "--compile", "no",
                 "--skip-generation", "--lm-head-padding"]) == 0
    out = capsys.readouterr().out
    assert "max |difference| 0.0e+00 (sdpa)" in out  # the same model as HF's, so speed is all that differs
    for row in ("fp32 vs fp32", "bf16 autocast vs bf16 autocast", "ours --dtype auto"):
        assert re.search(rf"^\| {re.escape(row)}.* \| [\d,]+ \| [\d,]+ \| \d+\.\d\dx \|", out, flags=re.MULTILINE), row
    assert "ours bf16 + torch.compile vs HF bf16 eager | skipped" in out
    assert re.search(r"^\| V padded to 128, bf16 \| [\d,]+ \| [\d.]+ \| \d+\.\d\dx \|$", out, flags=re.MULTILINE)
