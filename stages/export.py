"""Stage 5: export the trained model for serving, as a SavedModel (TensorFlow Serving), an ONNX
model and a TFLite model (mnist_cnn/exports.py), and check that each predicts what the Keras
model in float32 predicts (mnist_cnn/parity.py) before any is written."""

import sys

from mnist_cnn.errors import PipelineError, how_to_restore
from mnist_cnn.files import (
    check_model_file,
    read_npz,
    remove_stale_temporaries,
    removed_on_failure,
    replace_directory,
    scratch_directory_beside,
    write_bytes,
    write_json,
)
from mnist_cnn.lock import check_recorded
from mnist_cnn.params import PathsParams, load_params
from mnist_cnn.runner import run_stage
from mnist_cnn.tensorflow_setup import make_deterministic, native_stderr_filtered


def main() -> None:
    params = load_params()
    paths, settings = params.paths, params.export
    check_recorded(paths.model)  # a damaged cache object checked out is refused here
    check_model_file(paths.model)
    images = read_npz(paths.test_data)["images"]
    # TensorFlow, Keras and the converters only now, after the inputs: they take seconds to
    # import, and a wrong param or a missing input is refused at once.
    from mnist_cnn.exports import (
        CONVERTER_NOISE,
        FORMATS,
        export_files,
        float32_copy,
        make_exports,
        size_bytes,
    )
    from mnist_cnn.model import load_model
    from mnist_cnn.parity import (
        check_parity,
        compare,
        headline_metrics,
        keras_predict,
        predict_in_batches,
    )

    outputs = export_files(paths)
    reports = [paths.export_metrics, paths.export_details]
    remove_stale_temporaries([*outputs.values(), *reports])
    make_deterministic(params.seed, params.threads)
    trained = load_model(paths.model)
    float32_model = float32_copy(trained)
    # The exports are checked against the model they are made from, the float32 copy: that
    # measures the conversion. How far the copy is from the model in its training precision
    # (bfloat16 or float16 rounding; none under float32) is recorded, not checked: an
    # under-trained model has near-ties whose digit flips with the precision.
    reference = predict_in_batches(keras_predict(float32_model), images, settings.batch_size)
    in_training_precision = predict_in_batches(
        keras_predict(trained), images, settings.batch_size
    )
    details: dict = {
        "test_images": len(images),
        "float32_vs_training_precision": compare(in_training_precision, reference),
    }
    try:
        with scratch_directory_beside(next(iter(outputs.values()))) as scratch:
            with native_stderr_filtered(CONVERTER_NOISE):  # the converters' routine notes
                made = make_exports(float32_model, scratch, paths, settings.onnx_opset)
                runs = [export.run(made[export.name], params.threads) for export in FORMATS]
                probabilities = {
                    export.name: predict_in_batches(run, images, settings.batch_size)
                    for export, run in zip(FORMATS, runs, strict=True)
                }
            for export in FORMATS:
                result = compare(reference, probabilities[export.name])
                check_parity(outputs[export.name], result, settings.min_agreement)
                details[export.name] = {**result, "size_bytes": size_bytes(made[export.name])}
            # Every format is checked before any is written.
            with removed_on_failure([*outputs.values(), *reports]):  # disk full, Ctrl-C
                for export in FORMATS:
                    source, target = made[export.name], outputs[export.name]
                    if source.is_dir():
                        replace_directory(source, target)
                    else:
                        write_bytes(target, source.read_bytes())
                write_json(paths.export_details, details)
                write_json(paths.export_metrics, headline_metrics(details))
    except PipelineError as error:
        # Run alone, the last exports stay where they were; `dvc repro` deleted them first.
        restore = how_to_restore("export", [paths.export_metrics])
        raise PipelineError(f"{error}; no export written (after dvc repro: {restore})") from None
    report(trained.layers[0].dtype_policy.name, details, outputs, paths)


def report(training_precision: str, details: dict, outputs: dict, paths: PathsParams) -> None:
    count = details["test_images"]
    if training_precision != "float32":
        effect = details["float32_vs_training_precision"]
        print(
            f"{paths.model} in float32 instead of {training_precision}: the same digit on"
            f" {effect['agreement']:.2%} of {count} test images, probabilities within"
            f" {effect['max_probability_difference']:.2g} (recorded, not checked)"
        )
    for name, output in outputs.items():  # in FORMATS' order
        result = details[name]
        print(
            f"{output}: the float32 Keras model's digit on {result['agreement']:.2%} of"
            f" {count} test images, probabilities within"
            f" {result['max_probability_difference']:.2g}, {result['size_bytes'] / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    sys.exit(run_stage(main, "export"))
