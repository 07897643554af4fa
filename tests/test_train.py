import json
import os
import signal
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from mnist_cnn.files import read_npz
from mnist_cnn.history import CURVE_COLUMNS
from mnist_cnn.inputs import random_affine
from mnist_cnn.model import build_model, renumber_shared_objects
from mnist_cnn.params import parse_params
from mnist_cnn.precision import (
    compute_capability,
    cpu_flags,
    cpu_flags_in_use,
    resolve_precision,
)
from mnist_cnn.runner import run_command
from mnist_cnn.tensorflow_setup import available_cores, onednn_lacks_bfloat16
from mnist_cnn.training import learning_rate_schedule, make_optimizer, train
from tests.helpers import (
    TINY_MODEL,
    dtype_policy,
    params_with,
    run_script,
    run_stage_cli,
    write_params,
    write_tiny_data,
)


def test_default_model_is_the_seed_notebooks(default_params):
    model = build_model(default_params.model)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert model.count_params() == 1_674_570
    assert model.output_shape == (None, 10)


def test_conv_filters_list_stacks_conv_blocks(default_params):
    deeper = default_params.model.model_copy(update={"conv_filters": [32, 64]})
    model = build_model(deeper)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in convs] == [32, 64]
    flatten = next(layer for layer in model.layers if isinstance(layer, keras.layers.Flatten))
    assert flatten.output.shape == (None, 7 * 7 * 64)


# Compute capabilities: V100 7.0, T4 7.5, A100 8.0, H100 9.0, P100 6.0.
@pytest.mark.parametrize(
    ("requested", "flags", "gpus", "expected"),
    [
        ("auto", {"avx2", "avx512_bf16"}, [], "mixed_bfloat16"),
        ("auto", {"amx_bf16"}, [], "mixed_bfloat16"),
        ("auto", {"avx2"}, [], "float32"),
        ("auto", set(), [(8, 0)], "mixed_bfloat16"),
        ("auto", set(), [(9, 0), (9, 0)], "mixed_bfloat16"),
        ("auto", {"avx512_bf16"}, [(7, 5)], "mixed_float16"),
        ("auto", set(), [(7, 0)], "mixed_float16"),
        ("auto", set(), [(8, 0), (7, 5)], "mixed_float16"),  # what every GPU runs fast
        ("auto", {"amx_bf16"}, [(6, 0)], "float32"),
        ("auto", set(), [(0, 0)], "float32"),  # a GPU that does not report one
        ("float32", {"amx_bf16"}, [(8, 0)], "float32"),
        ("mixed_bfloat16", set(), [], "mixed_bfloat16"),
        ("mixed_float16", set(), [], "mixed_float16"),
    ],
)
def test_precision_resolution(requested, flags, gpus, expected):
    assert resolve_precision(requested, flags, gpus) == expected


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        # What tf.config.experimental.get_device_details() gives for an NVIDIA GPU...
        ({"device_name": "NVIDIA A100-SXM4-80GB", "compute_capability": (8, 0)}, (8, 0)),
        ({"device_name": "Tesla T4", "compute_capability": (7, 5)}, (7, 5)),
        # ...and for a GPU without a CUDA compute capability (ROCm builds give only a name).
        ({"device_name": "AMD Instinct MI210"}, (0, 0)),
        ({}, (0, 0)),
    ],
)
def test_compute_capability_is_read_from_the_device_description(details, expected):
    assert compute_capability(details) == expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16\nbugs\t: none\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == set()


@pytest.mark.parametrize(
    ("isa", "auto"),
    [("", "mixed_bfloat16"), ("AVX512_CORE_BF16", "mixed_bfloat16"), ("AVX2", "float32")],
)
def test_auto_follows_a_cap_on_onednn(tmp_path, isa, auto):
    """`ONEDNN_MAX_CPU_ISA=AVX2` on a bfloat16 CPU: oneDNN may not use the bfloat16
    instructions, bfloat16 runs through Eigen, slower than float32; so `auto` is float32, as on
    a CPU without them (what a Zen 4 capped to play a Zen 3 trains in)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    flags = cpu_flags_in_use({"ONEDNN_MAX_CPU_ISA": isa}, cpuinfo)
    assert "avx2" in flags
    assert resolve_precision("auto", flags, []) == auto


@pytest.mark.parametrize(
    ("schedule", "warmup_epochs", "expected"),
    [
        # learning rate at steps 0, 10 (end of warm-up), 55 and 99 of 10 epochs of 10 steps
        ("cosine", 1, [0.0, 0.01, 0.005, 0.0]),
        ("cosine", 0, [0.01, 0.0097, 0.0043, 0.0]),
        ("constant", 1, [0.0, 0.01, 0.01, 0.01]),
        ("constant", 0, [0.01, 0.01, 0.01, 0.01]),
    ],
)
def test_learning_rate_warms_up_then_holds_or_decays(schedule, warmup_epochs, expected):
    params = parse_params(
        params_with(
            {
                "train.epochs": 10,
                "train.learning_rate": 0.01,
                "train.lr_schedule": schedule,
                "train.warmup_epochs": warmup_epochs,
            }
        )
    ).train
    schedule = learning_rate_schedule(params, steps_per_epoch=10)
    rate_at = schedule if callable(schedule) else lambda step: schedule
    assert [float(rate_at(step)) for step in (0, 10, 55, 99)] == pytest.approx(
        expected, abs=1e-4
    )


def test_adam_takes_its_betas_from_params():
    params = parse_params(params_with({"train.adam_beta_1": 0.8, "train.adam_beta_2": 0.99}))
    optimizer = make_optimizer(params.train, steps_per_epoch=10)
    assert (optimizer.beta_1, optimizer.beta_2) == (0.8, 0.99)


def test_label_smoothing_reaches_the_loss(tmp_path):
    """With smoothing the targets are no longer one-hot: a perfect, confident model still
    has a loss; without it, none."""
    train_data = {"images": np.zeros((8, 28, 28), "uint8"), "labels": np.zeros(8, "int64")}
    losses = {}
    for smoothing in (0.0, 0.2):
        params = parse_params(
            params_with(
                {
                    "seed": 0,
                    "train.epochs": 1,
                    "train.batch_size": 8,
                    "train.learning_rate": 1e-9,
                    "train.label_smoothing": smoothing,
                    "train.augment.rotation_degrees": 0,
                    "train.augment.zoom": 0,
                    "train.augment.shift": 0,
                    **TINY_MODEL,
                }
            )
        )
        model = build_model(params.model)
        # Bias the output to be certain of digit 0 for every (blank) image.
        model.layers[-1].bias.assign([50.0] + [0.0] * 9)
        history = train(model, train_data, train_data, params.train, 0, verbose=0)
        losses[smoothing] = history["val_loss"].iloc[-1]
    assert losses[0.0] == pytest.approx(0.0, abs=1e-6)
    assert losses[0.2] > 1.0  # 0.18 of the target mass on nine digits at probability ~e^-50


def test_shared_object_ids_are_renumbered_in_order():
    config = {
        "a": {"shared_object_id": 9001},
        "b": [{"shared_object_id": 42}, {"shared_object_id": 9001}],
    }
    assert renumber_shared_objects(config) == {
        "a": {"shared_object_id": 0},
        "b": [{"shared_object_id": 1}, {"shared_object_id": 0}],
    }


@pytest.mark.cli
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_train_stage_is_reproducible_to_the_byte(tmp_path, precision):
    params = write_params(tmp_path, {**TINY_MODEL, "train.epochs": 2, "train.precision": precision})
    write_tiny_data(tmp_path, params)
    outputs = [
        params["paths"][key]
        for key in ("model", "model_info", "train_metrics", "train_loss", "train_accuracy")
    ]

    runs = []
    for _ in range(2):
        result = run_stage_cli("train", tmp_path)
        assert result.returncode == 0, result.stderr
        runs.append([(tmp_path / output).read_bytes() for output in outputs])
    assert runs[0] == runs[1]

    metrics = json.loads((tmp_path / params["paths"]["train_metrics"]).read_text())
    assert set(metrics) == {"epochs", "val_accuracy"}  # numbers only; one loss: the test's
    assert metrics["epochs"] == 2
    info = json.loads((tmp_path / params["paths"]["model_info"]).read_text())
    assert info["precision"] == precision
    for key in ("train_loss", "train_accuracy"):
        curve = pd.read_csv(tmp_path / params["paths"][key])
        assert list(curve.columns) == CURVE_COLUMNS and list(curve["epoch"]) == [1, 2]
    final = pd.read_csv(tmp_path / params["paths"]["train_accuracy"]).iloc[-1]
    assert final["validation"] == metrics["val_accuracy"]
    with zipfile.ZipFile(tmp_path / params["paths"]["model"]) as archive:
        assert "date_saved" not in json.loads(archive.read("metadata.json"))
    model = keras.models.load_model(tmp_path / params["paths"]["model"], compile=False)
    assert model.count_params() == info["trainable_params"]
    assert model.layers[1].dtype_policy.name == precision


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_only_float16_training_scales_the_loss(tmp_path, precision):
    """float16's narrow range needs loss scaling, or small gradients round to zero; Keras'
    compile() adds a LossScaleOptimizer under mixed_float16, and only there."""
    params = parse_params(params_with({**TINY_MODEL, "train.precision": precision}))
    write_tiny_data(tmp_path, params.model_dump())
    data = {
        key: read_npz(tmp_path / getattr(params.paths, key))
        for key in ("train_data", "validation_data")
    }
    with dtype_policy(precision):
        model = build_model(params.model)
        history = train(model, data["train_data"], data["validation_data"], params.train, 0, 0)
    loss_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert loss_scaled == (precision == "mixed_float16")
    assert np.isfinite(history["loss"]).all()


@pytest.mark.parametrize(
    ("isa", "lacks"),
    [("AVX2", True), ("avx2", True), ("AVX", True), ("SSE41", True), ("AVX2_VNNI", True),
     ("AVX512_CORE", False), ("AVX512_CORE_BF16", False), ("ALL", False), ("", False)],
)
def test_onednn_capped_below_avx512_lacks_bfloat16(isa, lacks):
    assert onednn_lacks_bfloat16({"ONEDNN_MAX_CPU_ISA": isa}) == lacks
    assert not onednn_lacks_bfloat16({})


@pytest.mark.cli
def test_bfloat16_trains_where_onednn_has_no_kernel_for_it(tmp_path):
    """oneDNN capped to AVX2, as on a CPU without AVX-512: on an AVX-512 CPU TensorFlow would
    still hand bfloat16 convolutions to oneDNN and fail; the stage runs them through Eigen."""
    params = write_params(
        tmp_path, {**TINY_MODEL, "train.epochs": 1, "train.precision": "mixed_bfloat16"}
    )
    write_tiny_data(tmp_path, params)
    result = run_stage_cli("train", tmp_path, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr
    model = keras.models.load_model(tmp_path / params["paths"]["model"], compile=False)
    assert model.layers[1].dtype_policy.name == "mixed_bfloat16"


ARENAS_AFTER_16_THREADS = """
import ctypes, sys, tempfile, threading
if sys.argv[1] == "package":
    import mnist_cnn
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
barrier = threading.Barrier(16)
def allocate():
    barrier.wait()  # all 16 alive at once: none can take over an ended thread's arena
    libc.malloc(64)
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(16)]
for thread in threads: thread.start()
for thread in threads: thread.join()
with tempfile.NamedTemporaryFile(suffix=".xml") as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(report.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(
    not (hasattr(os, "confstr") and "CS_GNU_LIBC_VERSION" in os.confstr_names),
    reason="malloc arenas are glibc's",
)
def test_the_package_caps_malloc_arenas_at_one_per_core():
    """Sixteen threads that each allocate get an arena each from glibc; after the package's
    import, they share one per core (each arena keeps what was freed in it: peak memory)."""
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def arenas(imports: str) -> int:
        command = [sys.executable, "-c", ARENAS_AFTER_16_THREADS, imports]
        printed = subprocess.run(command, env=environ, capture_output=True, text=True, check=True)
        return int(printed.stdout)

    assert arenas("package") <= available_cores() < arenas("nothing")


def test_onednn_without_a_kernel_is_one_line(capsys, monkeypatch):
    """With oneDNN forced on as well (TF_ENABLE_ONEDNN_OPTS=1), an AVX-512 CPU capped to AVX2
    fails inside TensorFlow; this CPU may not (without AVX-512, TensorFlow falls back itself),
    so the failure is raised here with TensorFlow's words."""
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")

    def convolution_without_kernel() -> None:
        raise tf.errors.InternalError(
            None, None, "could not create a primitive descriptor for the convolution forward "
            "propagation primitive. in file tensorflow/core/kernels/mkl/mkl_conv_ops.cc:1172"
        )

    assert run_command(convolution_without_kernel, "train") == 1
    line = capsys.readouterr().err
    assert line.count("\n") == 1
    assert "TF_ENABLE_ONEDNN_OPTS=1, ONEDNN_MAX_CPU_ISA=AVX2" in line
    assert "set TF_ENABLE_ONEDNN_OPTS=0" in line and "train.precision: float32" in line


# Running out of memory as each library says it, in its own words. Where oneDNN runs the
# pooling kernels too (AVX-512 CPUs, or TF_ENABLE_ONEDNN_OPTS=1), it is an AbortedError: the
# first text is what a Zen 4 printed for the 512-filter test below (TensorFlow 2.21), the
# second the spelling of older TensorFlow releases.
ONEDNN_OUT_OF_MEMORY_TEXTS = [
    "Graph execution error:\n\nDetected at node gradient_tape/functional_1/max_pooling2d_1/"
    "MaxPool2d/MaxPoolGrad defined at (most recent call last):\nCompute received an exception:"
    "Status:1, message: could not create a memory object. in file "
    "tensorflow/core/kernels/mkl/mkl_maxpooling_op.cc:388",
    "Compute received an exception:Status: 1, message: could not create a memory object, in "
    "file tensorflow/core/kernels/mkl/mkl_conv_ops.cc:1240",
]


def memory_error_behind_h5py() -> Exception:
    """What h5py's clean-up raises while a MemoryError is handled."""
    try:
        try:
            raise MemoryError
        except MemoryError:
            # as h5py does: no "from", so the MemoryError is its context
            raise ValueError("I/O operation on closed file")  # noqa: B904
    except ValueError as error:
        return error


OUT_OF_MEMORY = {
    "tensorflow": lambda: tf.errors.ResourceExhaustedError(
        None, None, "OOM when allocating tensor with shape[1024,26,26,512] and type float on "
        "/job:localhost/replica:0/task:0/device:CPU:0 by allocator cpu"
    ),
    "onednn": lambda: tf.errors.AbortedError(None, None, ONEDNN_OUT_OF_MEMORY_TEXTS[0]),
    "onednn-older": lambda: tf.errors.AbortedError(None, None, ONEDNN_OUT_OF_MEMORY_TEXTS[1]),
    "python": MemoryError,
    "h5py": memory_error_behind_h5py,
}
# Aborts that are not about memory: oneDNN's status 2 (invalid arguments) and 3 (a kernel
# missing), and TensorFlow's own. Each keeps its message.
OTHER_ABORTS = [
    "Compute received an exception:Status:2, message: could not create a memory object. in "
    "file tensorflow/core/kernels/mkl/mkl_maxpooling_op.cc:388",
    "Compute received an exception:Status:3, message: could not create a primitive. in file "
    "tensorflow/core/kernels/mkl/mkl_conv_ops.cc:1172",
    "Graph execution error: the queue was closed",
]


class RaiseAtFirstBatch(keras.callbacks.Callback):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        raise self.error


TINY_PARAMS = parse_params(params_with(TINY_MODEL))
ERRORS_IN_FIT = {
    **OUT_OF_MEMORY,
    **{text: lambda text=text: tf.errors.AbortedError(None, None, text) for text in OTHER_ABORTS},
}
# fit_model sizes TensorFlow's thread pools, which only a process whose TensorFlow has run no
# op yet can do: so it runs in a process of its own, once for every error.
FIT_WITH_EACH_ERROR = """
import json
from pathlib import Path
import keras
from mnist_cnn.files import read_npz
from mnist_cnn.training import fit_model
from tests.helpers import write_tiny_data
from tests.test_train import ERRORS_IN_FIT, TINY_PARAMS, RaiseAtFirstBatch
write_tiny_data(Path.cwd(), TINY_PARAMS.model_dump())
paths = TINY_PARAMS.paths
data = [read_npz(path) for path in (paths.train_data, paths.validation_data)]
raised = {}
for case, make_error in ERRORS_IN_FIT.items():
    try:
        fit_model(TINY_PARAMS, *data, verbose=0, callbacks=(RaiseAtFirstBatch(make_error()),))
    except Exception as error:
        raised[case] = f"{type(error).__name__}: {error}"
    keras.mixed_precision.set_dtype_policy("float32")
print(json.dumps(raised))
"""


@pytest.fixture(scope="module")
def raised_by_fit(tmp_path_factory) -> dict[str, str]:
    """What the train stage's `fit_model` raised, on tiny data, for each error raised inside
    Keras' fit at the first batch, where TensorFlow's kernels (AVX2 CPUs), oneDNN's (AVX-512
    CPUs), numpy or h5py would raise it: this CPU needs not be the one that does."""
    result = run_script(FIT_WITH_EACH_ERROR, (), tmp_path_factory.mktemp("fit"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.cli
@pytest.mark.parametrize("library", OUT_OF_MEMORY)
def test_out_of_memory_in_training_is_one_line_whichever_library_finds_it(
    raised_by_fit, library
):
    parameters = build_model(TINY_PARAMS.model).count_params()
    assert raised_by_fit[library] == (
        f"PipelineError: train: out of memory for a model of {parameters:,} parameters at "
        f"train.batch_size {TINY_PARAMS.train.batch_size}: make the model "
        "(model.dense_units, model.conv_filters) or train.batch_size smaller"
    )


@pytest.mark.cli
@pytest.mark.parametrize("message", OTHER_ABORTS)
def test_an_abort_that_is_not_memory_keeps_its_message(raised_by_fit, message):
    assert raised_by_fit[message] == f"AbortedError: {message}"


@pytest.mark.parametrize("message", OTHER_ABORTS)
def test_the_runner_passes_an_abort_that_is_not_memory_on(message):
    def stage() -> None:
        raise tf.errors.AbortedError(None, None, message)

    with pytest.raises(tf.errors.AbortedError):
        run_command(stage, "evaluate")


@pytest.mark.parametrize("library", OUT_OF_MEMORY)
def test_out_of_memory_in_any_stage_is_one_line(capsys, library):
    """Where no stage says more (evaluate, export, a command), the runner names who ran out."""

    def stage() -> None:
        raise OUT_OF_MEMORY[library]()

    assert run_command(stage, "evaluate") == 1
    assert capsys.readouterr().err == (
        "error: evaluate: out of memory: this machine cannot hold what evaluate needs; free "
        "memory, or make the model and batch sizes in params.yaml smaller\n"
    )


class InterruptedWhileCollected:
    """An object whose finalizer receives the Ctrl-C, as TFLite's Interpreter.__del__ did late
    in the export stage: Python prints "Exception ignored in" and goes on."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def interrupt_swallowed() -> None:
    InterruptedWhileCollected()  # collected at once


def interrupt_turned_into_import_error() -> None:
    """onnxruntime, interrupted while it initialises, raises ImportError instead."""
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        raise ImportError("initialization failed") from None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # as intended
@pytest.mark.parametrize("main", [interrupt_swallowed, interrupt_turned_into_import_error])
def test_ctrl_c_is_interrupted_whatever_a_library_made_of_it(capsys, main):
    def callers_handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, callers_handler)
    try:
        assert run_command(main, "export") == 130
        assert capsys.readouterr().err.splitlines()[-1] == "interrupted"
        assert signal.getsignal(signal.SIGINT) is callers_handler  # the caller's, back
    finally:
        signal.signal(signal.SIGINT, previous)


def centroid(image: np.ndarray) -> np.ndarray:
    rows, columns = np.indices(image.shape[:2])
    mass = image[..., 0].sum()
    return np.array([(rows * image[..., 0]).sum() / mass, (columns * image[..., 0]).sum() / mass])


@pytest.fixture
def centred_square() -> np.ndarray:
    image = np.zeros((1, 28, 28, 1), np.uint8)
    image[0, 11:17, 11:17] = 255
    return image


def augment(images: np.ndarray, seed: int, **settings: float) -> np.ndarray:
    import tensorflow as tf

    from mnist_cnn.params import AugmentParams

    params = AugmentParams(**{"rotation_degrees": 0, "zoom": 0, "shift": 0, **settings})
    return random_affine(tf.constant(images), tf.constant([seed, 0], tf.int64), params).numpy()


def test_augmentation_off_leaves_images_unchanged(centred_square):
    assert np.array_equal(augment(centred_square, 1), centred_square.astype(np.float32))


def test_rotation_and_zoom_turn_about_the_centre(centred_square):
    for seed in range(5):
        moved = augment(centred_square, seed, rotation_degrees=30, zoom=0.2)
        assert not np.array_equal(moved, centred_square)
        assert centroid(moved[0]) == pytest.approx([13.5, 13.5], abs=0.05)


def test_shift_stays_within_its_bound(centred_square):
    offsets = [centroid(augment(centred_square, seed, shift=0.1)[0]) - 13.5 for seed in range(20)]
    assert all(np.abs(offset).max() <= 0.1 * 28 + 0.05 for offset in offsets)
    assert max(np.abs(offset).max() for offset in offsets) > 1  # it does move


def test_augmentation_is_seeded(centred_square):
    images = np.repeat(centred_square, 4, axis=0)
    settings = {"rotation_degrees": 10, "zoom": 0.1, "shift": 0.1}
    first, again = augment(images, 3, **settings), augment(images, 3, **settings)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, augment(images, 4, **settings))
    assert not np.array_equal(first[0], first[1])  # each image of a batch gets its own draw
