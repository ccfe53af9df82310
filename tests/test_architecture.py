"""The layers of docs/ARCHITECTURE.md, checked on every import in src/ (module level and inside functions).

Each rule names what a layer may import from `src`; a new import that breaks one fails here with the
file, the line and the rule. A second test finds import cycles between modules of `src`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# Module (or package prefix) -> the src modules it may import (prefixes). Anything under src/ that no
# rule names is product shell (cli, main, playground, bridges) and may import everything below it.
ALLOWED: dict[str, tuple[str, ...]] = {
    "src.config": (),
    "src.errors": (),
    "src.fileio": (),
    "src.model": ("src.config", "src.model"),
    "src.tokenizer": ("src.fileio",),
    "src.gpt2_tokenizer": ("src.fileio", "src.tokenizer"),
    "src.gutenberg": ("src.config", "src.fileio"),
    "src.dataset": ("src.config", "src.fileio", "src.gutenberg", "src.tokenizer"),
    "src.training.utils": ("src.config",),
    "src.training.train_loop": ("src.config", "src.training.utils"),
    "src.training": ("src.config", "src.errors", "src.fileio", "src.model", "src.tokenizer", "src.dataset", "src.training",
                     "src.hf_bridge"),
    # GPT-2 files <-> our model: below the checkpoints that use it to read a Hugging Face directory
    "src.hf_bridge": ("src.config", "src.errors", "src.fileio", "src.model", "src.tokenizer", "src.gpt2_tokenizer"),
    "src.memorization": ("src.dataset", "src.tokenizer"),
    "src.analysis": ("src.config", "src.model", "src.tokenizer", "src.training.utils"),
    "src.visualization": ("src.config", "src.fileio", "src.model", "src.analysis", "src.training.utils"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def src_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `import src...` / `from src... import` in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("src")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src") and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def rule_for(module: str) -> tuple[str, tuple[str, ...]] | None:
    """The most specific rule whose key is the module or a package above it."""
    keys = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    return (max(keys, key=len), ALLOWED[max(keys, key=len)]) if keys else None


def is_allowed(target: str, allowed: tuple[str, ...]) -> bool:
    return any(target == prefix or target.startswith(prefix + ".") for prefix in allowed)


SOURCE_FILES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_keeps_its_layer(path: Path):
    module = module_name(path)
    rule = rule_for(module)
    if rule is None:
        return  # the product shell: it sits on top and may use every layer
    key, allowed = rule
    broken = [f"{path.relative_to(ROOT)}:{line} imports {target}" for line, target in src_imports(path)
              if target != "src" and not is_allowed(target, allowed)]
    assert not broken, f"layer rule for {key} (may import only {allowed or 'nothing from src'}): {broken}"


def test_the_layer_test_catches_a_forbidden_import(tmp_path):
    """The check itself can fail: a model file that imports the training loop is flagged."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from src.training.train_loop import train\n", encoding="utf-8")
    assert src_imports(bad) == [(2, "src.training.train_loop")]
    _, allowed = rule_for("src.model.attention")
    assert not is_allowed("src.training.train_loop", allowed) and is_allowed("src.config", allowed)


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    known = {module_name(p) for p in SOURCE_FILES}
    for path in SOURCE_FILES:
        targets = {t for _, t in src_imports(path)}
        # `from src.model import X` may name a package; resolve to the package module itself
        graph[module_name(path)] = {t for t in targets if t in known and t != module_name(path)}
    # Packages import their own submodules in __init__: an edge package -> submodule is not a cycle risk
    # when the submodule imports a sibling directly, so drop edges from a package into itself.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}

    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path_stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path_stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path_stack[path_stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path_stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_loop_imports_nothing_of_the_product():
    """The learner's loop takes batches and an evaluation function; data, CLI and callbacks stay outside."""
    targets = {t for _, t in src_imports(SRC / "training" / "train_loop.py")}
    assert targets <= {"src.config", "src.training.utils"}, targets
