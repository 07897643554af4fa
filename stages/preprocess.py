"""Stage 2: parse and validate the IDX files, split off a validation set, write .npz files.

IDX format (http://yann.lecun.com/exdb/mnist/): big-endian int32 magic number, item count,
then rows and columns for images; then one unsigned byte per pixel or label.
"""

import gzip
import sys
import zlib
from pathlib import Path

import numpy as np

from stages import mnist
from stages.errors import PipelineError, run_stage
from stages.files import remove_stale_temporaries, write_npz
from stages.params import PARAMS_FILE, load_params

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def read_gzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run the download stage first)") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise PipelineError(f"{path}: not a valid gzip file ({exc})") from None


def header(data: bytes, fields: int, source: str) -> list[int]:
    if len(data) < 4 * fields:
        raise PipelineError(f"{source}: {len(data)} bytes is too short for an IDX header")
    return np.frombuffer(data, dtype=">i4", count=fields).tolist()


def check_length(data: bytes, header_bytes: int, expected_items: int, source: str) -> None:
    if len(data) != header_bytes + expected_items:
        raise PipelineError(
            f"{source}: {len(data)} bytes, expected {header_bytes + expected_items} "
            f"from its header ({header_bytes} header bytes + {expected_items} data bytes)"
        )


def parse_images(data: bytes, source: str) -> np.ndarray:
    """IDX image bytes -> uint8 array (count, 28, 28)."""
    magic, count, rows, columns = header(data, 4, source)
    if magic != IMAGES_MAGIC:
        raise PipelineError(f"{source}: magic number {magic}, expected {IMAGES_MAGIC} (IDX images)")
    if (rows, columns) != (mnist.IMAGE_SIDE, mnist.IMAGE_SIDE):
        side = mnist.IMAGE_SIDE
        raise PipelineError(f"{source}: images are {rows}x{columns}, expected {side}x{side}")
    check_length(data, 16, count * rows * columns, source)
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, columns).copy()


def parse_labels(data: bytes, source: str) -> np.ndarray:
    """IDX label bytes -> uint8 array (count,) of digits 0-9."""
    magic, count = header(data, 2, source)
    if magic != LABELS_MAGIC:
        raise PipelineError(f"{source}: magic number {magic}, expected {LABELS_MAGIC} (IDX labels)")
    check_length(data, 8, count, source)
    labels = np.frombuffer(data, dtype=np.uint8, offset=8).copy()
    if labels.size and labels.max() >= mnist.NUM_CLASSES:
        raise PipelineError(
            f"{source}: label {labels.max()} found, expected 0-{mnist.NUM_CLASSES - 1}"
        )
    return labels


def load_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = parse_images(read_gzip(images_path), str(images_path))
    labels = parse_labels(read_gzip(labels_path), str(labels_path))
    if len(images) != len(labels):
        raise PipelineError(
            f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels


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


def main() -> None:
    params = load_params()
    paths, settings = params.paths, params.preprocess
    raw_dir = Path(paths.raw_dir)
    train_pool = load_pair(raw_dir / mnist.TRAIN_IMAGES, raw_dir / mnist.TRAIN_LABELS)
    test = load_pair(raw_dir / mnist.TEST_IMAGES, raw_dir / mnist.TEST_LABELS)

    # Hold out the validation images first, then take the subsets: any max_train_images works,
    # and the validation set depends only on the seed and validation_images.
    rng = np.random.default_rng(params.seed)
    train, validation = split_validation(*train_pool, settings.validation_images, rng)
    train = subset(*train, settings.max_train_images, rng)
    test = subset(*test, settings.max_test_images, rng)

    outputs = {paths.train_data: train, paths.validation_data: validation, paths.test_data: test}
    remove_stale_temporaries([Path(path) for path in outputs])
    for path, (images, labels) in outputs.items():
        write_npz(Path(path), {"images": images, "labels": labels})
        print(f"{path}: {len(images)} images")


if __name__ == "__main__":
    sys.exit(run_stage(main))
