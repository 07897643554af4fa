"""Training: the optimizer and its schedule, a diverged run stopped, a run whose params changed
stopped, Ctrl-C honoured between batches, and `fit_model`, the train stage without its files."""

import math
import platform
import signal

import keras
import pandas as pd
import tensorflow as tf

from mnist_cnn.errors import PipelineError, out_of_memory
from mnist_cnn.inputs import evaluation_dataset, one_hot, training_dataset
from mnist_cnn.mnist import NUM_CLASSES
from mnist_cnn.model import build_model
from mnist_cnn.params import Params, TrainParams, raise_if_changed
from mnist_cnn.precision import cpuinfo_field, use_precision
from mnist_cnn.tensorflow_setup import make_deterministic


def learning_rate_schedule(
    params: TrainParams, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """`params.learning_rate`, reached after a linear warm-up from 0 over `warmup_epochs`, then
    held (constant) or decayed to 0 by the last step (cosine): with both, a one-cycle schedule."""
    warmup_steps = round(params.warmup_epochs * steps_per_epoch)
    if not warmup_steps and params.lr_schedule == "constant":
        return params.learning_rate
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else params.learning_rate,
        decay_steps=max(1, params.epochs * steps_per_epoch - warmup_steps),
        alpha=1.0 if params.lr_schedule == "constant" else 0.0,  # 1: no decay at all
        warmup_target=params.learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def make_optimizer(params: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    config = {"learning_rate": learning_rate_schedule(params, steps_per_epoch)}
    if params.optimizer == "adam":
        config |= {"beta_1": params.adam_beta_1, "beta_2": params.adam_beta_2}
    return keras.optimizers.get({"class_name": params.optimizer, "config": config})


# A loss this far above a uniform guess's (ln 10 = 2.3 for ten digits) is a run that diverged,
# not one that learns slowly: a learning rate of 1 climbs back to the guess's loss from about 6.
# Whether a diverging run reaches NaN or stops at a huge finite loss (1e+30 on an AVX-512 CPU
# whose oneDNN kernels kept every value finite) depends on the CPU, so both are caught.
DIVERGED_LOSS = 100 * math.log(NUM_CLASSES)


class StopIfDiverged(keras.callbacks.Callback):
    """A loss that is no longer finite, or far above a guess's, stops training with one line: a
    diverged run must not leave a model or metrics behind. Checked once per epoch, so training
    runs at full speed."""

    def __init__(self, learning_rate: float) -> None:
        super().__init__()
        self.learning_rate = learning_rate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name in ("loss", "val_loss"):
            value = (logs or {}).get(name)
            if value is not None and not value <= DIVERGED_LOSS:  # NaN compares False too
                raise PipelineError(
                    f"train: the {name.replace('val_', 'validation ')} became {value:.3g} in"
                    f" epoch {epoch + 1}, a diverged run"
                    f" (train.learning_rate {self.learning_rate:g} too high?)"
                )


class StopIfParamsChanged(keras.callbacks.Callback):
    """params.yaml edited, or rewritten by a `dvc exp run -S`, while the train stage runs: stop
    at the end of the epoch, with the line the stage would end with anyway (`run_stage`),
    rather than train on for outputs that cannot be recorded."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        raise_if_changed("train")


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
        # One-hot targets: the sparse loss has no label smoothing.
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=params.label_smoothing),
        metrics=["accuracy"],
        steps_per_execution=params.steps_per_execution,
    )
    interrupt = InterruptBetweenBatches()
    try:
        history = model.fit(
            training_dataset(train_data["images"], train_data["labels"], params, seed),
            validation_data=evaluation_dataset(
                validation_data["images"], validation_data["labels"], params.batch_size
            ).map(one_hot),
            epochs=params.epochs,
            shuffle=False,  # the dataset shuffles itself, from the seed
            callbacks=[interrupt, StopIfDiverged(params.learning_rate), *callbacks],
            verbose=verbose,
        )
    finally:
        interrupt.restore()
    frame = pd.DataFrame(history.history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    return frame


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
) -> tuple[keras.Model, str]:
    """The stage without its files: build the model from `params`, train it from `params.seed`.

    Returns the model and the precision used (the history goes to `callbacks`: LiveCurves).
    """
    make_deterministic(params.seed, params.threads)
    precision = use_precision(params.train.precision)
    try:  # a model under the parameter cap that this machine cannot hold
        model = build_model(params.model)
        if verbose:
            model.summary()
            print(f"precision: {precision}")
        train(model, train_data, validation_data, params.train, params.seed, verbose, callbacks)
    except Exception as error:
        if not out_of_memory(error):
            raise
        raise PipelineError(
            f"train: out of memory for a model of {params.model.parameter_count():,} "
            f"parameters at train.batch_size {params.train.batch_size}: make the model "
            "(model.dense_units, model.conv_filters) or train.batch_size smaller"
        ) from None
    return model, precision
