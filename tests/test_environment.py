"""The locks: requirements.txt and requirements-dev.txt are compiled from their .in files by
the documented command; the pipeline's holds no test tools."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, documented_line

UV = Path(sys.executable).parent / "uv"  # pinned in the lock
# What uv says when it cannot reach the package registry at all (no route, no name, refused).
UNREACHABLE = re.compile(
    r"dns error|failed to lookup address|Connection refused|Network is unreachable"
    r"|error sending request|operation timed out|network was disabled",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def uv_env(tmp_path_factory) -> dict[str, str]:
    """An environment for uv with an empty cache of its own: what these tests resolve comes
    from the registry, never from what an earlier run left in the machine's cache. Skipped,
    saying why, only where the registry cannot be reached at all."""
    environment = {
        **os.environ,
        "UV_CACHE_DIR": str(tmp_path_factory.mktemp("uv-cache")),
        # A resolution for a Python this machine lacks (--python-version 3.12) needs no
        # interpreter, but uv tries to download one first: from GitHub, a network target the
        # tests must not have, where each try failed and took 8 to 12 s (84 s for the 12
        # resolutions one after another, 18 s without).
        "UV_PYTHON_DOWNLOADS": "never",
    }
    probe = tmp_path_factory.mktemp("uv-probe")
    (probe / "requirements.in").write_text("six==1.16.0\n")
    result = subprocess.run(
        [str(UV), "pip", "compile", "requirements.in", "--quiet", "--no-header"],
        cwd=probe,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and UNREACHABLE.search(result.stderr):
        cause = result.stderr.strip().splitlines()[-1].strip().removeprefix("cause: ")
        pytest.skip(f"the package registry is unreachable (uv: {cause})")
    assert result.returncode == 0, result.stderr
    return environment


@pytest.mark.network
def test_locks_are_what_the_compile_command_makes_of_their_in_files(tmp_path, uv_env):
    """Run the documented compile command on copies: both locks come out unchanged, so nobody
    edited one file without the other. (uv keeps the versions already locked; this asks the
    package registry for metadata.)"""
    names = ["requirements.in", "requirements.txt", "requirements-dev.in", "requirements-dev.txt"]
    for name in [*names, ".ci/compile_locks"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    command = documented_line("bash .ci/compile_locks")
    result = subprocess.run(
        shlex.split(command),
        cwd=tmp_path,
        env={**uv_env, "PATH": f"{UV.parent}{os.pathsep}{uv_env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for name in names:
        assert (tmp_path / name).read_text() == (PROJECT_ROOT / name).read_text(), name


def test_the_pipelines_lock_holds_no_test_tools():
    """`pip install -r requirements.txt` gives a user the pipeline, not pytest, moto or uv."""
    lock = (PROJECT_ROOT / "requirements.txt").read_text()
    pinned = set(re.findall(r"^([a-z0-9][a-z0-9._-]*)(?:\[[^\]]*\])?==", lock, flags=re.M))
    assert pinned & {"pytest", "moto", "uv", "ruff", "flask", "werkzeug"} == set()
    assert {"dvc", "tensorflow", "keras"} <= pinned


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


@pytest.mark.network
def test_lock_installs_from_wheels_on_each_platform_the_readme_names(tmp_path, uv_env):
    """Resolve the lock's pins for each platform and Python with wheels only (what pip would
    download there): every pinned version has a wheel for each, and nothing the platform needs
    is missing from the lock (pip's hash-checking mode, which a lock with hashes turns on,
    refuses any package the file does not pin). antlr4-python3-runtime (pure Python) is
    published as source only. Every resolution asks the registry (uv's cache here starts empty
    and is only a cache: an offline resolution from it failed on a fresh machine, since uv
    fetches some metadata per platform and Python)."""
    lock = (PROJECT_ROOT / "requirements.txt").read_text()
    pin = re.compile(r"^([a-z0-9][a-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", flags=re.MULTILINE)
    pinned = set(pin.findall(lock))
    source_only = {"antlr4-python3-runtime"}
    wheels_only = [f"--only-binary={name}" for name, _ in sorted(pinned) if name not in source_only]

    def resolve(platform: str, python: str) -> str:
        resolved = tmp_path / f"resolved-{platform}-{python}.txt"
        command = [str(UV), "pip", "compile", str(PROJECT_ROOT / "requirements.txt"), "--quiet"]
        command += ["--python-platform", platform, "--python-version", python, *wheels_only]
        command += ["-o", str(resolved)]
        result = subprocess.run(
            command, env={**uv_env, **OLDEST_MACOS}, capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0:
            return f"{platform} {python}: {result.stderr}"
        unpinned = sorted(set(pin.findall(resolved.read_text())) - pinned)
        return f"{platform} {python}: needs, unpinned: {unpinned}" if unpinned else ""

    # Four at a time: each mostly waits for the registry.
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = pool.map(
            lambda pair: resolve(*pair),
            [(platform, python) for platform in PLATFORMS for python in PYTHONS],
        )
    assert [failure for failure in failures if failure] == []
