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
                 "--skip-generation", "--lm-head-padding", "--peak-size", "128"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^fraction of the measured matmul peak \(128\^3 products.*\): fp32 [\d.]+ [kGMT]?FLOP/s: ours fp32 at "
                     r"\d+\.\d %; bf16 [\d.]+ [kGMT]?FLOP/s: ours bf16 at \d+\.\d %$", out, flags=re.MULTILINE), out
    assert "max |difference| 0.0e+00 (sdpa)" in out  # the same model as HF's, so speed is all that differs
    for row in ("fp32 vs fp32", "bf16 autocast vs bf16 autocast", "ours --dtype auto"):
        assert re.search(rf"^\| {re.escape(row)}.* \| [\d,]+ \| [\d,]+ \| \d+\.\d\dx \|", out, flags=re.MULTILINE), row
    assert "ours bf16 + torch.compile vs HF bf16 eager | skipped" in out
    assert re.search(r"^\| V padded to 128, bf16 \| [\d,]+ \| [\d.]+ \| \d+\.\d\dx \|$", out, flags=re.MULTILINE)


NANOGPT = REPO_ROOT.parent / "shared" / "anchors" / "nanoGPT"


@pytest.mark.slow
@pytest.mark.skipif(not (NANOGPT / "train.py").is_file(), reason="needs ../shared/anchors/nanoGPT (the reference code)")
def test_nanogpt_bench_runs_both_programs_and_evaluates_both_checkpoints_alike(tmp_path, shared_corpus, capsys):
    """A few steps of the side-by-side benchmark: both programs train in their own processes, and ONE
    evaluation measures both checkpoints on the same validation text, where two barely trained models
    are both near the uniform loss ln(V)."""
    import json
    import math

    from benchmarks.nanogpt_bench import main

    results = tmp_path / "results.json"
    assert main(["--steps", "3", "--eval-interval", "2", "--settings", "baby", "--dtypes", "fp32", "--books", "11",
                 "--mirror", str(shared_corpus), "--threads", "1", "--workdir", str(tmp_path / "work"),
                 "--json", str(results)]) == 0
    out = capsys.readouterr().out
    for program in ("ours fp32", "ours fp32 \\+ extras"):
        assert re.search(rf"^\| {program} \(fp32\) \| \d+\.\d\dx \| \d+\.\d\dx \| \d+\.\d\dx cost \| \d+\.\d\dx \| [+-]\d+\.\d\d % \|$",
                         out, flags=re.MULTILINE), out
    runs = {r["program"]: r for r in json.loads(results.read_text())}
    assert set(runs) == {"nanoGPT", "ours fp32", "ours fp32 + extras"}
    # nanoGPT's work (no samples, no pictures) vs our defaults: the extras are measured where they happen
    assert runs["ours fp32"]["extras_s"] == 0 < runs["ours fp32 + extras"]["extras_s"]
    for r in runs.values():
        assert r["steps"] >= 3 and r["evals"] >= 2 and 0 < r["eval_s"] < r["loop_s"] < r["wall_s"]
        assert 50 < r["peak_rss_mb"] < 4000  # torch alone maps more than 50 MB
        assert math.log(60) < r["loss"] < math.log(120) + 0.5, r  # ~80 characters: near ln(V) after 3 steps
