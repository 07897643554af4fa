"""`dvc push --run-cache`, completed: push DVC's records of stage runs and every file they name.

DVC 3.x pushes the run records (.dvc/cache/runs) but not the files they name: `dvc push` sends
only what the workspace's dvc.lock names and keeps in DVC's cache. The metrics and plots that
this project keeps in git (`cache: false`) are copied into .dvc/cache by each run for the
run-cache's sake, and stay there, as does the model of any run but the current one: a
teammate's `dvc repro --pull` finds the record, misses its files and runs the stage again.
This command pushes those files too, as DVC 2 did.

    mnist-cnn push-run-cache [--remote NAME]
"""

from dataclasses import dataclass
from pathlib import Path

import yaml
from dvc.repo import Repo
from dvc_data.hashfile.hash_info import HashInfo
from dvc_data.hashfile.tree import Tree

from mnist_cnn.errors import PipelineError


@dataclass
class RunRecord:
    path: Path  # runs/<key[:2]>/<key>/<value>
    files: dict[str, set[HashInfo]]  # by hash name ("md5", or DVC 2's "md5-dos2unix")
    missing: list[str]  # outputs, or files in an output folder, not in this cache


def read_record(repo: Repo, path: Path) -> RunRecord:
    """A run record and the cache objects of every file it names: each output file, and each
    folder's listing with every file in it."""
    record = RunRecord(path, {}, [])
    for output in yaml.safe_load(path.read_text()).get("outs", []):
        # DVC 2 records have no "hash" field: their md5 is the legacy (dos2unix) one.
        hash_name = output.get("hash", "md5-dos2unix")
        cache = repo.cache.legacy if hash_name == "md5-dos2unix" else repo.cache.local
        name, md5 = output.get("path", "?"), output.get("md5")
        if not md5 or not cache.exists(md5):
            record.missing.append(name)
            continue
        objects = record.files.setdefault(hash_name, set())
        objects.add(HashInfo(hash_name, md5))
        if md5.endswith(".dir"):
            for key, (_, entry) in Tree.load(cache, HashInfo(hash_name, md5)).iteritems():
                if cache.exists(entry.value):
                    objects.add(entry)
                else:
                    record.missing.append(f"{name}/{'/'.join(key)}")
    return record


def push_run_cache(repo: Repo, remote: str | None) -> tuple[list[RunRecord], list[RunRecord], int]:
    """Push the run records whose files are all in this cache, with those files; return the
    records pushed, those skipped (a file missing here) and the number of files sent.

    Records pulled from a remote come without their files, which stay where they were pushed
    from; a record whose files were garbage-collected names files nobody has.
    """
    runs = Path(repo.stage_cache.cache_dir)
    records = [read_record(repo, path) for path in sorted(runs.glob("*/*/*"))]
    complete = [record for record in records if not record.missing]
    wanted: dict[str, set[HashInfo]] = {}
    for record in complete:
        for hash_name, objects in record.files.items():
            wanted.setdefault(hash_name, set()).update(objects)
    sent = 0
    for hash_name, objects in wanted.items():
        storage = repo.cloud.get_remote_odb(remote, "push --run-cache", hash_name=hash_name)
        result = repo.cloud.push(objects, remote=remote, odb=storage)
        sent += len(result.transferred)
        # What the remote now has, asked of the remote itself: a record must never name a
        # file it lacks.
        oids = {entry.value for entry in objects}
        absent = oids - set(storage.oids_exist(sorted(oids)))
        absent |= {entry.value for entry in result.failed}
        if absent:
            raise PipelineError(
                f"run-cache not pushed: {len(absent)} file(s) are not on "
                f"{remote or 'the default remote'} after the push; no run record was sent"
            )
    # The records last, so that a record on the remote never names a file that is not there.
    storage = repo.cloud.get_remote_odb(remote, "push --run-cache", hash_name="md5-dos2unix")
    for record in complete:
        target = storage.fs.join(storage.path, "runs", *record.path.relative_to(runs).parts)
        storage.fs.put_file(str(record.path), target)
    return complete, [record for record in records if record.missing], sent


def skipped_line(record: RunRecord) -> str:
    first, others = record.missing[0], len(record.missing) - 1
    more = f" and {others} more" if others else ""
    return (
        f"skipped run record {record.path.parent.name[:8]}: {first}{more} not in this cache "
        "(pulled without its files, or garbage-collected)"
    )


def push(remote: str | None) -> None:
    try:
        with Repo() as repo:
            pushed, skipped, files = push_run_cache(repo, remote)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001
        # Each kind of remote (S3, GCS, Azure, SSH...) raises its own errors for an unreachable
        # server, a missing bucket or refused credentials: report any of them in one line.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PipelineError(f"run-cache not pushed: {reason}") from None
    for record in skipped:
        print(skipped_line(record))
    print(f"pushed {len(pushed)} run record(s) and {files} new file(s); skipped {len(skipped)}")

