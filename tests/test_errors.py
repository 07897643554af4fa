"""A user's mistake, seen from the command line: one line on stderr, exit 1, no traceback,
no output written."""

from pathlib import Path

import pytest
import yaml

from mnist_cnn.params import PARAMS_FILE, load_params
from mnist_cnn.runner import run_command, run_stage
from tests.helpers import (
    TINY_MODEL,
    error_line,
    params_with,
    run_script,
    run_stage_cli,
    write_params,
    write_tiny_data,
)

pytestmark = pytest.mark.cli


def only_the_configuration(folder: Path) -> bool:
    """Whether `folder` holds nothing but what write_params wrote: no output, no temporary."""
    return sorted(path.name for path in folder.iterdir()) == ["dvc.yaml", "params.yaml"]


def test_bad_param_stops_the_stage_before_any_work(tmp_path):
    write_params(tmp_path, {"train.epochs": -3})
    result = run_stage_cli("download", tmp_path)
    assert (
        error_line(result)
        == "error: params.yaml: train.epochs: input should be greater than 0 (got -3)"
    )
    assert len(result.stderr.splitlines()) == 1
    assert only_the_configuration(tmp_path)


@pytest.mark.parametrize(
    "path",
    ["../outside/model.keras", "/tmp/model.keras", "models/../../model.keras", "linked/m.keras"],
)
def test_a_path_that_leaves_the_project_is_refused(tmp_path, path):
    """Absolute, `..` past the root, or through a symlinked folder that points outside: the
    stage writes nothing there (DVC, which deletes a stage's outputs first, cannot be stopped:
    docs/failures.md)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "linked").symlink_to(tmp_path)
    write_params(project, {**TINY_MODEL, "paths.model": path})
    write_tiny_data(project, params_with(TINY_MODEL))
    assert error_line(run_stage_cli("train", project)) == (
        f"error: dvc.yaml: paths.model: expected a path inside the project (got {path!r})"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["project"]


def test_a_file_linked_into_a_cache_elsewhere_is_inside_the_project(tmp_path):
    """DVC links outputs to its cache (cache.type symlink), which may live anywhere: a shared
    cache, or the workspace's own for a queued run in a temporary copy. Only the folders of a
    path must stay inside the project."""
    project, cache = tmp_path / "project", tmp_path / "cache"
    project.mkdir()
    cache.mkdir()
    params = write_params(project, TINY_MODEL)
    write_tiny_data(project, params)
    for key in ("train_data", "validation_data"):
        linked = project / params["paths"][key]
        linked.rename(cache / linked.name)
        linked.symlink_to(cache / linked.name)
    result = run_stage_cli("train", project)
    assert result.returncode == 0, result.stderr


def test_paths_in_params_yaml_are_refused(tmp_path):
    write_params(tmp_path, {})
    (tmp_path / PARAMS_FILE).write_text(yaml.safe_dump(params_with({})))  # paths included
    assert error_line(run_stage_cli("download", tmp_path)) == (
        "error: params.yaml: paths: the paths are the pipeline's, in dvc.yaml (vars: - paths:); "
        "expected none here"
    )


def test_invalid_yaml(tmp_path):
    (tmp_path / PARAMS_FILE).write_text("train: [epochs: 1\n")
    assert error_line(run_stage_cli("preprocess", tmp_path)).startswith(
        "error: params.yaml: not valid YAML"
    )


def test_missing_params_file(tmp_path):
    assert error_line(run_stage_cli("preprocess", tmp_path)) == (
        "error: params.yaml: not found (run the stage from the project root)"
    )


# A "billion laughs": each line nine times the one before; 9 lines would be 9**9 items.
ALIAS_BOMB = "".join(
    f"l{n}: &l{n} [{', '.join([f'*l{n - 1}' if n else 'lol'] * 9)}]\n" for n in range(9)
)


@pytest.mark.parametrize(
    ("prefix", "suffix", "message"),
    [
        (
            ALIAS_BOMB,
            "",
            "error: params.yaml: line 2: an alias (*l0); expected plain values, without anchors "
            "or aliases",
        ),
        (
            "",
            "seed: 3\n",
            "error: params.yaml: line {last}: key 'seed' given twice, expected each key once",
        ),
    ],
    ids=["alias-bomb", "duplicate-key"],
)
def test_params_yaml_takes_plain_values_each_key_once(tmp_path, prefix, suffix, message):
    """Refused on reading, before anything is built from it: expanding the aliases would take
    all the memory there is, and a key given twice would silently keep its last value."""
    write_params(tmp_path, {})
    text = prefix + (tmp_path / PARAMS_FILE).read_text() + suffix
    (tmp_path / PARAMS_FILE).write_text(text)
    result = run_stage_cli("download", tmp_path)
    assert error_line(result) == message.format(last=len(text.splitlines()))
    assert only_the_configuration(tmp_path)


def test_a_huge_bad_value_is_quoted_short(tmp_path):
    write_params(tmp_path, {"seed": list(range(10**4))})
    assert error_line(run_stage_cli("download", tmp_path)) == (
        "error: params.yaml: seed: input should be a valid integer (got [0, 1, 2, 3, 4, 5, ...])"
    )


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (
            "preprocess",
            "data/raw/train-images-idx3-ubyte.gz: not found (run the download stage first)",
        ),
        ("train", "data/prepared/train.npz: not found (run the preprocess stage first)"),
        ("evaluate", "models/model.keras: not found (run the train stage first)"),
        ("export", "models/model.keras: not found (run the train stage first)"),
    ],
)
def test_missing_input_says_which_stage_to_run(tmp_path, stage, message):
    """Before importing TensorFlow, which takes seconds."""
    write_params(tmp_path, TINY_MODEL)
    script = (
        "import runpy, sys\n"
        "try:\n"
        f"    runpy.run_module('stages.{stage}', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, 'tensorflow' in sys.modules)\n"
    )
    result = run_script(script, (), tmp_path)  # the stage as `python -m`, then a look inside
    assert error_line(result, 0) == f"error: {message}"
    assert result.stdout == "1 False\n"
    assert only_the_configuration(tmp_path)


@pytest.mark.parametrize(
    ("stage", "path", "message"),
    [
        ("train", "data/prepared/train.npz", "not a readable .npz file"),
        ("evaluate", "models/model.keras", "not a loadable Keras model"),
    ],
)
def test_corrupt_input_is_named(tmp_path, stage, path, message):
    write_tiny_data(tmp_path, write_params(tmp_path, TINY_MODEL))  # the other inputs sound
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_bytes(b"PK\x03\x04 this is not a zip archive")
    assert error_line(run_stage_cli(stage, tmp_path)).startswith(f"error: {path}: {message} (")


def test_tensorflow_start_up_log_is_filtered_and_other_lines_pass(tmp_path):
    """What C++ code writes to stderr goes through the filter: known start-up lines are
    dropped, anything else (a real error) still shows."""
    script = (
        "import os, re\n"
        "from mnist_cnn.tensorflow_setup import STARTUP_NOISE, native_stderr_filtered\n"
        "with native_stderr_filtered(STARTUP_NOISE):\n"
        "    os.write(2, b'I0000 00:00:1.2 1 cudart_stub.cc:31] Could not find cuda drivers\\n')\n"
        "    os.write(2, b'E0000 00:00:1.2 1 some_kernel.cc:9] a real failure\\n')\n"
    )
    result = run_script(script, (), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "E0000 00:00:1.2 1 some_kernel.cc:9] a real failure\n"


@pytest.mark.parametrize("folder_as_params", [False, True])
def test_unreadable_params_file(tmp_path, folder_as_params):
    if folder_as_params:
        (tmp_path / PARAMS_FILE).mkdir()
    else:
        (tmp_path / PARAMS_FILE).write_bytes(b"\xff\xfe not UTF-8")
    message = error_line(run_stage_cli("download", tmp_path))
    assert message.startswith("error: params.yaml: ")


def test_tensorflow_stages_print_only_their_own_lines(tmp_path):
    params = write_params(tmp_path, TINY_MODEL)
    write_tiny_data(tmp_path, params)
    for stage in ("train", "evaluate"):
        result = run_stage_cli(stage, tmp_path)
        assert result.returncode == 0
        assert result.stderr == "", stage
        assert "cuda" not in result.stdout.lower()


def test_only_a_stage_refuses_params_changed_while_it_ran(tmp_path, monkeypatch, capsys):
    """DVC records a stage's params when it ends, so a stage whose params.yaml changed meanwhile
    fails; a command (report, predict) has nothing recorded, and finishes."""
    monkeypatch.chdir(tmp_path)

    def main() -> None:
        write_params(tmp_path, {"train.epochs": 1})
        load_params()
        write_params(tmp_path, {"train.epochs": 2})  # edited while it runs

    assert run_command(main, "report") == 0
    assert capsys.readouterr().err == ""
    assert run_stage(main, "train") == 1
    assert capsys.readouterr().err == (
        "error: params.yaml changed while train ran: its outputs are for the params it read at "
        "the start and are not recorded; run dvc repro again\n"
    )
