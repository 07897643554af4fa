"""TensorFlow's set-up, in one place: a quiet start, oneDNN kept off where it lacks bfloat16,
fewer malloc arenas, seeds and determinism, thread pools. Which precision the hardware runs
fastest: mnist_cnn/precision.py.

`few_malloc_arenas()` and `quiet_tensorflow_import()` run once, when the package is imported
(mnist_cnn/__init__.py), and import nothing heavy: commands that never touch TensorFlow
(report, push-run-cache, --help) do not pay for it.

On a machine without a GPU, importing TensorFlow prints about nine lines ("Could not find cuda
drivers", "E0000 ... failed call to cuInit", notes on CPU instructions) that read as failures.
C++ code writes them straight to file descriptor 2, some before any logging setting applies, so
they are filtered there: the known start-up lines are dropped and every other line is passed
on, so a real error still shows.
"""

import ctypes
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import ModuleType

# Lines TensorFlow 2.21 prints at start-up on a machine without (or with) a GPU.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog"
    r"|cudart_stub\.cc|cuda_platform\.cc.*cuInit|cpu_feature_guard\.cc"
    r"|^To enable the following instructions"
    r"|oneDNN custom operations are on"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc"
)
# oneDNN instruction sets (ONEDNN_MAX_CPU_ISA values) without bfloat16 convolutions.
ISAS_WITHOUT_BFLOAT16 = re.compile(r"SSE41|AVX|AVX2(_VNNI(_2)?)?", re.IGNORECASE)
# glibc's mallopt parameter for the most arenas (malloc.h).
M_ARENA_MAX = -8


@contextmanager
def native_stderr_filtered(noise: re.Pattern) -> Iterator[None]:
    """Hold back what anything in this process (C++ included) writes to stderr meanwhile;
    then write it out without the lines that match `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not noise.search(line)))
            sys.stderr.flush()


def onednn_lacks_bfloat16(environ: Mapping[str, str]) -> bool:
    """Whether oneDNN is capped below AVX-512 (`ONEDNN_MAX_CPU_ISA=AVX2`, say), where it has no
    bfloat16 convolution.

    TensorFlow sends bfloat16 to its own Eigen kernels when the *CPU* lacks AVX-512 (a Zen 3),
    but it does not see the cap: on an AVX-512 CPU capped to AVX2, a bfloat16 convolution fails
    with "could not create a primitive descriptor". Turning oneDNN off there takes the path a
    CPU without AVX-512 takes by default.
    """
    return bool(ISAS_WITHOUT_BFLOAT16.fullmatch(environ.get("ONEDNN_MAX_CPU_ISA", "").strip()))


class QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when TensorFlow is first imported, by whichever module, it wraps
    the loading in the stderr filter, then removes itself."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            with native_stderr_filtered(STARTUP_NOISE):
                load(module)
                # Probe for GPUs now, inside the filter (the cuInit line comes from here).
                # Listing physical devices does not start TensorFlow's runtime: thread pools
                # can still be sized afterwards.
                module.config.list_physical_devices("GPU")

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def quiet_tensorflow_import() -> None:
    """Set TensorFlow's environment before it loads (it reads it once), and filter its start-up
    lines. A setting of your own wins."""
    if onednn_lacks_bfloat16(os.environ):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # info and warning lines off; errors stay
    if "tensorflow" not in sys.modules and not any(
        isinstance(finder, QuietTensorFlowImport) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, QuietTensorFlowImport())


def few_malloc_arenas() -> None:
    """Cap glibc's malloc at one arena per core, before TensorFlow starts its threads.

    By default glibc gives threads arenas of their own, up to 8 per core, and each arena keeps
    what was freed in it: TensorFlow's thread pools and tf.data's threads left training's peak
    resident memory 134 MiB higher (1,200 against 1,066 MiB, 5 epochs of the defaults on a
    2-core Zen 3), for the same bits. It must run before glibc sets its own limit, at the ninth
    arena: at import. A MALLOC_ARENA_MAX of the user's wins; other C libraries are left alone.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not hasattr(os, "confstr"):
        return
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
        libc = ctypes.CDLL("libc.so.6")
    except (OSError, ValueError):  # not glibc
        return
    libc.mallopt(M_ARENA_MAX, available_cores())


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_deterministic(seed: int, threads: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; same code, params and machine give the same bits.

    `threads` sizes TensorFlow's thread pool (0: every core). It is a param because it changes
    the bits: operations split their sums differently across threads.
    Must run before TensorFlow builds any op: thread pools cannot be resized afterwards.
    """
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads or available_cores())
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
