"""Where a run's time goes: steps, evaluations, start-up; the budget that keeps evaluation extras cheap."""

from __future__ import annotations

import json
import re
import time

import torch

from src.config import DataConfig, ModelConfig, TrainConfig
from src.main import main
from src.model import MiniTransformer
from src.training.callbacks import EXTRAS_SHARE, RunLogger, extras_due
from src.training.run_dir import RUN_FORMAT
from src.training.train_loop import build_optimizer
from src.training.trainer import TimeSplit
from tests.conftest import make_story


def test_extras_due_examples():
    assert extras_due(0.0, 0.0, last=False)  # the evaluation before the first step
    assert extras_due(5.0, 100.0, last=False, share=0.06)
    assert not extras_due(7.0, 100.0, last=False, share=0.06)
    assert extras_due(7.0, 117.0, last=False, share=0.06)
    assert extras_due(7.0, 100.0, last=True, share=0.06)  # the run's last evaluation always shows them
    assert 0 < EXTRAS_SHARE < 0.1


def test_time_split_line_states_the_share_of_evaluations():
    from src.cli.report import time_split_line

    timing = TimeSplit(steps_s=250.0, evals_s=25.0, evals=18, extras=18)
    assert time_split_line(timing, 3.14) == "Time: 4m10s steps, 25s in 18 evaluation(s) (9%), 3.1s start-up."
    some = time_split_line(TimeSplit(steps_s=90.0, evals_s=10.0, evals=5, extras=2, first_step_s=61.0), 2.0, True)
    assert "(10%)" in some and "at 2 of 5 evaluations" in some and "first step took 1m01s" in some


def _tiny_run(tmp_path, hook, max_steps=6, eval_interval=2):
    from src.dataset import TokenDataset, prepare_dataset
    from src.tokenizer_json import load_tokenizer
    from src.training.trainer import run_training

    text_file = tmp_path / "story.txt"
    text_file.write_text(make_story(n_paragraphs=20), encoding="utf-8")
    prepared = prepare_dataset(DataConfig(input=(str(text_file),), data_dir=tmp_path / "data"), show_progress=False)
    tokenizer = load_tokenizer(prepared.path / "tokenizer.json")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"format": RUN_FORMAT}), encoding="utf-8")
    cfg = TrainConfig(batch_size=2, eval_batches=2, max_steps=max_steps, eval_interval=eval_interval,
                      sample_tokens=0)
    model = MiniTransformer(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2,
                                        n_embd=16))
    logger = RunLogger(run_dir, tokenizer, hparams={}, eval_hooks=[hook])
    return run_training(model, build_optimizer(model, cfg, torch.device("cpu")),
                        TokenDataset(prepared.path, "train", 8), TokenDataset(prepared.path, "val", 8), cfg,
                        device=torch.device("cpu"), callbacks=[logger])


def test_expensive_extras_are_skipped_between_the_first_and_the_last_evaluation(tmp_path):
    drawn: list[int] = []

    def slow_pictures(step, model, writer) -> None:  # like drawing attention figures: slow next to tiny steps
        drawn.append(step)
        time.sleep(0.3)

    history = _tiny_run(tmp_path, slow_pictures)
    timing = history.timing
    assert [e.step for e in history.evals] == [0, 2, 4, 6]
    assert drawn == [0, 6]  # before training (nothing spent yet) and at the end; 0.3 s >> 6% of a few ms
    assert timing.evals == 4 and timing.extras == 2
    assert timing.extras_s >= 0.6 and timing.evals_s >= timing.extras_s
    assert 0 < timing.steps_s < timing.evals_s and timing.first_step_s is not None


def test_final_report_splits_the_time(tmp_path, capsys):
    text_file = tmp_path / "story.txt"
    text_file.write_text(make_story(n_paragraphs=20), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["--train", "--input", str(text_file), "--data-dir", str(tmp_path / "data"), "--n-layer", "1",
                 "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--eval-batches",
                 "2", "--sample-tokens", "8", "--max-steps", "4", "--eval-interval", "2", "--quiet",
                 "--logdir", str(run)]) == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("Time: "))
    match = re.fullmatch(r"Time: ([\d.ms]+) steps, ([\d.ms]+) in (\d+) evaluation\(s\) \((\d+)%\), "
                         r"([\d.ms]+) start-up\..*", line)
    assert match, line
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert int(match.group(3)) == len([r for r in rows if "val/loss" in r]) == 3  # steps 0, 2, 4
    assert 0 <= int(match.group(4)) <= 100
