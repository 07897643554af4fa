import re
import shutil

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from mnist_cnn.errors import PipelineError
from mnist_cnn.params import PARAMS_FILE, parse_params, read_yaml
from tests.helpers import PROJECT_ROOT, documented_line, params_with


@pytest.fixture
def raw_params() -> dict:
    return params_with({})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"train.epochs": -1}, "train.epochs: input should be greater than 0 (got -1)"),
        ({"train.epochs": "ten"}, "train.epochs: input should be a valid integer (got 'ten')"),
        ({"train.epochs": 2.5}, "train.epochs: input should be a valid integer (got 2.5)"),
        (
            {"train.optimizer": "adamw"},
            "train.optimizer: input should be 'adam', 'sgd' or 'rmsprop' (got 'adamw')",
        ),
        ({"train.learnig_rate": 0.1}, "train.learnig_rate: unknown key"),
        (
            {"train.learning_rate": float("inf")},
            "train.learning_rate: input should be a finite number (got inf)",
        ),
        (
            {"download.timeout_seconds": float("nan")},
            "download.timeout_seconds: input should be a finite number (got nan)",
        ),
        ({"model.dropout": 1.0}, "model.dropout: input should be less than 1 (got 1.0)"),
        (
            {"model.conv_filters": []},
            "model.conv_filters: list should have at least 1 item after validation, not 0 (got [])",
        ),
        (
            {"preprocess.max_train_images": 0},
            "preprocess.max_train_images: input should be greater than 0 (got 0)",
        ),
        (
            {"seed": 2**32},
            "seed: input should be less than or equal to 4294967295 (got 4294967296)",
        ),
        ({"threads": 10000}, "threads: input should be less than or equal to 256 (got 10000)"),
        (
            {"download.retries": 10**9},
            "download.retries: input should be less than or equal to 10 (got 1000000000)",
        ),
        (
            {"download.timeout_seconds": 1e9},
            "download.timeout_seconds: input should be less than or equal to 600"
            " (got 1000000000.0)",
        ),
        (
            {"model.conv_kernel": 1000},
            "model.conv_kernel: input should be less than or equal to 28 (got 1000)",
        ),
        (
            {"model.dense_units": [10**7]},
            "model.dense_units: 62,830,000,330 parameters; expected at most 100,000,000: make "
            "model.dense_units, model.conv_filters or model.conv_kernel smaller",
        ),
        (
            {"train.epochs": 2, "train.warmup_epochs": 2},
            "train.warmup_epochs: 2 is not less than train.epochs (2); expected fewer warm-up"
            " epochs than epochs",
        ),
        (
            {"train.label_smoothing": 1.0},
            "train.label_smoothing: input should be less than 1 (got 1.0)",
        ),
        (
            {"model.conv_filters": [4096, 4096]},
            "model.dense_units: 202,488,842 parameters; expected at most 100,000,000: make "
            "model.dense_units, model.conv_filters or model.conv_kernel smaller",
        ),
    ],
)
def test_a_bad_value_is_refused_naming_the_key_and_what_is_expected(changes, expected):
    """One line each; the values no machine can run (a huge seed, model or timeout) were each a
    traceback from deep inside NumPy, TensorFlow or the socket module."""
    with pytest.raises(PipelineError) as error:
        parse_params(params_with(changes))
    assert str(error.value) == f"{PARAMS_FILE}: {expected}"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"model.conv_filters": [8, 16, 32], "model.conv_kernel": 5, "model.pool_size": 2},
        {"model.conv_filters": [4], "model.pool_size": 3, "model.dense_units": [7, 9, 11]},
    ],
)
def test_parameter_count_is_keras(changes):
    from mnist_cnn.model import build_model  # TensorFlow only for this test

    model = parse_params(params_with(changes)).model
    assert model.parameter_count() == build_model(model).count_params()


def test_missing_key_is_named(raw_params):
    del raw_params["train"]["batch_size"]
    with pytest.raises(PipelineError, match=r"^params.yaml: train.batch_size: missing key$"):
        parse_params(raw_params)


def test_readme_command_for_the_notebook_setup():
    command = documented_line("dvc exp run -S train.epochs=10")
    changes = dict(setting.split("=") for setting in re.findall(r"-S (\S+)", command))
    params = parse_params(
        params_with({key: yaml.safe_load(value) for key, value in changes.items()})
    )
    assert (params.train.epochs, params.train.batch_size, params.train.optimizer) == (
        10,
        32,
        "adam",
    )
    assert params.train.learning_rate == 0.001 and params.train.lr_schedule == "constant"
    assert params.train.warmup_epochs == 0 and params.train.label_smoothing == 0
    assert (params.train.adam_beta_1, params.train.adam_beta_2) == (0.9, 0.999)  # Keras'
    assert params.train.precision == "float32"
    assert not params.train.augment.enabled


def test_threads_is_a_count_of_threads(raw_params):
    raw_params["threads"] = -1
    with pytest.raises(PipelineError) as error:
        parse_params(raw_params)
    assert str(error.value) == (
        "params.yaml: threads: input should be greater than or equal to 0 (got -1)"
    )


def test_a_typo_names_the_typo_not_the_key_it_hides(raw_params):
    """The README's example: a misspelt key is both unknown and leaves the real one missing."""
    raw_params["train"]["learnig_rate"] = raw_params["train"].pop("learning_rate")
    with pytest.raises(PipelineError) as error:
        parse_params(raw_params)
    assert str(error.value) == (
        "params.yaml: train.learnig_rate: unknown key (did you mean train.learning_rate?)"
    )


def test_unknown_keys_come_before_missing_ones(raw_params):
    del raw_params["train"]["epochs"]
    raw_params["evaluate"]["colour"] = "red"
    with pytest.raises(PipelineError) as error:
        parse_params(raw_params)
    assert str(error.value) == "params.yaml: evaluate.colour: unknown key (and 1 more)"


def test_a_rate_dvc_writes_in_exponent_form_is_a_number(tmp_path):
    """`dvc exp run -S train.learning_rate=1e-5`: DVC writes `1e-05` back (YAML 1.2's float),
    which YAML 1.1 would read as a string, and the stage refuse as not a number."""
    params_file = tmp_path / PARAMS_FILE
    shutil.copy(PROJECT_ROOT / PARAMS_FILE, params_file)
    apply_overrides(str(params_file), ["train.learning_rate=1e-5"])  # what -S calls
    assert "  learning_rate: 1e-05\n" in params_file.read_text()
    raw = read_yaml(params_file)
    assert raw["train"]["learning_rate"] == 1e-05
    parse_params(raw | {"paths": params_with({})["paths"]})  # and the stage takes it
