import gzip

import numpy as np
import pytest

from mnist_cnn import mnist
from mnist_cnn.errors import PipelineError
from mnist_cnn.mnist import load_pair, parse_images, parse_labels
from mnist_cnn.splits import split_validation, subset
from tests.helpers import idx_images, idx_labels, write_gz


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    return np.array([0, 1, 2, 3, 7, 8, 9], dtype=np.uint8)


def test_parses_images_and_labels(images, labels):
    assert np.array_equal(parse_images(idx_images(images), "x"), images)
    assert np.array_equal(parse_labels(idx_labels(labels), "y"), labels)


@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda data: data[:10], "too short for an IDX header"),
        (
            lambda data: np.array([2049], ">i4").tobytes() + data[4:],
            "magic number 2049, expected 2051",
        ),
        (lambda data: data[:-1], f"{16 + 7 * 784 - 1} bytes, expected {16 + 7 * 784}"),
        (lambda data: data + b"\0", f"{16 + 7 * 784 + 1} bytes, expected {16 + 7 * 784}"),
    ],
)
def test_malformed_images_are_named(images, mangle, problem):
    with pytest.raises(PipelineError, match=f"^images.idx: .*{problem}"):
        parse_images(mangle(idx_images(images)), "images.idx")


def test_images_of_the_wrong_size(images):
    data = np.array([2051, 7, 28 * 28, 1], ">i4").tobytes() + images.tobytes()
    with pytest.raises(PipelineError, match="images are 784x1, expected 28x28"):
        parse_images(data, "images.idx")


def test_labels_out_of_range(labels):
    labels[3] = 10
    with pytest.raises(PipelineError, match="labels.idx: label 10 found, expected 0-9"):
        parse_labels(idx_labels(labels), "labels.idx")


def test_count_mismatch_and_bad_gzip(tmp_path, images, labels):
    images_path = write_gz(tmp_path / "images.gz", idx_images(images))
    labels_path = write_gz(tmp_path / "labels.gz", idx_labels(labels[:5]))
    with pytest.raises(PipelineError, match="7 images but .*labels.gz has 5 labels"):
        load_pair(images_path, labels_path)
    labels_path.write_bytes(b"not gzip at all")
    with pytest.raises(PipelineError, match="labels.gz: not a valid gzip file"):
        load_pair(images_path, labels_path)
    labels_path.write_bytes(gzip.compress(idx_labels(labels))[:-9])
    with pytest.raises(PipelineError, match="labels.gz: not a valid gzip file"):
        load_pair(images_path, labels_path)


def test_real_test_labels_parse(mnist_dir):
    labels = parse_labels(gzip.decompress((mnist_dir / mnist.TEST_LABELS).read_bytes()), "t10k")
    assert labels.shape == (10_000,)
    assert set(np.unique(labels)) == set(range(10))


def test_validation_split_is_disjoint_and_seeded():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1)
    labels = np.arange(100, dtype=np.uint8) % 10
    (train, _), (validation, _) = split_validation(images, labels, 20, np.random.default_rng(1))
    (_, _), (again, _) = split_validation(images, labels, 20, np.random.default_rng(1))
    (_, _), (other, _) = split_validation(images, labels, 20, np.random.default_rng(2))
    assert len(train) == 80 and len(validation) == 20
    assert set(train.ravel()).isdisjoint(validation.ravel())
    assert np.array_equal(validation, again)
    assert not np.array_equal(validation, other)


def test_validation_larger_than_training_set_is_refused():
    images = np.zeros((10, 1, 1), dtype=np.uint8)
    with pytest.raises(PipelineError, match="preprocess.validation_images: 10 leaves no training"):
        split_validation(images, images[:, 0, 0], 10, np.random.default_rng(0))


def test_subset_keeps_order_and_size():
    images = np.arange(50, dtype=np.uint8).reshape(50, 1, 1)
    kept, _ = subset(images, images[:, 0, 0], 10, np.random.default_rng(0))
    assert len(kept) == 10 and np.all(np.diff(kept.ravel().astype(int)) > 0)
    everything, _ = subset(images, images[:, 0, 0], None, np.random.default_rng(0))
    assert everything is images
