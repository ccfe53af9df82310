"""The PyCharm run configurations in .run/: each runs something that exists, with arguments its
command's own parser accepts, on the project interpreter, from the project folder."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

RUN_DIR = REPO_ROOT / ".run"
CONFIGS = sorted(RUN_DIR.glob("*.run.xml"))


def options(config: ET.Element) -> dict[str, str]:
    return {opt.get("name"): opt.get("value") for opt in config.findall("option")}


def project_path(value: str) -> Path:
    assert value.startswith("$PROJECT_DIR$/"), value  # relative to the project: works wherever it is cloned
    return REPO_ROOT / value.removeprefix("$PROJECT_DIR$/")


def parse_with_the_commands_parser(target: str, argv: list[str]) -> None:
    """Parse `argv` as `target` (a module name or a script) would; raises if it refuses them."""
    if target == "src.main":
        from src.cli.parser import MODE_HELP, build_parser

        args = build_parser().parse_args(argv)
        assert sum(bool(getattr(args, mode)) for mode in MODE_HELP) == 1  # exactly one mode, as main() requires
    elif target == "src.dataset":
        from src.cli.dataset import build_parser

        build_parser().parse_args(argv)
    elif target == "tensorboard.main":
        from tensorboard import program

        program.TensorBoard().configure(argv=["tensorboard", *argv])  # its own flag parser (SystemExit on error)
    elif target.endswith(".py"):
        spec = importlib.util.spec_from_file_location("run_config_script", target)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)  # defines functions only; main() runs under __main__
        script.build_parser().parse_args(argv)
    else:
        raise AssertionError(f"no parser known for {target}; add it to this test")


def test_the_expected_configurations_exist_and_git_keeps_them():
    names = {ET.parse(path).getroot().find("configuration").get("name") for path in CONFIGS}
    assert len(names) == len(CONFIGS) >= 8  # quick start, full run, data set, TensorBoard, ..., pytest
    ignored = subprocess.run(["git", "check-ignore", *map(str, CONFIGS)], cwd=REPO_ROOT, capture_output=True)
    assert ignored.stdout == b""  # .gitignore's .idea/ must not hide .run/


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_run_configuration_points_at_something_real_with_accepted_arguments(path):
    root = ET.parse(path).getroot()
    assert root.tag == "component" and root.get("name") == "ProjectRunConfigurationManager"
    config = root.find("configuration")
    values = options(config)
    assert values["WORKING_DIRECTORY"] == "$PROJECT_DIR$"
    assert values["IS_MODULE_SDK"] == "true" and values["SDK_HOME"] == ""  # the project's interpreter (.venv)
    if config.get("type") == "tests":  # pytest on the tests folder, as the README's test command runs it
        assert config.get("factoryName") == "py.test"
        assert project_path(values["_new_target"].strip('"')).is_dir()
        readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
        readme_flags = re.search(r"^pip install -r requirements-dev\.txt && python -m pytest(.*)$", readme, re.M)[1]
        assert set(shlex.split(values["_new_additionalArguments"].strip('"'))) - {"-q"} == set(shlex.split(readme_flags))
        return
    assert config.get("type") == "PythonConfigurationType"
    target, argv = values["SCRIPT_NAME"], shlex.split(values["PARAMETERS"])
    if values["MODULE_MODE"] == "true":
        assert importlib.util.find_spec(target) is not None, f"{path.name}: no module {target}"
    else:
        script = project_path(target)
        assert script.is_file(), f"{path.name}: {script} does not exist"
        target = str(script)
    parse_with_the_commands_parser(target, argv)


def test_a_wrong_argument_would_be_caught():
    """The check above can fail: a misspelled flag is refused by each kind of parser."""
    from src.cli.common import UsageError

    with pytest.raises(UsageError):
        parse_with_the_commands_parser("src.main", ["--train", "--epoch", "5"])
    with pytest.raises(SystemExit):
        parse_with_the_commands_parser("tensorboard.main", ["--log-dir", "runs"])
    with pytest.raises(SystemExit):
        parse_with_the_commands_parser(str(REPO_ROOT / "examples" / "train_minimal.py"), ["--step", "5"])
