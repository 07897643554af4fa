"""How the project's programs run: a stage's or a command's `main()`, any failure the user can
act on printed as one line with a non-zero exit, Ctrl-C as `interrupted` and 130, and for a
stage, nothing left for DVC to record when its params changed while it ran."""

import os
import signal
import sys
import threading
from collections.abc import Callable

from mnist_cnn.errors import PipelineError, one_line, out_of_memory

# The shell's convention for a process stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED_EXIT = 130
# What TensorFlow raises when oneDNN has no kernel for an op's type on this CPU: bfloat16
# with oneDNN forced on (TF_ENABLE_ONEDNN_OPTS=1) and capped below AVX-512 (ONEDNN_MAX_CPU_ISA).
ONEDNN_WITHOUT_KERNEL = "could not create a primitive descriptor"


def run_stage(main: Callable[[], None], name: str) -> int:
    """Run a stage of dvc.yaml as `run_command` does, and fail it if params.yaml changed while
    it ran: DVC records a stage's params from the file as it is when the stage ends."""

    # Imported here, not above: the package's __init__ imports this module first thing, to set
    # the Ctrl-C handler, and the params schema (pydantic) would add 0.3 s before it.
    from mnist_cnn.params import raise_if_changed

    def stage() -> None:
        main()
        raise_if_changed(name)

    return run_command(stage, name)


def run_command(main: Callable[[], int | None], name: str) -> int:
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
    except PipelineError as error:
        if interrupts:  # the error came of the interrupt, or the run would have gone on
            print("interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT
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
    """Until `run_command` takes over, Ctrl-C prints `interrupted` and ends the process at once,
    with 130: the programs' first moments import libraries (pydantic, pandas, matplotlib), where
    a KeyboardInterrupt came out as a traceback. Nothing is written before `run_command` starts,
    so there is nothing to clean up. (TensorFlow, Keras and onnxruntime, seconds to import, are
    imported later, under `run_command`, once a program has checked its inputs.)"""
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
