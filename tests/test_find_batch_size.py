"""--find-batch-size: the sizes it tries, the suggestion's arithmetic, out-of-memory handling, and that it
trains nothing and writes no run directory."""

from __future__ import annotations

import re

import pytest
import torch

from src.cli.find_batch_size import HEADROOM, SizeResult, candidate_sizes, suggest, try_sizes
from src.main import main
from tests.conftest import make_story

OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError: torch >= 2.5


def test_candidate_sizes_double_up_to_the_effective_batch():
    assert candidate_sizes(1) == [1]
    assert candidate_sizes(8) == [1, 2, 4, 8]
    assert candidate_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_suggestion_keeps_the_effective_batch():
    fit = [SizeResult(s, 10 * s, 100.0) for s in (1, 2, 4, 8, 16)]
    assert suggest([*fit, SizeResult(32, None, None)], 32, None) == (16, 2)
    assert suggest([*fit, SizeResult(32, 320, 1.0)], 48, None) == (16, 3)  # 32 does not divide 48
    assert suggest(fit, 12, None) == (4, 3)  # 8 and 16 do not divide 12
    # 16 peaked at 160 bytes: above HEADROOM of a 170-byte device, so 8 it is
    assert 160 > HEADROOM * 170 >= 80 and suggest(fit, 32, 170) == (8, 4)
    assert suggest([SizeResult(1, None, None)], 32, None) is None  # not even one sequence fits


def test_out_of_memory_stops_the_search_and_the_smaller_sizes_remain(capsys):
    tried = []

    def measure(size: int) -> tuple[int, float]:
        tried.append(size)
        if size >= 8:  # what a 16 GB card says when the activations do not fit
            raise OOM("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 10**9 * size, 1000.0 * size

    results, why = try_sizes(candidate_sizes(32), measure)
    assert tried == [1, 2, 4, 8] and why == "8 did not fit (out of memory)"
    assert [r.peak_bytes is None for r in results] == [False, False, False, True]
    assert suggest(results, 32, None) == (4, 8)
    assert "| 8 | out of memory | - |" in capsys.readouterr().out


def test_a_real_error_that_is_not_out_of_memory_is_not_swallowed():
    def measure(size: int) -> tuple[int, float]:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        try_sizes([1, 2], measure)


def test_cli_tries_the_sizes_suggests_and_writes_no_run(tmp_path, monkeypatch, capsys):
    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=10), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # the default run directory would be ./runs/<date-time>
    code = main(["--train", "--find-batch-size", "--input", str(story), "--data-dir", str(tmp_path / "data"),
                 "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
                 "--grad-accum", "3", "--device", "cpu", "--dtype", "fp32", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.findall(r"^\| (\d+) \| [\d.]+ GB \| [\d,]+ \|$", out, flags=re.MULTILINE) == ["1", "2", "4", "8", "12"]
    batch, accum = map(int, re.search(r"Suggestion: --batch-size (\d+) --grad-accum (\d+)", out).groups())
    assert batch * accum == 12 and batch == 12  # all fit: the largest size that divides the effective batch
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "story.txt"]


def test_cli_refuses_find_batch_size_outside_a_new_training(tmp_path, capsys):
    assert main(["--generate", "--find-batch-size", "--checkpoint", str(tmp_path)]) == 2
    assert "--find-batch-size: only with --train" in capsys.readouterr().err
    assert main(["--train", "--find-batch-size", "--resume", str(tmp_path / "run")]) == 2
    assert "--find-batch-size: not with --resume" in capsys.readouterr().err
