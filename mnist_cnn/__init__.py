"""MNIST, reproducibly: the library behind the pipeline's stages (stages/) and the `mnist-cnn`
command (mnist_cnn/cli.py)."""

from mnist_cnn.tensorflow_setup import few_malloc_arenas, quiet_tensorflow_import

few_malloc_arenas()
quiet_tensorflow_import()
