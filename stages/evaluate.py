"""Stage 4: score the model on the test set; write the headline metrics, the per-digit scores,
the confusion data and images."""

import sys

import numpy as np
import pandas as pd

from mnist_cnn import mnist
from mnist_cnn.figures import plot_confusion_matrix, plot_image_grid, png_bytes
from mnist_cnn.files import (
    check_model_file,
    read_npz,
    remove_stale_temporaries,
    write_bytes,
    write_json,
    write_text,
)
from mnist_cnn.lock import check_recorded
from mnist_cnn.metrics import classification_metrics, confusion_matrix, digit_scores
from mnist_cnn.params import load_params
from mnist_cnn.runner import run_stage
from mnist_cnn.tensorflow_setup import make_deterministic


def main() -> None:
    params = load_params()
    paths, settings = params.paths, params.evaluate
    outputs = [paths.evaluate_images, paths.predictions, paths.per_digit, paths.evaluate_metrics]
    remove_stale_temporaries(outputs)
    check_recorded(paths.model)  # a damaged cache object checked out is refused here
    check_model_file(paths.model)
    test = read_npz(paths.test_data)
    images, actual = test["images"], test["labels"].astype(np.int64)
    # TensorFlow and Keras only now, after the inputs: they take seconds to import, and a
    # wrong param or a missing input is refused at once.
    from mnist_cnn.model import load_model, predict_probabilities

    make_deterministic(params.seed, params.threads)
    model = load_model(paths.model)

    probabilities = predict_probabilities(model, images, settings.batch_size)
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
    for name, figure in figures.items():
        write_bytes(paths.evaluate_images / name, png_bytes(figure))
    table = pd.DataFrame({"actual": actual, "predicted": predicted})
    write_text(paths.predictions, table.to_csv(index=False))
    scores = digit_scores(actual, predicted, mnist.NUM_CLASSES)
    write_text(paths.per_digit, scores.round(6).to_csv(index=False))
    write_json(paths.evaluate_metrics, metrics)
    print(f"test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}")


if __name__ == "__main__":
    sys.exit(run_stage(main, "evaluate"))
