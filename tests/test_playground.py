"""The playground (src/playground): its computations, and its page through Gradio's own API client
against a real server on 127.0.0.1, checked against the model itself.

The server runs in this process on the shared tiny training run (conftest.tiny_run); a second copy
of the model, loaded from the same checkpoint, computes the expected values.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from src.model.sampling import sample_next_token
from src.playground import build_app, launch_app, main, serve
from src.playground.app import ALL_HEADS, default_prompt, markdown_text, probability_bucket
from src.playground.core import (
    MAX_NEW_TOKENS,
    PlaygroundInputError,
    Settings,
    check_prompt,
    check_settings,
    read_run_files,
    run_dir_of,
    sampling_distribution,
    whole_number,
)
from src.tokenizer import CharTokenizer
from src.training.checkpoints import load_model
from tests.conftest import TINY_RUN_SHAPE, wait_until_serving

# Gradio's queue (in the server threads) trips over deprecations of pandas 3; not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

PROMPT = "The cat"  # every character occurs in conftest.make_story, so the tiny run's tokenizer knows it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the computations, without a server -----------------------------------------------------------


def test_sampling_distribution_is_what_sample_next_token_draws_from():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    settings = Settings(temperature=0.8, top_k=4, top_p=0.9, max_new_tokens=1, seed=0)
    expected = sampling_distribution(logits, settings)
    draws = sample_next_token(logits.repeat(40_000, 1), 0.8, 4, 0.9, torch.Generator().manual_seed(0))  # (N, 1)
    frequencies = torch.bincount(draws[:, 0], minlength=6).float() / draws.shape[0]
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.01)
    assert expected[4:].sum() == 0  # outside the top 4
    assert (expected > 0).sum() < 4  # top-p 0.9 removed at least one more


def test_sampling_distribution_greedy_is_one_hot_on_the_argmax():
    probabilities = sampling_distribution(torch.tensor([0.1, 3.0, 2.9]), Settings(0.0, None, None, 1, 0))
    assert probabilities.tolist() == [0.0, 1.0, 0.0]


def test_check_prompt_crops_from_the_left_and_refuses_bad_prompts():
    tokenizer = CharTokenizer.train("hello world", max_vocab_size=20)
    prompt = check_prompt(tokenizer, "hello world", block_size=4)
    assert prompt.ids == tokenizer.encode("orld") and prompt.dropped == 7
    assert "die ersten 7 Tokens" in prompt.crop_note(4)
    assert check_prompt(tokenizer, "hello", block_size=8).dropped == 0
    for bad, message in (("", "leer"), ("hex?", "'x', '?'"), ("he\ud800", "kein gültiges Unicode"),
                         ("h" * 20_001, "zu lang"), (None, "leer")):
        with pytest.raises(PlaygroundInputError, match=message):
            check_prompt(tokenizer, bad, block_size=8)


def test_check_settings_off_values_and_ranges():
    settings = check_settings(0.7, 0, 1.0, 12.0, 3.0, vocab_size=50)  # sliders deliver floats
    assert settings == Settings(0.7, None, None, 12, 3)
    assert check_settings(0, 5, 0.5, 1, 0, vocab_size=50) == Settings(0.0, 5, 0.5, 1, 0)
    for args, knob in (((-0.1, 0, 1, 1, 0), "Temperatur"), ((1, 51, 1, 1, 0), "top-k"), ((1, 2.5, 1, 1, 0), "top-k"),
                       ((1, 0, 0, 1, 0), "top-p"), ((1, 0, 1.5, 1, 0), "top-p"), ((1, 0, 1, 0, 0), "Anzahl"),
                       ((1, 0, 1, MAX_NEW_TOKENS + 1, 0), "Anzahl"), ((1, 0, 1, 1, -1), "Seed"),
                       ((1, 0, 1, 1, "7"), "Seed"), ((float("nan"), 0, 1, 1, 0), "Temperatur")):
        with pytest.raises(PlaygroundInputError, match=knob):
            check_settings(*args, vocab_size=50)


def test_run_dir_of(tmp_path):
    assert run_dir_of(tmp_path) is None  # a folder without checkpoints/, e.g. a Hugging Face export
    (tmp_path / "checkpoints").mkdir()
    assert run_dir_of(tmp_path) == tmp_path
    assert run_dir_of(tmp_path / "checkpoints" / "best.pt") == tmp_path
    assert run_dir_of(tmp_path / "model.pt") is None
    assert run_dir_of(tmp_path / "model.safetensors") is None


def test_read_run_files_skips_a_half_written_metrics_line(tmp_path):
    rows = [{"step": 1, "train/loss": 3.0, "lr": 1e-3}, {"step": 2, "val/loss": 2.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "tra',
                                            encoding="utf-8")
    (tmp_path / "samples.md").write_text("## Step 1\n\nabc\n" + "## Step 2\n\n" + "x" * 100, encoding="utf-8")
    files = read_run_files(tmp_path, max_sample_chars=50)
    assert files.metrics == rows
    assert files.config is None
    assert files.samples.startswith("*(ältere Samples ausgelassen)*") and "## Step 1" not in files.samples


def test_whole_number_and_markdown_text():
    assert [whole_number(v) for v in (5.0, 5, 2.5, True, "5", float("inf"), float("nan"))] == [
        5, 5, None, None, None, None, None]
    assert markdown_text("<unk> *a*") == "&lt;unk&gt; \\*a\\*"
    assert markdown_text("a_b `c` [d]") == "a\\_b \\`c\\` \\[d\\]"


def test_probability_bucket_and_default_prompt():
    assert [probability_bucket(p) for p in (1.0, 0.5, 0.3, 0.05, 0.01, 0.0)] == [
        "≥ 50 %", "≥ 50 %", "20–50 %", "5–20 %", "1–5 %", "< 1 %"]
    assert default_prompt(CharTokenizer.train("The end", 20)) == "The "
    assert default_prompt(CharTokenizer.train("xyz", 20)) == ""


# --- the page, through the API client --------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_run):
    model, tokenizer = load_model(tiny_run)
    demo = build_app(model, tokenizer, run_dir=tiny_run, checkpoint_label="tiny")
    url = launch_app(demo, "127.0.0.1", free_port())
    reference, _ = load_model(tiny_run)  # the test's own copy: the server's model runs in other threads
    yield SimpleNamespace(url=url, model=reference, tokenizer=tokenizer, run=tiny_run)
    demo.close()


@pytest.fixture
def client(server) -> Client:
    return Client(server.url, verbose=False)  # a fresh session (its own gr.State) per test


@pytest.fixture(scope="module")
def shared_client(server) -> Client:
    """One session for the tests that keep no state between their calls (connecting costs ~0.3 s)."""
    return Client(server.url, verbose=False)


def write(client: Client, prompt: str = PROMPT, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
          n_tokens: int = 20, seed: int = 1) -> SimpleNamespace:
    outputs = client.predict(prompt, temperature, top_k, top_p, n_tokens, seed, api_name="/schreiben")
    text, highlighted, status, step, plot, table, details = outputs
    return SimpleNamespace(text=text, highlighted=highlighted, status=status, step=step, plot=plot,
                           table=table, details=details)


def rows(table: dict) -> list[dict]:
    return [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]


def expected_ids(server, prompt_ids: list[int], n: int, **sampling) -> list[int]:
    idx = torch.tensor([prompt_ids])
    out = server.model.generate(idx, n, **sampling)
    return out[0, len(prompt_ids):].tolist()


def test_same_seed_same_text_other_seed_other_text(client):
    first, again, other = write(client, seed=5), write(client, seed=5), write(client, seed=6)
    assert first.text == again.text and first.details["generated_ids"] == again.details["generated_ids"]
    assert first.details["generated_ids"] != other.details["generated_ids"]
    assert first.text.startswith(PROMPT) and len(first.details["generated_ids"]) == 20


def test_tokens_are_those_of_model_generate_with_a_seeded_generator(server, client):
    result = write(client, temperature=0.9, top_k=5, top_p=0.9, n_tokens=25, seed=3)
    ids = server.tokenizer.encode(PROMPT)
    assert result.details["prompt_ids"] == ids
    assert result.details["generated_ids"] == expected_ids(
        server, ids, 25, temperature=0.9, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(3))


def test_greedy_equals_model_generate_at_temperature_zero(server, client):
    result = write(client, temperature=0, n_tokens=30, seed=123)
    ids = server.tokenizer.encode(PROMPT)
    greedy = expected_ids(server, ids, 30, temperature=0)
    assert result.details["generated_ids"] == greedy
    assert result.text == PROMPT + server.tokenizer.decode(greedy)
    assert "greedy" in result.status
    assert [seg["token"] for seg in result.highlighted] == [PROMPT] + [server.tokenizer.id_to_token(i) for i in greedy]
    chosen = [r for r in rows(result.table) if r["gewählt"]]
    assert len(chosen) == 1 and chosen[0]["#"] == 1 and chosen[0]["nachher"] == 1.0


def test_candidates_before_and_after_temperature_and_top_k(server, client):
    result = write(client, temperature=0.7, top_k=3, n_tokens=4, seed=2)
    first_step = client.predict(1, api_name="/schritt")[1]
    table = rows(first_step)
    # before: the model's softmax at the end of the prompt, computed here independently
    logits = server.model(torch.tensor([server.tokenizer.encode(PROMPT)]))[0][0, -1]  # (V,)
    p_model = torch.softmax(logits, dim=-1)
    top10 = torch.topk(p_model, 10)
    assert [r["id"] for r in table[:10]] == top10.indices.tolist()
    assert [r["vorher"] for r in table[:10]] == pytest.approx(top10.values.tolist(), abs=1e-4)
    # after: temperature 0.7 on the three best logits only
    best3 = torch.topk(logits, 3).indices
    p_after = torch.softmax(logits[best3] / 0.7, dim=-1)
    after = {r["id"]: r["nachher"] for r in table}
    assert [after[i] for i in best3.tolist()] == pytest.approx(p_after.tolist(), abs=1e-4)
    assert sum(1 for p in after.values() if p > 0) == 3
    chosen = [r for r in table if r["gewählt"]]
    assert len(chosen) == 1 and chosen[0]["id"] == result.details["generated_ids"][0] and chosen[0]["id"] in best3


def test_top_k_one_leaves_exactly_one_candidate_with_probability_one(client):
    result = write(client, temperature=1.3, top_k=1, n_tokens=5, seed=9)
    assert result.details["p_sampling"] == [1.0] * 5
    for step in range(1, 6):
        plot, table = client.predict(step, api_name="/schritt")
        after = [r["nachher"] for r in rows(table)]
        assert sorted(after, reverse=True)[:2] == [1.0, 0.0]
        winner = next(r for r in rows(table) if r["nachher"] == 1.0)
        assert winner["gewählt"] and winner["id"] == result.details["generated_ids"][step - 1]
        assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png;base64,")


def test_step_endpoint_needs_a_generation_and_a_step_in_range(client):
    with pytest.raises(AppError, match="Noch kein Text"):
        client.predict(1, api_name="/schritt")
    write(client, n_tokens=3)
    # The slider's own range check (Gradio's message) or ours: either way a message, not a crash.
    for bad, message in ((0, "less than minimum value 1"), (4, "greater than maximum value 3"), (1.5, "Schritt muss")):
        with pytest.raises(AppError, match=message):
            client.predict(bad, api_name="/schritt")
    assert rows(client.predict(3, api_name="/schritt")[1])


# Out-of-range knobs: the page's sliders clamp what a user types, so only an API client can send them;
# Gradio's range check on the slider answers first (in English), ours covers the rest.
@pytest.mark.parametrize(("args", "message"), [
    (("", 1.0, 0, 1.0, 5, 1), "Der Prompt ist leer"),
    (("The ☃", 1.0, 0, 1.0, 5, 1), "Diese Zeichen kennt der Tokenizer des Modells nicht: '☃'"),
    ((PROMPT, -1.0, 0, 1.0, 5, 1), "less than minimum value 0"),
    ((PROMPT, 1.0, 10_000, 1.0, 5, 1), "greater than maximum value 31"),
    ((PROMPT, 1.0, 2.5, 1.0, 5, 1), "top-k muss eine ganze Zahl"),
    ((PROMPT, 1.0, 0, 0.0, 5, 1), "less than minimum value 0.05"),
    ((PROMPT, 1.0, 0, 1.0, 0, 1), "less than minimum value 1"),
    ((PROMPT, 1.0, 0, 1.0, 5, -3), "less than minimum value 0"),
])
def test_bad_input_is_a_message_and_the_server_keeps_serving(shared_client, args, message):
    with pytest.raises(AppError, match=message):
        shared_client.predict(*args, api_name="/schreiben")
    assert len(write(shared_client, n_tokens=3).details["generated_ids"]) == 3


def test_overlong_prompt_is_cropped_from_the_left_with_a_note(server, client):
    prompt = "The cat sees the garden. " * 3  # 75 characters, block_size 32
    result = write(client, prompt=prompt, temperature=0, n_tokens=5)
    ids = server.tokenizer.encode(prompt)
    assert result.details["dropped_prompt_tokens"] == len(ids) - TINY_RUN_SHAPE["block_size"]
    assert result.details["prompt_ids"] == ids[-TINY_RUN_SHAPE["block_size"]:]
    assert "weggelassen" in result.status and result.text.startswith("… ")
    assert result.details["generated_ids"] == expected_ids(server, ids, 5, temperature=0)


def test_a_second_generation_while_one_runs_is_refused(server):
    first, second = Client(server.url, verbose=False), Client(server.url, verbose=False)
    args = (PROMPT, 1.0, 0, 1.0, MAX_NEW_TOKENS, 1)
    for _ in range(3):  # inconclusive only if the long generation ended before the second request came
        job = first.submit(*args, api_name="/schreiben")
        deadline = time.monotonic() + 30
        while not job.outputs() and time.monotonic() < deadline:  # streaming: it holds the model now
            time.sleep(0.01)
        try:
            second.predict(PROMPT, 1.0, 0, 1.0, 2, 1, api_name="/schreiben")
            outcome = "accepted"
        except AppError as err:
            outcome = str(err)
        first_was_done = job.done()
        job.result(timeout=60)
        if outcome != "accepted" or not first_was_done:
            break
    assert "läuft gerade schon eine Generierung" in outcome
    assert len(write(second, n_tokens=2).details["generated_ids"]) == 2  # free again afterwards


def test_attention_heat_map_follows_layer_and_head(server, client):
    def plot_of(layer, head):
        plot, highlighted, note, patterns, query = client.predict(PROMPT, layer, head, api_name="/attention")
        return plot["plot"], highlighted, note, patterns, query

    layer0, highlighted, note, patterns, query = plot_of(0, 0)
    assert layer0.startswith("data:image/png;base64,")
    assert len({layer0, plot_of(1, 0)[0], plot_of(0, 1)[0], plot_of(0, ALL_HEADS)[0]}) == 4
    assert len(patterns["data"]) == TINY_RUN_SHAPE["n_layer"] * TINY_RUN_SHAPE["n_head"]
    assert "Muster" in note and query["value"] == len(PROMPT) - 1
    # the last token's row of layer 0, head 0, relative to its largest weight
    maps = server.model.attention_maps(torch.tensor([server.tokenizer.encode(PROMPT)]))  # (n_layer, B, nh, T, T)
    row = maps[0, 0, 0, -1]
    assert [seg["class_or_confidence"] for seg in highlighted] == pytest.approx((row / row.max()).tolist(), abs=1e-3)
    # choosing another query token: only it and the tokens before it are coloured
    _, highlighted, note = client.predict(1, 1, 2, api_name="/attention_anzeigen")
    scores = [seg["class_or_confidence"] for seg in highlighted]
    row = maps[1, 0, 1, 2, :3]
    assert scores[:3] == pytest.approx((row / row.max()).tolist(), abs=1e-3) and scores[3:] == [None] * 4
    assert note.startswith("**Token 2 'e'**")
    with pytest.raises(AppError, match="not in the list of choices"):  # the dropdown's own check
        client.predict(9, 0, 0, api_name="/attention_anzeigen")
    with pytest.raises(AppError, match="leer"):
        client.predict("", 0, 0, api_name="/attention")


def test_inside_shows_the_forward_pass_and_surprisal(server, shared_client):
    client = shared_client
    summary, stages, next_tokens, surprisal = client.predict(PROMPT, api_name="/innenleben")
    T, V = len(PROMPT), server.tokenizer.vocab_size
    by_name = {r["Stufe"]: r for r in rows(stages)}
    assert by_name["logits"]["Form"] == str((1, T, V))
    assert by_name["token ids"]["erste Werte"].startswith(", ".join(str(i) for i in server.tokenizer.encode(PROMPT)[:4]))
    logits = server.model(torch.tensor([server.tokenizer.encode(PROMPT)]))[0][0, -1]
    top = torch.topk(torch.softmax(logits, dim=-1), 5)
    assert [r["id"] for r in rows(next_tokens)] == top.indices.tolist()
    assert [r["p"] for r in rows(next_tokens)] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert surprisal["plot"].startswith("data:image/png;base64,") and f"{T} Tokens" in summary
    summary, _, _, surprisal = client.predict("T", api_name="/innenleben")  # one token: no surprisal
    assert surprisal is None and "mindestens 2 Tokens" in summary


def test_training_tab_reads_the_run(server, shared_client):
    plot, note, config, samples = shared_client.predict(api_name="/training")
    assert plot["plot"].startswith("data:image/png;base64,")
    assert config == json.loads((server.run / "config.json").read_text(encoding="utf-8"))
    assert samples.strip() == (server.run / "samples.md").read_text(encoding="utf-8").strip()
    assert "## Step" in samples
    assert markdown_text(str(server.run)) in note


def test_no_request_can_read_files(server):
    for path in (server.run / "config.json", server.run / "checkpoints" / "best.pt", Path("/etc/passwd")):
        for route in (f"gradio_api/file={path}", f"file={path}"):
            response = httpx.get(server.url + route, timeout=10)
            assert response.status_code in (403, 404), (route, response.status_code)
            assert b"tokenizer" not in response.content and b"root:" not in response.content


def test_page_is_served_without_links_to_the_internet(server):
    html = httpx.get(server.url, timeout=10).text
    assert "Spielwiese" in html
    assert "fonts.googleapis" not in html and "cdn." not in html


# --- the command line ---------------------------------------------------------------------------


def test_main_bad_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    garbage = tmp_path / "broken.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.pt" in err and err.count("\n") == 1


def test_main_port_in_use_is_one_line_and_exit_2(tiny_run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--checkpoint", str(tiny_run), "--port", str(port), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f":{port}" in err and "--port" in err


def test_serve_prints_the_url_and_stops_cleanly_on_sigterm(tiny_run, capsys):
    """In this process (Ctrl-C, the same handler, is tested on a subprocess in test_playground_browser)."""

    class NotHandled(Exception):
        pass

    def fallback(*_):  # reached only if serve() did not install its own handler
        raise NotHandled

    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    def stop_when_serving() -> None:
        wait_until_serving(url)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, fallback)
    try:
        threading.Thread(target=stop_when_serving, daemon=True).start()
        assert serve(str(tiny_run), "127.0.0.1", port, device="cpu") == 0
        assert signal.getsignal(signal.SIGTERM) is fallback  # serve() put the previous handler back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert f"running at {url}" in capsys.readouterr().out
    with pytest.raises(httpx.ConnectError):  # the server is closed
        httpx.get(url, timeout=2)
