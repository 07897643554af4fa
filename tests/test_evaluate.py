import json

import keras
import numpy as np
import pandas as pd
import pytest

from mnist_cnn.files import write_npz
from mnist_cnn.metrics import classification_metrics, confusion_matrix, digit_scores
from mnist_cnn.model import build_model, save_model
from mnist_cnn.params import parse_params
from tests.helpers import TINY_MODEL, run_stage_cli, write_params


def one_hot_probabilities(predicted: list[int], confidence: float = 0.91) -> np.ndarray:
    probabilities = np.full((len(predicted), 10), (1 - confidence) / 9)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


def test_confusion_matrix_counts_actual_by_predicted():
    counts = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_metrics_on_a_known_case():
    actual, predicted = np.array([0, 0, 1, 1, 2]), [0, 1, 1, 1, 0]
    metrics = classification_metrics(actual, one_hot_probabilities(predicted))
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    scores = digit_scores(actual, np.array(predicted), 10).set_index("digit")
    assert list(scores.columns) == ["precision", "recall", "f1"]
    # class 0: 1 of 2 predicted zeros right, 1 of 2 zeros found
    assert scores.loc[0].tolist() == [0.5, 0.5, 0.5]
    # class 1: 2 of 3 predicted ones right, both ones found
    assert scores.loc[1, "precision"] == pytest.approx(2 / 3)
    assert scores.loc[1, "f1"] == pytest.approx(0.8)
    # class 2 never predicted, classes 3-9 absent: zero, not NaN
    assert scores.loc[2].tolist() == [0.0, 0.0, 0.0]
    assert set(metrics) == {"accuracy", "loss"}


def test_loss_matches_keras_cross_entropy():
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(10), size=64).astype(np.float32)
    actual = rng.integers(0, 10, 64)
    expected = keras.losses.SparseCategoricalCrossentropy()(actual, probabilities)
    assert classification_metrics(actual, probabilities)["loss"] == pytest.approx(
        float(expected), abs=1e-5
    )


@pytest.mark.cli
def test_evaluate_stage_writes_metrics_table_and_images(tmp_path):
    raw = write_params(
        tmp_path, {**TINY_MODEL, "evaluate.sample_images": 6, "evaluate.misclassified_images": 4}
    )
    params = parse_params(raw)
    model = build_model(params.model)
    model.compile(loss="sparse_categorical_crossentropy")
    save_model(model, tmp_path / params.paths.model)
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, 50).astype(np.uint8)
    images = rng.integers(0, 256, (50, 28, 28)).astype(np.uint8)
    write_npz(tmp_path / params.paths.test_data, {"images": images, "labels": labels})

    result = run_stage_cli("evaluate", tmp_path)
    assert result.returncode == 0, result.stderr

    metrics = json.loads((tmp_path / params.paths.evaluate_metrics).read_text())
    table = pd.read_csv(tmp_path / params.paths.predictions)
    assert list(table.columns) == ["actual", "predicted"]
    assert table["actual"].tolist() == labels.tolist()
    predicted = model.predict(images[..., None], verbose=0).argmax(axis=1)
    assert table["predicted"].tolist() == predicted.tolist()
    assert metrics["accuracy"] == pytest.approx(float((predicted == labels).mean()))
    assert set(metrics) == {"accuracy", "loss"}
    scores = pd.read_csv(tmp_path / params.paths.per_digit)
    assert list(scores.columns) == ["digit", "precision", "recall", "f1"]
    assert scores["digit"].tolist() == list(range(10))
    images_dir = tmp_path / params.paths.evaluate_images
    for name in ("confusion_matrix.png", "samples.png", "misclassified.png"):
        assert (images_dir / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(path.name for path in images_dir.iterdir()) == [
        "confusion_matrix.png",
        "misclassified.png",
        "samples.png",
    ]
