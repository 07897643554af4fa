"""Stage 3: train the convolutional network and save it with its training history.

The learning curves and the train metrics are rewritten after every epoch, so a run can be
followed as it goes (`dvc exp show`, `dvc plots show`, VS Code's DVC extension); how the model
was made (precision, CPU, versions) goes beside it in a small info file, not in the metrics.

With the default params the model is the seed notebook's: Conv2D(32) -> MaxPooling2D -> Flatten
-> Dense(256) -> Dense(256) -> Dropout -> Dense(10), 1,674,570 trainable parameters.
"""

import json
import math
import platform
import signal
import sys
import zipfile
from pathlib import Path

import stages.quiet_tensorflow  # noqa: F401  (before Keras: quiets TensorFlow's start-up log)

# isort: split
import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from stages import mnist
from stages.errors import PipelineError, run_stage
from stages.files import (
    read_npz,
    remove_stale_temporaries,
    scratch_directory_beside,
    write_json,
    write_text,
    write_zip,
)
from stages.params import (
    AugmentParams,
    ModelParams,
    Params,
    PathsParams,
    TrainParams,
    load_params,
)
from stages.runtime import cpuinfo_field, make_deterministic, use_precision

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
CURVE_COLUMNS = ["epoch", "train", "validation"]


def build_model(params: ModelParams) -> keras.Sequential:
    """Takes raw 0-255 pixels (scaling is inside the model), returns class probabilities."""
    side = mnist.IMAGE_SIDE
    layers = [keras.Input(shape=(side, side, 1)), keras.layers.Rescaling(1 / 255)]
    for filters in params.conv_filters:
        layers.append(
            keras.layers.Conv2D(filters, params.conv_kernel, padding="same", activation="relu")
        )
        layers.append(keras.layers.MaxPooling2D(params.pool_size))
    layers.append(keras.layers.Flatten())
    for units in params.dense_units:
        layers.append(keras.layers.Dense(units, activation="relu"))
    layers.append(keras.layers.Dropout(params.dropout))
    # float32 probabilities even under mixed precision: the softmax and the loss need the range.
    layers.append(keras.layers.Dense(mnist.NUM_CLASSES, activation="softmax", dtype="float32"))
    return keras.Sequential(layers, name="mnist_cnn")


def random_affine(images: tf.Tensor, seed: tf.Tensor, params: AugmentParams) -> tf.Tensor:
    """Rotate, zoom and shift each image at random, in one bilinear resampling.

    One combined transform costs about a third of Keras' RandomRotation, RandomZoom and
    RandomTranslation layers in a row (measured: 1.0 s vs 2.5 s per epoch on 2 cores).
    Stateless random draws from `seed`: the same seed gives the same images, bit for bit.
    """
    count = tf.shape(images)[0]
    rotation_seed, zoom_seed, shift_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )
    angle = tf.random.stateless_uniform([count], rotation_seed, -1.0, 1.0) * math.radians(
        params.rotation_degrees
    )
    scale = 1 + tf.random.stateless_uniform([count], zoom_seed, -1.0, 1.0) * params.zoom
    shift = (
        tf.random.stateless_uniform([count, 2], shift_seed, -1.0, 1.0)
        * params.shift
        * mnist.IMAGE_SIDE
    )
    # affine_transform maps each output pixel to the input point it samples:
    # input = M (output - centre - shift) + centre, with M = rotation / scale.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    centre = (mnist.IMAGE_SIDE - 1) / 2
    from_x, from_y = centre + shift[:, 0], centre + shift[:, 1]
    zeros = tf.zeros_like(cos)
    transform = tf.stack(
        [
            cos,
            -sin,
            centre - cos * from_x + sin * from_y,
            sin,
            cos,
            centre - sin * from_x - cos * from_y,
            zeros,
            zeros,
        ],
        axis=1,
    )
    return keras.ops.image.affine_transform(
        tf.cast(images, "float32"), transform, interpolation="bilinear", fill_mode="constant"
    )


def training_dataset(
    images: np.ndarray, labels: np.ndarray, params: TrainParams, seed: int
) -> tf.data.Dataset:
    """uint8 images in memory -> shuffled (and augmented) batches, different every epoch,
    the same in every run with the same seed."""
    dataset = (
        tf.data.Dataset.from_tensor_slices((images[..., None], labels))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(params.batch_size)
    )
    if params.augment.enabled:
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, batch_seeds).map(
            lambda batch, batch_seed: (
                random_affine(batch[0], batch_seed, params.augment),
                batch[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((images[..., None], labels)).batch(batch_size)


def make_optimizer(params: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    learning_rate = params.learning_rate
    if params.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            params.learning_rate, decay_steps=params.epochs * steps_per_epoch
        )
    return keras.optimizers.get(
        {"class_name": params.optimizer, "config": {"learning_rate": learning_rate}}
    )


class StopIfDiverged(keras.callbacks.Callback):
    """A loss that is no longer finite stops training with one line: a diverged run must not
    leave a model or metrics behind. Checked once per epoch, so training runs at full speed."""

    def __init__(self, learning_rate: float) -> None:
        super().__init__()
        self.learning_rate = learning_rate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name in ("loss", "val_loss"):
            value = (logs or {}).get(name)
            if value is not None and not math.isfinite(value):
                raise PipelineError(
                    f"train: the {name.replace('val_', 'validation ')} became {value} in epoch"
                    f" {epoch + 1} (train.learning_rate {self.learning_rate:g} too high?)"
                )


class InterruptBetweenBatches(keras.callbacks.Callback):
    """Ctrl-C stops training at the next batch or epoch boundary, in this thread, instead of
    wherever Python was: a KeyboardInterrupt raised inside Keras' or TensorFlow's own code
    left the process hung, running nothing (2 of the first 2 tries of the Ctrl-C test under a
    loaded CPU). The `*_batch_begin` hooks run in the main thread, between TensorFlow calls;
    `*_batch_end` ones would stop Keras dispatching them in the background."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False
        self.default_handler = signal.getsignal(signal.SIGINT)

    def request(self, signum: int, frame: object) -> None:
        self.interrupted = True

    def stop_if_interrupted(self, *args: object, **kwargs: object) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self.default_handler)

    def on_train_begin(self, logs: dict | None = None) -> None:
        signal.signal(signal.SIGINT, self.request)

    on_train_batch_begin = on_test_batch_begin = on_epoch_end = stop_if_interrupted


class LiveCurves(keras.callbacks.Callback):
    """After every epoch, the curves and train metrics so far, written atomically: the last
    write is the run's result, the ones before let a person watch the run."""

    def __init__(self, paths: PathsParams) -> None:
        super().__init__()
        self.paths = paths
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.rows.append({"epoch": epoch + 1, **{k: (logs or {})[k] for k in HISTORY_COLUMNS[1:]}})
        write_history(pd.DataFrame(self.rows, columns=HISTORY_COLUMNS), self.paths)


def train(
    model: keras.Model,
    train_data: dict,
    validation_data: dict,
    params: TrainParams,
    seed: int,
    verbose: int,
    callbacks: tuple[keras.callbacks.Callback, ...] = (),
) -> pd.DataFrame:
    """Compile and fit `model`; return the per-epoch history. A diverged run stops first, so
    `callbacks` never see a loss that is not finite."""
    steps_per_epoch = math.ceil(len(train_data["labels"]) / params.batch_size)
    model.compile(
        optimizer=make_optimizer(params, steps_per_epoch),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=params.steps_per_execution,
    )
    interrupt = InterruptBetweenBatches()
    try:
        history = model.fit(
            training_dataset(train_data["images"], train_data["labels"], params, seed),
            validation_data=evaluation_dataset(
                validation_data["images"], validation_data["labels"], params.batch_size
            ),
            epochs=params.epochs,
            shuffle=False,  # the dataset shuffles itself, from the seed
            callbacks=[interrupt, StopIfDiverged(params.learning_rate), *callbacks],
            verbose=verbose,
        )
    finally:
        interrupt.restore()
    frame = pd.DataFrame(history.history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    return frame[HISTORY_COLUMNS]


def renumber_shared_objects(config: object, numbers: dict[int, int] | None = None) -> object:
    """Replace Keras' `shared_object_id`s (Python id()s, new every run) by 0, 1, 2... in order."""
    numbers = {} if numbers is None else numbers
    if isinstance(config, list):
        return [renumber_shared_objects(item, numbers) for item in config]
    if not isinstance(config, dict):
        return config
    renumbered = {key: renumber_shared_objects(value, numbers) for key, value in config.items()}
    if "shared_object_id" in config:
        renumbered["shared_object_id"] = numbers.setdefault(
            config["shared_object_id"], len(numbers)
        )
    return renumbered


def save_model(model: keras.Model, path: Path) -> None:
    """Save as .keras without what changes from run to run (save date, zip times, object ids),
    so equal weights give equal bytes and dvc.lock stays put."""
    with scratch_directory_beside(path) as scratch:
        saved = scratch / "model.keras"
        model.save(saved)
        with zipfile.ZipFile(saved) as archive:
            entries = {info.filename: archive.read(info) for info in archive.infolist()}
            compression = archive.infolist()[0].compress_type
    metadata = json.loads(entries["metadata.json"])
    metadata.pop("date_saved", None)
    entries["metadata.json"] = json.dumps(metadata).encode()
    config = renumber_shared_objects(json.loads(entries["config.json"]))
    entries["config.json"] = json.dumps(config).encode()
    write_zip(path, entries, compression)


def learning_curve(history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric per epoch on the training and validation sets: one plot's data.

    One file per plot, because DVC gives a stage's plot file one definition: the plot is
    declared with the stage (so the stage is saved in DVC's run-cache) and drawn by the
    train_validation template in .dvc/plots/.
    """
    curve = history[["epoch", metric, f"val_{metric}"]].set_axis(CURVE_COLUMNS, axis=1)
    return curve.round(6)


def summarize(history: pd.DataFrame) -> dict:
    """The train metrics: the epochs done and the validation scores after the last, the
    numbers worth a column in `dvc exp show` (the training set's are in the curves)."""
    last = history.iloc[-1]
    return {
        "epochs": int(last["epoch"]),
        "val_accuracy": round(float(last["val_accuracy"]), 6),
        "val_loss": round(float(last["val_loss"]), 6),
    }


def history_files(paths: PathsParams) -> list[Path]:
    return [Path(paths.train_loss), Path(paths.train_accuracy), Path(paths.train_metrics)]


def write_history(history: pd.DataFrame, paths: PathsParams) -> None:
    for metric, path in (("loss", paths.train_loss), ("accuracy", paths.train_accuracy)):
        write_text(Path(path), learning_curve(history, metric).to_csv(index=False))
    write_json(Path(paths.train_metrics), summarize(history))


def model_info(model: keras.Model, precision: str) -> dict:
    """How the model was made, beside it: what a person asks of a result but no metric."""
    return {
        "precision": precision,
        "trainable_params": sum(math.prod(w.shape) for w in model.trainable_weights),
        "cpu": cpuinfo_field("model name") or platform.processor() or platform.machine(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def fit_model(
    params: Params,
    train_data: dict,
    validation_data: dict,
    verbose: int,
    callbacks: tuple[keras.callbacks.Callback, ...] = (),
) -> tuple[keras.Model, pd.DataFrame, str]:
    """The stage without its files: build the model from `params`, train it from `params.seed`.

    Returns the model, its per-epoch history and the precision used.
    """
    make_deterministic(params.seed, params.threads)
    precision = use_precision(params.train.precision)
    model = build_model(params.model)
    if verbose:
        model.summary()
        print(f"precision: {precision}")
    history = train(
        model, train_data, validation_data, params.train, params.seed, verbose, callbacks
    )
    return model, history, precision


def main() -> None:
    params = load_params()
    paths = params.paths
    outputs = [Path(paths.model), Path(paths.model_info), *history_files(paths)]
    remove_stale_temporaries(outputs)
    train_data = read_npz(Path(paths.train_data))
    validation_data = read_npz(Path(paths.validation_data))

    verbose = 1 if sys.stdout.isatty() else 2  # a progress bar only where someone watches
    live = LiveCurves(paths)
    try:
        model, _, precision = fit_model(params, train_data, validation_data, verbose, (live,))
        save_model(model, Path(paths.model))
        write_json(Path(paths.model_info), model_info(model, precision))
    except BaseException as error:  # diverged, interrupted, disk full: no result, not half of one
        for path in outputs:
            path.unlink(missing_ok=True)
        if isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError)):
            raise PipelineError(
                f"train: out of memory for a model of {params.model.parameter_count():,} "
                f"parameters at train.batch_size {params.train.batch_size}: make the model "
                "(model.dense_units, model.conv_filters) or train.batch_size smaller"
            ) from None
        raise


if __name__ == "__main__":
    sys.exit(run_stage(main))
