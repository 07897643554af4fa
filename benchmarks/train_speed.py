"""Train the seed notebook's setup and the project's train stage back to back, on the same
prepared data, and compare time, memory and test accuracy.

    python -m benchmarks.train_speed [--seeds N] [--output benchmarks/results.json]

Needs the prepared data (`dvc repro preprocess`). Each run is a fresh Python process, so each
gets its own TensorFlow start-up and its own peak resident memory; runs go one after another,
never side by side, so that they do not share the cores.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUPS = {
    "reference": (
        "seed notebook: plain Keras, Adam 0.001, batch 32, float32, arrays, no augmentation"
    ),
    "project": "train stage, params.yaml as committed",
    "project-no-augment": "train stage, params.yaml with augmentation off",
}


def train_reference(train_data: dict, seed: int) -> tuple[object, int]:
    """The seed notebook as it was: no pipeline, no determinism, float arrays in memory."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.001),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    images = train_data["images"][..., None].astype("float32") / 255
    model.fit(images, train_data["labels"], batch_size=32, epochs=10, verbose=0)
    return model, 10


def train_project(
    train_data: dict, validation_data: dict, seed: int, augment: bool
) -> tuple[object, int]:
    """What `python -m stages.train` does, minus writing files."""
    from mnist_cnn.params import AugmentParams, load_params
    from mnist_cnn.training import fit_model

    params = load_params()
    settings = params.train
    if not augment:
        off = AugmentParams(**dict.fromkeys(AugmentParams.model_fields, 0))
        settings = settings.model_copy(update={"augment": off})
    params = params.model_copy(update={"seed": seed, "train": settings})
    model, _, _ = fit_model(params, train_data, validation_data, verbose=0)
    return model, settings.epochs


def run_one(setup: str, seed: int, result_path: Path) -> None:
    """In a child process: train one setup, score it on the test set, write the figures."""
    from mnist_cnn.files import read_npz
    from mnist_cnn.params import load_params

    paths = load_params().paths
    train_data, validation_data, test = (
        read_npz(path) for path in (paths.train_data, paths.validation_data, paths.test_data)
    )
    started = time.perf_counter()
    if setup == "reference":
        model, epochs = train_reference(train_data, seed)
        test_images = test["images"][..., None].astype("float32") / 255
    else:
        model, epochs = train_project(train_data, validation_data, seed, setup == "project")
        test_images = test["images"][..., None]
    seconds = time.perf_counter() - started
    predicted = model.predict(test_images, batch_size=1000, verbose=0).argmax(axis=1)
    result = {
        "epochs": epochs,
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / epochs,
        "images_per_second": len(train_data["labels"]) * epochs / seconds,
        "test_accuracy": float((predicted == test["labels"]).mean()),
    }
    result_path.write_text(json.dumps(result))


def measure(setup: str, seed: int) -> dict:
    """Run one setup in a fresh process; add its peak resident memory."""
    with tempfile.TemporaryDirectory() as scratch:
        result_path = Path(scratch) / "result.json"
        command = [
            sys.executable,
            "-m",
            "benchmarks.train_speed",
            "--child",
            setup,
            "--child-seed",
            str(seed),
            "--child-result",
            str(result_path),
        ]
        child = subprocess.Popen(command)
        _, status, usage = os.wait4(child.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark run {setup} (seed {seed}) failed")
        result = json.loads(result_path.read_text())
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def summarize(runs: list[dict]) -> dict:
    mean = {key: statistics.fmean(run[key] for run in runs) for key in runs[0]}
    accuracies = [run["test_accuracy"] for run in runs]
    mean["test_accuracy_std"] = statistics.stdev(accuracies) if len(runs) > 1 else 0.0
    mean["runs"] = runs
    return mean


def table(summary: dict) -> str:
    reference = summary["setups"]["reference"]
    lines = [
        "| setup | s/epoch | images/s | train s | peak RSS MiB | test accuracy (mean ± sd)"
        " | time vs reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in summary["setups"].items():
        lines.append(
            f"| {name} ({result['epochs']:.0f} epochs) | {result['seconds_per_epoch']:.1f} "
            f"| {result['images_per_second']:,.0f} | {result['train_seconds']:.0f} "
            f"| {result['peak_rss_mib']:,.0f} "
            f"| {100 * result['test_accuracy']:.2f} % ± {100 * result['test_accuracy_std']:.2f} "
            f"| {result['train_seconds'] / reference['train_seconds']:.2f}× total, "
            f"{result['seconds_per_epoch'] / reference['seconds_per_epoch']:.2f}× per epoch |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_speed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=1, help="runs per setup (seeds 0..N-1)")
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    parser.add_argument("--child", choices=SETUPS, help=argparse.SUPPRESS)
    parser.add_argument("--child-seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.child, args.child_seed, args.child_result)
        return

    import tensorflow as tf

    from mnist_cnn.tensorflow_setup import available_cores, cpuinfo_field

    setups = ["reference"] + [name for name in args.setups if name != "reference"]
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    for seed in range(args.seeds):
        for name in setups:
            result = measure(name, seed)
            runs[name].append(result)
            print(
                f"{name} seed {seed}: {result['train_seconds']:.0f} s, "
                f"{result['seconds_per_epoch']:.1f} s/epoch, "
                f"test accuracy {100 * result['test_accuracy']:.2f} %",
                flush=True,
            )
    summary = {
        "machine": {
            "cpu": cpuinfo_field("model name") or platform.processor() or "unknown",
            "cores": available_cores(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
        },
        "seeds": args.seeds,
        "setups": {
            name: {"description": SETUPS[name], **summarize(results)}
            for name, results in runs.items()
        },
    }
    print()
    print(
        f"{summary['machine']['cpu']}, {summary['machine']['cores']} cores, "
        f"TensorFlow {summary['machine']['tensorflow']}, {args.seeds} seed(s)"
    )
    print(table(summary))
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
