"""The exports: the model for serving in three formats made from one float32 function, a
SavedModel (TensorFlow Serving), an ONNX model (onnxruntime) and a TFLite model (LiteRT), each
written so that equal weights give equal bytes, and each run in its own runtime.

All three compute in float32, whatever precision trained the model, and have one signature:
input `images`, float32 [N, 28, 28, 1], raw 0-255 pixels (white ink on black, as MNIST);
output `probabilities`, float32 [N, 10].

Each format is one record, ExportFormat, in FORMATS: the export stage, the parity check, the
latency benchmark and the tests loop over them.
"""

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime
import tensorflow as tf
import tf2onnx
from ai_edge_litert.interpreter import Interpreter
from tensorflow.core.protobuf import fingerprint_pb2

from mnist_cnn import mnist
from mnist_cnn.errors import PipelineError
from mnist_cnn.params import PathsParams
from mnist_cnn.tensorflow_setup import available_cores

SIGNATURE = "serving_default"
INPUT = "images"
OUTPUT = "probabilities"

# Probabilities [N, 10] of float32 images [N, 28, 28, 1]: a format run in its runtime.
Predict = Callable[[np.ndarray], np.ndarray]

# What the converters and LiteRT print on every run: notes, not problems.
CONVERTER_NOISE = re.compile(
    r"Ignored (output_format|drop_control_dependency)"
    r"|Reading SavedModel|Reading meta graph|Restoring SavedModel|SavedModel load for tags"
    r"|fingerprinting\.cc|loader\.cc|tf_tfl_flatbuffer_helpers\.cc|flatbuffer_export\.cc"
    r"|Created TensorFlow Lite XNNPACK delegate"
)


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


def write_saved_model(
    serving: tf.Module, path: Path, made: Mapping[str, Path], opset: int
) -> None:
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


def write_onnx(serving: tf.Module, path: Path, made: Mapping[str, Path], opset: int) -> None:
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # it logs each step at INFO
    model, _ = tf2onnx.convert.from_function(
        serving.serve, input_signature=serving.serve.input_signature, opset=opset
    )
    model = canonical_names(model)
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString(deterministic=True))


def write_tflite(serving: tf.Module, path: Path, made: Mapping[str, Path], opset: int) -> None:
    """Converted from the SavedModel written before it."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(made["saved_model"]), [SIGNATURE])
    path.write_bytes(converter.convert())


def run_saved_model(path: Path, threads: int) -> Predict:
    """In TensorFlow (its threads are the process's, set by make_deterministic)."""
    serve = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    return lambda x: serve(**{INPUT: tf.constant(x)})[OUTPUT].numpy()


def run_onnx(path: Path, threads: int) -> Predict:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default, every core
    session = onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )
    return lambda x: session.run([OUTPUT], {INPUT: x})[0]


def run_tflite(path: Path, threads: int) -> Predict:
    interpreter = Interpreter(model_path=str(path), num_threads=threads or available_cores())
    tflite = interpreter.get_signature_runner(SIGNATURE)
    return lambda x: tflite(**{INPUT: x})[OUTPUT]


@dataclass(frozen=True)
class ExportFormat:
    """One format the export stage writes. A new format is one record in FORMATS, its path in
    dvc.yaml (vars: paths, the export stage's outs, an artifact) and in params.py's PathsParams,
    its runtime's package in requirements.in and its row in docs/serving.md."""

    name: str  # its key in models/exports.json
    title: str  # how a table names it: the format, then its runtime
    path_key: str  # its entry in dvc.yaml's vars: paths
    # Writes the format of the serving module to a path; `made`: the formats written before
    # it (FORMATS' order), the ONNX opset. Equal weights must give equal bytes.
    write: Callable[[tf.Module, Path, Mapping[str, Path], int], None]
    # Its runtime, loaded from a path, with a number of threads (0: every core).
    run: Callable[[Path, int], Predict]

    def path(self, paths: PathsParams) -> Path:
        """Where the pipeline keeps it."""
        return getattr(paths, self.path_key)


FORMATS = (
    ExportFormat(
        "saved_model", "SavedModel (TensorFlow)", "saved_model", write_saved_model, run_saved_model
    ),
    ExportFormat("onnx", "ONNX (onnxruntime)", "onnx_model", write_onnx, run_onnx),
    ExportFormat("tflite", "TFLite (LiteRT)", "tflite_model", write_tflite, run_tflite),
)


def export_files(paths: PathsParams) -> dict[str, Path]:
    """Where each format goes, by name."""
    return {export.name: export.path(paths) for export in FORMATS}


def size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def make_exports(
    model: keras.Model, folder: Path, paths: PathsParams, onnx_opset: int
) -> dict[str, Path]:
    """Write every format of the float32 `model` into `folder`, each under the name the
    pipeline gives it; return them by name."""
    serving = serving_module(model)
    made: dict[str, Path] = {}
    for export in FORMATS:
        made[export.name] = folder / export.path(paths).name
        export.write(serving, made[export.name], made, onnx_opset)
    return made
