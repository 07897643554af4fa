"""The exports run in their own runtimes (TensorFlow, onnxruntime, LiteRT) and compared with
the Keras model they were made from."""

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import onnxruntime
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from mnist_cnn.errors import PipelineError
from mnist_cnn.serving import FORMATS, INPUT, OUTPUT, SIGNATURE
from mnist_cnn.tensorflow_setup import available_cores


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
