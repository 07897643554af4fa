"""The evaluate stage's pictures: the confusion matrix and grids of digits with their
predictions, as PNG bytes that depend only on the picture."""

import io

import numpy as np
from matplotlib.figure import Figure


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
