"""The web page: four tabs over one loaded model, built with Gradio Blocks (labels in German).

* Schreiben - text streams token by token, each token coloured by the probability the model gave
  it; clicking a token (or moving "Schritt") shows that step's top candidates before and after
  temperature / top-k / top-p.
* Attention - the heat-map of one layer and head (or all heads) for a prompt, what one chosen
  token attends to over the prompt's text, and a pattern label for every head.
* Innenleben - one forward pass as a table of stages (`explain_forward`) and the per-token
  surprisal picture.
* Training - only for a run directory: loss and learning-rate curves, config.json, samples.md.

Concurrency: Gradio runs every handler in a worker thread, so the server's event loop never waits
for the model. One lock (`model_lock`) lets one forward pass run at a time; a generation holds it
for one token, so the Attention and Innenleben tabs still answer while text streams. A second
generation while one runs is refused with a message (one at a time keeps the page honest about
speed). No component takes files or paths: a request can only read what the app was built with.

Why ~450 lines: the page's layout and its event wiring are read together; the logic behind each
handler lives in `src/playground/core.py` and `figures.py`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import torch

from src.playground.core import (
    MAX_NEW_TOKENS,
    MAX_SEED,
    PlaygroundInputError,
    Prompt,
    Settings,
    Step,
    attention_for_prompt,
    attention_row,
    check_prompt,
    check_settings,
    display_token,
    explain_forward,
    generate_steps,
    head_pattern_rows,
    plot_attention,
    plot_token_surprisal,
    read_run_files,
    stage_rows,
    unknown_characters,
    whole_number,
)
from src.playground.figures import candidate_figure, training_figure

DEFAULT_PROMPTS = ("Once upon a time", "Es war einmal", "The ", " ", "\n")  # the first the tokenizer can encode
STREAM_INTERVAL_S = 0.05  # at most ~20 page updates per second while streaming
ALL_HEADS = -1  # the head choice "alle Köpfe"
STATE_TTL_S = 3600
# Colour of a generated token by the probability the model gave it (bucket label, lower bound, colour).
PROBABILITY_BUCKETS = (("≥ 50 %", 0.5, "#b7e4c7"), ("20–50 %", 0.2, "#fff3b0"), ("5–20 %", 0.05, "#ffd08a"),
                       ("1–5 %", 0.01, "#ffab91"), ("< 1 %", 0.0, "#ff6b6b"))
CANDIDATE_HEADERS = ["#", "Token", "id", "vorher", "nachher", "gewählt"]
PATTERN_HEADERS = ["Layer", "Kopf", "vorheriges", "eigenes", "erstes", "Wortanfang", "Muster"]
STAGE_HEADERS = ["Block", "Stufe", "Form", "Form (Buchstaben)", "Mittelwert", "Std.", "erste Werte", "Bedeutung"]
# Tokens as tight coloured runs of text (Gradio's default spaces each token like a tag).
CSS = """
#generated .textfield, #attention-tokens .textfield { font-family: var(--font-mono); line-height: 1.9; }
#generated .token.highlighted, #attention-tokens .token.highlighted { margin: 0 1px 2px 0; padding: 0 1px; }
"""
BUSY_MESSAGE = ("Es läuft gerade schon eine Generierung (in diesem oder einem anderen Fenster). Warte, bis "
                "sie fertig ist, oder drücke »Stopp«, und versuche es dann noch einmal.")


def _user_error(err: PlaygroundInputError) -> gr.Error:
    """A message for the page (a popup), without a traceback in the server log."""
    return gr.Error(str(err), print_exception=False)


def markdown_text(text: str) -> str:
    """Text shown literally inside Markdown: ``markdown_text("<unk> *a*")`` -> ``"&lt;unk&gt; \\*a\\*"``.

    Tokens such as `<unk>` would otherwise vanish as unknown HTML tags, and `*` or `_` turn into emphasis.
    """
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join("\\" + ch if ch in "\\`*_[]#|~" else ch for ch in text)


def probability_bucket(p: float) -> str:
    """The colour class of a token: ``probability_bucket(0.3)`` -> ``"20–50 %"``."""
    return next(label for label, low, _ in PROBABILITY_BUCKETS if p >= low)


def _table(headers: list[str], rows: list[list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=headers)


class Playground:
    """The handlers behind the page, bound to one model and its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, run_dir: Path | None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.run_dir = run_dir
        self.block_size = model.config.block_size
        self.model_lock = threading.Lock()  # one forward pass at a time
        self.generating = threading.Lock()  # one generation at a time

    def _prompt(self, text: Any) -> Prompt:
        try:
            return check_prompt(self.tokenizer, text, self.block_size)
        except PlaygroundInputError as err:
            raise _user_error(err) from None

    # --- Schreiben ------------------------------------------------------------------------------

    def write(self, prompt: str, temperature: float, top_k: float, top_p: float, n_tokens: float,
              seed: float) -> Iterator[tuple]:
        """Stream the continuation; yields (text, highlighted, status, step, figure, table, details, state)."""
        checked = self._prompt(prompt)
        try:
            settings = check_settings(temperature, top_k, top_p, n_tokens, seed, self.tokenizer.vocab_size)
        except PlaygroundInputError as err:
            raise _user_error(err) from None
        if not self.generating.acquire(blocking=False):
            raise gr.Error(BUSY_MESSAGE, title="Beschäftigt", print_exception=False)
        try:
            yield from self._stream(checked, settings)
        finally:
            self.generating.release()

    def _stream(self, checked: Prompt, settings: Settings) -> Iterator[tuple]:
        notes = [checked.crop_note(self.block_size)] if checked.dropped else []
        if checked.dropped:
            gr.Warning(notes[0], title="Prompt gekürzt")
        notes.append(f"Einstellungen: {settings.describe()}.")
        shown_prompt = checked.text if not checked.dropped else "… " + self.tokenizer.decode(checked.ids)
        segments: list[tuple[str, str | None]] = [(shown_prompt, None)]
        steps: list[Step] = []
        # The first update clears the previous generation's step view, so that a stopped generation
        # never shows candidates that belong to another text; later updates leave those outputs alone.
        # (The step keeps its value: changing it would ask for a step of the cleared state.)
        extras = (gr.update(interactive=False), None, _table(CANDIDATE_HEADERS, []), None, None)
        last_yield = 0.0
        for step in generate_steps(self.model, self.tokenizer, checked.ids, settings, self.model_lock):
            steps.append(step)
            segments.append((step.token, probability_bucket(step.p_model)))
            if time.monotonic() - last_yield >= STREAM_INTERVAL_S:
                last_yield = time.monotonic()
                status = f"Schreibe … {len(steps)} / {settings.max_new_tokens} Tokens"
                yield (self._text(shown_prompt, steps), list(segments), status, *extras)
                extras = (gr.skip(),) * 5
        last = steps[-1]
        notes.append(f"Fertig: {len(steps)} Tokens. Klicke auf ein Token (oder wähle den Schritt), um die "
                     "Kandidaten dieses Schritts zu sehen.")
        details = {"prompt_ids": checked.ids, "dropped_prompt_tokens": checked.dropped,
                   "generated_ids": [s.token_id for s in steps], "p_model": [round(s.p_model, 6) for s in steps],
                   "p_sampling": [round(s.p_sampling, 6) for s in steps], "settings": asdict(settings)}
        state = {"steps": steps, "settings": settings}
        yield (self._text(shown_prompt, steps), list(segments), "\n\n".join(notes),
               # A slider needs minimum < maximum: with a single step it stays fixed at 1.
               gr.update(maximum=max(2, len(steps)), value=len(steps), interactive=len(steps) > 1),
               candidate_figure(last, settings), self._candidate_table(last), details, state)

    def _text(self, shown_prompt: str, steps: list[Step]) -> str:
        return shown_prompt + self.tokenizer.decode([s.token_id for s in steps])

    @staticmethod
    def _candidate_table(step: Step) -> pd.DataFrame:
        rows = [[rank, f"'{display_token(c.token)}'", c.token_id, round(c.p_model, 4), round(c.p_sampling, 4),
                 "✓" if c.token_id == step.token_id else ""] for rank, c in enumerate(step.candidates, 1)]
        return _table(CANDIDATE_HEADERS, rows)

    def show_step(self, state: dict | None, step_number: float):
        """The candidate chart and table of one step of the last generation."""
        if not state:
            raise gr.Error("Noch kein Text erzeugt: drücke erst »Schreiben«.", print_exception=False)
        steps: list[Step] = state["steps"]
        number = whole_number(step_number)
        if number is None or not 1 <= number <= len(steps):
            raise gr.Error(f"Schritt muss eine ganze Zahl von 1 bis {len(steps)} sein, nicht {step_number!r}.",
                           print_exception=False)
        step = steps[number - 1]
        return candidate_figure(step, state["settings"]), self._candidate_table(step)

    @staticmethod
    def select_token(state: dict | None, evt: gr.SelectData):
        """A click on a generated token selects its step (segment 0 is the prompt)."""
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not state or not isinstance(index, int) or not 1 <= index <= len(state["steps"]):
            return gr.skip()
        return index

    # --- Attention ------------------------------------------------------------------------------

    def attention(self, prompt: str, layer: float, head: float):
        """Compute the attention maps of `prompt` and render them for its last token (the query)."""
        checked = self._prompt(prompt)
        if checked.dropped:
            gr.Warning(checked.crop_note(self.block_size), title="Prompt gekürzt")
        with self.model_lock:
            weights, tokens = attention_for_prompt(self.model, self.tokenizer, prompt)  # (n_layer, nh, T, T)
        patterns = head_pattern_rows(weights, tokens) if len(tokens) >= 2 else []
        state = {"weights": weights, "tokens": tokens, "patterns": patterns, "note": checked.crop_note(self.block_size)}
        query = len(tokens) - 1
        figure, highlighted, note = self.render_attention(state, layer, head, query)
        choices = [(f"{i}: '{display_token(t)}'", i) for i, t in enumerate(tokens)]
        query_update = gr.update(choices=choices, value=query)
        pattern_table = _table(PATTERN_HEADERS, patterns)
        return figure, highlighted, note, pattern_table, query_update, state

    def render_attention(self, state: dict | None, layer: float, head: float, query: float | None):
        """Heat-map, highlighted prompt and note for one layer/head/query - no model call."""
        if not state:  # nothing computed yet (the page computes the default prompt when it loads)
            return gr.skip(), gr.skip(), gr.skip()
        weights, tokens = state["weights"], state["tokens"]
        n_layer, n_head, T = weights.shape[0], weights.shape[1], weights.shape[-1]
        layer = self._choice("Layer", layer, 0, n_layer - 1)
        head = self._choice("Kopf", head, ALL_HEADS, n_head - 1)
        query = T - 1 if query is None else self._choice("Token", query, 0, T - 1)
        head_or_all = None if head == ALL_HEADS else head
        figure = plot_attention(weights, tokens, layer, head_or_all)
        row = attention_row(weights, layer, head_or_all, query)  # query + 1 weights
        strongest = max(row)
        highlighted = [(tok, round(w / strongest, 3) if strongest > 0 else 0.0)
                       for tok, w in zip(tokens[: query + 1], row, strict=True)]
        highlighted += [(tok, None) for tok in tokens[query + 1:]]
        who = "Mittel über alle Köpfe" if head_or_all is None else f"Kopf {head}"
        top = sorted(range(len(row)), key=lambda i: -row[i])[:3]
        top_text = ", ".join(f"'{markdown_text(display_token(tokens[i]))}' ({i}) {row[i]:.2f}" for i in top)
        lines = [f"**Token {query} '{markdown_text(display_token(tokens[query]))}'** schaut in Layer {layer}, {who}, am meisten "
                 f"auf: {top_text}. Farbe relativ zum größten Gewicht ({strongest:.2f}); Tokens danach "
                 "sieht es nicht (kausale Maske)."]
        lines += self._pattern_lines(state["patterns"], layer, head_or_all)
        if state["note"]:
            lines.append(state["note"])
        return figure, highlighted, "\n\n".join(lines)

    @staticmethod
    def _choice(name: str, value: Any, low: int, high: int) -> int:
        number = whole_number(value)
        if number is None or not low <= number <= high:
            raise gr.Error(f"{name} muss eine ganze Zahl von {low} bis {high} sein, nicht {value!r}.",
                           print_exception=False)
        return number

    @staticmethod
    def _pattern_lines(patterns: list[list[Any]], layer: int, head: int | None) -> list[str]:
        if not patterns:
            return ["Muster der Köpfe: der Prompt braucht dafür mindestens 2 Tokens."]
        rows = [r for r in patterns if r[0] == layer and (head is None or r[1] == head)]
        return [f"Layer {r[0]}, Kopf {r[1]}: Muster »{r[6]}« (vorheriges {r[2]:.2f}, eigenes {r[3]:.2f}, "
                f"erstes {r[4]:.2f}, Wortanfang {r[5]:.2f})" for r in rows]

    @staticmethod
    def select_query(evt: gr.SelectData):
        """A click on a prompt token makes it the query."""
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return index if isinstance(index, int) else gr.skip()

    # --- Innenleben -----------------------------------------------------------------------------

    def inside(self, prompt: str):
        """explain_forward as tables, and the surprisal picture of the prompt."""
        checked = self._prompt(prompt)
        if checked.dropped:
            gr.Warning(checked.crop_note(self.block_size), title="Prompt gekürzt")
        with self.model_lock:
            explanation = explain_forward(self.model, self.tokenizer, prompt)
            # The same (cropped) tokens as the stages: token_surprisal reads the *first* block_size + 1.
            surprisal = (plot_token_surprisal(self.model, self.tokenizer, self.tokenizer.decode(checked.ids))
                         if len(checked.ids) >= 2 else None)
        shown = " ".join(f"[{display_token(t)}]" for t in explanation.tokens)
        summary = [f"**{len(explanation.tokens)} Tokens:** {markdown_text(shown)}",
                   f"**{explanation.total_parameters:,} Parameter.** Jede Zeile unten ist ein Zwischenergebnis "
                   "des Forward-Passes (B = Batch, T = Tokens, C = n_embd, nh = Köpfe, hs = Kopfbreite, "
                   "V = Vokabular)."]
        if checked.dropped:
            summary.append(checked.crop_note(self.block_size))
        if surprisal is None:
            summary.append("Für das Überraschungs-Bild braucht der Prompt mindestens 2 Tokens.")
        next_rows = [[rank, f"'{display_token(c.token)}'", c.token_id, round(c.probability, 4)]
                     for rank, c in enumerate(explanation.next_tokens, 1)]
        return ("\n\n".join(summary), _table(STAGE_HEADERS, stage_rows(explanation)),
                _table(["Rang", "Token", "id", "p"], next_rows), surprisal)

    # --- Training -------------------------------------------------------------------------------

    def training(self):
        """Re-read the run's files: (curves, note, config, samples)."""
        if self.run_dir is None:
            raise gr.Error("Dieser Checkpoint gehört zu keinem Run-Verzeichnis.", print_exception=False)
        files = read_run_files(self.run_dir)
        figure = training_figure(files.metrics)
        notes = [f"Run-Verzeichnis: {markdown_text(str(self.run_dir))}"]
        if figure is None:
            notes.append("metrics.jsonl fehlt oder enthält noch keine Werte.")
        if files.skipped:
            notes.append(f"{files.skipped} Zeile(n) in metrics.jsonl übersprungen (kein JSON-Objekt: beim Schreiben "
                         "abgebrochen oder von Hand geändert).")
        samples = files.samples if files.samples is not None else "*samples.md fehlt.*"
        return figure, "\n\n".join(notes), files.config or {}, samples


def default_prompt(tokenizer: Any) -> str:
    """The first of DEFAULT_PROMPTS made only of characters the tokenizer knows ("" if none is)."""
    return next((text for text in DEFAULT_PROMPTS if not unknown_characters(tokenizer, text)), "")


def _header(model: torch.nn.Module, tokenizer: Any, checkpoint_label: str) -> str:
    cfg = model.config
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return (f"## Spielwiese: {markdown_text(checkpoint_label)}\n{cfg.n_layer} Layer · {cfg.n_head} Köpfe · n_embd {cfg.n_embd} · "
            f"block_size {cfg.block_size} · Vokabular {cfg.vocab_size} ({tokenizer.kind}-Tokenizer) · "
            f"{n_params:,} Parameter · läuft auf {next(model.parameters()).device}")


def build_app(model: torch.nn.Module, tokenizer: Any, *, run_dir: Path | None, checkpoint_label: str) -> gr.Blocks:
    """The playground page for `model` (its queue configured; start it with `server.launch_app`).

    run_dir: the run directory the checkpoint came from (adds the Training tab), or None.
    """
    pg = Playground(model, tokenizer, Path(run_dir) if run_dir is not None else None)
    cfg = model.config
    colours = {label: colour for label, _, colour in PROBABILITY_BUCKETS}
    start_prompt = default_prompt(tokenizer)
    with gr.Blocks(title=f"Spielwiese: {checkpoint_label}", analytics_enabled=False) as demo:
        gr.Markdown(_header(model, tokenizer, checkpoint_label))
        # Per browser session; forgotten an hour after the last change (attention maps can be megabytes).
        steps_state = gr.State(None, time_to_live=STATE_TTL_S)
        attention_state = gr.State(None, time_to_live=STATE_TTL_S)
        with gr.Tabs():
            with gr.Tab("Schreiben", id="schreiben"):
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(start_prompt, lines=3, label="Prompt", elem_id="write-prompt")
                        with gr.Row():
                            write_button = gr.Button("Schreiben", variant="primary", elem_id="write-button")
                            stop_button = gr.Button("Stopp", elem_id="stop-button")
                    with gr.Column(scale=2):
                        temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="Temperatur",
                                                info="0 = greedy: immer das wahrscheinlichste Token",
                                                elem_id="temperature")
                        top_k = gr.Slider(0, cfg.vocab_size, value=0, step=1, label="top-k", info="0 = aus",
                                          elem_id="top-k")
                        top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p", info="1 = aus", elem_id="top-p")
                        n_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=200, step=1, label="Anzahl Tokens",
                                             elem_id="n-tokens")
                        seed = gr.Number(42, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seed")
                generated = gr.HighlightedText(label="Text (Farbe: Wahrscheinlichkeit des Tokens laut Modell)",
                                               color_map=colours, show_legend=True, show_inline_category=False,
                                               elem_id="generated")
                status = gr.Markdown(elem_id="write-status")
                with gr.Accordion("Text zum Kopieren", open=False):
                    text = gr.Textbox(label="Text", lines=4, interactive=False, elem_id="write-text")
                step = gr.Slider(1, 2, value=1, step=1, label="Schritt (oder auf ein Token klicken)",
                                 interactive=False, elem_id="step")
                with gr.Row():
                    candidate_plot = gr.Plot(label="Kandidaten vorher / nachher", show_label=False, format="png",
                                             elem_id="candidate-plot", scale=3)
                    candidate_table = gr.Dataframe(headers=CANDIDATE_HEADERS, scale=2,
                                                   label="Kandidaten (vorher: laut Modell, nachher: beim Ziehen)",
                                                   interactive=False, elem_id="candidate-table")
                with gr.Accordion("Details (JSON)", open=False):
                    details = gr.JSON(label="Token-ids und Wahrscheinlichkeiten")

            with gr.Tab("Attention", id="attention"):
                with gr.Row():
                    attention_prompt = gr.Textbox(start_prompt, lines=2, label="Prompt", scale=3,
                                                  elem_id="attention-prompt")
                    attention_button = gr.Button("Attention berechnen", variant="primary", scale=1,
                                                 elem_id="attention-button")
                with gr.Row():
                    layer = gr.Dropdown([(f"Layer {i}", i) for i in range(cfg.n_layer)], value=0, label="Layer",
                                        elem_id="attention-layer")
                    head = gr.Dropdown([("alle Köpfe", ALL_HEADS)] + [(f"Kopf {h}", h) for h in range(cfg.n_head)],
                                       value=0, label="Kopf", elem_id="attention-head")
                    query = gr.Dropdown([], value=None, label="Token (Query): worauf schaut es?",
                                        elem_id="attention-query")
                attention_tokens = gr.HighlightedText(label="Der Prompt, gefärbt nach dem Attention-Gewicht des "
                                                            "gewählten Tokens (klicke ein Token an)",
                                                      elem_id="attention-tokens")
                attention_note = gr.Markdown(elem_id="attention-note")
                attention_plot = gr.Plot(label="Attention (Zeile = Query, Spalte = Key)", show_label=False, format="png",
                                         elem_id="attention-plot")
                patterns = gr.Dataframe(headers=PATTERN_HEADERS, label="Muster der Köpfe (mittleres Gewicht)",
                                        interactive=False, elem_id="attention-patterns")

            with gr.Tab("Innenleben", id="innenleben"):
                with gr.Row():
                    inside_prompt = gr.Textbox(start_prompt, lines=2, label="Prompt", scale=3,
                                               elem_id="inside-prompt")
                    inside_button = gr.Button("Durchrechnen", variant="primary", scale=1, elem_id="inside-button")
                inside_summary = gr.Markdown(elem_id="inside-summary")
                stages = gr.Dataframe(headers=STAGE_HEADERS, label="Forward-Pass, Stufe für Stufe",
                                      interactive=False, wrap=True, elem_id="inside-stages",
                                      column_widths=["6%", "14%", "10%", "11%", "10%", "8%", "17%", "24%"])
                next_tokens = gr.Dataframe(headers=["Rang", "Token", "id", "p"], label="Wahrscheinlichste nächste Tokens",
                                           interactive=False, elem_id="inside-next")
                surprisal_plot = gr.Plot(label="Überraschung pro Token (Bits)", show_label=False, format="png", elem_id="inside-surprisal")

            if pg.run_dir is not None:
                with gr.Tab("Training", id="training"):
                    curves, run_note, run_config, samples = pg.training()
                    refresh_button = gr.Button("Neu laden", elem_id="training-refresh")
                    training_note = gr.Markdown(run_note)
                    training_plot = gr.Plot(curves, label="Loss und Lernrate", show_label=False, format="png", elem_id="training-plot")
                    with gr.Accordion("Einstellungen (config.json)", open=False):
                        config_view = gr.JSON(run_config, label="config.json")
                    gr.Markdown("### Samples im Lauf des Trainings (samples.md)")
                    samples_view = gr.Markdown(samples, max_height=600, elem_id="training-samples")
                    refresh_button.click(pg.training, None, [training_plot, training_note, config_view, samples_view],
                                         api_name="training")

        write_outputs = [text, generated, status, step, candidate_plot, candidate_table, details, steps_state]
        # concurrency_limit 2: a second request runs far enough to be told that the model is busy.
        write_event = write_button.click(pg.write, [prompt, temperature, top_k, top_p, n_tokens, seed],
                                         write_outputs, api_name="schreiben", concurrency_limit=2,
                                         concurrency_id="schreiben")
        stop_button.click(lambda: "**Gestoppt.**", None, status, cancels=[write_event], api_visibility="private")
        step.change(pg.show_step, [steps_state, step], [candidate_plot, candidate_table], api_name="schritt",
                    show_progress="hidden")
        generated.select(pg.select_token, [steps_state], [step], api_visibility="private")

        attention_outputs = [attention_plot, attention_tokens, attention_note]
        attention_button.click(pg.attention, [attention_prompt, layer, head],
                               [*attention_outputs, patterns, query, attention_state], api_name="attention")
        gr.on([layer.change, head.change, query.input], pg.render_attention,
              [attention_state, layer, head, query], attention_outputs, api_name="attention_anzeigen",
              show_progress="minimal")
        attention_tokens.select(pg.select_query, None, [query], api_visibility="private").then(
            pg.render_attention, [attention_state, layer, head, query], attention_outputs,
            api_visibility="private", show_progress="minimal")

        inside_outputs = [inside_summary, stages, next_tokens, surprisal_plot]
        inside_button.click(pg.inside, [inside_prompt], inside_outputs, api_name="innenleben")
        # Every tab shows something right away: the default prompts are computed when the page loads.
        if start_prompt:
            demo.load(pg.attention, [attention_prompt, layer, head],
                      [*attention_outputs, patterns, query, attention_state], api_visibility="private")
            demo.load(pg.inside, [inside_prompt], inside_outputs, api_visibility="private")
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo
