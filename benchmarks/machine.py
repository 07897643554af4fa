"""What a benchmark ran on, written beside its figures: they mean nothing without it."""

import datetime
import platform

import tensorflow as tf

from mnist_cnn.precision import (
    cpu_flags,
    cpu_flags_in_use,
    cpuinfo_field,
    gpu_capabilities,
    resolve_precision,
)
from mnist_cnn.tensorflow_setup import available_cores


def describe() -> dict:
    """The CPU (its model and the flags that choose the kernels and `precision: auto`), the
    cores, the versions, and the day."""
    flags = cpu_flags()
    return {
        "cpu": cpuinfo_field("model name") or platform.processor() or "unknown",
        "cpu_family_model": [cpuinfo_field("cpu family"), cpuinfo_field("model")],
        "bfloat16_flags": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "avx512f": "avx512f" in flags,
        "auto_precision": resolve_precision("auto", cpu_flags_in_use(), gpu_capabilities()),
        "cores": available_cores(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "date": datetime.date.today().isoformat(),
    }
