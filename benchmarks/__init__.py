"""Benchmarks: scripts that print figures measured side by side on this machine."""

import mnist_cnn  # noqa: F401  (first: TensorFlow, imported by the benchmarks, starts quietly)
