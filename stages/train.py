"""Stage 3: train the convolutional network and save it with its training history.

The learning curves and the train metrics are rewritten after every epoch (mnist_cnn/history.py);
how the model was made (precision, CPU, versions) goes beside it in a small info file, not in
the metrics.
"""

import sys

from mnist_cnn.errors import PipelineError, how_to_restore
from mnist_cnn.files import read_npz, remove_stale_temporaries, removed_on_failure, write_json
from mnist_cnn.params import load_params
from mnist_cnn.runner import run_stage


def main() -> None:
    params = load_params()
    paths = params.paths
    train_data = read_npz(paths.train_data)
    validation_data = read_npz(paths.validation_data)
    # TensorFlow and Keras only now, after the inputs: they take seconds to import, and a
    # wrong param or a missing input is refused at once.
    from mnist_cnn.history import LiveCurves, history_files
    from mnist_cnn.model import save_model
    from mnist_cnn.training import StopIfParamsChanged, fit_model, model_info

    outputs = [paths.model, paths.model_info, *history_files(paths)]
    remove_stale_temporaries(outputs)

    verbose = 1 if sys.stdout.isatty() else 2  # a progress bar only where someone watches
    try:
        with removed_on_failure(outputs):  # diverged, interrupted, disk full
            callbacks = (StopIfParamsChanged(), LiveCurves(paths))
            model, precision = fit_model(params, train_data, validation_data, verbose, callbacks)
            save_model(model, paths.model)
            write_json(paths.model_info, model_info(model, precision))
    except PipelineError as error:
        restore = how_to_restore("train", history_files(paths))  # the outputs kept in git
        raise PipelineError(f"{error}; no model written: {restore}") from None


if __name__ == "__main__":
    sys.exit(run_stage(main, "train"))
