"""The README's reading path ("Lesepfad") and its pointers into the code stay true.

The table lists the files a learner reads with their line counts; this test recounts them, so the
numbers can never drift from the code. The four questions at the top each name a file and the
functions that answer them; those must exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# nanoGPT's model.py + train.py at the commit named in ../shared/anchors/README.md, counted with `code_lines`
# below (test_nanogpt_numbers_are_a_recount recounts them where the anchor is present)
NANOGPT_COMMIT = "3adf61e154c3fe3fca428ad6bc3818b27a3b8291"
NANOGPT_LINES = 666
NANOGPT_CODE_LINES = 453
NANOGPT = ROOT.parent / "shared" / "anchors" / "nanoGPT"
CORE_CODE_LINES_LIMIT = 700  # config + model + loop, the learner's core (issues 18 and 21: "within 700 code lines")
# src/model/ files that are not the model a learner reads: the evaluation-mode helper of the training shell
NOT_THE_MODEL = {"src/model/__init__.py", "src/model/eval_mode.py"}


def code_lines(source: str) -> int:
    """Lines that are neither blank, nor comments, nor part of a docstring."""
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstring_lines.update(range(first.lineno, first.end_lineno + 1))
    return sum(1 for number, line in enumerate(source.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and number not in docstring_lines)


def reading_path() -> list[tuple[str, int, int]]:
    """(path, lines, code lines) of each numbered row of the Lesepfad table."""
    section = README.split("## Lesepfad", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| \d+ \| `([^`]+)` \| ([\d.]+) \| ([\d.]+) \|", section, flags=re.M)
    return [(path, int(lines.replace(".", "")), int(code.replace(".", ""))) for path, lines, code in rows]


def test_code_line_counter_skips_docstrings_comments_and_blanks():
    source = '"""Module doc\n\nmore."""\n\n# comment\nx = 1\n\ndef f():\n    """Doc."""\n    return x  # why\n'
    assert code_lines(source) == 3  # x = 1, def f():, return x


def test_reading_path_counts_match_the_files():
    rows = reading_path()
    assert len(rows) >= 7, "the Lesepfad table was not found or lost rows"
    actual = []
    for path, _, _ in rows:
        text = (ROOT / path).read_text(encoding="utf-8")
        actual.append((path, len(text.splitlines()), code_lines(text)))
    wanted_table = "\n".join(f"{p}: {n} lines, {c} code" for p, n, c in actual)
    assert rows == actual, f"update the Lesepfad table in README.md:\n{wanted_table}"


def test_reading_path_totals_and_the_core_stays_small():
    rows = reading_path()
    section = README.split("## Lesepfad", 1)[1].split("\n## ", 1)[0]
    total = re.search(r"\*\*Kernpfad\*\* \| \*\*([\d.]+)\*\* \| \*\*([\d.]+)\*\*", section)
    assert total, "the Kernpfad total row is missing"
    assert int(total.group(1).replace(".", "")) == sum(n for _, n, _ in rows)
    assert int(total.group(2).replace(".", "")) == sum(c for _, _, c in rows)
    core = [r for r in rows if r[0] in ("src/config.py", "src/training/train_loop.py") or r[0].startswith("src/model/")]
    model_files = {str(p.relative_to(ROOT)) for p in (ROOT / "src" / "model").glob("*.py")} - NOT_THE_MODEL
    assert {"src/config.py", "src/training/train_loop.py"} | model_files <= {r[0] for r in core}, \
        "every file of the core (config, src/model/, the loop) must be a row of the Lesepfad table"
    core_code = sum(c for _, _, c in core)
    assert core_code <= CORE_CODE_LINES_LIMIT, f"the core path has {core_code} code lines, more than {CORE_CODE_LINES_LIMIT}"


def defined_names(path: Path) -> set[str]:
    """Top-level functions and classes, and methods as Class.method."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{item.name}" for item in node.body if isinstance(item, ast.FunctionDef)}
    return names


def test_the_four_questions_point_to_functions_that_exist():
    questions = README.split("## Lesepfad", 1)[0]
    pointers = re.findall(r"`(src/[\w/]+\.py)` \(([^)]*)\)", questions)
    assert len(pointers) >= 4, pointers
    for path, names in pointers:
        wanted = re.findall(r"`([\w.]+)`", names)
        assert wanted, f"{path}: no function named"
        missing = set(wanted) - defined_names(ROOT / path)
        assert not missing, f"README names {missing} in {path}, which does not define them"


def test_the_readme_states_nanogpts_size_as_recounted():
    """The comparison names the commit and the same numbers as the recount below."""
    prose = " ".join(README.split())  # the sentence may be wrapped anywhere
    match = re.search(r"nanoGPT \(Commit `([0-9a-f]{7,40})`\) hat in `model\.py` \+ `train\.py` ([\d.]+) Zeilen, "
                      r"davon ([\d.]+) Code-Zeilen", prose)
    assert match, "the README's nanoGPT comparison (commit, lines, code lines) was not found"
    commit, lines, code = match.group(1), int(match.group(2).replace(".", "")), int(match.group(3).replace(".", ""))
    assert NANOGPT_COMMIT.startswith(commit) and (lines, code) == (NANOGPT_LINES, NANOGPT_CODE_LINES)
    assert f"unter {CORE_CODE_LINES_LIMIT} Code-Zeilen" in prose


def test_nanogpt_numbers_are_a_recount():
    """model.py + train.py of the nanoGPT anchor, counted with the counter that counts our files."""
    if not (NANOGPT / "train.py").is_file():
        pytest.skip(f"the nanoGPT anchor {NANOGPT} is not present")
    assert NANOGPT_COMMIT in (NANOGPT.parent / "README.md").read_text(encoding="utf-8")
    texts = [(NANOGPT / name).read_text(encoding="utf-8") for name in ("model.py", "train.py")]
    assert sum(len(text.splitlines()) for text in texts) == NANOGPT_LINES
    assert sum(code_lines(text) for text in texts) == NANOGPT_CODE_LINES
