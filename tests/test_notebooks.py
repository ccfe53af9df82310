"""Every notebook in notebooks/ runs end to end, on a tiny local Gutenberg mirror, with small settings.

The notebooks read their settings from environment variables (see the first cell of each):
MINI_TRANSFORMER_ROOT (the repository), MINI_TRANSFORMER_WORKDIR (where data/ and runs/ go; here
a temporary folder), MINI_TRANSFORMER_MIRROR (the book source) and MINI_TRANSFORMER_NOTEBOOK_SMALL=1
(tiny models, few steps). A second test keeps the committed notebooks free of outputs, so that
diffs stay readable and no stale results are shipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, make_story, wrap_paragraphs, write_gutenberg_mirror

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_explore_data.ipynb", "02_visualize_attention.ipynb", "03_training_curves.ipynb", "04_ablations.ipynb"]
CELL_TIMEOUT_S = 120

GERMAN_STORY = (
    "Als Gregor Samsa eines Morgens aus unruhigen Träumen erwachte, fand er sich in seinem Bett zu einem "
    "ungeheueren Ungeziefer verwandelt. Er lag auf seinem panzerartig harten Rücken und sah, wenn er den Kopf "
    "ein wenig hob, seinen gewölbten, braunen Bauch. Die Schwester öffnete die Tür und schaute müde hinein. "
)


def _write_mirror(root: Path) -> Path:
    """Books 11 and 74 (English) and 2229 (German, with umlauts), a few KB each, Gutenberg layout."""
    german = "\n\n".join(GERMAN_STORY * 2 for _ in range(12))
    books = {
        11: wrap_paragraphs(make_story(25, seed=11)),
        74: wrap_paragraphs(make_story(25, seed=74)),
        2229: wrap_paragraphs(german),
    }
    return write_gutenberg_mirror(root, books)


def _notebook_id(path: Path) -> str:
    return path.name


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_end_to_end(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = NOTEBOOK_DIR / name
    if not path.is_file():
        pytest.skip(f"{name} is not written yet")
    mirror = _write_mirror(tmp_path / "mirror")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("MINI_TRANSFORMER_MIRROR", str(mirror))
    monkeypatch.setenv("MINI_TRANSFORMER_WORKDIR", str(work))
    monkeypatch.setenv("MINI_TRANSFORMER_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MINI_TRANSFORMER_ROOT", str(REPO_ROOT))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()  # raises CellExecutionError naming the cell and the traceback on any failure
    # The notebook really ran: every code cell executed, and it produced figures or text.
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells)
    assert any(c.get("outputs") for c in code_cells)


def test_other_notebooks_are_also_run():
    """A new notebook must be added to EXPECTED, so that CI executes it."""
    assert [p.name for p in NOTEBOOKS if p.name not in EXPECTED] == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_notebook_id)
def test_notebook_is_committed_without_outputs(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    dirty = [
        i for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them (Kernel > Restart & Clear Output)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_notebook_id)
def test_notebook_starts_with_the_common_first_cell(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    first_code = next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")
    source = "".join(first_code["source"])
    for line in (
        'ROOT = Path(os.environ.get("MINI_TRANSFORMER_ROOT", Path.cwd().parent)).resolve()',
        'WORK = Path(os.environ.get("MINI_TRANSFORMER_WORKDIR", ROOT))',
        'SMALL = os.environ.get("MINI_TRANSFORMER_NOTEBOOK_SMALL") == "1"',
    ):
        assert line in source, f"{path.name}: the first code cell must contain {line!r}"
