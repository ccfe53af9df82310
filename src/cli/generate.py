"""--generate: stream text from a trained model, token by token."""

from __future__ import annotations

import argparse
import sys

from src.cli.common import EXIT_OK, UsageError, load_for_inference
from src.config import TrainConfig


def run_generate(args: argparse.Namespace, flags: dict[str, str]) -> int:
    import torch

    for name, ok, rule in (("max_new_tokens", args.max_new_tokens >= 1, "a positive integer"),
                           ("temperature", 0 <= args.temperature < float("inf"), "a finite number >= 0 (0 = greedy)"),
                           ("top_k", args.top_k >= 1, "a positive integer"),
                           ("num_samples", args.num_samples >= 1, "a positive integer"),
                           ("top_p", args.top_p is None or 0 < args.top_p <= 1, "in (0, 1]")):
        if not ok:
            raise UsageError(f"{flags[name]}: must be {rule}, got {getattr(args, name)}")
    from src.analysis import unknown_characters
    from src.memorization import memorization_note

    path, payload, model, tokenizer, device = load_for_inference(args, flags)
    prompt = "\n" if args.prompt is None else args.prompt
    note_memorization = None
    if args.check_memorization:
        if "data_path" not in payload:
            raise UsageError(f"--check-memorization: {path} does not record its training data")
        note_memorization = memorization_note(payload["data_path"])
    unknown = unknown_characters(tokenizer, prompt)
    if unknown:
        print(f"note: the tokenizer does not know these prompt characters (they become <unk>): "
              f"{' '.join(repr(c) for c in unknown)}", file=sys.stderr)
    ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    top_k = min(args.top_k, tokenizer.vocab_size)
    seed = args.seed if args.seed is not None else TrainConfig.__dataclass_fields__["seed"].default
    out = sys.stdout
    for i in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"{'' if i == 0 else chr(10)}----- sample {i + 1}/{args.num_samples} -----\n")
        generator = torch.Generator(device=device).manual_seed(seed + i)
        idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        out.write(prompt)
        out.flush()
        new_ids: list[int] = []
        pending: list[int] = []  # generated but not printed yet
        with torch.no_grad():
            for token in model.generate_stream(idx, args.max_new_tokens, temperature=args.temperature,
                                               top_k=top_k, top_p=args.top_p, generator=generator):
                pending.append(int(token[0, 0]))
                text = tokenizer.decode(pending)
                if text.endswith("\ufffd"):
                    continue  # a BPE token ended inside a multi-byte character: wait for the rest
                # Decoding only the pending ids keeps each step O(1); it is safe because the printed
                # text ended with a whole character, where UTF-8 decoding starts afresh.
                out.write(text)
                out.flush()
                new_ids += pending
                pending.clear()
        new_ids += pending
        out.write(tokenizer.decode(pending) + "\n")
        if note_memorization is not None:
            out.write(f"[{note_memorization(tokenizer.decode(new_ids))}]\n")
        out.flush()
    return EXIT_OK
