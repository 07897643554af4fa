"""Stage 4: score the model on the test set; write the headline metrics, the per-digit scores,
the confusion data and images."""

import io
import sys
from pathlib import Path

import stages.quiet_tensorflow  # noqa: F401  (before Keras: quiets TensorFlow's start-up log)

# isort: split
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.figure import Figure

from stages import mnist
from stages.errors import run_stage
from stages.files import (
    read_npz,
    remove_stale_temporaries,
    write_bytes,
    write_json,
    write_text,
)
from stages.model_file import load_model
from stages.params import load_params
from stages.runtime import make_deterministic

# Keras clips probabilities to this before the log in its cross-entropy; match it.
EPSILON = 1e-7


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[i, j] = how many images of class i were predicted as class j."""
    return np.bincount(actual * classes + predicted, minlength=classes * classes).reshape(
        classes, classes
    )


def digit_scores(actual: np.ndarray, predicted: np.ndarray, classes: int) -> pd.DataFrame:
    """Precision, recall and F1 of each digit, one row per digit; 0, not NaN, for a digit
    never predicted or never present."""
    counts = confusion_matrix(actual, predicted, classes)
    true_positives = np.diag(counts).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(true_positives / counts.sum(axis=0))
        recall = np.nan_to_num(true_positives / counts.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    scores = {"digit": range(classes), "precision": precision, "recall": recall, "f1": f1}
    return pd.DataFrame(scores)


def classification_metrics(actual: np.ndarray, probabilities: np.ndarray) -> dict:
    """The headline numbers: accuracy, cross-entropy loss, macro F1 (the mean of the digits'
    F1). Per digit, see digit_scores: a plot, not 30 metric columns."""
    predicted = probabilities.argmax(axis=1)
    f1 = digit_scores(actual, predicted, probabilities.shape[1])["f1"]
    picked = probabilities[np.arange(len(actual)), actual]
    loss = -np.log(np.clip(picked, EPSILON, 1.0)).mean()
    return {
        "accuracy": round(float(np.mean(predicted == actual)), 6),
        "loss": round(float(loss), 6),
        "macro_f1": round(float(f1.mean()), 6),
    }


def plot_confusion_matrix(counts: np.ndarray) -> Figure:
    figure = Figure(figsize=(7, 6))
    axes = figure.subplots()
    shown = axes.imshow(counts, cmap="Blues")
    figure.colorbar(shown, ax=axes)
    threshold = counts.max() / 2
    for (row, column), value in np.ndenumerate(counts):
        color = "white" if value > threshold else "black"
        axes.text(column, row, str(value), ha="center", va="center", color=color, fontsize=8)
    ticks = range(len(counts))
    axes.set(
        xticks=ticks, yticks=ticks, xlabel="Predicted", ylabel="Actual", title="Confusion matrix"
    )
    figure.tight_layout()
    return figure


def plot_image_grid(
    images: np.ndarray, actual: np.ndarray, predicted: np.ndarray, title: str
) -> Figure:
    """Images with 'predicted (true)' captions; wrong predictions in red."""
    columns = min(len(images), 5) or 1
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(2 * columns, 2.2 * rows + 0.4))
    figure.suptitle(title)
    for index, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        axes.axis("off")
        if index < len(images):
            axes.imshow(images[index], cmap="gray_r")
            right = actual[index] == predicted[index]
            axes.set_title(
                f"{predicted[index]} (true {actual[index]})",
                color="black" if right else "red",
                fontsize=10,
            )
    figure.tight_layout()
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" tag: the bytes then depend on the picture, not on matplotlib's version.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def main() -> None:
    params = load_params()
    paths, settings = params.paths, params.evaluate
    outputs = [paths.evaluate_images, paths.predictions, paths.per_digit, paths.evaluate_metrics]
    remove_stale_temporaries([Path(path) for path in outputs])
    make_deterministic(params.seed, params.threads)
    model = load_model(Path(paths.model))
    test = read_npz(Path(paths.test_data))
    images, actual = test["images"], test["labels"].astype(np.int64)

    # A dataset of our own, not the array: Keras' array adapter makes TensorFlow log a
    # spurious "NodeDef mentions attribute use_unbounded_threadpool" error line.
    batches = tf.data.Dataset.from_tensor_slices(images[..., None]).batch(settings.batch_size)
    probabilities = model.predict(batches, verbose=0)
    predicted = probabilities.argmax(axis=1)
    metrics = classification_metrics(actual, probabilities)

    all_wrong = np.flatnonzero(predicted != actual)
    wrong = all_wrong[: settings.misclassified_images]
    shown = slice(0, settings.sample_images)
    figures = {
        "confusion_matrix.png": plot_confusion_matrix(
            confusion_matrix(actual, predicted, mnist.NUM_CLASSES)
        ),
        "samples.png": plot_image_grid(
            images[shown], actual[shown], predicted[shown], "Test images: predicted (true)"
        ),
        "misclassified.png": plot_image_grid(
            images[wrong],
            actual[wrong],
            predicted[wrong],
            f"Misclassified: first {len(wrong)} of {len(all_wrong)}",
        ),
    }
    images_dir = Path(paths.evaluate_images)
    for name, figure in figures.items():
        write_bytes(images_dir / name, png_bytes(figure))
    table = pd.DataFrame({"actual": actual, "predicted": predicted})
    write_text(Path(paths.predictions), table.to_csv(index=False))
    scores = digit_scores(actual, predicted, mnist.NUM_CLASSES)
    write_text(Path(paths.per_digit), scores.round(6).to_csv(index=False))
    write_json(Path(paths.evaluate_metrics), metrics)
    print(f"test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
