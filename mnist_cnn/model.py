"""The model: built from the params, saved as reproducible bytes, loaded back (by evaluate,
export and predict) with one-line errors.

With the default params it is the seed notebook's: Conv2D(32) -> MaxPooling2D -> Flatten ->
Dense(256) -> Dense(256) -> Dropout -> Dense(10), 1,674,570 trainable parameters.
"""

import json
import re
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mnist_cnn import mnist
from mnist_cnn.errors import PipelineError, exception_chain, out_of_memory
from mnist_cnn.files import check_model_file, scratch_directory_beside, write_zip
from mnist_cnn.params import ModelParams


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
    try:
        with scratch_directory_beside(path) as scratch:
            saved = scratch / "model.keras"
            model.save(saved)
            with zipfile.ZipFile(saved) as archive:
                entries = {info.filename: archive.read(info) for info in archive.infolist()}
                compression = archive.infolist()[0].compress_type
    except Exception as error:
        if not out_of_memory(error):  # a trained model that memory cannot copy out
            raise
        raise PipelineError(
            f"{path}: out of memory while saving a model of {model.count_params():,} "
            "parameters: make the model (model.dense_units, model.conv_filters) smaller or "
            "free memory"
        ) from None
    metadata = json.loads(entries["metadata.json"])
    metadata.pop("date_saved", None)
    entries["metadata.json"] = json.dumps(metadata).encode()
    config = renumber_shared_objects(json.loads(entries["config.json"]))
    entries["config.json"] = json.dumps(config).encode()
    write_zip(path, entries, compression)


def load_failure(error: BaseException) -> str:
    """Why Keras could not load a model, in one line: the innermost error of the chain Keras
    raises (the outer ones say only "could not be deserialized"), and which layer it was in."""
    chain = exception_chain(error)
    layers = [re.search(r"deserializing class '(\w+)'", str(link)) for link in chain]
    layer = next((found[1] for found in layers if found), None)
    lines = str(chain[-1]).strip().splitlines()
    reason = f"{type(chain[-1]).__name__}: {lines[0] if lines else ''}"
    return f"in a {layer} layer: {reason}" if layer else reason


def load_model(path: Path) -> keras.Model:
    """The MNIST model at `path`: 28x28x1 images in, 10 class probabilities out.

    Keras' safe mode refuses a model that would run code from the file (a Lambda layer). The
    optimizer is not restored (compile=False): predicting needs none, and Keras cannot restore
    the loss-scaling one of a mixed_float16 model (it warns and skips its variables).
    """
    check_model_file(path)
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many kinds for a corrupt or edited file
        raise PipelineError(f"{path}: not a loadable Keras model ({load_failure(error)})") from None
    side = mnist.IMAGE_SIDE
    expected_input, expected_output = (None, side, side, 1), (None, mnist.NUM_CLASSES)
    if tuple(model.input_shape) != expected_input:
        raise PipelineError(
            f"{path}: takes input of shape {tuple(model.input_shape)}, expected {expected_input}"
            " (MNIST images)"
        )
    if tuple(model.output_shape) != expected_output:
        raise PipelineError(
            f"{path}: gives output of shape {tuple(model.output_shape)}, expected"
            f" {expected_output} (one probability per digit)"
        )
    return model


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities for uint8 [N, 28, 28] images, in batches."""
    # A dataset of our own, not the array: Keras' array adapter makes TensorFlow log a
    # spurious "NodeDef mentions attribute use_unbounded_threadpool" error line.
    batches = tf.data.Dataset.from_tensor_slices(images[..., None]).batch(batch_size)
    return model.predict(batches, verbose=0)
