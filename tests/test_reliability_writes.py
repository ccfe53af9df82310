"""Reliability, round two (issue 19): every structured file is read with limits, nothing of the user's
is replaced, sampling is safe at any temperature, the playground serves only its own files, and the
loose ends (SIGTERM during --export, a --logdir the disk cannot encode).

Each test builds the hostile file or situation for real and checks: one readable line (exit 2, no
traceback), bounded time and memory, and every file we did not create byte for byte unchanged.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from src.fileio import StructuredFileError, read_json, read_jsonl, read_toml
from src.main import main
from src.model.sampling import next_token_probs, sample_next_token, scale_by_temperature
from tests.conftest import REPO_ROOT, make_story, wait_until_serving
from tests.test_cli import TINY, one_error_line
from tests.test_reliability import ENV, snapshot

TINY_TEMPERATURES = (1e-30, 1e-45, 5e-324)  # 1e-45 overflows float32 when dividing; 5e-324 is float64's smallest


# --- 6. sampling at any temperature -----------------------------------------------------------------


@pytest.mark.parametrize("temperature", TINY_TEMPERATURES)
def test_a_tiny_temperature_is_greedy_not_nan(temperature):
    logits = torch.tensor([[1.0, 3.0, 2.0, -50.0], [0.5, -2.0, 0.5, 0.0]])  # row 2: a tie for the best
    probs = next_token_probs(logits, temperature)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]]), rtol=0, atol=0)
    assert sample_next_token(logits[:1], temperature).item() == 1
    assert next_token_probs(logits, temperature, top_k=2, top_p=0.9)[0].argmax().item() == 1
    assert scale_by_temperature(logits, temperature)[0, 1].item() == 0.0  # the best token: exactly 0, never inf - inf


def test_scaling_by_the_temperature_keeps_the_distribution_of_ordinary_temperatures():
    logits = torch.randn(3, 50) * 4
    for temperature in (0.3, 1.0, 2.5):
        torch.testing.assert_close(torch.softmax(scale_by_temperature(logits, temperature), -1),
                                   torch.softmax(logits / temperature, -1), rtol=1e-5, atol=1e-7)


def test_a_tiny_temperature_generates_the_greedy_text_on_the_command_line(tiny_run, capsys):
    texts = {}
    for temperature in ("0", "1e-45", "1e-30"):
        assert main(["--generate", "--checkpoint", str(tiny_run), "--prompt", "The cat", "--temperature", temperature,
                     "--max-new-tokens", "20", "--device", "cpu"]) == 0
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        texts[temperature] = out
    assert texts["1e-45"] == texts["0"] == texts["1e-30"]


def test_a_tiny_temperature_in_the_playground_is_greedy(tiny_run):
    from src.playground.core import check_settings, sampling_distribution
    from src.training.checkpoints import load_model

    model, tokenizer = load_model(tiny_run)
    settings = check_settings(1e-45, 0, 1.0, 5, 1, tokenizer.vocab_size)  # the API takes what the slider cannot
    logits = torch.randn(tokenizer.vocab_size)
    probs = sampling_distribution(logits, settings)
    assert torch.isfinite(probs).all() and probs.max().item() == 1.0 and probs.argmax() == logits.argmax()


# --- 4. one bounded reader for JSON, TOML and JSONL -------------------------------------------------------


def test_the_reader_refuses_deep_nesting_a_fifo_a_folder_and_an_oversized_file_fast(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)  # the C parser would hit the recursion limit
    shallow_enough = tmp_path / "ok.json"
    shallow_enough.write_text("[" * 64 + "]" * 64)
    too_deep_for_us = tmp_path / "deeper.json"
    too_deep_for_us.write_text("[" * 65 + "]" * 65)  # parses fine in Python, but no file of ours nests so deep
    fifo = tmp_path / "config.json.fifo"
    os.mkfifo(fifo)  # nobody writes it: a plain open() would wait forever
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:  # sparse: 100 MB declared, nothing allocated, and never read
        handle.truncate(100 << 20)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("n_layer = [[[" + "[" * 5000 + "\n")
    started = time.monotonic()
    assert isinstance(read_json(shallow_enough), list)
    for path, message in ((deep, "nested more than 64 levels"), (too_deep_for_us, "nested more than 64 levels"),
                          (fifo, "not a regular file (a FIFO"), (tmp_path, "not a regular file (a folder)"),
                          (big, "more than the 64 MB"), (tmp_path / "missing.json", "no such file")):
        with pytest.raises(StructuredFileError) as info:
            read_json(path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value), info.value
        assert "\n" not in str(info.value)
    with pytest.raises(StructuredFileError, match=r"bad\.toml: not valid TOML"):
        read_toml(bad_toml)
    assert time.monotonic() - started < 10  # bounded: nothing read that the caps refuse


def test_read_json_accepts_a_byte_order_mark_and_names_the_place_of_damage(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'\xef\xbb\xbf{"n_layer": 2}')
    assert read_json(path) == {"n_layer": 2}
    path.write_text('{"n_layer": 2,\n "lr": }')
    with pytest.raises(StructuredFileError, match=r"config\.json: not valid JSON \(line 2, column 8"):
        read_json(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(StructuredFileError, match="not UTF-8 text"):
        read_json(path)


def test_read_jsonl_keeps_the_objects_and_counts_the_rest(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 2.5}\n[1, 2]\n5\n\n{"step": 2, "loss": 2.0}\n' + b"x" * 3000
                     + b'\n{"step": 3, "lo')
    lines = read_jsonl(path, max_line=1000)
    assert lines.rows == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}]
    assert lines.skipped == 4  # the list, the number, the overlong line, the half-written last line
    assert "skipped 4 line(s)" in lines.note(path) and str(path) in lines.note(path)


@pytest.mark.parametrize("content", ["[" * 100_000, '{"n_layer": ' + "[" * 10 + "2" + "]" * 10 + "}", "FIFO"])
def test_a_hostile_config_file_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "settings.json"
    if content == "FIFO":
        os.mkfifo(path)
    else:
        path.write_text(content)
    assert main(["--train", "--config", str(path), "--data-dir", str(tmp_path / "data"),
                 "--logdir", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --config: {path}: ")
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


@pytest.mark.slow  # reads the TensorBoard event files and draws every picture: ~10 s on a busy machine
def test_visualize_draws_the_curves_from_a_run_with_broken_metrics_lines(tmp_path, tiny_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + "[1, 2]\n7\n" + '{"step": 99, "tok')  # non-objects, a half line
    assert main(["--visualize", "--checkpoint", str(run), "--out", str(tmp_path / "pictures")]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "pictures" / "training_curves.png").is_file() and "training_curves.png" in out
    notes = [line for line in err.splitlines() if "skipped" in line]
    assert len(notes) == 1 and "skipped 3 line(s)" in notes[0] and "Traceback" not in err


def test_a_damaged_hf_config_json_is_one_line_naming_it(tmp_path, capsys):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2", "n_layer": ' + "[" * 5000 + "]" * 5000 + "}")
    (folder / "model.safetensors").write_bytes(b"")
    assert main(["--generate", "--checkpoint", str(folder), "--prompt", "a", "--device", "cpu"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(folder / "config.json") in line


# --- 2. nothing of the user's is deleted or replaced ------------------------------------------------------


def test_force_refuses_a_data_set_folder_that_holds_a_users_file(tmp_path, capsys):
    from src.cli.dataset import main as dataset_main

    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=20), encoding="utf-8")
    args = ["--input", str(story), "--data-dir", str(tmp_path / "data"), "--name", "mine", "--quiet"]
    assert dataset_main(args) == 0
    folder = tmp_path / "data" / "processed" / "mine"
    (folder / "notes.txt").write_text("what I found out about this data set\n")
    before = snapshot(tmp_path / "data")
    capsys.readouterr()
    assert dataset_main([*args, "--force"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "notes.txt" in line and "nothing was touched" in line
    assert snapshot(tmp_path / "data") == before
    (folder / "notes.txt").unlink()
    assert dataset_main([*args, "--force"]) == 0  # only our own files: --force rebuilds as before


def test_export_out_onto_a_users_file_is_refused_and_an_earlier_export_is_replaced(tmp_path, tiny_run, capsys):
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"my own model, not an export of mini_transformer")
    (tmp_path / "link.safetensors").symlink_to(target)
    (tmp_path / "folder.safetensors").mkdir()
    before = snapshot(tmp_path)
    for name in ("weights", "link", "folder"):
        assert main(["--export", "--checkpoint", str(tiny_run), "--out", str(tmp_path / f"{name}.safetensors")]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{name}.safetensors exists" in line and "left untouched" in line
    assert snapshot(tmp_path) == before
    ours = tmp_path / "ours.safetensors"
    assert main(["--export", "--checkpoint", str(tiny_run), "--out", str(ours)]) == 0
    assert main(["--export", "--checkpoint", str(tiny_run), "--out", str(ours)]) == 0  # ours: replaced


@pytest.mark.slow  # draws the pictures twice: ~10 s on a busy 2-core machine
def test_visualize_never_replaces_a_users_picture_of_the_same_name(tmp_path, tiny_run, capsys):
    checkpoint = tmp_path / "model.pt"  # outside its run: no training curves to draw, which keeps the test short
    shutil.copyfile(tiny_run / "checkpoints" / "last.pt", checkpoint)
    out = tmp_path / "pictures"
    out.mkdir()
    users = out / "embeddings.png"
    shutil.copyfile(REPO_ROOT / "docs" / "ARCHITECTURE.md", users)  # any bytes of the user's
    before = snapshot(out)
    assert main(["--visualize", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(users) in line and "was not written by --visualize" in line
    assert snapshot(out) == before  # not even the other pictures were written
    users.unlink()
    assert main(["--visualize", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    first = snapshot(out)
    assert main(["--visualize", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0  # ours: replaced
    assert set(snapshot(out)) == set(first)


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding `path` with the project's FileLock, as a training holds its run."""
    code = ("import sys, time\nfrom src.fileio import FileLock\n"
            f"lock = FileLock({str(path)!r}, 'the run').acquire()\nprint('locked', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow  # a subprocess holds the lock; --visualize draws every picture
@pytest.mark.parametrize("mode", [["--export"], ["--export", "--format", "hf", "--out", "RUN/hf"], ["--visualize"]])
def test_export_and_visualize_into_a_run_being_trained_are_refused(tmp_path, tiny_run, capsys, mode):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    holder = hold_lock(run / ".lock")
    try:
        args = [arg.replace("RUN", str(run)) for arg in mode]
        assert main([*args, "--checkpoint", str(run), "--device", "cpu"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"pid {holder.pid}" in line and "wait for the training to finish" in line
        assert snapshot(run) == {**before, ".lock": snapshot(run)[".lock"]}  # only the holder's lock file
    finally:
        holder.kill()
        holder.wait()
    assert main([*args, "--checkpoint", str(run), "--device", "cpu"]) == 0  # free again: written, lock released
    assert not (run / ".lock").exists()


# --- 8. loose ends: SIGTERM during --export, a --logdir that cannot be encoded ----------------------------


TERM_AFTER_WEIGHTS = """
import os, signal, sys
import src.hf_bridge as bridge
from src.main import main

write = bridge.atomic_write
def write_then_sigterm(*args, **kwargs):  # a real SIGTERM, at the worst moment: some files written, not all
    written = write(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return written
bridge.atomic_write = write_then_sigterm
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # subprocesses: several seconds
@pytest.mark.parametrize("earlier_export", [False, True])
def test_sigterm_in_the_middle_of_an_hf_export_leaves_no_partial_output(tmp_path, tiny_run, earlier_export):
    out = tmp_path / "exports" / "gpt"
    args = ["--export", "--checkpoint", str(tiny_run), "--format", "hf", "--out", str(out)]
    if earlier_export:  # of other weights than the checkpoint's, so that any replaced file would show
        from src.hf_bridge import export_hf
        from src.training.checkpoints import load_model

        model, tokenizer = load_model(tiny_run)
        torch.nn.init.normal_(model.lm_head.weight)
        export_hf(model, tokenizer, out, card={})
        (out / "my_notes.md").write_text("notes of the user's, kept\n")
    before = snapshot(tmp_path)
    result = subprocess.run([sys.executable, "-c", TERM_AFTER_WEIGHTS, *args], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 143, result.stderr
    assert "interrupted (SIGTERM)" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before  # no half export, no temporary folder; an earlier export unchanged


def test_a_logdir_that_cannot_be_encoded_makes_no_folder(tmp_path, capsys):
    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=20), encoding="utf-8")
    config = tmp_path / "settings.json"  # how a lone surrogate reaches us: "\\ud800" in a JSON file
    config.write_text('{"logdir": "' + str(tmp_path / "runs" / "new") + '/x\\ud800"}')
    before = snapshot(tmp_path)
    assert main(["--train", "--config", str(config), "--input", str(story), "--data-dir", str(tmp_path / "data"),
                 *TINY, "--max-steps", "1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --logdir: ") and "cannot be a file name here" in line
    assert snapshot(tmp_path) == before  # no runs/, no data/


# --- 7. the playground serves only its own files ------------------------------------------------------------


@pytest.mark.slow  # a real server: ~10 s
def test_the_playground_serves_nothing_from_gradios_shared_temp_folder(tiny_run, capsys):
    from src.playground import serve
    from src.playground.server import SHARED_GRADIO_TEMP
    from tests.test_playground import free_port

    SHARED_GRADIO_TEMP.mkdir(parents=True, exist_ok=True)
    planted = Path(tempfile.mkdtemp(dir=SHARED_GRADIO_TEMP)) / "secret.txt"  # another program's file
    planted.write_text("another program's secret\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    seen: dict = {}

    def probe_then_stop() -> None:
        try:
            wait_until_serving(url)
            private = Path(os.environ["GRADIO_TEMP_DIR"])
            seen["private"], seen["mode"] = private, stat.S_IMODE(private.stat().st_mode)
            own = private / "own.txt"  # a file in the server's own folder is served: the route works
            own.write_text("the playground's own file\n")
            for name, path in (("planted", planted), ("own", own)):
                seen[name] = httpx.get(f"{url}gradio_api/file={path}", timeout=10)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=probe_then_stop, daemon=True).start()
    try:
        assert serve(str(tiny_run), "127.0.0.1", port, device="cpu") == 0
    finally:
        shutil.rmtree(planted.parent, ignore_errors=True)
    assert seen["own"].status_code == 200 and b"own file" in seen["own"].content
    assert seen["planted"].status_code in (403, 404) and b"another program's" not in seen["planted"].content
    assert seen["mode"] == 0o700 and seen["private"] != SHARED_GRADIO_TEMP
    assert not seen["private"].exists()  # removed on exit
    assert "GRADIO_TEMP_DIR" not in os.environ or Path(os.environ["GRADIO_TEMP_DIR"]) != seen["private"]


@pytest.mark.parametrize(("host", "expected"), [("no-such-host.invalid", "not a host name or address"),
                                                ("10.255.255.1", "not an address of this machine"),
                                                ("", "not a host name or address")])
def test_a_bad_host_is_named_as_such(tiny_run, capsys, host, expected):
    from src.playground import main as playground_main

    assert playground_main(["--checkpoint", str(tiny_run), "--host", host, "--device", "cpu"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --host {host}") and expected in line and "port" not in line
