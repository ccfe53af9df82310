"""The README's reading path ("Lesepfad") and its pointers into the code stay true.

The table lists the files a learner reads with their line counts; this test recounts them, so the
numbers can never drift from the code. The four questions at the top each name a file and the
functions that answer them; those must exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
NANOGPT_CODE_LINES = 670  # model.py + train.py of nanoGPT, without docstrings, comments and blank lines


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
    core = [r for r in rows if r[0] == "src/config.py" or r[0].startswith(("src/model/", "src/training/train_loop"))]
    assert sum(c for _, _, c in core) <= NANOGPT_CODE_LINES * 1.05, "the core path grew past nanoGPT's size"


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
