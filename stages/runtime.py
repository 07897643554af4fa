"""TensorFlow set-up shared by the stages: seeds, determinism, precision."""

import os
from pathlib import Path

import keras
import tensorflow as tf

# CPU features that make bfloat16 matmuls and convolutions fast (Intel AMX, AVX512-BF16).
BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}
# NVIDIA compute capabilities from which tensor cores take bfloat16 (Ampere) and float16 (Volta).
BF16_GPU_CAPABILITY = (8, 0)
FP16_GPU_CAPABILITY = (7, 0)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_deterministic(seed: int, threads: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; same code, params and machine give the same bits.

    `threads` sizes TensorFlow's thread pool (0: every core). It is a param because it changes
    the bits: operations split their sums differently across threads.
    Must run before TensorFlow builds any op: thread pools cannot be resized afterwards.
    """
    tf.config.threading.set_intra_op_parallelism_threads(threads or available_cores())
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)


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


def use_precision(requested: str) -> str:
    """Set Keras' global dtype policy; return the precision actually used.

    Under mixed_float16, Keras' compile() wraps the optimizer in a LossScaleOptimizer, so that
    small gradients do not round to zero in float16.
    """
    gpus = [
        compute_capability(tf.config.experimental.get_device_details(gpu))
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    precision = resolve_precision(requested, cpu_flags(), gpus)
    keras.mixed_precision.set_dtype_policy(precision)
    return precision
