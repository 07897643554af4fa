"""How a stage or command reports a failure the user can act on: one line on stderr and a
non-zero exit."""

import os
import re
import sys
from collections.abc import Callable

# The shell's convention for a process stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED_EXIT = 130
# What TensorFlow raises when oneDNN has no kernel for an op's type on this CPU: bfloat16
# with oneDNN forced on (TF_ENABLE_ONEDNN_OPTS=1) and capped below AVX-512 (ONEDNN_MAX_CPU_ISA).
ONEDNN_WITHOUT_KERNEL = "could not create a primitive descriptor"
# How TensorFlow's oneDNN kernels report that oneDNN could not allocate (its status 1,
# dnnl_out_of_memory), in the AbortedError they raise: "Compute received an
# exception:Status:1, message: could not create a memory object. in file ...". Other statuses
# (an invalid argument, a kernel missing) are other failures and keep their own message.
ONEDNN_OUT_OF_MEMORY = re.compile(r"received an exception: ?Status: ?1, message: ")


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data, unreachable mirror, full disk)."""


def run(main: Callable[[], int | None], name: str) -> int:
    """Run a stage's or command's `main()`, named `name` in messages; a PipelineError, Ctrl-C,
    running out of memory or a oneDNN kernel missing for the model's precision becomes one line
    and a non-zero exit.
    Returns the exit status: `main()`'s own, if it returns one.

    Outputs are written atomically (mnist_cnn/files.py), so neither leaves a partial file.
    """
    try:
        status = main()
        params_unchanged(name)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as error:
        if out_of_memory(error):  # where no stage said more (train does: model and batch)
            print(
                f"error: {name}: out of memory: this machine cannot hold what {name} needs; "
                "free memory, or make the model and batch sizes in params.yaml smaller",
                file=sys.stderr,
            )
            return 1
        if ONEDNN_WITHOUT_KERNEL not in str(error):
            raise
        settings = ", ".join(
            f"{variable}={os.environ[variable]}"
            for variable in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")
            if variable in os.environ
        )
        print(
            f"error: TensorFlow's oneDNN has no kernel for this model's precision here "
            f"({settings or 'oneDNN defaults'}): set TF_ENABLE_ONEDNN_OPTS=0 (Eigen's kernels) "
            "or train.precision: float32",
            file=sys.stderr,
        )
        return 1
    return status or 0


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


def params_unchanged(name: str) -> None:
    """Stop, so that DVC records nothing, if the params this process read have changed since."""
    from mnist_cnn.params import changed_since_read  # mnist_cnn.params raises this module's errors

    for path in changed_since_read():
        raise PipelineError(
            f"{path} changed while {name} ran: its outputs are for the params it read at the "
            "start and are not recorded; run dvc repro again"
        )
