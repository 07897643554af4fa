"""The model for serving, in three formats made from one float32 function: a SavedModel
(TensorFlow Serving), an ONNX model (onnxruntime) and a TFLite model (LiteRT), each written so
that equal weights give equal bytes.

All three compute in float32, whatever precision trained the model, and have one signature:
input `images`, float32 [N, 28, 28, 1], raw 0-255 pixels (white ink on black, as MNIST);
output `probabilities`, float32 [N, 10].
"""

import hashlib
import logging
import re
from pathlib import Path

import keras
import onnx
import tensorflow as tf
import tf2onnx
from tensorflow.core.protobuf import fingerprint_pb2

from mnist_cnn import mnist
from mnist_cnn.errors import PipelineError
from mnist_cnn.params import PathsParams

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
        "saved_model": paths.saved_model,
        "onnx": paths.onnx_model,
        "tflite": paths.tflite_model,
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
    # TensorFlow writes an empty assets/ folder; DVC records files, not folders, so its first
    # checkout after every export removed it and reported the SavedModel modified.
    assets = path / "assets"
    if assets.is_dir() and not any(assets.iterdir()):
        assets.rmdir()


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


def size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def make_exports(model: keras.Model, folder: Path, onnx_opset: int) -> dict[str, Path]:
    """Write the three formats of the float32 `model` into `folder`; return them keyed as
    FORMATS."""
    serving = serving_module(model)
    made = {
        "saved_model": folder / "saved_model",
        "onnx": folder / "model.onnx",
        "tflite": folder / "model.tflite",
    }
    save_saved_model(serving, made["saved_model"])
    made["onnx"].write_bytes(onnx_bytes(serving, onnx_opset))
    made["tflite"].write_bytes(tflite_bytes(made["saved_model"]))
    return made
