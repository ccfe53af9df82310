"""The README's reading path ("Lesepfad") and its pointers into the code stay true.

The table lists the files a learner reads with their line counts; this test recounts them, so the
numbers can never drift from the code. Its "Erster Durchgang" column names the classes and functions
a first reading covers and skips; the test recounts those lines and the minutes the README derives
from them, and checks that every skipped part carries a `# First pass:` comment in the code. The four
questions at the top (and the glossary) name a file and the functions that answer them; those must exist.

After a file on the path changes, the failure message prints the numbers to copy into the table.
"""

from __future__ import annotations

import ast
import math
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
NOT_THE_MODEL = {"src/model/__init__.py", "src/model/eval_mode.py", "src/model/weights.py"}


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


LESEPFAD = README.split("## Lesepfad", 1)[1].split("\n## ", 1)[0]
READING_SPEED = 5  # lines per minute: the first-pass estimate the README states, rounded up to 5 minutes
# | label | `path` | lines | code | first pass | first-pass lines | minutes | what you learn |
ROW = re.compile(r"^\| (\d+|[A-Z]) \| `([^`]+)` \| ([\d.]+|-) \| ([\d.]+|-) \| (.*?) \| ([\d.]+|-) \| (\d+) min \| .*\|$",
                 flags=re.M)


def number(text: str) -> int:
    """A count as the README writes it, with German thousands separators: "1.138" -> 1138."""
    return int(text.replace(".", ""))


def table_rows() -> list[dict]:
    """Every row of the Lesepfad table: A-C (notebook, data) and 1-7 (the core)."""
    rows = []
    for label, path, lines, code, first_pass, fp_lines, minutes in ROW.findall(LESEPFAD):
        rows.append({"label": label, "path": path, "first_pass": first_pass, "minutes": int(minutes),
                     "lines": None if lines == "-" else number(lines), "code": None if code == "-" else number(code),
                     "fp_lines": None if fp_lines == "-" else number(fp_lines)})
    return rows


def reading_path() -> list[tuple[str, int, int]]:
    """(path, lines, code lines) of each numbered row (the core) of the Lesepfad table."""
    return [(r["path"], r["lines"], r["code"]) for r in table_rows() if r["label"].isdigit()]


def definition_spans(source: str) -> dict[str, tuple[int, int]]:
    """First and last line (decorators included) of each top-level function or class and each method."""
    spans = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            spans[node.name] = (min([d.lineno for d in node.decorator_list] + [node.lineno]), node.end_lineno)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        start = min([d.lineno for d in item.decorator_list] + [item.lineno])
                        spans[f"{node.name}.{item.name}"] = (start, item.end_lineno)
    return spans


def first_pass_names(column: str) -> tuple[list[str], list[str]]:
    """The backticked names after "lesen:" and after "überspringen:" in the first-pass column."""
    read_part, _, skip_part = column.partition("überspringen:")
    names = lambda text: [n for n in re.findall(r"`([\w.]+)`", text) if not n.endswith(".py")]  # noqa: E731
    return names(read_part), names(skip_part)


def first_pass_lines(source: str, column: str) -> int:
    """Lines a first pass reads: the module docstring and the named parts, without the skipped ones."""
    spans = definition_spans(source)
    read, skip = first_pass_names(column)
    docstring = ast.parse(source).body[0]
    lines = set(range(docstring.lineno, docstring.end_lineno + 1))
    for name in read:
        lines |= set(range(spans[name][0], spans[name][1] + 1))
    for name in skip:
        lines -= set(range(spans[name][0], spans[name][1] + 1))
    return len(lines)


def minutes_for(lines: int) -> int:
    return 5 * math.ceil(lines / READING_SPEED / 5)


def test_code_line_counter_skips_docstrings_comments_and_blanks():
    source = '"""Module doc\n\nmore."""\n\n# comment\nx = 1\n\ndef f():\n    """Doc."""\n    return x  # why\n'
    assert code_lines(source) == 3  # x = 1, def f():, return x


def test_reading_path_counts_match_the_files():
    rows = [(r["path"], r["lines"], r["code"]) for r in table_rows() if r["path"].endswith(".py")]
    assert len(reading_path()) >= 7, "the Lesepfad table was not found or lost rows"
    actual = []
    for path, _, _ in rows:
        text = (ROOT / path).read_text(encoding="utf-8")
        actual.append((path, len(text.splitlines()), code_lines(text)))
    wanted_table = "\n".join(f"{p}: {n} lines, {c} code" for p, n, c in actual)
    assert rows == actual, f"update the Lesepfad table in README.md:\n{wanted_table}"


def test_reading_path_totals_and_the_core_stays_small():
    rows = reading_path()
    section = LESEPFAD
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


def test_first_pass_column_names_exist_and_its_lines_and_minutes_are_recounted():
    rows = [r for r in table_rows() if r["path"].endswith(".py")]
    assert len(rows) >= 9, "the Lesepfad lost its tokenizer/dataset or core rows"
    wanted = []
    for row in rows:
        source = (ROOT / row["path"]).read_text(encoding="utf-8")
        read, skip = first_pass_names(row["first_pass"])
        assert read, f"{row['path']}: the first-pass column names nothing to read (`Name` after 'lesen:')"
        missing = set(read + skip) - set(definition_spans(source))
        assert not missing, f"the first-pass column names {missing}, which {row['path']} does not define"
        lines = first_pass_lines(source, row["first_pass"])
        wanted.append((row["path"], row["fp_lines"], row["minutes"], lines, minutes_for(lines)))
    table = "\n".join(f"{p}: 1. Durchgang {n} Zeilen, {m} min" for p, _, _, n, m in wanted)
    assert all((fp, minutes) == (n, m) for _, fp, minutes, n, m in wanted), f"update the Lesepfad table:\n{table}"


def test_first_pass_totals_fit_an_afternoon():
    rows = table_rows()
    core = [r for r in rows if r["label"].isdigit()]
    data = [r for r in rows if not r["label"].isdigit()]
    total = re.search(r"\*\*Kernpfad\*\* \| \*\*[\d.]+\*\* \| \*\*[\d.]+\*\* \| [^|]* \| \*\*([\d.]+)\*\* \| "
                      r"\*\*(\d+) min\*\*", LESEPFAD)
    assert total, "the Kernpfad row lacks its first-pass lines and minutes"
    assert number(total.group(1)) == sum(r["fp_lines"] for r in core)
    assert int(total.group(2)) == sum(r["minutes"] for r in core)
    data_minutes, core_minutes = sum(r["minutes"] for r in data), sum(r["minutes"] for r in core)
    hours, minutes = divmod(data_minutes + core_minutes, 60)
    sentence = f"{data_minutes} min, der Kern 1-7 {core_minutes} min, zusammen **{hours} h {minutes} min**"
    assert sentence in " ".join(LESEPFAD.split()), f"the first-pass sum below the table should read: ...{sentence}..."
    assert data_minutes + core_minutes <= 4 * 60, "the first pass no longer fits an afternoon (about three hours)"


def test_the_path_starts_with_the_data_notebook_and_ends_with_the_own_script():
    rows = table_rows()
    assert rows[0]["path"] == "notebooks/01_explore_data.ipynb"
    assert (ROOT / rows[0]["path"]).is_file()
    after_table = LESEPFAD.split("**Kernpfad**", 1)[1]
    assert "examples/train_minimal.py" in after_table, "the path ends with the learner's own script"
    assert all("ARCHITECTURE" not in r["path"] for r in rows), "docs/ARCHITECTURE.md is not on the learner's path"


def test_every_skipped_part_is_marked_in_the_code():
    """What the first-pass column skips carries a `# First pass:` comment line above it (directly, or
    above a run of other skipped code), so the reader sees in the file what the README says."""
    for row in table_rows():
        if not row["path"].endswith(".py"):
            continue
        source = (ROOT / row["path"]).read_text(encoding="utf-8")
        lines = source.splitlines()
        spans = definition_spans(source)
        read, skip = first_pass_names(row["first_pass"])
        read_starts = {spans[name][0] for name in read}
        read_starts |= {spans[name.split(".")[0]][0] for name in read + skip if "." in name}  # the enclosing class
        for name in skip:
            number_ = spans[name][0] - 1  # 1-based line above the definition
            while number_ >= 1 and not lines[number_ - 1].strip().startswith("# First pass:"):
                assert number_ not in read_starts, (
                    f"{row['path']}: {name} is skipped on a first pass but has no '# First pass: ...' comment above it")
                number_ -= 1
            assert number_ >= 1, f"{row['path']}: {name} has no '# First pass: ...' comment above it"
