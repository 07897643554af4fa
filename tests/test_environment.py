"""The lock: requirements.txt is compiled from requirements.in by the README's command."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import PROJECT_ROOT, readme_line

UV = Path(sys.executable).parent / "uv"  # pinned in the lock


def test_lock_is_what_the_compile_command_makes_of_requirements_in(tmp_path):
    """Run the README's compile command on copies: the lock comes out unchanged, so nobody
    edited one file without the other. (uv keeps the versions already in the lock; this asks
    the package registry for metadata.)"""
    for name in ("requirements.in", "requirements.txt"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    command = shlex.split(readme_line("uv pip compile "))
    result = subprocess.run(
        [str(UV), *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "requirements.txt").read_text() == (
        PROJECT_ROOT / "requirements.txt"
    ).read_text()


# Where the lock is meant to install, as uv names the platforms.
PLATFORMS = [
    "x86_64-unknown-linux-gnu",
    "aarch64-unknown-linux-gnu",
    "aarch64-apple-darwin",
    "x86_64-pc-windows-msvc",
]
PYTHONS = ["3.11", "3.12", "3.13"]
# The oldest macOS the README claims: onnxruntime 1.32 has wheels for macOS 14 and later.
OLDEST_MACOS = {"MACOSX_DEPLOYMENT_TARGET": "14.0"}


def test_lock_installs_from_wheels_on_each_platform_the_readme_names(tmp_path):
    """Resolve the lock's pins for each platform and Python with wheels only (what pip would
    download there): every pinned version has a wheel for each. antlr4-python3-runtime (pure
    Python) is published as source only."""
    lock = (PROJECT_ROOT / "requirements.txt").read_text()
    names = re.findall(r"^([a-z0-9][a-z0-9._-]*)(?:\[[^\]]*\])?==", lock, flags=re.MULTILINE)
    wheels_only = [f"--only-binary={name}" for name in names if name != "antlr4-python3-runtime"]

    def resolve(platform: str, python: str, offline: bool) -> str:
        command = [str(UV), "pip", "compile", str(PROJECT_ROOT / "requirements.txt"), "--quiet"]
        command += ["--python-platform", platform, "--python-version", python, *wheels_only]
        command += ["-o", str(tmp_path / "resolved.txt")] + (["--offline"] if offline else [])
        environment = {**os.environ, **OLDEST_MACOS}
        result = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=300
        )
        return "" if result.returncode == 0 else f"{platform} {python}: {result.stderr}"

    # The first Python of each platform asks the registry for file lists and metadata; the
    # others find them in uv's cache, except on macOS: with a deployment target set, uv asks
    # the registry again for each Python.
    failures = [
        resolve(platform, python, offline=python != PYTHONS[0] and "apple" not in platform)
        for platform in PLATFORMS
        for python in PYTHONS
    ]
    failures = [failure for failure in failures if failure]
    assert failures == []
