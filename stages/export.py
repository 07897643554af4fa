"""Stage 5: export the trained model for serving, as a SavedModel (TensorFlow Serving), an ONNX
model and a TFLite model, and check that each predicts what the Keras model in float32 predicts.

All three compute in float32, whatever precision trained the model, and have one signature:
input `images`, float32 [N, 28, 28, 1], raw 0-255 pixels (white ink on black, as MNIST);
output `probabilities`, float32 [N, 10].
"""

import hashlib
import logging
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import stages.quiet_tensorflow  # noqa: F401  (before Keras: quiets TensorFlow's start-up log)

# isort: split
import keras
import numpy as np
import onnx
import onnxruntime
import tensorflow as tf
import tf2onnx
from ai_edge_litert.interpreter import Interpreter
from tensorflow.core.protobuf import fingerprint_pb2

from stages import mnist
from stages.errors import PipelineError, run_stage
from stages.files import (
    read_npz,
    remove_stale_temporaries,
    replace_directory,
    scratch_directory_beside,
    write_bytes,
    write_json,
)
from stages.model_file import load_model
from stages.params import PathsParams, load_params
from stages.quiet_tensorflow import native_stderr_filtered
from stages.runtime import available_cores, make_deterministic

SIGNATURE = "serving_default"
INPUT = "images"
OUTPUT = "probabilities"
FORMATS = ("saved_model", "onnx", "tflite")

# What the converters and LiteRT print on every run: notes, not problems.
CONVERTER_NOISE = re.compile(
    r"Ignored (output_format|drop_control_dependency)"
    r"|Reading SavedModel|Reading meta graph|Restoring SavedModel|SavedModel load for tags"
    r"|fingerprinting\.cc|loader\.cc|tf_tfl_flatbuffer_helpers\.cc|flatbuffer_export\.cc"
    r"|Created TensorFlow Lite XNNPACK delegate"
)


def export_files(paths: PathsParams) -> dict[str, Path]:
    """Where each format goes, keyed as FORMATS."""
    return {
        "saved_model": Path(paths.saved_model),
        "onnx": Path(paths.onnx_model),
        "tflite": Path(paths.tflite_model),
    }


def float32_config(config: object) -> object:
    """A Keras model config with every layer's dtype policy made float32, so that the exports
    compute in float32 whatever precision (mixed_bfloat16, mixed_float16) trained the model."""
    if isinstance(config, list):
        return [float32_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy":
        return {**config, "config": {**config["config"], "name": "float32"}}
    return {key: float32_config(value) for key, value in config.items()}


def float32_copy(model: keras.Model) -> keras.Model:
    """The same architecture in float32, with the same weights (kept in float32 under mixed
    precision too)."""
    copy = type(model).from_config(float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def serving_module(model: keras.Model) -> tf.Module:
    """What all three formats are made from: one function, `serve`, and the weights it reads.

    Only the weights' tf.Variables are saved with it, in the model's order, not the Keras
    objects: with the Keras model inside, TFLite's converter left the weights as variables that
    nothing initialises (every prediction NaN), and Keras' own ExportArchive saves them in a
    different order in every process.
    """
    side = mnist.IMAGE_SIDE
    module = tf.Module()
    module.weights = [variable.value for variable in model.variables]
    module.serve = tf.function(
        lambda images: {OUTPUT: model(images, training=False)},
        input_signature=[tf.TensorSpec([None, side, side, 1], tf.float32, name=INPUT)],
        autograph=False,
    )
    return module


def stable_fingerprint(data: bytes) -> bytes:
    """A SavedModel's fingerprint.pb with its random uuid replaced by one derived from the
    other fields (hashes of the graph, signatures and weights): equal models, equal bytes."""
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(data)
    fingerprint.ClearField("uuid")
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))
    return fingerprint.SerializeToString(deterministic=True)


def save_saved_model(serving: tf.Module, path: Path) -> None:
    try:
        tf.saved_model.save(serving, str(path), signatures={SIGNATURE: serving.serve})
    except tf.errors.OpError as error:  # TensorFlow's own file system: a full disk lands here
        raise PipelineError(f"{path}: could not write ({error.message})") from None
    fingerprint = path / "fingerprint.pb"
    fingerprint.write_bytes(stable_fingerprint(fingerprint.read_bytes()))


def canonical_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename the graph's nodes, intermediate tensors and constants by their position.

    tf2onnx numbers the names it makes in an order that depends on Python's hash seed, so the
    same model comes out with different bytes in different processes. The graph's input and
    output keep their names.
    """
    graph = model.graph
    kept = {value.name for value in graph.input} | {value.name for value in graph.output}
    renamed: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        node.name = f"{node.op_type}_{index}"
        for position, output in enumerate(node.output):
            if output and output not in kept:
                renamed[output] = f"{node.name}:{position}"
    constants = {constant.name: constant for constant in graph.initializer}
    ordered = []
    for node in graph.node:
        for name in node.input:
            if name in constants and name not in renamed:
                renamed[name] = f"constant_{len(ordered)}"
                ordered.append(constants[name])
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for constant in ordered:
        constant.name = renamed[constant.name]
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    for value in graph.value_info:
        value.name = renamed.get(value.name, value.name)
    return model


def onnx_bytes(serving: tf.Module, opset: int) -> bytes:
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # it logs each step at INFO
    model, _ = tf2onnx.convert.from_function(
        serving.serve, input_signature=serving.serve.input_signature, opset=opset
    )
    model = canonical_names(model)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def tflite_bytes(saved_model: Path) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), [SIGNATURE])
    return converter.convert()


def batches(images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Float32 [N, 28, 28, 1] slices of uint8 [N, 28, 28] images: what every format takes."""
    pixels = images[..., None].astype(np.float32)
    return [pixels[start : start + batch_size] for start in range(0, len(pixels), batch_size)]


Predict = Callable[[np.ndarray], np.ndarray]


def runtimes(files: dict[str, Path], threads: int) -> dict[str, Predict]:
    """A predict function for each export file (keyed as FORMATS), each in its own runtime:
    TensorFlow, onnxruntime, LiteRT. `threads`: per runtime; 0 for every core."""
    serve = tf.saved_model.load(str(files["saved_model"])).signatures[SIGNATURE]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default, every core
    session = onnxruntime.InferenceSession(
        str(files["onnx"]), options, providers=["CPUExecutionProvider"]
    )
    interpreter = Interpreter(
        model_path=str(files["tflite"]), num_threads=threads or available_cores()
    )
    tflite = interpreter.get_signature_runner(SIGNATURE)
    return {
        "saved_model": lambda x: serve(**{INPUT: tf.constant(x)})[OUTPUT].numpy(),
        "onnx": lambda x: session.run([OUTPUT], {INPUT: x})[0],
        "tflite": lambda x: tflite(**{INPUT: x})[OUTPUT],
    }


def keras_predict(model: keras.Model) -> Predict:
    return lambda x: model(x, training=False).numpy()


def predict_in_batches(predict: Predict, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([predict(batch) for batch in batches(images, batch_size)])


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """How far `candidate`'s probabilities are from `reference`'s on the same images."""
    agreement = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    difference = float(np.abs(reference - candidate).max())
    return {
        "agreement": round(agreement, 6),
        "max_probability_difference": float(f"{difference:.3g}"),
    }


def check_parity(path: Path, result: dict, min_agreement: float) -> None:
    if result["agreement"] < min_agreement:
        raise PipelineError(
            f"{path}: predicts the float32 Keras model's digit for {result['agreement']:.2%} of"
            f" the test images, expected at least {min_agreement:.2%} (export.min_agreement)"
        )


def headline_metrics(details: dict) -> dict:
    """The worst format's agreement, and the float32 model's with the trained one (informs;
    not checked)."""
    return {
        "agreement": min(details[name]["agreement"] for name in FORMATS),
        "vs_float32": details["float32_vs_training_precision"]["agreement"],
    }


def how_to_restore(paths: PathsParams) -> str:
    """What a failed export leaves, told truthfully: run alone, the last exports stay where
    they were; `dvc repro` deletes a stage's outputs before running it."""
    return (
        "no export written (after dvc repro: `dvc checkout export` and "
        f"`git checkout {paths.export_metrics}` restore the last recorded ones)"
    )


def remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def main() -> None:
    params = load_params()
    paths, settings = params.paths, params.export
    outputs = export_files(paths)
    reports = [Path(paths.export_metrics), Path(paths.export_details)]
    remove_stale_temporaries([*outputs.values(), *reports])
    make_deterministic(params.seed, params.threads)
    trained = load_model(Path(paths.model))
    images = read_npz(Path(paths.test_data))["images"]
    float32_model = float32_copy(trained)
    # The exports are checked against the model they are made from, the float32 copy: that
    # measures the conversion. How far the copy is from the model in its training precision
    # (bfloat16 or float16 rounding; none under float32) is recorded, not checked: an
    # under-trained model has near-ties whose digit flips with the precision.
    reference = predict_in_batches(keras_predict(float32_model), images, settings.batch_size)
    in_training_precision = predict_in_batches(
        keras_predict(trained), images, settings.batch_size
    )
    serving = serving_module(float32_model)

    details: dict = {
        "test_images": len(images),
        "float32_vs_training_precision": parity(in_training_precision, reference),
    }
    try:
        with scratch_directory_beside(outputs["saved_model"]) as scratch:
            made = {
                "saved_model": scratch / "saved_model",
                "onnx": scratch / "model.onnx",
                "tflite": scratch / "model.tflite",
            }
            with native_stderr_filtered(CONVERTER_NOISE):
                save_saved_model(serving, made["saved_model"])
                made["onnx"].write_bytes(onnx_bytes(serving, settings.onnx_opset))
                made["tflite"].write_bytes(tflite_bytes(made["saved_model"]))
                probabilities = {
                    name: predict_in_batches(predict, images, settings.batch_size)
                    for name, predict in runtimes(made, params.threads).items()
                }
            # Every format is checked before any is written.
            for name in FORMATS:
                result = parity(reference, probabilities[name])
                check_parity(outputs[name], result, settings.min_agreement)
                details[name] = {**result, "size_bytes": size_bytes(made[name])}
            try:
                replace_directory(made["saved_model"], outputs["saved_model"])
                write_bytes(outputs["onnx"], made["onnx"].read_bytes())
                write_bytes(outputs["tflite"], made["tflite"].read_bytes())
                write_json(Path(paths.export_details), details)
                write_json(Path(paths.export_metrics), headline_metrics(details))
            except BaseException:  # disk full, Ctrl-C: never a new SavedModel beside old files
                for path in [*outputs.values(), *reports]:
                    remove_path(path)
                raise
    except PipelineError as error:
        raise PipelineError(f"{error}; {how_to_restore(paths)}") from None
    training_precision = trained.layers[0].dtype_policy.name
    if training_precision != "float32":
        effect = details["float32_vs_training_precision"]
        print(
            f"{paths.model} in float32 instead of {training_precision}: the same digit on"
            f" {effect['agreement']:.2%} of {len(images)} test images, probabilities within"
            f" {effect['max_probability_difference']:.2g} (recorded, not checked)"
        )
    for name in FORMATS:
        result = details[name]
        print(
            f"{outputs[name]}: the float32 Keras model's digit on {result['agreement']:.2%} of"
            f" {len(images)} test images, probabilities within"
            f" {result['max_probability_difference']:.2g}, {result['size_bytes'] / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    sys.exit(run_stage(main))
