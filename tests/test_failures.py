"""Faults of the environment and of what the user hands a stage, through the command line: one
line naming the file, key or value, a non-zero exit, no traceback, nothing partial left."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from mnist_cnn.errors import PipelineError
from mnist_cnn.fetch import MIRROR_ENV
from mnist_cnn.files import write_json
from mnist_cnn.model import build_model, load_model, save_model
from mnist_cnn.params import parse_params
from mnist_cnn.training import DIVERGED_LOSS, StopIfDiverged
from tests.helpers import (
    TINY_MODEL,
    copy_project,
    error_line,
    idx_images,
    idx_labels,
    project_environment,
    run_script,
    run_stage_cli,
    write_gz,
    write_params,
    write_tiny_data,
)

# What a failed train stage adds to its line: what it left, and the way back.
NO_MODEL_WRITTEN = (
    "; no model written: `dvc checkout train` and `git checkout plots/train/loss.csv "
    "plots/train/accuracy.csv metrics/train.json` restore the last recorded ones"
)


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


def mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    """A real file system with 64 KiB of room: writing more fails with ENOSPC."""
    folder = tmp_path / "full"
    mount_tmpfs(folder, "size=64k")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def read_only_folder(tmp_path) -> Iterator[Path]:
    """A folder nobody may write to: read-only by its mode, or (for root, whom modes do not
    stop) a read-only file system."""
    folder = tmp_path / "read-only"
    if os.geteuid() == 0:
        mount_tmpfs(folder, "ro,size=64k")
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def write_raw_mnist(folder: Path, count: int = 200) -> None:
    """Small but valid IDX files under the names the download stage gives them."""
    raw = folder / "data/raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = np.arange(count) % 10
    for prefix in ("train", "t10k"):
        write_gz(raw / f"{prefix}-images-idx3-ubyte.gz", idx_images(images))
        write_gz(raw / f"{prefix}-labels-idx1-ubyte.gz", idx_labels(labels))


@pytest.mark.cli
def test_disk_full_while_writing_prepared_data(tmp_path, full_disk):
    write_params(
        tmp_path,
        {"preprocess.validation_images": 20, "paths.train_data": "full/train.npz"},
    )
    # Random pixels do not compress: 180 training images are about 140 KiB, over the 64 KiB.
    write_raw_mnist(tmp_path)
    result = run_stage_cli("preprocess", tmp_path)
    assert error_line(result) == "error: full/train.npz: could not write (No space left on device)"
    assert list(full_disk.iterdir()) == []


@pytest.mark.cli
def test_disk_full_while_saving_the_model(tmp_path, full_disk):
    params = write_params(tmp_path, {**TINY_MODEL, "paths.model": "full/model.keras"})
    write_tiny_data(tmp_path, params)
    result = run_stage_cli("train", tmp_path)
    assert error_line(result) == (
        f"error: full/model.keras: could not write (No space left on device){NO_MODEL_WRITTEN}"
    )
    assert list(full_disk.iterdir()) == []
    assert not (tmp_path / params["paths"]["train_metrics"]).exists()


# Memory is limited with setrlimit(RLIMIT_AS), a limit on the address space, set above what the
# same run needs at a small size on this machine: how much TensorFlow maps differs with the CPU,
# the build and oneDNN, so no fixed limit fails in the same place everywhere. The stage runs on
# TensorFlow's own kernels in float32 (TF_ENABLE_ONEDNN_OPTS=0), the path of every CPU; what
# oneDNN's kernels raise instead (AVX-512 CPUs) is tested in tests/test_train.py.
SAME_KERNELS_EVERYWHERE = {"TF_ENABLE_ONEDNN_OPTS": "0"}
STAGE_WITH_ITS_PEAK = """
import sys
from mnist_cnn.runner import run_stage
from stages.train import main
status = run_stage(main, "train")
status_lines = open("/proc/self/status").read().splitlines()
print(next(int(line.split()[1]) * 1024 for line in status_lines if line.startswith("VmPeak")))
sys.exit(status)
"""
# A model built in memory, then saved with only `headroom` MiB of address space left: the
# save, alone, runs out (no training: no kernel, so the same on every CPU).
SAVE_WITH_LITTLE_LEFT = """
import resource, sys
from pathlib import Path
from mnist_cnn.model import build_model, save_model
from mnist_cnn.params import load_params
model = build_model(load_params().model)
status_lines = open("/proc/self/status").read().splitlines()
mapped = next(int(line.split()[1]) * 1024 for line in status_lines if line.startswith("VmSize"))
limit = mapped + int(sys.argv[2]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from mnist_cnn.runner import run_command
sys.exit(run_command(lambda: save_model(model, Path(sys.argv[1])), "train"))
"""


@pytest.mark.cli
@pytest.mark.skipif(sys.platform != "linux", reason="limits memory with setrlimit(RLIMIT_AS)")
def test_out_of_memory_while_training_is_one_line(tmp_path):
    """A batch whose activations do not fit: 512 filters over 1,024 images are 1.4 GB for the
    convolution's output alone, with half a GiB more than the same run needs at batch 16."""
    changes = {**TINY_MODEL, "model.conv_filters": [512], "train.precision": "float32"}
    write_tiny_data(tmp_path, write_params(tmp_path, changes), count=1024)
    measured = run_script(STAGE_WITH_ITS_PEAK, (), tmp_path, SAME_KERNELS_EVERYWHERE)
    assert measured.returncode == 0, measured.stderr
    limit = int(measured.stdout.split()[-1]) + 2**29
    for path in tmp_path.glob("models/*"):
        path.unlink()

    params = write_params(tmp_path, {**changes, "train.batch_size": 1024})
    parameters = build_model(parse_params(params).model).count_params()
    result = run_script(STAGE_WITH_ITS_PEAK, (), tmp_path, SAME_KERNELS_EVERYWHERE, limit)
    assert error_line(result) == (
        f"error: train: out of memory for a model of {parameters:,} parameters at "
        "train.batch_size 1024: make the model (model.dense_units, model.conv_filters) or "
        f"train.batch_size smaller{NO_MODEL_WRITTEN}"
    )
    assert list(tmp_path.glob("models/*")) == []  # no model, curves or temporary


@pytest.mark.cli
@pytest.mark.skipif(sys.platform != "linux", reason="limits memory with setrlimit(RLIMIT_AS)")
def test_out_of_memory_while_saving_is_one_line(tmp_path):
    """83 million parameters (332 MB) saved with 64 MiB of address space to spare. h5py's
    clean-up hides the MemoryError behind "I/O operation on closed file": the stage finds it
    in the chain."""
    params = write_params(tmp_path, {**TINY_MODEL, "model.dense_units": [60000, 600]})
    parameters = build_model(parse_params(params).model).count_params()
    result = run_script(SAVE_WITH_LITTLE_LEFT, ("models/model.keras", "64"), tmp_path)
    assert error_line(result) == (
        f"error: models/model.keras: out of memory while saving a model of {parameters:,} "
        "parameters: make the model (model.dense_units, model.conv_filters) smaller or "
        "free memory"
    )
    assert list(tmp_path.glob("models/*")) == []  # no model, no temporary


@pytest.mark.cli
def test_disk_full_while_exporting_leaves_no_half_set(tmp_path, full_disk):
    """The ONNX file does not fit: no SavedModel, TFLite file or report of the new set stays
    (nor of the old one, which the new SavedModel had already replaced), and the line says how
    to get the last recorded exports back."""
    params = write_params(
        tmp_path, {**TINY_MODEL, "model.dense_units": [64], "paths.onnx_model": "full/m.onnx"}
    )
    write_tiny_data(tmp_path, params)
    assert run_stage_cli("train", tmp_path).returncode == 0
    paths = params["paths"]
    outputs = ["saved_model", "onnx_model", "tflite_model", "export_metrics", "export_details"]
    for key in outputs[1:]:
        if not paths[key].startswith("full/"):
            (tmp_path / paths[key]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / paths[key]).write_text("the last export's\n")
    (tmp_path / paths["saved_model"]).mkdir(parents=True)
    (tmp_path / paths["saved_model"] / "saved_model.pb").write_text("the last export's\n")

    result = run_stage_cli("export", tmp_path)
    assert error_line(result) == (
        "error: full/m.onnx: could not write (No space left on device); no export written "
        "(after dvc repro: `dvc checkout export` and `git checkout metrics/export.json` restore "
        "the last recorded ones)"
    )
    assert [key for key in outputs if (tmp_path / paths[key]).exists()] == []
    assert list(full_disk.iterdir()) == []
    assert list((tmp_path / "models").glob(".*")) == []  # no scratch folder left


@pytest.mark.cli
def test_scratch_files_of_a_killed_stage_never_reach_git(tmp_path):
    """`dvc repro` after a killed run may restore the stage from the run-cache without running
    it, so nothing deletes the scratch folder: git must not see it."""
    copy_project(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    scratch = tmp_path / "models/.saved_model.k3x9q2.tmp"
    (scratch / "saved_model").mkdir(parents=True)
    (scratch / "saved_model/saved_model.pb").write_bytes(b"half")
    (tmp_path / "models/.model.keras.a8c1.tmp").write_bytes(b"half")
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "models"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout
    assert ".tmp" not in status


@pytest.mark.cli
def test_read_only_output_folder(tmp_path, read_only_folder):
    write_params(
        tmp_path, {"preprocess.validation_images": 20, "paths.test_data": "read-only/test.npz"}
    )
    write_raw_mnist(tmp_path, count=40)
    message = error_line(run_stage_cli("preprocess", tmp_path))
    assert message.startswith("error: read-only/test.npz: could not write (")
    assert message.endswith(("Read-only file system)", "Permission denied)"))


@pytest.mark.cli
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"model.pool_size": 30},
            "model.pool_size: 30 is larger than the 28x28 image; expected at most 28",
        ),
        (
            {"model.conv_filters": [8] * 6},
            "model.pool_size: 2 with 6 conv blocks (model.conv_filters) pools the 28x28 image"
            " down to nothing; expected at most 4 conv blocks with pool_size 2",
        ),
    ],
)
def test_impossible_model_is_refused_before_any_work(tmp_path, changes, message):
    write_params(tmp_path, {**TINY_MODEL, **changes})
    assert error_line(run_stage_cli("train", tmp_path)) == f"error: params.yaml: {message}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]


@pytest.mark.cli
def test_the_largest_possible_model_trains(tmp_path):
    """The bound is tight: four blocks of pool_size 2 (28 -> 1 pixel) are accepted and train."""
    params = write_params(tmp_path, {**TINY_MODEL, "model.conv_filters": [4, 4, 4, 4]})
    write_tiny_data(tmp_path, params, count=16)
    result = run_stage_cli("train", tmp_path)
    assert result.returncode == 0, result.stderr


def save_evaluate_inputs(folder: Path, model: keras.Model) -> dict:
    params = write_params(folder, TINY_MODEL)
    write_tiny_data(folder, params, count=8)
    save_model(model, folder / params["paths"]["model"])
    return params


def load_failure(folder: Path, monkeypatch) -> str:
    """What loading the model evaluate would load says, in-process, run from `folder`."""
    monkeypatch.chdir(folder)
    with pytest.raises(PipelineError) as error:
        load_model(Path("models/model.keras"))
    return str(error.value)


@pytest.mark.parametrize(
    ("layers", "problem"),
    [
        (
            [keras.Input((32, 32, 1)), keras.layers.Flatten(), keras.layers.Dense(10)],
            "takes input of shape (None, 32, 32, 1), expected (None, 28, 28, 1) (MNIST images)",
        ),
        (
            [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(5)],
            "gives output of shape (None, 5), expected (None, 10) (one probability per digit)",
        ),
    ],
)
def test_model_of_the_wrong_shape(tmp_path, monkeypatch, layers, problem):
    save_evaluate_inputs(tmp_path, keras.Sequential(layers))
    assert load_failure(tmp_path, monkeypatch) == f"models/model.keras: {problem}"


def rewrite_config(path: Path, edit) -> None:
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries["config.json"] = json.dumps(edit(json.loads(entries["config.json"]))).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def test_edited_model_config(tmp_path, monkeypatch):
    model = build_model(parse_params(write_params(tmp_path, TINY_MODEL)).model)
    params = save_evaluate_inputs(tmp_path, model)

    def break_a_layer(config: dict) -> dict:
        config["config"]["layers"][2]["config"]["filters"] = "four"
        return config

    rewrite_config(tmp_path / params["paths"]["model"], break_a_layer)
    assert load_failure(tmp_path, monkeypatch) == (
        "models/model.keras: not a loadable Keras model (in a Conv2D layer: TypeError:"
        " '<=' not supported between instances of 'str' and 'int')"
    )


@pytest.mark.cli
def test_unsafe_model_is_not_loaded(tmp_path):
    """A Lambda layer would run code from the file: Keras' safe mode refuses it. Through the
    evaluate stage's command line, as every model failure reaches a user (the others are
    checked in-process): one line, and no metrics."""
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Lambda(lambda x: x[:, :10])]
    )
    save_evaluate_inputs(tmp_path, model)
    message = error_line(run_stage_cli("evaluate", tmp_path))
    assert message.startswith("error: models/model.keras: not a loadable Keras model (ValueError: ")
    assert "lambda" in message.lower()
    assert not (tmp_path / "metrics").exists()


@pytest.mark.cli
def test_a_diverged_run_stops_in_one_line_and_writes_nothing(tmp_path):
    """A learning rate that blows the loss up: the train stage names the epoch and the rate,
    exits non-zero, and leaves no model, curves or metrics (so no NaN reaches a metrics file)."""
    params = write_params(tmp_path, {**TINY_MODEL, "train.epochs": 3, "train.learning_rate": 1e30})
    write_tiny_data(tmp_path, params)
    message = error_line(run_stage_cli("train", tmp_path))
    # NaN on some CPUs, a finite 5e+29 on others (an AVX-512 Xeon's oneDNN kernels): both stop.
    assert re.fullmatch(
        r"error: train: the loss became (nan|inf|\d\.\d+e\+\d+) in epoch 1, a diverged run"
        rf" \(train\.learning_rate 1e\+30 too high\?\){re.escape(NO_MODEL_WRITTEN)}",
        message,
    ), message
    paths = params["paths"]
    for output in ("model", "model_info", "train_metrics", "train_loss", "train_accuracy"):
        assert not (tmp_path / paths[output]).exists()
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize(
    ("logs", "stopped_by"),
    [
        ({"loss": 6.5, "val_loss": 2.4}, None),  # a learning rate of 1, on its way back to a guess
        ({"loss": DIVERGED_LOSS, "val_loss": 2.4}, None),
        ({"loss": DIVERGED_LOSS * 1.01, "val_loss": 2.4}, "loss became 233"),
        ({"loss": 2.0, "val_loss": float("nan")}, "validation loss became nan"),
        ({"loss": float("inf"), "val_loss": 2.4}, "loss became inf"),
        ({"loss": 2.0}, None),  # no validation set: nothing to check there
    ],
)
def test_a_diverged_run_is_a_loss_far_above_a_guess_or_not_finite(logs, stopped_by):
    stop = StopIfDiverged(learning_rate=0.5)
    if stopped_by is None:
        stop.on_epoch_end(2, logs)
        return
    with pytest.raises(PipelineError) as error:
        stop.on_epoch_end(2, logs)
    assert str(error.value) == (
        f"train: the {stopped_by} in epoch 3, a diverged run (train.learning_rate 0.5 too high?)"
    )


def test_no_metrics_file_holds_nan(tmp_path):
    with pytest.raises(PipelineError) as error:
        write_json(tmp_path / "metrics.json", {"accuracy": 0.5, "loss": float("nan")})
    path = tmp_path / "metrics.json"
    assert str(error.value) == f"{path}: not written: a value is NaN or infinite"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.cli
def test_ctrl_c_stops_training_in_one_line(tmp_path):
    params = write_params(tmp_path, {**TINY_MODEL, "train.epochs": 1000})
    write_tiny_data(tmp_path, params)
    stage = subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=tmp_path,
        env=project_environment(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in stage.stdout:  # wait until it is training
        if line.startswith("Epoch 2/"):
            break
    stage.send_signal(signal.SIGINT)
    _, stderr = stage.communicate(timeout=60)
    assert stage.returncode == 130
    assert stderr == "interrupted\n"
    assert not (tmp_path / params["paths"]["model"]).exists()
    assert temporaries(tmp_path) == []


def ctrl_c_while_importing(command: list[str], folder: Path) -> subprocess.CompletedProcess:
    """`command` (a stage or the project's command) sent Ctrl-C while it imports TensorFlow: as
    soon as TensorFlow's library is mapped into the process, seconds before the import ends."""
    program = subprocess.Popen(
        [sys.executable, *command],
        cwd=folder,
        env=project_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    maps = Path(f"/proc/{program.pid}/maps")
    deadline = time.monotonic() + 60
    while program.poll() is None and time.monotonic() < deadline:
        if "libtensorflow_framework" in maps.read_text():
            program.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    stdout, stderr = program.communicate(timeout=60)
    return subprocess.CompletedProcess(program.args, program.returncode, stdout, stderr)


@pytest.mark.cli
@pytest.mark.skipif(sys.platform != "linux", reason="watches /proc/PID/maps")
@pytest.mark.parametrize(
    "command",
    [["-m", "stages.train"], ["-m", "stages.evaluate"], ["-m", "stages.export"],
     ["-m", "mnist_cnn", "predict", "seven.png"]],
    ids=["train", "evaluate", "export", "predict"],
)
def test_ctrl_c_while_tensorflow_imports_is_one_line(tmp_path, command):
    """Each program has its inputs, so that it gets as far as importing TensorFlow (it checks
    them first); a model file that no program reads before then; nothing written."""
    params = write_params(tmp_path, TINY_MODEL)
    write_tiny_data(tmp_path, params)
    model = tmp_path / params["paths"]["model"]
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not read before TensorFlow has imported")
    before = sorted(tmp_path.rglob("*"))
    result = ctrl_c_while_importing(command, tmp_path)
    assert (result.returncode, result.stderr) == (130, "interrupted\n")
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.cli
def test_outputs_get_the_mode_the_umask_gives(tmp_path):
    write_params(tmp_path, {"preprocess.validation_images": 20})
    write_raw_mnist(tmp_path, count=40)
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        result = subprocess.run(
            [sys.executable, "-m", "stages.preprocess"],
            cwd=tmp_path,
            env=project_environment(),
            capture_output=True,
            preexec_fn=lambda umask=umask: os.umask(umask),
        )
        assert result.returncode == 0, result.stderr
        for output in (tmp_path / "data/prepared").iterdir():
            assert output.stat().st_mode & 0o777 == mode, (output, oct(umask))


@pytest.mark.cli
def test_stale_temporaries_are_removed_before_a_stage_runs(tmp_path, mnist_dir):
    """What a killed run left (a temporary file, a scratch folder) is gone after the next."""
    write_params(tmp_path, {"preprocess.validation_images": 20})
    stale = [
        tmp_path / "data/raw/.t10k-images-idx3-ubyte.gz.k2j4x9.tmp",
        tmp_path / "data/prepared/.train.npz.a8f3.tmp",
        tmp_path / "models/.model.keras.zz01.tmp/model.keras",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    assert run_stage_cli("download", tmp_path, env={MIRROR_ENV: str(mnist_dir)}).returncode == 0
    assert run_stage_cli("preprocess", tmp_path).returncode == 0
    assert temporaries(tmp_path / "data") == []
    write_tiny_data(tmp_path, write_params(tmp_path, TINY_MODEL))
    assert run_stage_cli("train", tmp_path).returncode == 0
    assert temporaries(tmp_path) == []
