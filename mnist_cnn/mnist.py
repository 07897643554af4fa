"""The four MNIST files: their names, their SHA-256 and sizes (whichever mirror serves them,
the bytes are these) and how to read them.

IDX format (http://yann.lecun.com/exdb/mnist/): big-endian int32 magic number, item count,
then rows and columns for images; then one unsigned byte per pixel or label.
"""

import gzip
import zlib
from pathlib import Path

import numpy as np

from mnist_cnn.errors import PipelineError

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

SHA256 = {
    TRAIN_IMAGES: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    TRAIN_LABELS: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    TEST_IMAGES: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    TEST_LABELS: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
# Their sizes in bytes: a mirror that sends more is refused as soon as it does.
SIZE = {
    TRAIN_IMAGES: 9_912_422,
    TRAIN_LABELS: 28_881,
    TEST_IMAGES: 1_648_877,
    TEST_LABELS: 4_542,
}

NUM_CLASSES = 10
IMAGE_SIDE = 28
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
    if (rows, columns) != (IMAGE_SIDE, IMAGE_SIDE):
        side = IMAGE_SIDE
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
    if labels.size and labels.max() >= NUM_CLASSES:
        raise PipelineError(
            f"{source}: label {labels.max()} found, expected 0-{NUM_CLASSES - 1}"
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
