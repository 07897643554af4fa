"""Stage 2: parse and validate the IDX files, split off a validation set, write .npz files."""

import sys

import numpy as np

from mnist_cnn import mnist
from mnist_cnn.files import remove_stale_temporaries, write_npz
from mnist_cnn.params import load_params
from mnist_cnn.runner import run_stage
from mnist_cnn.splits import split_validation, subset


def main() -> None:
    params = load_params()
    paths, settings = params.paths, params.preprocess
    raw = paths.raw_dir
    train_pool = mnist.load_pair(raw / mnist.TRAIN_IMAGES, raw / mnist.TRAIN_LABELS)
    test = mnist.load_pair(raw / mnist.TEST_IMAGES, raw / mnist.TEST_LABELS)

    # Hold out the validation images first, then take the subsets: any max_train_images works,
    # and the validation set depends only on the seed and validation_images.
    rng = np.random.default_rng(params.seed)
    train, validation = split_validation(*train_pool, settings.validation_images, rng)
    train = subset(*train, settings.max_train_images, rng)
    test = subset(*test, settings.max_test_images, rng)

    outputs = {paths.train_data: train, paths.validation_data: validation, paths.test_data: test}
    remove_stale_temporaries(list(outputs))
    for path, (images, labels) in outputs.items():
        write_npz(path, {"images": images, "labels": labels})
        print(f"{path}: {len(images)} images")


if __name__ == "__main__":
    sys.exit(run_stage(main, "preprocess"))
