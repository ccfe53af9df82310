"""One German word per concept in the learner's texts (README.md, data/README.md, the notebooks).

docs/BEGRIFFE.md fixes the words; this test rejects the variants it rules out and says which word to
write instead. Code is left alone: fenced blocks, `inline code` and URLs are not checked, so flags
like `--evaluate` or metric names like `val/perplexity` stay as they are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TERM_LIST = ROOT / "docs" / "BEGRIFFE.md"

# (what is ruled out, as a regular expression; what to write instead)
RULES: list[tuple[str, str]] = [
    (r"\bToken-Ids?\b", "Token-ID / Token-IDs"),
    (r"\bCosinus", "Kosinus"),
    (r"\bEvaluation\w*|\bEvaluierung\w*", "Auswertung"),
    (r"[Vv]erlust", "Loss (\"Loss (Verlust)\" steht einmal im README)"),
    (r"(?<!Code-)\bSchicht\w*", "Layer (im Modell) oder Code-Schicht (im Code)"),
    (r"\bKöpfe\w*|\bKopfes\b|Attention-K[oö]pf\w*", "Head / Heads"),
    (r"\bSpezialtoken\w*|\b[Ss]pecial[- ][Tt]okens?\b|\bSonder-Tokens?\b", "Sondertokens"),
    (r"\bPerplexity\b", "Perplexität"),
    (r"\bBatch-Größe\w*", "Batchgröße"),
    (r"\b[Ll]earning[- ][Rr]ate\b", "Lernrate"),
    (r"\bWanduhr\w*", "verstrichene Zeit"),
    (r"Dutzend Bücher\b", "auf zwölf Büchern"),
    (r"\bDas ist, was\b", "einen geraden Satz, z. B. \"So viel können ...\""),
    (r"\bEin ü sind\b", "\"Ein ü besteht aus ...\""),
    # A decimal point in prose (German writes 0,2): "0.2", "1.55", "3.14159"; not "12.062"
    # (thousands), "127.0.0.1" or version numbers right after Python/Ubuntu/CUDA/PyTorch.
    (r"(?<![\w.])(?:0\.\d+|\d+\.\d{1,2}|\d+\.\d{4,})(?!\w|\.\d)", "Dezimalkomma (0,2 statt 0.2)"),
]
VERSION_CONTEXT = re.compile(r"(Python|Ubuntu|CUDA|PyTorch|torch|Version|Abschnitt)\b(?:[^|.!?]|\.\d){0,25}$")  # same sentence
ONCE_IN_README = "Loss (Verlust)"


def prose(text: str) -> str:
    """The text with code blocks, `inline code`, URLs and HTML comments blanked (line numbers kept)."""
    blank = lambda match: re.sub(r"[^\n]", " ", match.group(0))  # noqa: E731
    text = re.sub(r"```.*?```", blank, text, flags=re.S)
    text = re.sub(r"<!--.*?-->", blank, text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", blank, text)
    return re.sub(r"https?://\S+|\]\([^)]*\)", blank, text)


def learner_texts() -> dict[str, str]:
    """README.md, data/README.md and the markdown cells of every notebook (cells joined by blank lines)."""
    texts = {name: (ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "data/README.md")}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        markdown = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"]
        texts[f"notebooks/{path.name} (Markdown)"] = "\n\n".join(markdown)
    return texts


def violations(name: str, text: str) -> list[str]:
    checked = prose(text)
    if name == "README.md":  # the one allowed "Verlust": the first mention of the Loss
        checked = checked.replace(ONCE_IN_README, "Loss" + " " * (len(ONCE_IN_README) - 4), 1)
    found = []
    for pattern, instead in RULES:
        for match in re.finditer(pattern, checked):
            if instead.startswith("Dezimalkomma") and VERSION_CONTEXT.search(checked[:match.start()]):
                continue
            line = checked.count("\n", 0, match.start()) + 1
            found.append(f"{name}:{line}: {match.group(0)!r} -> schreibe {instead}")
    return found


def test_the_learner_texts_use_one_word_per_concept():
    found = [v for name, text in learner_texts().items() for v in violations(name, text)]
    assert not found, "Wörter, die docs/BEGRIFFE.md ausschließt:\n" + "\n".join(found)


def test_the_readme_names_the_loss_once_with_its_german_word():
    assert prose((ROOT / "README.md").read_text(encoding="utf-8")).count(ONCE_IN_README) == 1


@pytest.mark.parametrize("text, wanted", [
    ("Die Token-Ids und der Cosinus.", ["'Token-Ids'", "'Cosinus'"]),
    ("Eine Attention-Schicht mit sechs Köpfen; die Code-Schicht bleibt.", ["'Schicht'", "'Köpfen'"]),
    ("Dropout 0.2 und Loss 1.55, aber 12.062 Fenster, 127.0.0.1 und Python 3.10. Am Ende 0.5.",
     ["'0.2'", "'1.55'", "'0.5'"]),
    ("Code wie `--dropout 0.2` und `val/perplexity` ist erlaubt.", []),
    ("```\npython -m src.main --evaluate # Evaluation\n```\n", []),
])
def test_the_rules_catch_the_variants_and_spare_code(text, wanted):
    found = violations("example.md", text)
    assert [f.split(": ", 1)[1].split(" ->")[0] for f in found] == wanted


def test_the_term_list_names_every_replacement():
    term_list = TERM_LIST.read_text(encoding="utf-8")
    for word in ("Token-ID", "Layer", "Code-Schicht", "Head", "Kosinus", "Sondertokens", "Loss (Verlust)",
                 "Auswertung", "Perplexität", "Batchgröße", "Lernrate", "verstrichene Zeit", "Dezimalkomma"):
        assert word in term_list, f"docs/BEGRIFFE.md does not name {word!r}"
