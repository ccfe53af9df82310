"""Every command the training prints for the user to run next works when pasted as is.

A run built from a --mirror folder into a --data-dir of its own, in a run folder whose name holds a
space, is interrupted; its "Resume with:" line is split like a shell splits it and run, then the
"Sample:" line of the finished run, and the "TensorBoard:" line is checked by TensorBoard's parser.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from src.cli.report import data_location_flags
from src.config import DataConfig
from src.main import main
from tests.conftest import make_story, write_gutenberg_mirror
from tests.test_training import StopAtStep

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-batches", "2", "--sample-tokens", "0", "--max-steps", "4", "--warmup-steps", "1", "--quiet",
        "--device", "cpu"]


@pytest.fixture(autouse=True)
def no_attention_images(monkeypatch):
    """The attention pictures of each evaluation are most of a tiny run's time and not what is tested here."""
    monkeypatch.setattr("src.cli.train.eval_hooks", lambda args, tokenizer: [])


def printed(err: str, label: str) -> list[str]:
    """The command after `label` (e.g. "Resume with:"), split as a POSIX shell would."""
    lines = [line for line in err.splitlines() if line.startswith(label)]
    assert len(lines) == 1, err
    return shlex.split(lines[0].removeprefix(label))


def run_pasted(argv: list[str]) -> int:
    assert argv[:3] == ["python", "-m", "src.main"], argv
    return main(argv[3:])


def test_data_location_flags_docstring_example():
    assert data_location_flags(DataConfig(data_dir=Path("/data"), mirror="../gutenberg")) == [
        "--data-dir", "/data", "--mirror", "../gutenberg"]
    assert data_location_flags(DataConfig()) == []


def test_printed_commands_work_when_pasted(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINI_TRANSFORMER_MIRROR", raising=False)  # the mirror comes from the flag alone
    mirror = write_gutenberg_mirror(tmp_path / "my mirror", {11: make_story(n_paragraphs=8)})
    data, run = tmp_path / "my data", tmp_path / "runs" / "first try"
    code = main(["--train", "--books", "11", "--mirror", str(mirror), "--data-dir", str(data), *TINY,
                 "--logdir", str(run)], callbacks=[StopAtStep(2)])
    assert code == 130
    err = capsys.readouterr().err

    tensorboard = printed(err, "TensorBoard: ")
    assert tensorboard[:2] == ["tensorboard", "--logdir"]
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=tensorboard)  # its own parser accepts the line
    assert Path(board.flags.logdir) == run.parent and list(run.glob("events.out.tfevents.*"))

    resume = printed(err, "Resume with: ")
    assert resume[resume.index("--mirror") + 1] == str(mirror)  # without it, checking the books would download
    assert run_pasted(resume) == 0  # the run finishes
    sample = printed(capsys.readouterr().err, "Sample: ")
    assert run_pasted([*sample, "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert re.match(r"The .{5}", out, flags=re.DOTALL), out


def test_without_the_data_flags_the_resume_would_fail(tmp_path, capsys, monkeypatch):
    """What the test above guards against: the bare resume command is refused for such a run."""
    monkeypatch.delenv("MINI_TRANSFORMER_MIRROR", raising=False)
    mirror = write_gutenberg_mirror(tmp_path / "mirror", {11: make_story(n_paragraphs=8)})
    run = tmp_path / "run"
    assert main(["--train", "--books", "11", "--mirror", str(mirror), "--data-dir", str(tmp_path / "data"), *TINY,
                 "--logdir", str(run)], callbacks=[StopAtStep(2)]) == 130
    capsys.readouterr()
    assert main(["--train", "--resume", str(run), "--quiet"]) == 2
    assert "--data-dir" in capsys.readouterr().err
