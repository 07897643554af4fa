"""Scores of a classifier on labelled images: accuracy, cross-entropy loss, the confusion
matrix and each digit's precision, recall and F1."""

import numpy as np
import pandas as pd

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
    """The headline numbers, a column each in `dvc exp show`: accuracy and cross-entropy loss
    (against the true labels). Per digit, see digit_scores: a plot, not 30 metric columns.
    No macro F1: on MNIST's balanced test set it repeats the accuracy to the fourth digit, and
    a column less lets the changed params fit a terminal beside the metrics."""
    predicted = probabilities.argmax(axis=1)
    picked = probabilities[np.arange(len(actual)), actual]
    loss = -np.log(np.clip(picked, EPSILON, 1.0)).mean()
    return {
        "accuracy": round(float(np.mean(predicted == actual)), 6),
        "loss": round(float(loss), 6),
    }
