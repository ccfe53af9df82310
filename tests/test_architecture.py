"""The layers of docs/ARCHITECTURE.md, checked on every import in src/ (module level and inside functions).

Each rule names what a layer may import from `src`; a new import that breaks one fails here with the
file, the line and the rule. An import counts with everything it runs: `from src.training import
distributed` imports the module `src.training.distributed`, and importing `src.training.utils` first
runs the package `src/training/__init__.py` - so what a package's `__init__` imports counts for its
importer too ("package edges"). A second test finds import cycles between modules of `src`, package
edges included. Both checks are run on small made-up packages first, to show that they can fail.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# Module (or package prefix) -> the src modules it may import (prefixes). Anything under src/ that no
# rule names is product shell (cli, main, playground) and may import everything below it.
ALLOWED: dict[str, tuple[str, ...]] = {
    "src.config": (),
    "src.errors": (),
    "src.fileio": (),
    "src.model": ("src.config", "src.model"),
    "src.tokenizer": ("src.fileio",),
    "src.gpt2_tokenizer": ("src.fileio", "src.tokenizer"),
    "src.tokenizer_json": ("src.fileio", "src.tokenizer", "src.gpt2_tokenizer"),
    "src.gutenberg": ("src.config", "src.fileio"),
    "src.dataset": ("src.config", "src.fileio", "src.gutenberg", "src.tokenizer", "src.tokenizer_json"),
    "src.training.utils": ("src.config",),
    "src.training.train_loop": ("src.config", "src.training.utils"),
    "src.training": ("src.config", "src.errors", "src.fileio", "src.model", "src.tokenizer", "src.tokenizer_json",
                     "src.dataset", "src.training", "src.hf_bridge"),
    # GPT-2 files <-> our model: a converter below the checkpoints, which use it to read a Hugging Face folder
    "src.hf_bridge": ("src.config", "src.errors", "src.fileio", "src.model", "src.tokenizer", "src.gpt2_tokenizer",
                      "src.tokenizer_json"),
    "src.memorization": ("src.dataset", "src.tokenizer", "src.tokenizer_json"),
    "src.analysis": ("src.config", "src.model", "src.tokenizer"),
    "src.visualization": ("src.config", "src.fileio", "src.model", "src.analysis"),
}

# Outside the product shell, only these modules may print (docs/ARCHITECTURE.md): dataset.py, which
# says on stderr when it waits for another process building the same data set, and the callbacks
# that the command line installs into a run. None may parse arguments: `python -m src.dataset` and
# `python -m src.tokenizer` hand over to src/cli/dataset.py and src/cli/tokenizer.py (script blocks).
MAY_PRINT_OUTSIDE_SHELL = {"src.dataset", "src.training.callbacks"}
MAY_PARSE_ARGUMENTS_OUTSIDE_SHELL: set[str] = set()


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_under(root: Path) -> dict[str, Path]:
    """{module name: file} of every .py file in the package `root/src`."""
    return {module_name(path, root): path for path in sorted((root / "src").rglob("*.py"))}


def is_package(module: str, modules: dict[str, Path]) -> bool:
    return module in modules and modules[module].name == "__init__.py"


def _absolute(node: ast.ImportFrom, module: str, modules: dict[str, Path]) -> str:
    """The absolute module of `from X import ...`, resolving relative imports (`from . import x`)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package(module, modules) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_script_block(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` - runs only when the file is run as a script, never on import."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


def split_script_blocks(tree: ast.Module) -> tuple[ast.Module, ast.Module]:
    """(the module as imported, its module-level script blocks). A script block that imports the shell
    (`python -m src.tokenizer` -> src/cli/tokenizer.py) is an entry point, not an edge of the import
    graph: when it runs, this file is `__main__`, and the shell imports a fresh `src.tokenizer`."""
    imported = [node for node in tree.body if not _is_script_block(node)]
    scripts = [node for node in tree.body if _is_script_block(node)]
    return ast.Module(body=imported, type_ignores=[]), ast.Module(body=scripts, type_ignores=[])


def explicit_imports(path: Path, module: str, modules: dict[str, Path], script: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import of a src module in the file, at any depth, leaving out its
    script blocks (or only those, with `script=True`).

    `from src.training import distributed` names the module `src.training.distributed` when such a
    module exists (it is a submodule imported via its package), else the package `src.training`.
    """
    found = []
    tree = split_script_blocks(ast.parse(path.read_text(encoding="utf-8")))[1 if script else 0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "src"]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, modules)
            if source.split(".")[0] != "src":
                continue
            submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
            found += [(node.lineno, sub) for sub in submodules]
            if len(submodules) < len(node.names):  # names defined in `source` itself
                found.append((node.lineno, source))
    return found


def package_edges(target: str, importer: str) -> list[str]:
    """The packages that importing `target` runs first: `src.training.utils` -> [`src.training`].

    The root package `src` (a docstring and a version string) and the importer's own packages (already
    being imported when the importer runs) are left out.
    """
    parts = target.split(".")
    parents = [".".join(parts[:i]) for i in range(2, len(parts))]
    return [p for p in parents if not (importer == p or importer.startswith(p + "."))]


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, tuple[int, bool]]]:
    """{module: {imported module: (line, explicit)}} inside `modules`; explicit False marks a package edge."""
    graph: dict[str, dict[str, tuple[int, bool]]] = {}
    for module, path in modules.items():
        edges: dict[str, tuple[int, bool]] = {}
        for line, target in explicit_imports(path, module, modules):
            if target in modules and target not in (module, "src"):
                edges[target] = (line, True)
            for package in package_edges(target, module):
                if package in modules:
                    edges.setdefault(package, (line, False))
        graph[module] = edges
    return graph


def rule_for(module: str) -> tuple[str, tuple[str, ...]] | None:
    """The most specific rule whose key is the module or a package above it."""
    keys = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    return (max(keys, key=len), ALLOWED[max(keys, key=len)]) if keys else None


def is_allowed(target: str, allowed: tuple[str, ...]) -> bool:
    return any(target == prefix or target.startswith(prefix + ".") for prefix in allowed)


def broken_imports(module: str, graph: dict[str, dict[str, tuple[int, bool]]]) -> list[str]:
    """The imports of `module` that its layer rule forbids. A package edge counts through what the
    package's `__init__` imports: importing `src.training.utils` is fine while `src/training/__init__.py`
    imports nothing the importer may not import itself."""
    rule = rule_for(module)
    if rule is None:
        return []  # the product shell: it sits on top and may use every layer
    _, allowed = rule
    broken = []
    for target, (line, explicit) in graph[module].items():
        if is_allowed(target, allowed):
            continue
        if not explicit:
            pulled_in = sorted(t for t in graph[target] if not is_allowed(t, allowed))
            if not pulled_in:
                continue  # an __init__ that runs nothing this layer may not run itself
            target = f"the package {target}, whose __init__ imports {pulled_in}"
        broken.append(f"{module} line {line} imports {target}")
    return broken


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
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
            return cycle
    return None


MODULES = modules_under(ROOT)
GRAPH = import_graph(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES), ids=lambda m: str(MODULES[m].relative_to(ROOT)))
def test_every_import_keeps_its_layer(module: str):
    rule = rule_for(module)
    broken = broken_imports(module, GRAPH)
    assert not broken, f"layer rule for {rule[0]} (may import only {rule[1] or 'nothing from src'}): {broken}"


def test_script_blocks_only_hand_over_to_the_shell():
    """A module's `if __name__ == "__main__":` may import only the product shell (src.cli); anything else
    would be a real dependency hidden from the layer check."""
    found = {module: explicit_imports(path, module, MODULES, script=True) for module, path in MODULES.items()}
    wrong = [f"{m} line {line} imports {t}" for m, imports in found.items() for line, t in imports
             if not t.startswith("src.cli")]
    assert not wrong, wrong
    assert found["src.tokenizer"] == [(found["src.tokenizer"][0][0], "src.cli.tokenizer")], found["src.tokenizer"]


def test_no_import_cycles_between_modules():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_loop_imports_nothing_of_the_product():
    """The learner's loop takes batches and an evaluation function; data, CLI and callbacks stay outside."""
    assert set(GRAPH["src.training.train_loop"]) <= {"src.config", "src.training.utils"}, GRAPH["src.training.train_loop"]


def test_looking_inside_a_model_needs_no_training_code():
    """analysis and visualization take the eval-mode helper from src/model, not from src.training."""
    for module in ("src.analysis", "src.visualization", "src.memorization"):
        assert not [t for t in GRAPH[module] if t.startswith("src.training")], (module, GRAPH[module])


def _calls_print(tree: ast.AST) -> list[int]:
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]


def _imports_argparse(tree: ast.AST) -> list[int]:
    return [n.lineno for n in ast.walk(tree)
            if (isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names))
            or (isinstance(n, ast.ImportFrom) and n.module == "argparse")]


def test_only_the_shell_and_the_named_entry_points_parse_arguments_or_print():
    found = []
    for module, path in MODULES.items():
        if rule_for(module) is None:
            continue  # product shell
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if module not in MAY_PRINT_OUTSIDE_SHELL and (lines := _calls_print(tree)):
            found.append(f"{path.relative_to(ROOT)}:{lines[0]} prints")
        if module not in MAY_PARSE_ARGUMENTS_OUTSIDE_SHELL and (lines := _imports_argparse(tree)):
            found.append(f"{path.relative_to(ROOT)}:{lines[0]} imports argparse")
    assert not found, found
    # and the exceptions are still needed (otherwise drop them here and in docs/ARCHITECTURE.md)
    for module in MAY_PARSE_ARGUMENTS_OUTSIDE_SHELL:
        assert _imports_argparse(ast.parse(MODULES[module].read_text(encoding="utf-8"))), module
    for module in MAY_PRINT_OUTSIDE_SHELL:
        assert _calls_print(ast.parse(MODULES[module].read_text(encoding="utf-8"))), module


def test_architecture_md_names_every_layer_module():
    """Each module with a layer rule appears in docs/ARCHITECTURE.md, so the document cannot forget one."""
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [str(path.relative_to(SRC)) for module, path in MODULES.items()
               if rule_for(module) is not None and path.name != "__init__.py"
               and path.stem not in doc]
    assert not missing, f"docs/ARCHITECTURE.md does not mention {missing}"


def test_architecture_md_points_to_functions_that_exist():
    """Every `src/...py:name` in docs/ARCHITECTURE.md names a function, class or constant of that file."""
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    pointers = re.findall(r"`(src/[\w/]+\.py):(\w+)`", doc)
    assert len(pointers) >= 8, pointers
    missing = []
    for path, name in pointers:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        defined |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        if name not in defined:
            missing.append(f"{path}:{name}")
    assert not missing, f"docs/ARCHITECTURE.md points to {missing}, which do not exist"


# --- the checks themselves can fail -------------------------------------------------------------


def _make_tree(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in {"src/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return modules_under(root)


def test_the_layer_test_catches_a_forbidden_import(tmp_path):
    """A model file that imports the training loop is flagged, also when written as an import from the package."""
    modules = _make_tree(tmp_path, {
        "src/training/__init__.py": "",
        "src/training/train_loop.py": "",
        "src/model/__init__.py": "",
        "src/model/attention.py": "def f():\n    from src.training import train_loop\n",
        "src/config.py": "",
    })
    graph = import_graph(modules)
    assert graph["src.model.attention"] == {"src.training.train_loop": (2, True), "src.training": (2, False)}
    broken = broken_imports("src.model.attention", graph)
    assert broken and "src.training.train_loop" in broken[0], broken


def test_a_package_edge_counts_what_its_init_imports(tmp_path):
    """analysis may import src.training.utils only while src/training/__init__.py pulls in nothing more."""
    files = {"src/config.py": "", "src/training/utils.py": "", "src/training/trainer.py": "",
             "src/analysis.py": "from src.training.utils import x\n"}
    clean = _make_tree(tmp_path / "clean", {**files, "src/training/__init__.py": ""})
    saved = ALLOWED["src.analysis"]
    try:
        ALLOWED["src.analysis"] = ("src.config", "src.training.utils")
        assert broken_imports("src.analysis", import_graph(clean)) == []
        heavy = _make_tree(tmp_path / "heavy", {**files, "src/training/__init__.py": "from src.training import trainer\n"})
        broken = broken_imports("src.analysis", import_graph(heavy))
        assert broken and "src.training.trainer" in broken[0], broken
    finally:
        ALLOWED["src.analysis"] = saved


def test_the_cycle_test_finds_a_cycle_through_a_package(tmp_path):
    """`from src.training import distributed` and a package __init__ close a cycle the old check missed."""
    modules = _make_tree(tmp_path, {
        "src/training/__init__.py": "from src.training.trainer import Trainer\n",
        "src/training/trainer.py": "from src.training import distributed\n",
        "src/training/distributed.py": "def f():\n    from src.training import Trainer\n",
    })
    cycle = find_cycle(import_graph(modules))
    assert cycle is not None and set(cycle) == {"src.training", "src.training.trainer", "src.training.distributed"}, cycle
    acyclic = _make_tree(tmp_path / "ok", {
        "src/training/__init__.py": "from src.training.trainer import Trainer\n",
        "src/training/trainer.py": "from src.training import distributed\n",
        "src/training/distributed.py": "import os\n",
    })
    assert find_cycle(import_graph(acyclic)) is None


def test_a_script_block_is_an_entry_point_not_an_edge(tmp_path):
    """An import under `if __name__ == "__main__":` leaves the import graph, but the script check sees it."""
    modules = _make_tree(tmp_path, {
        "src/cli/__init__.py": "",
        "src/cli/tok.py": "from src.tok import x\n",
        "src/training.py": "",
        "src/tok.py": "x = 1\nif __name__ == '__main__':\n    from src.cli.tok import main\n    from src.training import y\n",
    })
    assert import_graph(modules)["src.tok"] == {}
    assert find_cycle(import_graph(modules)) is None
    path = modules["src.tok"]
    assert explicit_imports(path, "src.tok", modules, script=True) == [(3, "src.cli.tok"), (4, "src.training")]

