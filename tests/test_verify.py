"""Bytes that are not what dvc.lock records, caught: the `verify` command, and the stages and
command that load the trained model. DVC itself checks out a damaged cache object without a
word, and then says "up to date"."""

import hashlib
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import Repo, documented_code_block, error_line

pytestmark = pytest.mark.cli

VERIFY = documented_code_block("python -m mnist_cnn verify --cache").splitlines()


def verify_command(number: int) -> list[str]:
    """The docs' verify line `number`, as written (without its comment)."""
    return VERIFY[number].split("#")[0].split()


def damage_in_cache(repo: Repo, output: str) -> Path:
    """Flip four bytes of `output`'s object in DVC's cache, as bit rot does (the file's times
    stay as they were), and check the output out again from it; return the object."""
    stored = next(
        path
        for path in (repo.root / ".dvc/cache/files/md5").glob("*/*")
        if path.read_bytes() == repo.read(output)
    )
    times = stored.stat()
    stored.chmod(0o644)
    data = bytearray(stored.read_bytes())
    for offset in (5000, 6000, 7000, 8000):
        data[offset] ^= 0xFF
    stored.write_bytes(bytes(data))
    stored.chmod(0o444)
    os.utime(stored, ns=(times.st_atime_ns, times.st_mtime_ns))
    (repo.root / output).unlink()
    repo.dvc("checkout")
    return stored


def test_verify_finds_what_dvc_checks_out_silently_and_says_how_to_recover(built):
    assert "hold the recorded bytes" in built.run(*verify_command(1)).stdout
    stored = damage_in_cache(built, "models/model.onnx")
    assert built.dvc("status").strip() == "Data and pipelines are up to date."  # DVC's view

    found = built.run(*verify_command(0), check=False)
    assert found.stdout.startswith("models/model.onnx: md5 ")
    assert "but dvc.lock records" in found.stdout and len(found.stdout.splitlines()) == 1
    assert error_line(found).startswith("error: 1 of ")

    found = built.run(*verify_command(1), check=False)
    assert found.stdout.splitlines()[-1] == (
        f"{stored.relative_to(built.root)}: damaged: its bytes do not hash to its name "
        "(models/model.onnx)"
    )
    assert error_line(found) == (
        "error: 1 damaged object(s) in DVC's cache: delete them, then `dvc repro` makes them "
        "anew (or `dvc pull` fetches them from a remote)"
    )

    stored.unlink()  # the way back the line gives
    built.repro()
    assert "hold the recorded bytes" in built.run(*verify_command(1)).stdout


def test_a_damaged_model_is_refused_by_what_would_load_it(built):
    recorded = hashlib.md5(built.read("models/model.keras")).hexdigest()
    damage_in_cache(built, "models/model.keras")
    found = hashlib.md5(built.read("models/model.keras")).hexdigest()
    refused = (
        f"error: models/model.keras: not the file dvc.lock records: md5 {found}, but dvc.lock "
        f"records {recorded} (train stage); damaged, or changed without DVC: "
        "`python -m mnist_cnn verify` checks every output"
    )
    predict = ("predict", "examples/seven.png")
    assert error_line(built.run(sys.executable, "-m", "mnist_cnn", *predict, check=False)) == (
        refused
    )
    for stage in ("evaluate", "export"):
        result = built.dvc_fails("repro", "--force", "--single-item", stage)
        assert refused in result.stderr.splitlines()
