"""What makes evaluations and steps cheaper must not change what a run writes or learns (issue 20)."""

from __future__ import annotations

import os

import torch

from src.training.callbacks import _link_into_place
from src.training.checkpoints import save_checkpoint


def _step(path) -> int:
    return int(torch.load(path, weights_only=True)["step"])


def test_best_pt_is_a_second_name_of_last_pt_and_keeps_its_state_when_last_pt_moves_on(tmp_path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(best, {"step": torch.tensor(1)})  # an older best.pt is replaced
    save_checkpoint(last, {"step": torch.tensor(2)})
    assert _link_into_place(last, best)
    assert os.path.samefile(last, best)  # one file, written once
    save_checkpoint(last, {"step": torch.tensor(3)})  # the next evaluation, without improvement
    assert _step(best) == 2 and _step(last) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary left behind


def test_without_a_source_file_nothing_is_linked_and_the_caller_writes_a_copy(tmp_path):
    assert not _link_into_place(tmp_path / "missing.pt", tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []


class CountingWindows(torch.utils.data.Dataset):
    """Windows of a random token array, counting how often a window is read."""

    def __init__(self, n_windows: int, block_size: int, vocab_size: int, seed: int) -> None:
        self.ids = torch.randint(vocab_size, (n_windows * block_size + 1,), generator=torch.Generator().manual_seed(seed))
        self.block_size, self.n_windows, self.reads = block_size, n_windows, 0

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        chunk = self.ids[i * self.block_size : (i + 1) * self.block_size + 1]  # (T+1,)
        return chunk[:-1], chunk[1:]


def test_a_run_reads_its_validation_sample_once_and_measures_the_same_loss():
    """Every evaluation measures the same fixed sample: the run reads its windows at the first one and
    keeps the batches; the losses are those of `estimate_loss`, which reads them each time."""
    from src.config import ModelConfig, TrainConfig
    from src.model import MiniTransformer
    from src.training.evaluation import estimate_loss, validation_sample
    from src.training.train_loop import build_optimizer
    from src.training.trainer import Callback, run_training

    torch.manual_seed(0)
    model = MiniTransformer(ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    config = TrainConfig(batch_size=4, max_steps=4, eval_interval=2, eval_batches=3, warmup_steps=1, epochs=1)
    train_set, val_set = CountingWindows(40, 8, 11, seed=1), CountingWindows(30, 8, 11, seed=2)
    losses: list[float] = []

    class Losses(Callback):
        def on_eval(self, ctx, record) -> None:
            losses.append(record.val_loss)

    history = run_training(model, build_optimizer(model, config, torch.device("cpu")), train_set, val_set, config,
                           device=torch.device("cpu"), callbacks=[Losses()])
    sample = validation_sample(len(val_set), config.eval_batches * config.batch_size, config.seed)
    assert [e.step for e in history.evals] == [0, 2, 4] and val_set.reads == len(sample) == 12
    assert losses[-1] == estimate_loss(model, val_set, sample, config.batch_size)
    assert len(set(losses)) == 3  # the weights changed between evaluations, the sample did not
