"""MNIST, reproducibly: the library behind the pipeline's stages (stages/) and the `mnist-cnn`
command (mnist_cnn/cli.py)."""

from mnist_cnn.runner import is_a_program_of_ours, stop_at_once_on_ctrl_c

if is_a_program_of_ours():  # first: what follows, and the program's imports, take seconds
    stop_at_once_on_ctrl_c()

from mnist_cnn.tensorflow_setup import few_malloc_arenas, quiet_tensorflow_import  # noqa: E402

few_malloc_arenas()
quiet_tensorflow_import()
