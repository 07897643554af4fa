"""The export stage: SavedModel, ONNX and TFLite files made from a real (tiny) Keras model,
run in their own runtimes, byte-identical from one process to the next."""

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter

from mnist_cnn.errors import PipelineError
from mnist_cnn.exports import canonical_names, export_files, float32_copy
from mnist_cnn.model import build_model, save_model
from mnist_cnn.params import parse_params
from mnist_cnn.parity import check_parity, compare
from tests.helpers import (
    TINY_MODEL,
    dtype_policy,
    params_with,
    run_stage_cli,
    write_params,
    write_tiny_data,
)

PATHS = parse_params(params_with({})).paths
# Where each format goes, from dvc.yaml, then the stage's two reports.
FILES = export_files(PATHS)
OUTPUTS = [*map(str, FILES.values()), str(PATHS.export_details), str(PATHS.export_metrics)]


@pytest.fixture
def mixed_precision():
    with dtype_policy("mixed_bfloat16"):
        yield


def tiny_project(folder: Path, precision: str, changes: dict | None = None) -> dict:
    """params.yaml, tiny data and an untrained tiny model saved as the train stage saves it."""
    params = write_params(folder, {**TINY_MODEL, **(changes or {})})
    write_tiny_data(folder, params)
    with dtype_policy(precision):
        keras.utils.set_random_seed(1)
        model = build_model(parse_params(params).model)
        save_model(model, folder / params["paths"]["model"])
    return params


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of the stage's outputs, by path."""
    files = []
    for output in OUTPUTS:
        path = folder / output
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_float32_copy_of_a_mixed_precision_model_computes_in_float32(mixed_precision):
    model = build_model(parse_params(params_with(TINY_MODEL)).model)
    assert {layer.dtype_policy.name for layer in model.layers[:-1]} == {"mixed_bfloat16"}
    copy = float32_copy(model)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    for original, copied in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(original, copied)
    images = np.random.default_rng(0).uniform(0, 255, (8, 28, 28, 1)).astype(np.float32)
    # bfloat16 keeps 8 bits of mantissa: the two agree to about 1 %, not exactly.
    np.testing.assert_allclose(copy(images).numpy(), model(images).numpy(), atol=0.02)


@pytest.mark.cli
def test_export_writes_the_same_bytes_in_every_process(tmp_path):
    """Two runs of the stage with different Python hash seeds (which reorder what tf2onnx
    numbers) give byte-identical files: dvc.lock stays put on a forced re-run."""
    tiny_project(tmp_path, "float32")
    first = run_stage_cli("export", tmp_path, env={"PYTHONHASHSEED": "1"})
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # no converter chatter
    made = digests(tmp_path)
    assert len(made) >= 6  # the SavedModel's pb, fingerprint and variables, ONNX, TFLite, metrics
    second = run_stage_cli("export", tmp_path, env={"PYTHONHASHSEED": "2"})
    assert second.returncode == 0, second.stderr
    assert digests(tmp_path) == made
    assert not list(tmp_path.rglob("*.tmp"))

    assert json.loads((tmp_path / "metrics/export.json").read_text()) == {
        "agreement": 1.0,
        "vs_float32": 1.0,
    }
    metrics = json.loads((tmp_path / "models/exports.json").read_text())
    assert metrics["test_images"] == 96
    # Trained in float32: the float32 copy is the same model.
    assert metrics["float32_vs_training_precision"] == {
        "agreement": 1.0,
        "max_probability_difference": 0.0,
    }
    for name, path in FILES.items():
        assert metrics[name]["agreement"] == 1.0
        assert 0 <= metrics[name]["max_probability_difference"] < 1e-4
        written = tmp_path / path
        files = list(written.rglob("*")) if written.is_dir() else [written]
        assert metrics[name]["size_bytes"] == sum(f.stat().st_size for f in files if f.is_file())


@pytest.mark.cli
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_model_exports_to_float32_files(tmp_path, precision):
    """A model trained in mixed precision (as `precision: auto` picks on GPUs and bfloat16
    CPUs) exports to models that take and compute in float32: no 16-bit tensor in the ONNX or
    TFLite file."""
    tiny_project(tmp_path, precision)
    result = run_stage_cli("export", tmp_path)
    assert result.returncode == 0, result.stderr

    model = onnx.load(tmp_path / "models/model.onnx")
    types = {tensor.data_type for tensor in model.graph.initializer}
    types |= {
        value.type.tensor_type.elem_type for value in [*model.graph.input, *model.graph.output]
    }
    assert types <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32}

    interpreter = Interpreter(model_path=str(tmp_path / "models/model.tflite"))
    assert {detail["dtype"] for detail in interpreter.get_tensor_details()} <= {
        np.float32,
        np.int32,
    }
    # The exports match the float32 copy they are made from; the Keras model computes in 16
    # bits: close to them, not equal.
    metrics = json.loads((tmp_path / "models/exports.json").read_text())
    for name in FILES:
        assert metrics[name]["agreement"] == 1.0
        assert metrics[name]["max_probability_difference"] < 1e-4
    assert 0 < metrics["float32_vs_training_precision"]["max_probability_difference"] < 0.01


@pytest.mark.cli
def test_the_parity_check_measures_the_conversion_not_the_training_precision(tmp_path):
    """A bfloat16 model on a near-tie that bfloat16 rounds away (hidden units 1.0 and 1.001,
    one per digit): in bfloat16 it says 0 for every image, in float32 1. The exports, made
    in float32, say 1 and pass the check even at min_agreement 1; the precision's effect is
    recorded: no image agrees."""
    params = tiny_project(tmp_path, "mixed_bfloat16", {"export.min_agreement": 1.0})
    model_path = tmp_path / params["paths"]["model"]
    with dtype_policy("mixed_bfloat16"):
        model = keras.saving.load_model(model_path)
        model.set_weights([np.zeros_like(weight) for weight in model.get_weights()])
        hidden, output = model.layers[-3], model.layers[-1]
        hidden.bias.assign(np.array([1.0, 1.001] + [0] * (hidden.units - 2), np.float32))
        kernel = np.zeros(output.kernel.shape, np.float32)
        kernel[0, 0] = kernel[1, 1] = 1.0
        output.kernel.assign(kernel)
        images = np.zeros((1, 28, 28, 1), np.float32)
        assert model(images).numpy().argmax() == 0
        assert float32_copy(model)(images).numpy().argmax() == 1
        save_model(model, model_path)

    result = run_stage_cli("export", tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "metrics/export.json").read_text()) == {
        "agreement": 1.0,
        "vs_float32": 0.0,
    }
    metrics = json.loads((tmp_path / "models/exports.json").read_text())
    assert metrics["float32_vs_training_precision"]["agreement"] == 0.0
    for name in FILES:
        assert metrics[name]["agreement"] == 1.0


def test_parity_counts_the_images_whose_digit_differs():
    reference = np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]
    candidate = reference.copy()
    candidate[3] = np.eye(10)[5] * 0.6 + np.eye(10)[4] * 0.4  # digit 4 becomes 5
    result = compare(reference, candidate)
    assert result == {"agreement": 0.75, "max_probability_difference": 0.6}
    check_parity(Path("models/model.onnx"), result, min_agreement=0.75)
    with pytest.raises(PipelineError) as failure:
        check_parity(Path("models/model.onnx"), result, min_agreement=0.999)
    assert str(failure.value) == (
        "models/model.onnx: predicts the float32 Keras model's digit for 75.00% of the test"
        " images, expected at least 99.90% (export.min_agreement)"
    )


def test_canonical_names_number_nodes_and_constants_in_graph_order():
    helper = onnx.helper
    weight = helper.make_tensor("w_from_tf2onnx__17", onnx.TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["images", "w_from_tf2onnx__17"], ["Mul__9:0"], "Mul__9"),
            helper.make_node("Relu", ["Mul__9:0"], ["probabilities"], "Relu__3"),
        ],
        "graph",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [1])],
        [weight],
    )
    model = canonical_names(helper.make_model(graph))
    nodes = [(n.name, list(n.input), list(n.output)) for n in model.graph.node]
    assert nodes == [
        ("Mul_0", ["images", "constant_0"], ["Mul_0:0"]),
        ("Relu_1", ["Mul_0:0"], ["probabilities"]),
    ]
    assert [constant.name for constant in model.graph.initializer] == ["constant_0"]
    onnx.checker.check_model(model)


@pytest.mark.cli
def test_a_checkout_after_the_pipeline_changes_nothing(built):
    """TensorFlow writes an empty assets/ folder into the SavedModel; DVC records files, not
    folders, so its first checkout after every export removed it and printed
    `M models/saved_model/`. The stage leaves no empty folder."""
    assert built.dvc("checkout").strip() == ""
    assert built.dvc("status").strip() == "Data and pipelines are up to date."
