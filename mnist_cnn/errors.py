"""The error a user can act on, and how the project reads errors: out of memory whichever
library found it, a message kept to one line. The bottom floor: it imports nothing of the
project. How a program turns them into one line and an exit status: mnist_cnn/runner.py."""

import re
import sys
from pathlib import Path

# How TensorFlow's oneDNN kernels report that oneDNN could not allocate (its status 1,
# dnnl_out_of_memory), in the AbortedError they raise: "Compute received an
# exception:Status:1, message: could not create a memory object. in file ...". Other statuses
# (an invalid argument, a kernel missing) are other failures and keep their own message.
ONEDNN_OUT_OF_MEMORY = re.compile(r"received an exception: ?Status: ?1, message: ")


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data, unreachable mirror, full disk)."""


def one_line(text: str) -> str:
    """`text` with its control characters (a newline in a file's name, say) written as escapes,
    so that a message stays one line."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def how_to_restore(stage: str, in_git: list[Path]) -> str:
    """How to bring back what `dvc.lock` records of a stage whose run failed and left none of
    its outputs (`dvc repro` deletes them before it runs the stage)."""
    files = " ".join(str(path) for path in in_git)
    return f"`dvc checkout {stage}` and `git checkout {files}` restore the last recorded ones"


def exception_chain(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised from or while handling, outermost first."""
    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) and inner not in chain:
        chain.append(inner)
    return chain


def out_of_memory(error: BaseException) -> bool:
    """Whether `error`, or an error it came from, is the machine running out of memory, whichever
    library found it: Python or h5py (MemoryError, which h5py's clean-up hides behind "I/O
    operation on closed file"), TensorFlow's allocator (ResourceExhaustedError, where its own
    kernels run: AVX2 CPUs) or oneDNN's (an AbortedError with oneDNN's out-of-memory status,
    where oneDNN runs the convolution and pooling kernels too: AVX-512 CPUs)."""
    tensorflow = sys.modules.get("tensorflow")  # no TensorFlow error without TensorFlow loaded
    for cause in exception_chain(error):
        if isinstance(cause, MemoryError):
            return True
        if tensorflow is None:
            continue
        if isinstance(cause, tensorflow.errors.ResourceExhaustedError):
            return True
        if isinstance(cause, tensorflow.errors.AbortedError) and ONEDNN_OUT_OF_MEMORY.search(
            str(cause)
        ):
            return True
    return False
