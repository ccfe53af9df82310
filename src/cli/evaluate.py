"""--evaluate: loss, perplexity and bits per character on a whole validation split, per book, next
to count baselines - and the training-time estimate for comparison."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from src.cli.common import EXIT_OK, UsageError, load_for_inference, name_the_flag
from src.cli.settings import DATA_FIELDS, data_sources
from src.config import DataConfig
from src.training.evaluation import bits_per_character


def run_evaluate(args: argparse.Namespace, flags: dict[str, str]) -> int:
    """By default the validation split of the data set the model was trained on; with data flags
    (--input, --books, ...) that text instead, read and encoded with the model's own tokenizer."""
    from tqdm import tqdm

    from src.dataset import load_documents, load_tokens, prepare_dataset, split_documents
    from src.training.checkpoints import CheckpointError
    from src.training.evaluation import CountBaselines, SplitScore, encode_documents, model_nll, source_slices

    path, payload, model, tokenizer, device = load_for_inference(args, flags)
    data_flags = {name: getattr(args, name) for name in DATA_FIELDS if getattr(args, name, None) is not None}
    stored_data = payload.get("data_config")
    if stored_data is None and not data_flags:
        raise UsageError(f"--books/--input: {path} does not record its data set; pass the data flags")
    other_text = bool({"books", "input", "holdout_books", "val_fraction", "unwrap"} & data_flags.keys())
    values = {**data_sources(stored_data or {}, data_flags, flags, needs_location=not other_text), "force": False,
              **data_flags}
    if "input" in data_flags or "books" in data_flags:  # new sources replace the stored ones entirely
        values["input"] = data_flags.get("input", ())
        values["books"] = data_flags.get("books", () if data_flags.get("input") else values["books"])
        values["holdout_books"] = data_flags.get("holdout_books", ())
    try:
        data_cfg = DataConfig(**values)
    except (TypeError, ValueError) as err:
        raise UsageError(name_the_flag(str(err), flags)) from None
    block_size = payload["model_config"]["block_size"]
    estimate = None
    if other_text:  # read and encode that text with the model's own tokenizer
        documents = load_documents(data_cfg, show_progress=not args.quiet)
        train_ids, val_ids, slices = encode_documents(documents, split_documents(documents, data_cfg), tokenizer)
        data_label = ", ".join(str(doc.id) for doc in documents)
        if len(val_ids) < 2:
            raise UsageError("--val-fraction: the validation part of this text is empty; raise --val-fraction")
    else:
        # A fine-tuned model (--init-from) encoded its data with its own tokenizer, not a trained one.
        prepared = prepare_dataset(data_cfg, show_progress=not args.quiet, full_check=True,
                                   tokenizer=tokenizer if payload.get("init_from") else None)
        if prepared.meta["tokenizer"]["fingerprint"] != tokenizer.fingerprint():
            raise CheckpointError(f"{path}: the data set {prepared.path} uses a different tokenizer than the model; "
                                  "evaluate on the data set the model was trained on")
        val_ids, train_ids = load_tokens(prepared.path, "val"), load_tokens(prepared.path, "train")
        slices = source_slices(prepared.meta, "val", len(val_ids))
        data_label = str(prepared.path)
        estimate = training_time_estimate(model, prepared.path, block_size, payload, path)
    baselines = CountBaselines(train_ids, tokenizer.vocab_size)
    batch_size = args.batch_size or 32
    rows: list[tuple[str, int, SplitScore, dict[str, float]]] = []
    for label, start, stop, characters in tqdm(slices, desc="evaluating", unit="book", disable=args.quiet,
                                              file=sys.stderr):
        ids = val_ids[start:stop]
        nll, count = model_nll(model, ids, block_size, batch_size, device)
        rows.append((label, stop - start, SplitScore(label, nll, count, characters), baselines.nll(ids)))
    print(format_evaluation(path, payload, data_label, rows, estimate))
    return EXIT_OK


def training_time_estimate(model: Any, data_path: Path, block_size: int, payload: dict[str, Any],
                           path: Path) -> tuple[float, int, int]:
    """(loss, windows used, windows in the split) of the estimate the training run logged as val/loss:
    the same seeded sample of validation windows, spread over every book."""
    from src.config import TrainConfig, config_from_dict
    from src.dataset import TokenDataset
    from src.training.checkpoints import CheckpointError
    from src.training.evaluation import estimate_loss, validation_sample

    try:
        train_cfg = config_from_dict(TrainConfig, payload.get("train_config") or {})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: stored training settings are not usable: {err}") from None
    val_set = TokenDataset(data_path, "val", block_size)
    sample = validation_sample(len(val_set), train_cfg.eval_batches * train_cfg.batch_size, train_cfg.seed)
    return estimate_loss(model, val_set, sample, train_cfg.batch_size), len(sample), len(val_set)

def format_evaluation(path: Path, payload: dict[str, Any], data_label: str, rows: list,
                      estimate: tuple[float, int, int] | None = None) -> str:
    """The --evaluate tables: overall model vs. baselines, then per book, then the training-time estimate."""
    total_tokens = sum(r[1] for r in rows)
    total_chars = sum(r[2].characters for r in rows)
    count = sum(r[2].count for r in rows)
    overall = {"model": sum(r[2].nll for r in rows) / count}
    for name in ("bigram", "unigram", "uniform"):
        overall[name] = sum(r[3][name] for r in rows) / count
    step = payload.get("state", {}).get("step", "?")
    lines = [f"Checkpoint {path} (step {step}), validation split of {data_label}: {total_tokens:,} tokens, "
             f"{len(rows)} source(s)", "", f"{'model':<16}{'loss':>8}{'perplexity':>12}{'bits/char':>11}"]
    for name, loss in overall.items():
        label = {"model": "this model", "bigram": "bigram counts", "unigram": "unigram counts",
                 "uniform": "uniform (ln V)"}[name]
        bpc = bits_per_character(loss, total_tokens / max(total_chars, 1))
        lines.append(f"{label:<16}{loss:>8.4f}{math.exp(min(loss, 700)):>12.2f}{bpc:>11.3f}")
    lines += ["", f"{'source':<40}{'tokens':>10}{'loss':>8}{'ppl':>9}{'bpc':>7}{'bigram':>9}{'unigram':>9}"]
    for label, tokens, score, base in rows:
        name = label if len(label) <= 38 else label[:37] + "…"
        lines.append(f"{name:<40}{tokens:>10,}{score.loss:>8.4f}{score.perplexity:>9.2f}{score.bpc(tokens):>7.3f}"
                     f"{base['bigram'] / score.count:>9.4f}{base['unigram'] / score.count:>9.4f}")
    lines.append("(loss in nats per token; lower is better. A model that barely beats 'bigram counts' has "
                 "learned little beyond pairs of characters.)")
    if estimate is not None:
        loss, used, available = estimate
        lines += ["", f"Training-time estimate (val/loss in TensorBoard): {loss:.4f} on {used:,} of {available:,} "
                      f"validation windows spread over every book ({used / max(available, 1):.0%} of the split); "
                      f"the whole split above: {overall['model']:.4f}."]
    return "\n".join(lines)
