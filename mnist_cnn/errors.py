"""How a stage or command reports a failure the user can act on: one line on stderr and a
non-zero exit."""

import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

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
    and a non-zero exit. Returns the exit status: `main()`'s own, if it returns one.

    Ctrl-C always ends in `interrupted` and 130, even where a library turned the interrupt into
    another error (onnxruntime, importing: ImportError) or swallowed it (raised in a `__del__`,
    Python only prints it). Outputs are written atomically (mnist_cnn/files.py), so no way of
    failing leaves a partial file.
    """
    interrupts: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        interrupts.append(signum)
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupt) if in_main_thread else None
    try:
        status = main()
        if interrupts:
            raise KeyboardInterrupt  # one that a library swallowed: the run did not complete
        params_unchanged(name)
    except PipelineError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as error:
        if interrupts:
            print("interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return status or 0


def stop_at_once_on_ctrl_c() -> None:
    """Until `run` takes over, Ctrl-C prints `interrupted` and ends the process at once, with
    130: the project's programs spend their first seconds importing TensorFlow, Keras and
    onnxruntime, where a KeyboardInterrupt came out as a 40-line traceback (or onnxruntime's
    ImportError). Nothing is written before `run` starts, so there is nothing to clean up."""
    if threading.current_thread() is not threading.main_thread():
        return
    # The terminal's stderr, kept: TensorFlow's import runs with file descriptor 2 held back
    # (tensorflow_setup.native_stderr_filtered), and os._exit would lose what went there.
    try:
        stderr = os.dup(2)
    except OSError:  # no stderr at all
        return

    def stop(signum: int, frame: object) -> None:
        os.write(stderr, b"interrupted\n")
        os._exit(INTERRUPTED_EXIT)

    signal.signal(signal.SIGINT, stop)


def is_a_program_of_ours() -> bool:
    """Whether this process is a stage (`python -m stages.train`) or the project's command
    (`python -m mnist_cnn`, `mnist-cnn`), rather than a program that imports the package (a
    notebook, pytest, a Dask worker), whose Ctrl-C is its own business."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name if spec else ""
    command = os.path.basename(sys.argv[0]) if sys.argv else ""
    return module.startswith("stages.") or module == "mnist_cnn.__main__" or command in {
        "mnist-cnn",
        "mnist-cnn.exe",
    }


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


def params_unchanged(name: str) -> None:
    """Stop, so that DVC records nothing, if the params this process read have changed since."""
    from mnist_cnn.params import changed_since_read  # mnist_cnn.params raises this module's errors

    for path in changed_since_read():
        raise PipelineError(
            f"{path} changed while {name} ran: its outputs are for the params it read at the "
            "start and are not recorded; run dvc repro again"
        )
