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
    """Images with 'predicted (true)' captions; wrong predictions in red.

    Drawn as one picture of all the digits, in one Axes: a grid of Axes, one per digit, took
    ten times as long to draw, most of the evaluate stage's own time."""
    side = images.shape[1]
    columns = min(len(images), 5) or 1
    rows = max(1, -(-len(images) // columns))
    gap, caption = 4, 9  # pixels between digits, and above each for its caption
    cell_width, cell_height = side + gap, side + caption + gap
    mosaic = np.zeros((rows * cell_height, columns * cell_width), images.dtype)
    height = 2.2 * rows + 0.4  # inches: 0.4 for the title
    figure = Figure(figsize=(2 * columns, height))
    figure.suptitle(title)
    axes = figure.add_axes((0.02, 0.02, 0.96, 0.96 - 0.4 / height))
    axes.axis("off")
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = row * cell_height + caption, column * cell_width + gap // 2
        mosaic[top : top + side, left : left + side] = image
        right = actual[index] == predicted[index]
        axes.text(
            left + side / 2,
            top - 2,
            f"{predicted[index]} (true {actual[index]})",
            ha="center",
            va="bottom",
            color="black" if right else "red",
            fontsize=10,
        )
    axes.imshow(mosaic, cmap="gray_r")
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" tag: the bytes then depend on the picture, not on matplotlib's version.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()
