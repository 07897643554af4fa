"""The data sets the model sees: the validation set held out of MNIST's training images, and
the smaller random subsets quick runs and tests use."""

import numpy as np

from mnist_cnn.errors import PipelineError
from mnist_cnn.params import PARAMS_FILE


def subset(
    images: np.ndarray, labels: np.ndarray, limit: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random subset of `limit` examples in their original order (all when limit is None)."""
    if limit is None or limit >= len(images):
        return images, labels
    keep = np.sort(rng.choice(len(images), size=limit, replace=False))
    return images[keep], labels[keep]


def split_validation(
    images: np.ndarray, labels: np.ndarray, validation_images: int, rng: np.random.Generator
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Move `validation_images` random examples out of the training set."""
    if validation_images >= len(images):
        raise PipelineError(
            f"{PARAMS_FILE}: preprocess.validation_images: {validation_images} leaves no training "
            f"images, expected fewer than the {len(images)} available"
        )
    is_validation = np.zeros(len(images), dtype=bool)
    is_validation[rng.choice(len(images), size=validation_images, replace=False)] = True
    return (
        (images[~is_validation], labels[~is_validation]),
        (images[is_validation], labels[is_validation]),
    )
