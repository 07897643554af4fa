"""Imported before TensorFlow by the stages that use it: keeps its start-up log off the console,
and keeps oneDNN off where it would be asked for bfloat16 kernels it does not have.

On a machine without a GPU, importing TensorFlow prints about nine lines ("Could not find cuda
drivers", "E0000 ... failed call to cuInit", notes on CPU instructions) that read as failures.
C++ code writes them straight to file descriptor 2, some before any logging setting applies, so
they are filtered there: the known start-up lines are dropped and every other line is passed
on, so a real error still shows. Importing this module is its whole job.
"""

import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

# Lines TensorFlow 2.21 prints at start-up on a machine without (or with) a GPU.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog"
    r"|cudart_stub\.cc|cuda_platform\.cc.*cuInit|cpu_feature_guard\.cc"
    r"|^To enable the following instructions"
    r"|oneDNN custom operations are on"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc"
)


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


# oneDNN instruction sets (ONEDNN_MAX_CPU_ISA values) without bfloat16 convolutions.
ISAS_WITHOUT_BFLOAT16 = re.compile(r"SSE41|AVX|AVX2(_VNNI(_2)?)?", re.IGNORECASE)


def onednn_lacks_bfloat16(environ: Mapping[str, str]) -> bool:
    """Whether oneDNN is capped below AVX-512 (`ONEDNN_MAX_CPU_ISA=AVX2`, say), where it has no
    bfloat16 convolution.

    TensorFlow sends bfloat16 to its own Eigen kernels when the *CPU* lacks AVX-512 (a Zen 3),
    but it does not see the cap: on an AVX-512 CPU capped to AVX2, a bfloat16 convolution fails
    with "could not create a primitive descriptor". Turning oneDNN off there takes the path a
    CPU without AVX-512 takes by default.
    """
    return bool(ISAS_WITHOUT_BFLOAT16.fullmatch(environ.get("ONEDNN_MAX_CPU_ISA", "").strip()))


# Read once, when TensorFlow loads; an explicit TF_ENABLE_ONEDNN_OPTS of your own wins.
if onednn_lacks_bfloat16(os.environ):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Info and warning lines off; errors stay (a setting of your own wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
with native_stderr_filtered(STARTUP_NOISE):
    import tensorflow as tf

    # Probe for GPUs now, inside the filter (the cuInit line comes from here). Listing physical
    # devices does not start TensorFlow's runtime: thread pools can still be sized afterwards.
    tf.config.list_physical_devices("GPU")
