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
