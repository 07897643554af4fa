"""dvc.lock, read back: the outputs it records, checked against the bytes they hold now.

DVC trusts the names in its cache: an object damaged there (bit rot, a bad disk, a bad copy)
is checked out as it is, and `dvc status` and `dvc repro` still say "up to date". So the bytes
are hashed again here as DVC hashes them (a file's md5; a folder's, the md5 of its listing,
ending in .dir), by the `verify` command and by whatever loads the trained model.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from mnist_cnn.errors import PipelineError

LOCK_FILE = Path("dvc.lock")


@dataclass(frozen=True)
class Recorded:
    """An output as dvc.lock records it."""

    stage: str
    path: Path
    md5: str  # a folder's ends in .dir


def recorded_outputs(lock: Path = LOCK_FILE) -> list[Recorded]:
    """Every output dvc.lock records with its md5; none where there is no dvc.lock."""
    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as error:
        raise PipelineError(f"{lock}: not readable as DVC's lock file ({error})") from None
    return [
        Recorded(stage, Path(output["path"]), output["md5"])
        for stage, entry in stages.items()
        for output in entry.get("outs", [])
        if "md5" in output
    ]


def file_md5(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def md5_of(path: Path) -> str:
    """`path`'s md5 as DVC computes it: of a folder, its listing's, with .dir at the end."""
    if not path.is_dir():
        return file_md5(path)
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for folder, _, names in os.walk(path):
        for name in names:
            file = Path(folder, name)
            tree.add(file.relative_to(path).parts, None, HashInfo("md5", file_md5(file)))
    tree.digest()
    return tree.hash_info.value


def difference(output: Recorded) -> str | None:
    """What is wrong with `output` in the workspace, in a few words; None if nothing is."""
    if not output.path.exists():
        return "missing"
    found = md5_of(output.path)
    if found != output.md5:
        return f"md5 {found}, but dvc.lock records {output.md5} ({output.stage} stage)"
    return None


def check_recorded(path: Path) -> None:
    """Refuse to use `path` if dvc.lock records other bytes for it. A file that dvc.lock does
    not record (no dvc.lock, another model), or that is missing, is the caller's to handle."""
    for output in recorded_outputs():
        if output.path == path and path.exists() and (problem := difference(output)):
            raise PipelineError(
                f"{path}: not the file dvc.lock records: {problem}; damaged, or changed "
                "without DVC: `python -m mnist_cnn verify` checks every output"
            )


def damaged_objects(outputs: list[Recorded]) -> list[tuple[Recorded, Path]]:
    """The objects of `outputs` in DVC's cache whose bytes do not hash to their names."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    damaged = []
    try:
        repo = Repo(os.getcwd())
    except NotDvcRepoError:
        raise PipelineError("no .dvc/ here: run verify in the project's root") from None
    with repo:
        cache = repo.cache.local
        for output in outputs:
            objects = [output.md5]
            while objects:
                md5 = objects.pop()
                stored = Path(cache.oid_to_path(md5))
                if not stored.exists():
                    continue  # not in this cache: nothing here to be damaged
                if file_md5(stored) != md5.removesuffix(".dir"):
                    damaged.append((output, stored))
                elif md5.endswith(".dir"):  # a folder's listing: its files' objects too
                    objects += [entry["md5"] for entry in json.loads(stored.read_bytes())]
    return damaged


def verify(cache: bool) -> None:
    """Print a line for each output that differs from what dvc.lock records (with `cache`, for
    each damaged object in DVC's cache too); end with an error if any did."""
    outputs = recorded_outputs()
    if not outputs:
        raise PipelineError(f"{LOCK_FILE}: no outputs recorded here (run dvc repro first)")
    differing = [(output, problem) for output in outputs if (problem := difference(output))]
    for output, problem in differing:
        print(f"{output.path}: {problem}")
    damaged = damaged_objects(outputs) if cache else []
    for output, stored in damaged:
        shown = os.path.relpath(stored) if stored.is_relative_to(Path.cwd()) else stored
        print(f"{shown}: damaged: its bytes do not hash to its name ({output.path})")
    if damaged:
        raise PipelineError(
            f"{len(damaged)} damaged object(s) in DVC's cache: delete them, then `dvc repro` "
            "makes them anew (or `dvc pull` fetches them from a remote)"
        )
    changed = [output for output, problem in differing if problem != "missing"]
    if changed:
        raise PipelineError(
            f"{len(changed)} of {len(outputs)} outputs differ from {LOCK_FILE}: delete them, "
            "then `dvc checkout` restores them, once `python -m mnist_cnn verify --cache` finds "
            "the cache sound"
        )
    if differing:
        raise PipelineError(
            f"{len(differing)} of {len(outputs)} outputs missing: `dvc checkout` restores them "
            "from the cache, `dvc pull` from a remote, `dvc repro` makes them"
        )
    checked = "and their objects in DVC's cache " if cache else ""
    print(f"all {len(outputs)} outputs {LOCK_FILE} records {checked}hold the recorded bytes")
