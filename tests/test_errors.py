"""A user's mistake, seen from the command line: one line on stderr, exit 1, no traceback,
no output written."""

import pytest
import yaml

from stages.params import PARAMS_FILE
from tests.helpers import TINY_MODEL, params_with, run_stage_cli, write_params


def error_line(result) -> str:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # TensorFlow may log its own start-up lines first; ours is the last.
    return result.stderr.strip().splitlines()[-1]


def test_bad_param_stops_the_stage_before_any_work(tmp_path):
    (tmp_path / PARAMS_FILE).write_text(yaml.safe_dump(params_with({"train.epochs": -3})))
    result = run_stage_cli("download", tmp_path)
    assert (
        error_line(result)
        == "error: params.yaml: train.epochs: input should be greater than 0 (got -3)"
    )
    assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / PARAMS_FILE]


def test_invalid_yaml(tmp_path):
    (tmp_path / PARAMS_FILE).write_text("train: [epochs: 1\n")
    assert error_line(run_stage_cli("preprocess", tmp_path)).startswith(
        "error: params.yaml: not valid YAML"
    )


def test_missing_params_file(tmp_path):
    assert error_line(run_stage_cli("preprocess", tmp_path)) == (
        "error: params.yaml: not found (run the stage from the project root)"
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
    ],
)
def test_missing_input_says_which_stage_to_run(tmp_path, stage, message):
    write_params(tmp_path, TINY_MODEL)
    assert error_line(run_stage_cli(stage, tmp_path)) == f"error: {message}"
    assert list(tmp_path.iterdir()) == [tmp_path / PARAMS_FILE]


@pytest.mark.parametrize(
    ("stage", "path", "message"),
    [
        ("train", "data/prepared/train.npz", "not a readable .npz file"),
        ("evaluate", "models/model.keras", "not a loadable Keras model"),
    ],
)
def test_corrupt_input_is_named(tmp_path, stage, path, message):
    write_params(tmp_path, TINY_MODEL)
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_bytes(b"PK\x03\x04 this is not a zip archive")
    assert error_line(run_stage_cli(stage, tmp_path)).startswith(f"error: {path}: {message} (")
