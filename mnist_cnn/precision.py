"""The precision the hardware trains fastest in, for `train.precision: auto`: bfloat16 on CPUs
with AMX or AVX512-BF16 (unless oneDNN is told not to use them) and on GPUs from Ampere on,
float16 on Volta and Turing, float32 elsewhere; read from /proc/cpuinfo, $ONEDNN_MAX_CPU_ISA
and TensorFlow's description of each GPU."""

import os
from collections.abc import Mapping
from pathlib import Path

from mnist_cnn.tensorflow_setup import onednn_lacks_bfloat16

# CPU features that make bfloat16 matmuls and convolutions fast (Intel AMX, AVX512-BF16).
BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}
# NVIDIA compute capabilities from which tensor cores take bfloat16 (Ampere) and float16 (Volta).
BF16_GPU_CAPABILITY = (8, 0)
FP16_GPU_CAPABILITY = (7, 0)


def cpuinfo_field(name: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The value of the first `name : value` line of /proc/cpuinfo; None where there is none."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    # Unknown (not Linux): no cheap way to ask, so assume no bfloat16 support.
    return set((cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_flags_in_use(
    environ: Mapping[str, str] = os.environ, cpuinfo: Path = Path("/proc/cpuinfo")
) -> set[str]:
    """The CPU's flags, without the bfloat16 ones where oneDNN is capped below them
    (`ONEDNN_MAX_CPU_ISA=AVX2`, say): there bfloat16 runs through Eigen's kernels, slower than
    float32, as on a CPU without them."""
    flags = cpu_flags(cpuinfo)
    return flags - BF16_CPU_FLAGS if onednn_lacks_bfloat16(environ) else flags


def compute_capability(details: dict) -> tuple[int, int]:
    """A GPU's CUDA compute capability, from TensorFlow's description of it (e.g. (8, 0) for an
    A100); (0, 0) where the description has none (not an NVIDIA GPU)."""
    major, minor = details.get("compute_capability") or (0, 0)
    return int(major), int(minor)


def resolve_precision(requested: str, flags: set[str], gpus: list[tuple[int, int]]) -> str:
    """`auto` becomes what the hardware runs fastest. On GPUs (`gpus`: their compute
    capabilities), what their tensor cores take: bfloat16 from Ampere (8.0) on, float16 with
    loss scaling on Volta and Turing (7.x), float32 on older ones. On a CPU, bfloat16 with AMX
    or AVX512-BF16, float32 elsewhere."""
    if requested != "auto":
        return requested
    if gpus:
        oldest = min(gpus)
        if oldest >= BF16_GPU_CAPABILITY:
            return "mixed_bfloat16"
        return "mixed_float16" if oldest >= FP16_GPU_CAPABILITY else "float32"
    return "mixed_bfloat16" if flags & BF16_CPU_FLAGS else "float32"


def gpu_capabilities() -> list[tuple[int, int]]:
    """The compute capability of each GPU TensorFlow sees; [] on a machine without one."""
    import tensorflow as tf

    return [
        compute_capability(tf.config.experimental.get_device_details(gpu))
        for gpu in tf.config.list_physical_devices("GPU")
    ]


def use_precision(requested: str) -> str:
    """Set Keras' global dtype policy; return the precision actually used.

    Under mixed_float16, Keras' compile() wraps the optimizer in a LossScaleOptimizer, so that
    small gradients do not round to zero in float16.
    """
    import keras

    precision = resolve_precision(requested, cpu_flags_in_use(), gpu_capabilities())
    keras.mixed_precision.set_dtype_policy(precision)
    return precision
