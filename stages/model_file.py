"""Loading the trained model, for every command that uses it (evaluate, export, predict)."""

import re
from pathlib import Path

import keras

from stages import mnist
from stages.errors import PipelineError


def load_failure(error: BaseException) -> str:
    """Why Keras could not load a model, in one line: the innermost error of the chain Keras
    raises (the outer ones say only "could not be deserialized"), and which layer it was in."""
    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) and inner not in chain:
        chain.append(inner)
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
    if not path.exists():
        raise PipelineError(f"{path}: not found (run the train stage first)")
    if path.suffix != ".keras":  # Keras would suggest TFSMLayer
        raise PipelineError(
            f"{path}: not a .keras file (this command runs Keras models; the ONNX, TFLite and "
            "SavedModel exports run in their own runtimes: see the README, Serve the model)"
        )
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
