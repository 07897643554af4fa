"""The command-line tools the project's commands run (git, dvc, a stage through DVC), with a
failure turned into one line: what was run, and the line that says why."""

import subprocess
from collections.abc import Callable
from pathlib import Path

from mnist_cnn.errors import PipelineError

# How often a tool run with `stop` checks it.
STOP_POLL_SECONDS = 1.0


class Stopped(PipelineError):
    """A tool run ended early because its `stop` said so."""


def run_tool(
    command: list[str],
    what: str,
    cwd: Path | None = None,
    stop: Callable[[], bool] | None = None,
) -> str:
    """Run `command`; its output, or a PipelineError with `what` and the line that says why:
    one of the project's own `error:` lines where the tool relayed a stage's, else the tool's
    last line (on stderr, or stdout where stderr is empty). With `stop`, checked every second:
    once it is true, the tool and every process it started are killed, and Stopped raised."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while True:
        try:
            stdout, stderr = process.communicate(timeout=STOP_POLL_SECONDS if stop else None)
            break
        except subprocess.TimeoutExpired:  # communicate again loses no output
            if stop():
                kill_tree(process.pid)
                process.communicate()
                raise Stopped(f"{what}: stopped") from None
    if process.returncode != 0:
        lines = [line.strip() for line in (stderr or stdout).splitlines()]
        lines = [line for line in lines if line]
        ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        raise PipelineError(f"{what}: {(ours or lines or ['failed'])[-1]}")
    return stdout


def kill_tree(pid: int) -> None:
    """Kill a process and every process below it: DVC runs a stage as its child."""
    import psutil  # installed with Dask's distributed, the one caller's engine

    try:
        parent = psutil.Process(pid)
        tree = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
