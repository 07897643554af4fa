"""`dvc push --run-cache`, completed: push DVC's records of stage runs and every file they name.

DVC 3.x pushes the run records (.dvc/cache/runs) but not the files they name: `dvc push` sends
only what the workspace's dvc.lock names and keeps in DVC's cache. The metrics and plots that
this project keeps in git (`cache: false`) are copied into .dvc/cache by each run for the
run-cache's sake, and stay there, as does the model of any run but the current one: a
teammate's `dvc repro --pull` finds the record, misses its files and runs the stage again.
This command pushes those files too, as DVC 2 did.

    python -m stages.push_run_cache [--remote NAME]
"""

import argparse
import sys
from pathlib import Path

import yaml
from dvc.repo import Repo
from dvc_data.hashfile.hash_info import HashInfo

from stages.errors import PipelineError, run_stage


def records_made_here(repo: Repo, runs: Path) -> list[Path]:
    """The run records (runs/<key[:2]>/<key>/<value>) whose files are all in this cache.
    Records pulled from a remote come without their files, which stay where they were pushed
    from; a record whose files were garbage-collected would name files nobody has."""
    return [record for record in sorted(runs.glob("*/*/*")) if all_in_cache(repo, record)]


def all_in_cache(repo: Repo, record: Path) -> bool:
    for output in yaml.safe_load(record.read_text()).get("outs", []):
        # DVC 2 records have no "hash" field: their md5 is the legacy (dos2unix) one.
        legacy = output.get("hash", "md5-dos2unix") == "md5-dos2unix"
        cache = repo.cache.legacy if legacy else repo.cache.local
        if "md5" not in output or not cache.exists(output["md5"]):
            return False
    return True


def files_named(repo: Repo, records: list[Path]) -> set[HashInfo]:
    keys = [(record.parent.name, record.name) for record in records]
    return set().union(*repo.stage_cache.get_used_objs(keys).values())


def push_run_cache(repo: Repo, remote: str | None) -> tuple[int, int]:
    """Push the run records made here and the files they name; return (records, new files)."""
    runs = Path(repo.stage_cache.cache_dir)
    records = records_made_here(repo, runs)
    result = repo.cloud.push(files_named(repo, records), remote=remote)
    if result.failed:
        raise PipelineError(
            f"run-cache not pushed: {len(result.failed)} file(s) could not be sent to "
            f"{remote or 'the default remote'}"
        )
    # The records last, so that a record on the remote never names a file that is not there.
    storage = repo.cloud.get_remote_odb(remote, "push --run-cache", hash_name="md5-dos2unix")
    for record in records:
        target = storage.fs.join(storage.path, "runs", *record.relative_to(runs).parts)
        storage.fs.put_file(str(record), target)
    return len(records), len(result.transferred)


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.push_run_cache",
        description="Push DVC's run-cache with every file its records name.",
    )
    parser.add_argument("-r", "--remote", help="DVC remote (default: the default remote)")
    remote = parser.parse_args(arguments).remote
    try:
        with Repo() as repo:
            records, files = push_run_cache(repo, remote)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001
        # Each kind of remote (S3, GCS, Azure, SSH...) raises its own errors for an unreachable
        # server, a missing bucket or refused credentials: report any of them in one line.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PipelineError(f"run-cache not pushed: {reason}") from None
    print(f"pushed {records} run record(s) and {files} new file(s)")


if __name__ == "__main__":
    sys.exit(run_stage(main))
