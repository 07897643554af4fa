"""CI: the virtual environment holds exactly what a lock (requirements.txt, or
requirements-dev.txt: `python .ci/check_lock.py requirements-dev.txt`) pins for this platform.

Every `name==version ; marker` line whose marker holds here must be installed at that version,
and nothing else may be (pip, which makes the environment, and the project itself aside).
"""

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;([^\\]*))?")


def locked(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        match = PINNED.match(line)
        if match and (not match[3] or Marker(match[3].strip()).evaluate()):
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def installed() -> dict[str, str]:
    found = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    found.pop("pip", None)
    found.pop("mnist-cnn", None)  # the project itself, after `pip install --no-deps -e .`
    return found


def main() -> int:
    lock_file = Path(sys.argv[1] if len(sys.argv) > 1 else "requirements.txt")
    lock, environment = locked(lock_file), installed()
    problems = [
        f"{name}: locked {version}, installed {environment.get(name, 'nothing')}"
        for name, version in sorted(lock.items())
        if environment.get(name) != version
    ] + [
        f"{name}=={version}: installed, not in the lock"
        for name, version in sorted(environment.items())
        if name not in lock
    ]
    for problem in problems:
        print(f"error: {lock_file}: {problem}", file=sys.stderr)
    if not problems:
        print(f"the environment is {lock_file}: {len(lock)} packages")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
