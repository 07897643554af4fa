"""The house: stages/ holds exactly dvc.yaml's stages, each stage's deps list exactly the code
it imports, and the command runs as documented, from anywhere with --model."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnist_cnn.model import build_model, save_model
from mnist_cnn.params import parse_params
from tests.helpers import (
    PROJECT_ROOT,
    STAGES,
    TINY_MODEL,
    documented_code_block,
    params_with,
)

PACKAGES = ("mnist_cnn", "stages")


def pipeline() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (Path(*parts).with_suffix(".py"), Path(*parts, "__init__.py")):
        if (PROJECT_ROOT / candidate).is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The project's files that importing `path` runs: its own imports, each module's package
    __init__ included."""
    names = set()
    for node in ast.walk(ast.parse((PROJECT_ROOT / path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    files = set()
    for name in names:
        parts = name.split(".")
        if parts[0] in PACKAGES:
            prefixes = (".".join(parts[:end]) for end in range(1, len(parts) + 1))
            files |= {found for prefix in prefixes if (found := module_file(prefix))}
    return files


def code_run_by(stage_module: Path) -> set[Path]:
    """`stage_module` and every project file it imports, directly or not; the stages package's
    own __init__ (a docstring) aside."""
    seen, waiting = set(), [stage_module]
    while waiting:
        path = waiting.pop()
        if path not in seen:
            seen.add(path)
            waiting += imported_files(path)
    return seen - {Path("stages/__init__.py")}


def modules_named(path: Path) -> set[Path]:
    """The project's modules that `path`'s import statements name (not the packages above
    them, which Python runs first for any of their modules)."""
    files = set()
    for node in ast.walk(ast.parse((PROJECT_ROOT / path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            if not any(module_file(name) for name in names):
                names = [node.module]  # `from package.module import function`
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        files |= {found for name in names if name.split(".")[0] in PACKAGES
                  if (found := module_file(name))}
    return files


def test_the_package_imports_no_circle():
    """No module of mnist_cnn/ imports, directly or not, a module that imports it: the error
    type at the bottom, the runner above the params it checks."""
    package = (PROJECT_ROOT / "mnist_cnn").glob("*.py")
    modules = sorted(path.relative_to(PROJECT_ROOT) for path in package)
    graph = {path: modules_named(path) for path in modules}
    for start in modules:
        reached, waiting = set(), list(graph[start])
        while waiting:
            path = waiting.pop()
            if path not in reached:
                reached.add(path)
                waiting += graph.get(path, set())
        assert start not in reached, f"{start} imports itself back"
    assert graph[Path("mnist_cnn/errors.py")] == set()  # the bottom floor


def test_stages_folder_holds_exactly_the_pipelines_stages():
    modules = {path.stem for path in (PROJECT_ROOT / "stages").glob("*.py")}
    assert modules == {*pipeline(), "__init__"}


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_depends_on_exactly_the_code_it_runs(stage):
    definition = pipeline()[stage]
    assert definition["cmd"] == f"python -m stages.{stage}"
    listed = {Path(dep) for dep in definition["deps"] if dep.endswith(".py")}
    assert listed == code_run_by(Path(f"stages/{stage}.py"))


@pytest.mark.cli
def test_help_of_the_command_and_of_each_subcommand():
    run = [sys.executable, "-m", "mnist_cnn"]
    result = subprocess.run([*run, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m mnist_cnn ")
    for command in ("predict", "report", "push-run-cache", "offline-plots"):
        assert command in result.stdout
        help_text = subprocess.run(
            [*run, command, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True
        )
        assert help_text.returncode == 0, help_text.stderr
        assert help_text.stdout.startswith(f"usage: python -m mnist_cnn {command} ")
    unknown = subprocess.run([*run, "train"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert unknown.returncode == 2 and "invalid choice: 'train'" in unknown.stderr


@pytest.mark.network
def test_the_installed_command_predicts_from_any_folder(tmp_path):
    """The README's two lines, as written: `pip install --no-deps -e .` in this environment
    (pip fetches setuptools from the registry to build it), then `mnist-cnn predict --model`
    from examples/, a folder with no params.yaml; and `mnist-cnn --help` from anywhere."""
    block = documented_code_block("pip install --no-deps -e .")
    install, use = (line.split("  #")[0] for line in block.strip().splitlines())
    installed = subprocess.run(
        [sys.executable, "-m", *install.split()], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr
    bin_dir = Path(sys.executable).parent
    environment = {
        **{key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    for folder in ("examples", "models"):
        (tmp_path / folder).mkdir()
    shutil.copy(PROJECT_ROOT / "examples/seven.png", tmp_path / "examples")
    save_model(
        build_model(parse_params(params_with(TINY_MODEL)).model), tmp_path / "models/model.keras"
    )
    result = subprocess.run(
        ["bash", "-c", use], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"seven\.png: \d \(\d+\.\d %\)\n", result.stdout), result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["examples", "models"]
    for arguments in (["--help"], ["predict", "--help"]):
        shown = subprocess.run(
            ["mnist-cnn", *arguments], cwd=tmp_path / "examples", env=environment,
            capture_output=True, text=True,
        )
        assert shown.returncode == 0 and shown.stdout.startswith("usage: mnist-cnn"), shown
