"""`python -m src.main --experiment ablations` on a tiny text: the runs, results.json/results.md/curves.png,
reuse on a rerun, resume after an interruption, and one-line refusals (exit 2)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from src.cli.experiment import VARIANTS, abrupt_step, results_markdown
from src.main import main
from src.training.trainer import Callback
from tests.conftest import make_story

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"name", "run_dirs", "steps", "params", "val_loss", "val_loss_spread", "val_loss_causal", "diverged_at",
          "seconds", "sample"}
STEPS = 8


def experiment_argv(root: Path, logdir: Path, *variants: str, extra: tuple[str, ...] = ()) -> list[str]:
    return ["--experiment", "ablations", "--variants", *variants, "--input", str(root / "story.txt"),
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "8",
            "--max-steps", str(STEPS), "--eval-interval", "4", "--warmup-steps", "2", "--device", "cpu",
            "--data-dir", str(root / "data"), "--logdir", str(logdir), "--quiet", "--no-attention-images", *extra]


@pytest.fixture(scope="module")
def story_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ablation")
    (root / "story.txt").write_text(make_story(n_paragraphs=30), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def finished(story_root) -> Path:
    """One real experiment: baseline and no_mask, one seed each."""
    logdir = story_root / "runs"
    assert main(experiment_argv(story_root, logdir, "no_mask", "baseline")) == 0
    return logdir


@pytest.mark.slow
def test_the_experiment_writes_runs_results_and_curves(finished):
    results = json.loads((finished / "results.json").read_text(encoding="utf-8"))
    rows = results["variants"]
    assert [r["name"] for r in rows] == ["baseline", "no_mask"]  # the table's order, not the flag's
    assert all(set(r) == FIELDS for r in rows)
    assert results["settings"]["experiment"] == "ablations" and results["settings"]["seeds"] == [1337]
    by_name = {r["name"]: r for r in rows}
    for name, row in by_name.items():
        run = finished / name
        assert row["run_dirs"] == [str(run)] and (run / "checkpoints" / "last.pt").is_file()
        assert row["steps"] == STEPS and row["diverged_at"] is None and row["val_loss_spread"] == 0.0
        assert 0 < row["val_loss"] < 10 and row["sample"]
    assert by_name["baseline"]["val_loss_causal"] == by_name["baseline"]["val_loss"]
    assert by_name["no_mask"]["val_loss_causal"] != by_name["no_mask"]["val_loss"]  # re-measured with the mask
    assert by_name["baseline"]["params"] == by_name["no_mask"]["params"]  # the mask has no weights
    stored = json.loads((finished / "no_mask" / "config.json").read_text(encoding="utf-8"))
    assert stored["model"]["causal"] is False and stored["train"]["lr"] == 3e-3  # the experiment's default lr
    assert stored["model"]["dropout"] == 0.0  # the experiment's default, not the dataclass' 0.2
    table = (finished / "results.md").read_text(encoding="utf-8")
    assert table.count("\n| `") == 2 and "mit Maske" in table and "Was es zeigt" in table
    # The unigram floor, counted here by hand: -mean log p(val token), p from the training split's counts + 1
    import math
    from collections import Counter

    import numpy as np

    data = next((finished.parent / "data" / "processed").iterdir())
    train, val = (np.fromfile(data / f"{split}.bin", dtype=np.uint16).tolist() for split in ("train", "val"))
    counts, ids = Counter(train), range(max(train + val) + 1)
    total = sum(counts[i] + 1 for i in ids)
    expected = -sum(math.log((counts[t] + 1) / total) for t in val) / len(val)
    assert results["unigram_val_loss"] == pytest.approx(expected, abs=1e-4)
    assert f"erreicht {results['unigram_val_loss']:.3f}".replace(".", ",") in table
    assert (finished / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_every_variant_run_generates_evaluates_and_explains(finished, story_root, capsys):
    for name in ("baseline", "no_mask"):
        run = str(finished / name)
        assert main(["--generate", "--checkpoint", run, "--max-new-tokens", "10", "--prompt", "The"]) == 0
        assert main(["--evaluate", "--checkpoint", run, "--data-dir", str(story_root / "data"), "--quiet"]) == 0
        assert main(["--explain", "--checkpoint", run, "--prompt", "The"]) == 0
    capsys.readouterr()
    assert main(["--export", "--format", "hf", "--checkpoint", str(finished / "no_mask"),
                 "--out", str(finished.parent / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "causal=False" in err and "--format safetensors" in err
    assert not (finished.parent / "hf").exists()


@pytest.mark.slow
def test_switches_are_locked_on_resume_and_inherited_by_init_from(finished, story_root, tmp_path, capsys):
    assert main(["--train", "--resume", str(finished / "no_mask"), "--data-dir", str(story_root / "data"),
                 "--causal"]) == 2
    assert "--causal: cannot change causal from False to True when resuming" in capsys.readouterr().err
    tuned = tmp_path / "tuned"
    assert main(["--train", "--init-from", str(finished / "no_mask"), "--input", str(story_root / "story.txt"),
                 "--data-dir", str(tmp_path / "data"), "--max-steps", "1", "--logdir", str(tuned), "--quiet"]) == 0
    assert json.loads((tuned / "config.json").read_text(encoding="utf-8"))["model"]["causal"] is False


@pytest.mark.slow
def test_a_rerun_reuses_finished_variants(finished, story_root, capsys):
    metrics = {name: (finished / name / "metrics.jsonl").stat().st_mtime_ns for name in ("baseline", "no_mask")}
    before = json.loads((finished / "results.json").read_text(encoding="utf-8"))
    capsys.readouterr()
    assert main(experiment_argv(story_root, finished, "baseline", "no_mask")) == 0
    err = capsys.readouterr().err
    assert err.count("reused:") == 2 and "Training:" not in err
    assert {name: (finished / name / "metrics.jsonl").stat().st_mtime_ns for name in metrics} == metrics
    after = json.loads((finished / "results.json").read_text(encoding="utf-8"))
    assert after["variants"] == before["variants"]  # the same numbers, nothing trained again
    # Other settings in the same folder: refused, nothing retrained or overwritten.
    assert main(experiment_argv(story_root, finished, "baseline", extra=("--lr", "0.01"))) == 2
    assert "trained with other settings (lr 0.003 there, 0.01 now)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_diverged_variant_is_recorded_and_the_experiment_goes_on(story_root, tmp_path, capsys):
    logdir = tmp_path / "runs"
    argv = experiment_argv(story_root, logdir, "baseline", "no_layernorm", extra=("--lr", "1e30", "--warmup-steps", "0"))
    assert main(argv) == 0  # an absurd learning rate: the NaN guard stops each run, the experiment finishes
    rows = json.loads((logdir / "results.json").read_text(encoding="utf-8"))["variants"]
    assert [(r["name"], r["diverged_at"], r["val_loss"], r["steps"]) for r in rows] == [
        ("baseline", 2, None, 1), ("no_layernorm", 2, None, 1)]  # step 1 done, the loss of step 2 was inf
    assert "divergierte bei Schritt 2" in (logdir / "results.md").read_text(encoding="utf-8")
    assert main(argv) == 0 and capsys.readouterr().err.count("reused:") == 2  # not trained again


class StopAt(Callback):
    """Sends the run the same stop request as Ctrl-C at a given step of the n-th training run."""

    def __init__(self, run: int, step: int) -> None:
        self.run, self.step, self.started = run, step, 0

    def on_train_start(self, ctx) -> None:
        self.started += 1

    def on_step(self, ctx, record) -> None:
        if self.started == self.run and record.step == self.step:
            ctx.request_stop("interrupted", signal.SIGINT)


@pytest.mark.slow
def test_ctrl_c_keeps_finished_variants_and_a_rerun_resumes(story_root, tmp_path, capsys):
    logdir = tmp_path / "runs"
    assert main(experiment_argv(story_root, logdir, "baseline", "untied"), callbacks=[StopAt(2, 3)]) == 130
    assert (logdir / "baseline" / "ablation.json").is_file()
    assert not (logdir / "untied" / "ablation.json").exists() and not (logdir / "results.json").exists()
    assert "Run the same command again to continue" in capsys.readouterr().err
    assert main(experiment_argv(story_root, logdir, "baseline", "untied")) == 0
    err = capsys.readouterr().err
    assert "reused:" in err and "resuming the interrupted run" in err
    segments = json.loads((logdir / "untied" / "config.json").read_text(encoding="utf-8"))["segments"]
    assert [s["from_step"] for s in segments] == [0, 3]  # continued, not started again
    rows = json.loads((logdir / "results.json").read_text(encoding="utf-8"))["variants"]
    assert [r["steps"] for r in rows] == [STEPS, STEPS]


def test_unknown_variant_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "src.main", "--experiment", "ablations", "--variants", "no_maks"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: --variants: unknown variant 'no_maks' (did you mean no_mask?); choose from "
                                   + ", ".join(VARIANTS))


@pytest.mark.parametrize("argv, message", [
    (["--experiment", "ablation"], "argument --experiment: invalid choice: 'ablation'"),
    (["--experiment", "ablations", "--variants", "one_head", "--n-head", "1"], "one_head needs a model with several heads"),
    (["--experiment", "ablations", "--no-causal"], "--causal: --experiment sets the model's switches itself"),
    (["--experiment", "ablations", "--norm", "rmsnorm"], "--norm: --experiment sets the model's switches itself"),
    (["--experiment", "ablations", "--resume", "runs/x"], "--resume: only with --train"),
    (["--experiment", "ablations", "--init-from", "runs/x"], "--init-from: not with --experiment"),
    (["--experiment", "ablations", "--force"], "--force: not with --experiment (every variant must train on the same data"),
    (["--experiment", "ablations", "--seeds", "0"], "--seeds: give a number of seeds from 1 to 20, got 0"),
    (["--experiment", "ablations", "--train"], "choose exactly one mode"),
])
def test_meaningless_flags_are_refused(argv, message, tmp_path, capsys):
    assert main([*argv, "--logdir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "runs").exists()


def test_torchrun_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--experiment", "ablations"]) == 2
    assert "--experiment runs in one process" in capsys.readouterr().err


def test_a_foreign_logdir_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["--experiment", "ablations", "--logdir", str(tmp_path)]) == 2
    assert "holds 'notes.txt', which is not part of an ablation experiment" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_abrupt_step_finds_a_phase_change_only():
    # The measured shapes (--preset tiny, experiment defaults): baseline and no_mask, warm-up 50 steps.
    baseline = [(0, 4.754), (50, 2.55), (100, 2.39), (150, 2.29), (200, 2.21)]
    no_mask = [(0, 4.751), (50, 2.477), (100, 0.186)]
    assert abrupt_step(baseline, after=50) is None  # the fast first fall (warm-up) does not count
    assert abrupt_step(no_mask, after=50) == 100
    assert abrupt_step(no_mask, after=100) is None
    assert abrupt_step([(0, 4.7), (250, 2.2), (300, float("nan")), (350, 0.1)], after=50) is None


def test_the_table_explains_the_cheat_and_the_spread():
    def row(name: str, loss: float, spread: float, causal: float | None = None) -> dict:
        return {"name": name, "run_dirs": [], "steps": 1000, "params": 422_000, "val_loss": loss,
                "val_loss_spread": spread, "val_loss_causal": loss if causal is None else causal,
                "diverged_at": None, "seconds": 61.0, "sample": "the door | and\nthen"}

    rows = [row("baseline", 1.60, 0.02), row("no_mask", 0.10, 0.01, causal=4.00), row("rmsnorm", 1.61, 0.03),
            row("no_mlp", 1.90, 0.02), {**row("no_residual", 0.0, 0.0), "val_loss": None, "diverged_at": 420}]
    table = results_markdown(rows, {"command": "python -m src.main --experiment ablations", "date": "2026-12-05",
                                    "seeds": [1, 2]}, {"no_mask": [350, None]})
    lines = {line.split("`")[1]: line for line in table.splitlines() if line.startswith("| `")}
    assert "0,100 (mit Maske 4,000)" in lines["no_mask"] and "+2,400 zur Basis" in lines["no_mask"]
    assert "abrupt (bei Schritt 350)" in lines["no_mask"]
    assert "| +0,010 | nein |" in lines["rmsnorm"] and "kein Unterschied jenseits der Seed-Streuung" in lines["rmsnorm"]
    assert "| +0,300 | ja |" in lines["no_mlp"] and "schlechter um 0,300 nats" in lines["no_mlp"]
    assert "divergierte bei Schritt 420" in lines["no_residual"]
    assert "422.000" in lines["baseline"] and "„It was a the door / and then“" in lines["baseline"]


def test_a_variant_at_the_unigram_loss_is_called_stuck():
    """The verdict names a variant that learned only the letter frequencies - and only such a one."""
    from src.cli.experiment import verdict

    base = {"name": "baseline", "val_loss": 1.9, "val_loss_spread": 0.01, "val_loss_causal": 1.9, "diverged_at": None}
    stuck = {**base, "name": "post_norm", "val_loss": 3.09, "val_loss_causal": 3.09}
    learning = {**stuck, "val_loss": 2.5, "val_loss_causal": 2.5}
    assert "steckengeblieben" in verdict(stuck, base, 2, unigram=3.092)[2]
    assert "steckengeblieben" not in verdict(learning, base, 2, unigram=3.092)[2]
    assert "steckengeblieben" not in verdict(stuck, base, 2)[2]  # no reference given: no claim

