"""Stage 1: fetch the four MNIST files into the raw data folder, verified by SHA-256
($MNIST_MIRROR first when set, then `download.mirrors`)."""

import os
import sys

from mnist_cnn import mnist
from mnist_cnn.fetch import MIRROR_ENV, download_file, mirror_urls
from mnist_cnn.files import remove_stale_temporaries
from mnist_cnn.params import load_params
from mnist_cnn.runner import run_stage


def main() -> None:
    params = load_params()
    raw_dir = params.paths.raw_dir
    remove_stale_temporaries([raw_dir])
    mirrors = mirror_urls(params.download.mirrors, os.environ.get(MIRROR_ENV))
    for name, expected_sha256 in mnist.SHA256.items():
        source = download_file(
            name,
            expected_sha256,
            mnist.SIZE[name],
            mirrors,
            raw_dir,
            params.download.timeout_seconds,
            params.download.retries,
        )
        print(f"{name}: {source}")


if __name__ == "__main__":
    sys.exit(run_stage(main, "download"))
