"""Stage 3: train the convolutional network and save it with its training history.

With the default params the model is the seed notebook's: Conv2D(32) -> MaxPooling2D -> Flatten
-> Dense(256) -> Dense(256) -> Dropout -> Dense(10), 1,674,570 trainable parameters.
"""

import json
import math
import sys
import tempfile
import zipfile
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from stages import mnist
from stages.errors import run_stage
from stages.files import read_npz, write_text, write_json, write_zip
from stages.params import ModelParams, TrainParams, load_params
from stages.runtime import make_deterministic, use_precision

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


def build_model(params: ModelParams) -> keras.Sequential:
    """Takes raw 0-255 pixels (scaling is inside the model), returns class probabilities."""
    side = mnist.IMAGE_SIDE
    layers = [keras.Input(shape=(side, side, 1)), keras.layers.Rescaling(1 / 255)]
    for filters in params.conv_filters:
        layers.append(keras.layers.Conv2D(filters, params.conv_kernel, padding="same", activation="relu"))
        layers.append(keras.layers.MaxPooling2D(params.pool_size))
    layers.append(keras.layers.Flatten())
    for units in params.dense_units:
        layers.append(keras.layers.Dense(units, activation="relu"))
    layers.append(keras.layers.Dropout(params.dropout))
    # float32 probabilities even under mixed precision: the softmax and the loss need the range.
    layers.append(keras.layers.Dense(mnist.NUM_CLASSES, activation="softmax", dtype="float32"))
    return keras.Sequential(layers, name="mnist_cnn")


def make_dataset(
    images, labels, batch_size: int, shuffle_seed: int | None = None
) -> tf.data.Dataset:
    """uint8 images in memory -> batches of (N, 28, 28, 1); reshuffled each epoch if seeded."""
    dataset = tf.data.Dataset.from_tensor_slices((images[..., None], labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def make_optimizer(params: TrainParams) -> keras.optimizers.Optimizer:
    return keras.optimizers.get(
        {"class_name": params.optimizer, "config": {"learning_rate": params.learning_rate}}
    )


def train(model: keras.Model, train_data: dict, validation_data: dict, params: TrainParams,
          seed: int, verbose: int) -> pd.DataFrame:
    """Compile and fit `model`; return the per-epoch history."""
    model.compile(
        optimizer=make_optimizer(params),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(
        make_dataset(train_data["images"], train_data["labels"], params.batch_size, seed),
        validation_data=make_dataset(
            validation_data["images"], validation_data["labels"], params.batch_size
        ),
        epochs=params.epochs,
        shuffle=False,  # the dataset shuffles itself, from the seed
        verbose=verbose,
    )
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
        renumbered["shared_object_id"] = numbers.setdefault(config["shared_object_id"], len(numbers))
    return renumbered


def save_model(model: keras.Model, path: Path) -> None:
    """Save as .keras without what changes from run to run (save date, zip times, object ids),
    so equal weights give equal bytes and dvc.lock stays put."""
    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch) / "model.keras"
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


def summarize(history: pd.DataFrame, model: keras.Model, precision: str) -> dict:
    last = history.iloc[-1]
    return {
        "epochs": int(last["epoch"]),
        "trainable_params": sum(math.prod(w.shape) for w in model.trainable_weights),
        "precision": precision,
        "train": {"loss": round(float(last["loss"]), 6), "accuracy": round(float(last["accuracy"]), 6)},
        "validation": {
            "loss": round(float(last["val_loss"]), 6),
            "accuracy": round(float(last["val_accuracy"]), 6),
        },
    }


def main() -> None:
    params = load_params()
    paths = params.paths
    make_deterministic(params.seed)
    precision = use_precision(params.train.precision)
    train_data = read_npz(Path(paths.train_data))
    validation_data = read_npz(Path(paths.validation_data))

    model = build_model(params.model)
    model.summary()
    print(f"precision: {precision}")
    verbose = 1 if sys.stdout.isatty() else 2  # a progress bar only where someone watches
    history = train(model, train_data, validation_data, params.train, params.seed, verbose)

    save_model(model, Path(paths.model))
    write_text(Path(paths.train_history), history.round(6).to_csv(index=False))
    write_json(Path(paths.train_metrics), summarize(history, model, precision))


if __name__ == "__main__":
    sys.exit(run_stage(main))
