"""The command-line tools the project's commands run (git, dvc, a stage through DVC), with a
failure turned into one line: what was run, and the line that says why."""

import subprocess
from pathlib import Path

from mnist_cnn.errors import PipelineError


def run_tool(command: list[str], what: str, cwd: Path | None = None) -> str:
    """Run `command`; its output, or a PipelineError with `what` and the line that says why:
    one of the project's own `error:` lines where the tool relayed a stage's, else the tool's
    last line (on stderr, or stdout where stderr is empty)."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines()]
        lines = [line for line in lines if line]
        ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        raise PipelineError(f"{what}: {(ours or lines or ['failed'])[-1]}")
    return result.stdout
