"""The training history as files: the loss and accuracy curves (plots/train/) and the train
metrics (metrics/train.json), rewritten after every epoch so that a run can be followed as it
goes (`dvc exp show`, `dvc plots show`, VS Code's DVC extension)."""

from pathlib import Path

import keras
import pandas as pd

from mnist_cnn.files import write_json, write_text
from mnist_cnn.params import PathsParams

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
CURVE_COLUMNS = ["epoch", "train", "validation"]


class LiveCurves(keras.callbacks.Callback):
    """After every epoch, the curves and train metrics so far, written atomically: the last
    write is the run's result, the ones before let a person watch the run."""

    def __init__(self, paths: PathsParams) -> None:
        super().__init__()
        self.paths = paths
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.rows.append({"epoch": epoch + 1, **{k: (logs or {})[k] for k in HISTORY_COLUMNS[1:]}})
        write_history(pd.DataFrame(self.rows, columns=HISTORY_COLUMNS), self.paths)


def learning_curve(history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric per epoch on the training and validation sets: one plot's data.

    One file per plot, because DVC gives a stage's plot file one definition: the plot is
    declared with the stage (so the stage is saved in DVC's run-cache) and drawn by the
    train_validation template in .dvc/plots/.
    """
    curve = history[["epoch", metric, f"val_{metric}"]].set_axis(CURVE_COLUMNS, axis=1)
    return curve.round(6)


def summarize(history: pd.DataFrame) -> dict:
    """The train metrics: the epochs done and the validation accuracy after the last, the
    numbers worth a column in `dvc exp show` (the rest is in the curves).

    No validation loss: Keras computes it against the label-smoothed targets it trains on,
    and beside the evaluate stage's test loss (against the true labels) it would read as the
    same measure, five times worse. The loss curves show it, beside the training loss, which
    has the same definition."""
    last = history.iloc[-1]
    return {
        "epochs": int(last["epoch"]),
        "val_accuracy": round(float(last["val_accuracy"]), 6),
    }


def history_files(paths: PathsParams) -> list[Path]:
    return [paths.train_loss, paths.train_accuracy, paths.train_metrics]


def write_history(history: pd.DataFrame, paths: PathsParams) -> None:
    for metric, path in (("loss", paths.train_loss), ("accuracy", paths.train_accuracy)):
        write_text(path, learning_curve(history, metric).to_csv(index=False))
    write_json(paths.train_metrics, summarize(history))
