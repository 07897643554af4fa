"""TensorFlow set-up shared by the train and evaluate stages: seeds, determinism, precision."""

import os
from pathlib import Path

import keras
import tensorflow as tf

# CPU features that make bfloat16 matmuls and convolutions fast (Intel AMX, AVX512-BF16).
BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}


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


def resolve_precision(requested: str, flags: set[str], has_gpu: bool) -> str:
    """`auto` becomes mixed_bfloat16 where the hardware runs it fast, float32 elsewhere."""
    if requested != "auto":
        return requested
    return "mixed_bfloat16" if has_gpu or flags & BF16_CPU_FLAGS else "float32"


def use_precision(requested: str) -> str:
    """Set Keras' global dtype policy; return the precision actually used."""
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    precision = resolve_precision(requested, cpu_flags(), has_gpu)
    keras.mixed_precision.set_dtype_policy(precision)
    return precision
