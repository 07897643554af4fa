"""The exports, each run in its own runtime (mnist_cnn/exports.py), compared with the Keras
model they were made from."""

from pathlib import Path

import keras
import numpy as np

from mnist_cnn.errors import PipelineError
from mnist_cnn.exports import FORMATS, Predict


def batches(images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Float32 [N, 28, 28, 1] slices of uint8 [N, 28, 28] images: what every format takes."""
    pixels = images[..., None].astype(np.float32)
    return [pixels[start : start + batch_size] for start in range(0, len(pixels), batch_size)]


def keras_predict(model: keras.Model) -> Predict:
    return lambda x: model(x, training=False).numpy()


def predict_in_batches(predict: Predict, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([predict(batch) for batch in batches(images, batch_size)])


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
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
        "agreement": min(details[export.name]["agreement"] for export in FORMATS),
        "vs_float32": details["float32_vs_training_precision"]["agreement"],
    }
