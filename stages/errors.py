"""How a stage reports a user's mistake: one line on stderr and a non-zero exit."""

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data, unreachable mirror): no traceback."""


def run_stage(main: Callable[[], None]) -> int:
    """Run a stage's main(); turn a PipelineError into a one-line message and exit code 1."""
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
