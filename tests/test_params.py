import copy

import pytest
import yaml

from stages.errors import PipelineError
from stages.params import PARAMS_FILE, parse_params
from tests.conftest import PROJECT_ROOT, run_stage_cli


@pytest.fixture
def raw_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / PARAMS_FILE).read_text())


def test_committed_params_are_valid(default_params):
    assert default_params.train.epochs > 0
    assert default_params.model.conv_filters


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "epochs", -1, "train.epochs: input should be greater than 0 (got -1)"),
        ("train", "epochs", "ten", "train.epochs: input should be a valid integer (got 'ten')"),
        ("train", "epochs", 2.5, "train.epochs: input should be a valid integer (got 2.5)"),
        ("train", "optimizer", "adamw", "train.optimizer: input should be 'adam', 'sgd' or 'rmsprop' (got 'adamw')"),
        ("train", "learnig_rate", 0.1, "train.learnig_rate: unknown key"),
        ("model", "dropout", 1.0, "model.dropout: input should be less than 1 (got 1.0)"),
        ("model", "conv_filters", [], "model.conv_filters: list should have at least 1 item"),
        ("preprocess", "max_train_images", 0, "preprocess.max_train_images: input should be greater than 0 (got 0)"),
    ],
)
def test_bad_value_names_the_key_and_what_is_expected(raw_params, section, key, value, expected):
    broken = copy.deepcopy(raw_params)
    broken[section][key] = value
    with pytest.raises(PipelineError) as error:
        parse_params(broken)
    assert str(error.value).startswith(f"{PARAMS_FILE}: {expected}")


def test_missing_key_is_named(raw_params):
    del raw_params["train"]["batch_size"]
    with pytest.raises(PipelineError, match=r"^params.yaml: train.batch_size: missing key$"):
        parse_params(raw_params)


def test_stage_stops_before_work_with_one_line(tmp_path, raw_params):
    raw_params["train"]["epochs"] = -3
    (tmp_path / PARAMS_FILE).write_text(yaml.safe_dump(raw_params))

    result = run_stage_cli("download", tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: train.epochs: input should be greater than 0 (got -3)"
    ]
    assert not (tmp_path / "data").exists()


def test_invalid_yaml_is_one_line(tmp_path):
    (tmp_path / PARAMS_FILE).write_text("train: [epochs: 1\n")
    result = run_stage_cli("preprocess", tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: params.yaml: not valid YAML")
