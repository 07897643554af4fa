"""Latency of the model in each format the export stage writes, side by side on this machine.

    python -m benchmarks.export_latency [--repeats N] [--threads N] [--output FILE.json]

Needs the exports (`dvc repro export`). For each format: the median and 90th percentile time
of one call on one image (what a server answering one request at a time sees), and the time
per image in batches of 1,000 (what a batch job sees). The formats run one after another in
this process, each on the same images, each warmed up first.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from benchmarks.machine import describe
from mnist_cnn.exports import CONVERTER_NOISE, FORMATS, Predict
from mnist_cnn.files import read_npz
from mnist_cnn.model import load_model
from mnist_cnn.params import load_params
from mnist_cnn.parity import batches
from mnist_cnn.tensorflow_setup import available_cores, native_stderr_filtered


def runners(threads: int) -> dict[str, Predict]:
    """One predict function per format, each in its own runtime, with `threads` threads."""
    paths = load_params().paths
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras_model = load_model(paths.model)
    return {
        "Keras (.keras, model(x))": lambda x: keras_model(x, training=False).numpy(),
        **{export.title: export.run(export.path(paths), threads) for export in FORMATS},
    }


def seconds(predict: Predict, images: np.ndarray) -> float:
    start = time.perf_counter()
    predict(images)
    return time.perf_counter() - start


def measure(predict: Predict, singles: list[np.ndarray], batched: list[np.ndarray]) -> dict:
    for image in singles[:20]:  # warm-up: graph building, allocation, caches
        predict(image)
    predict(batched[0])
    one = sorted(seconds(predict, image) for image in singles)
    per_batch = [seconds(predict, batch) for batch in batched]
    return {
        "median_ms": statistics.median(one) * 1e3,
        "p90_ms": one[int(0.9 * (len(one) - 1))] * 1e3,
        "batched_us": sum(per_batch) / sum(len(b) for b in batched) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export_latency", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeats", type=int, default=500, help="single-image calls per format")
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    arguments = parser.parse_args()

    images = read_npz(load_params().paths.test_data)["images"]
    singles = batches(images[: arguments.repeats], 1)
    batched = batches(images, 1000)
    print(
        f"{arguments.threads} threads, {arguments.repeats} single-image calls,"
        f" {len(images):,} images in batches of 1,000"
    )
    print("| format | 1 image: median | 1 image: p90 | per image, batches of 1,000 |")
    print("|---|---|---|---|")
    formats = {}
    with native_stderr_filtered(CONVERTER_NOISE):  # LiteRT's note on each interpreter
        for name, predict in runners(arguments.threads).items():
            figures = formats[name] = measure(predict, singles, batched)
            print(
                f"| {name} | {figures['median_ms']:.2f} ms | {figures['p90_ms']:.2f} ms"
                f" | {figures['batched_us']:.0f} µs |",
                flush=True,
            )
    if arguments.output:
        summary = {
            "machine": describe(),
            "threads": arguments.threads,
            "single_image_calls": arguments.repeats,
            "batched_images": len(images),
            "formats": formats,
        }
        arguments.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
