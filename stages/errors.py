"""How a stage reports a failure the user can act on: one line on stderr and a non-zero exit."""

import sys
from collections.abc import Callable

# The shell's convention for a process stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED_EXIT = 130


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data, unreachable mirror, full disk)."""


def run_stage(main: Callable[[], None]) -> int:
    """Run a stage's main(); a PipelineError or Ctrl-C becomes one line and a non-zero exit.

    Outputs are written atomically (stages/files.py), so neither leaves a partial file behind.
    """
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0
