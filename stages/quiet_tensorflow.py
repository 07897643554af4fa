"""Imported before TensorFlow by the stages that use it: keeps its start-up log off the console.

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
from collections.abc import Iterator
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


# Info and warning lines off; errors stay (a setting of your own wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
with native_stderr_filtered(STARTUP_NOISE):
    import tensorflow as tf

    # Probe for GPUs now, inside the filter (the cuInit line comes from here). Listing physical
    # devices does not start TensorFlow's runtime: thread pools can still be sized afterwards.
    tf.config.list_physical_devices("GPU")
