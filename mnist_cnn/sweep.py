"""Sweeps past one machine: each point of a grid of params one normal DVC experiment, run as one
task on a Dask cluster (`dask scheduler` and `dask worker`, on any hosts, Slurm or Kubernetes),
published through the git remote and the DVC remote, and pulled back here.

    mnist-cnn sweep -S 'train.learning_rate=0.005,0.01' [-S ...] [--scheduler tcp://HOST:8786]

A trial, on a worker: a fresh clone of the sweep's commit from `origin`; `dvc exp run --pull`
with the trial's params and a name fixed by the commit and the params; then, only once the run
has succeeded, `dvc push`, `push-run-cache` and `dvc exp push origin NAME`. A trial whose name is
already on `origin` is skipped, so a trial Dask runs again (its worker died) or the same sweep
run again trains nothing twice, and a trial that dies publishes no experiment. Before any trial,
each worker's packages are checked against this machine's; Ctrl-C stops every trial not done.
"""

import contextlib
import hashlib
import json
import logging
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mnist_cnn.errors import PipelineError, one_line
from mnist_cnn.tools import Stopped, run_tool

# More trials than this need --yes: a grid multiplies, and each trial is a full training.
MAX_TRIALS = 16
# How long the scheduler at --scheduler has to answer.
SCHEDULER_TIMEOUT_SECONDS = 10
METRICS = {"metrics/train.json": "val_accuracy", "metrics/evaluate.json": "accuracy"}
# The widest the results' table may be: a terminal's 120 columns.
TABLE_COLUMNS = 120
# The topic on which a trial tells the sweep it has started, and on which worker.
STARTED_TOPIC = "mnist-cnn-sweep-started"
# After Ctrl-C, how long the running trials have to stop and clean up.
STOP_TIMEOUT_SECONDS = 60
# The pipeline's lock: what every host must have installed. The project itself is not in it.
LOCK = "requirements.txt"
PROJECT = "mnist-cnn"


def grid(overrides: list[str]) -> list[list[str]]:
    """Every combination of `-S` values, in `dvc exp run --queue`'s grammar (Hydra's sweeps, as
    DVC parses them): ['a=1,2', 'b=3'] gives [['a=1', 'b=3'], ['a=2', 'b=3']]."""
    from dvc.utils.hydra import get_hydra_sweeps

    try:
        sweeps = get_hydra_sweeps({"params.yaml": overrides})
    except Exception as error:  # Hydra's parser errors have no common type
        raise PipelineError(f"-S {' '.join(overrides)}: {one_line(str(error))}") from None
    return [sweep["params.yaml"] for sweep in sweeps]


def trial_name(commit: str, overrides: list[str]) -> str:
    """The same for the same commit and params, whichever worker runs it and however often."""
    digest = hashlib.sha256("\n".join([commit, *sorted(overrides)]).encode()).hexdigest()
    return f"sweep-{digest[:10]}"


def published_names(origin: str, cwd: Path) -> set[str]:
    """The names of the experiments on `origin` (refs/exps/<base>/<name>)."""
    refs = run_tool(["git", "ls-remote", origin, "refs/exps/*"], f"git ls-remote {origin}", cwd)
    return {line.rsplit("/", 1)[-1] for line in refs.splitlines() if line.strip()}


def run_trial(
    origin: str, commit: str, overrides: list[str], shares: dict[str, int], stop_event: str
) -> dict:
    """One trial, on a Dask worker: see the module's docstring. `shares`: each host's cores
    per worker, the trial's `threads`; `stop_event`: the name of the sweep's Dask Event, set on
    Ctrl-C, which stops the trial wherever it is and publishes nothing more. Returns its name,
    whether it was skipped (already on `origin`), its worker, its seconds and, for a trial run,
    the seconds of each step."""
    from distributed import Event, get_worker

    stop = Event(stop_event).is_set
    name, start = trial_name(commit, overrides), time.monotonic()
    worker = get_worker()
    address = worker.address.removeprefix("tcp://")
    python, dvc = sys.executable, [sys.executable, "-m", "dvc"]
    steps = {}  # seconds, by step: where a trial's time goes

    def step(what: str, command: list[str], cwd: Path) -> None:
        begun = time.monotonic()
        run_tool(command, what, cwd, stop)
        steps[what] = round(time.monotonic() - begun, 2)

    if stop():
        raise Stopped(f"{name}: stopped before it started")
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as scratch:
        here = Path(scratch)
        if name in published_names(origin, here):
            return {"name": name, "skipped": True, "worker": address, "seconds": 0}
        worker.log_event(STARTED_TOPIC, {"name": name, "on": address})  # "worker": the scheduler's
        step("git clone", ["git", "clone", "-q", "--no-checkout", origin, "project"], here)
        project = here / "project"
        step("git checkout", ["git", "checkout", "-q", commit], project)
        threads = shares.get(host(address), 1)
        settings = [arg for override in overrides for arg in ("-S", override)]
        settings += ["-S", f"threads={threads}"]
        step("dvc exp run", [*dvc, "exp", "run", "--pull", "-n", name, *settings], project)
        # Published only now, all three, so that a trial that died left no experiment.
        step("dvc push", [*dvc, "push", "-q"], project)
        step("push-run-cache", [python, "-m", "mnist_cnn", "push-run-cache"], project)
        step("dvc exp push", [*dvc, "exp", "push", "origin", name], project)
    seconds = round(time.monotonic() - start, 1)
    return {"name": name, "skipped": False, "worker": address, "seconds": seconds, "steps": steps}


def installed(names: list[str]) -> dict[str, str | None]:
    """The installed version of each distribution named, None where it is missing."""
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def locked_names(lock: Path) -> list[str]:
    """The distributions a pip-compile lock pins (`name==version \\` lines)."""
    return re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", lock.read_text(), re.MULTILINE)


def check_workers(client) -> None:
    """Refuse, in one line, a cluster with a worker whose environment is not this one's: another
    version of this project or of a package the lock pins (a trial runs the commit's code with
    the worker's packages, so its results would not be the commit's)."""
    root = Path(run_tool(["git", "rev-parse", "--show-toplevel"], "git rev-parse").strip())
    names = [PROJECT, *locked_names(root / LOCK)]
    here = installed(names)
    try:
        there = client.run(installed, names)
    except Exception as error:  # a worker could not load the check: no project, or a broken one
        raise PipelineError(
            f"sweep: a Dask worker cannot run the project's code ({one_line(str(error))}); "
            f"install it on every worker host (pip install --no-deps -e .)"
        ) from None
    for address, versions in sorted(there.items()):
        differ = [name for name in names if versions[name] != here[name]]
        if differ:
            first = differ[0]
            more = f" and {len(differ) - 1} more" if len(differ) > 1 else ""
            raise PipelineError(
                f"sweep: the Dask worker {address.removeprefix('tcp://')} has another "
                f"environment: {first} {versions[first] or 'not installed'} there, "
                f"{here[first] or 'not installed'} here{more}; install {LOCK} and the project there"
            )


def check_workspace() -> tuple[str, str]:
    """The commit to sweep and its git remote's URL, or a one-line refusal: the trials clone
    the commit from `origin`, so uncommitted changes would not be in them."""
    if run_tool(["git", "status", "--porcelain", "--untracked-files=no"], "git status"):
        raise PipelineError("sweep: the workspace has uncommitted changes; commit them first")
    remote = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "default"], capture_output=True, text=True
    )
    if remote.returncode != 0 or not remote.stdout.strip():
        raise PipelineError(
            "sweep: no default DVC remote; add one (dvc remote add -d) for the workers to share"
            " data and models through"
        )
    commit = run_tool(["git", "rev-parse", "HEAD"], "git rev-parse").strip()
    origin = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True)
    if origin.returncode != 0:
        raise PipelineError(
            "sweep: no git remote 'origin'; add the repository the workers clone from"
            " (git remote add origin URL) and push this commit there"
        )
    run_tool(["git", "fetch", "-q", "origin"], "git fetch origin")
    if not run_tool(["git", "branch", "-r", "--contains", commit], "git branch").strip():
        raise PipelineError(
            f"sweep: commit {commit[:7]} is not on origin; git push it first (the workers clone it)"
        )
    return commit, origin.stdout.strip()


@contextlib.contextmanager
def connect(scheduler: str | None) -> Iterator:  # Iterator[distributed.Client]
    """A client of the cluster at `scheduler`, or of a cluster started on this machine (one
    single-threaded worker per core) and closed with it."""
    from distributed import Client, LocalCluster

    from mnist_cnn.tensorflow_setup import available_cores

    if scheduler is None:
        # Its workers start with Ctrl-C ignored (and keep it so: Python and asyncio install no
        # handler over an ignored SIGINT), so that a terminal's Ctrl-C, which reaches them too,
        # leaves them to the sweep to stop their trials, cleanly.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            cluster = LocalCluster(
                n_workers=available_cores(),
                threads_per_worker=1,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,  # a failed trial is the sweep's one line to tell
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        with cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_SECONDS)
    except (OSError, TimeoutError) as error:
        raise PipelineError(
            f"sweep: the Dask scheduler at {scheduler} did not answer within "
            f"{SCHEDULER_TIMEOUT_SECONDS} s ({one_line(str(error))})"
        ) from None
    with client:
        yield client


def host(address: str) -> str:
    """A Dask worker's host, from its address (tcp://HOST:PORT)."""
    return address.removeprefix("tcp://").rsplit(":", 1)[0]


def core_shares(client) -> dict[str, int]:
    """Each host's cores divided among its workers."""
    from mnist_cnn.tensorflow_setup import available_cores

    cores = client.run(available_cores)  # by worker address
    workers = Counter(host(address) for address in cores)
    return {host(address): max(1, cores[address] // workers[host(address)]) for address in cores}


def experiment_metrics(names: list[str]) -> dict[str, dict[str, float | None]]:
    """The metrics each experiment pulled here recorded, read from its commit."""
    refs = run_tool(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], "git")
    by_name = {ref.rsplit("/", 1)[-1]: ref for ref in refs.splitlines()}
    metrics = {}
    for name in names:
        values = metrics[name] = {}
        for path, key in METRICS.items():
            shown = subprocess.run(
                ["git", "show", f"{by_name[name]}:{path}"], capture_output=True, text=True
            )
            values[key] = json.loads(shown.stdout).get(key) if shown.returncode == 0 else None
    return metrics


def table(rows: list[tuple[str, list[str], dict]]) -> str:
    """Experiment, the params the grid sets, validation and test accuracy: one line each, in at
    most TABLE_COLUMNS columns. Where the params' full names make it wider, they are shortened
    to their last part (`train.learning_rate`: `learning_rate`); where even that is too wide,
    the params are left out (the progress lines above have them)."""
    keys = list(dict.fromkeys(o.split("=", 1)[0] for _, overrides, _ in rows for o in overrides))
    cells = []  # per row: the experiment, each key's value, the scores
    for name, overrides, metrics in rows:
        values = dict(o.split("=", 1) for o in overrides)
        scores = [metrics[m] for m in METRICS.values()]
        scores = [f"{score:.4f}" if score is not None else "-" for score in scores]
        cells.append((name, [values.get(key, "") for key in keys], scores))
    short = [key.rsplit(".", 1)[-1] for key in keys]
    headers = [keys, short] if len(set(short)) == len(short) else [keys]
    for names in [*headers, []]:
        lines = [["Experiment", *names, *METRICS.values()]]
        lines += [[name, *values[: len(names)], *scores] for name, values, scores in cells]
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        text = [
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in lines
        ]
        if max(map(len, text)) <= TABLE_COLUMNS:
            break
    return "\n".join(text)


def sweep(overrides: list[str], scheduler: str | None, yes: bool) -> int:
    """Run every point of the grid on the cluster, pull the experiments, print their table;
    1 if any trial failed, each named with its error on stderr."""
    points = grid(overrides)
    if len(points) > MAX_TRIALS and not yes:
        raise PipelineError(
            f"sweep: {len(points)} trials, more than {MAX_TRIALS}; add --yes to run them all"
        )
    commit, origin = check_workspace()
    with connect(scheduler) as client:
        check_workers(client)
        done, failed = run_trials(client, origin, commit, points)
    if done:
        run_tool([sys.executable, "-m", "dvc", "exp", "pull", "origin", *done], "dvc exp pull")
        metrics = experiment_metrics(list(done))
        print(table([(name, done[name]["point"], metrics[name]) for name in done]))
    for line in failed:
        print(f"error: sweep: {line}", file=sys.stderr)
    return 1 if failed else 0


def run_trials(
    client, origin: str, commit: str, points: list[list[str]]
) -> tuple[dict[str, dict], list[str]]:
    """Every point a trial on the cluster, a line printed as each starts and ends. Returns the
    trials that finished (run_trial's results, with their point, by name) and a line for each
    that failed. Ctrl-C stops them all (a KeyboardInterrupt, once they have)."""
    from distributed import Event, as_completed, wait

    shares = core_shares(client)
    workers = len(client.scheduler_info()["workers"])
    print(f"{len(points)} trials of commit {commit[:7]} on {workers} Dask workers", flush=True)
    params = {trial_name(commit, point): point for point in points}

    def started(event: tuple[float, dict]) -> None:
        name, worker = event[1]["name"], event[1]["on"]
        print(f"    {name} ({' '.join(params[name])}): running on worker {worker}", flush=True)

    client.subscribe_topic(STARTED_TOPIC, started)
    stop = Event(f"mnist-cnn-sweep-{uuid.uuid4().hex}", client=client)
    futures = {
        client.submit(run_trial, origin, commit, point, shares, stop.name, pure=False): point
        for point in points
    }
    done, failed = {}, []
    try:
        for count, future in enumerate(as_completed(futures), 1):
            point = futures[future]
            name = trial_name(commit, point)
            try:
                result = future.result()
            except Exception as error:
                failed.append(f"{name} ({' '.join(point)}): {one_line(str(error))}")
                print(f"[{count}/{len(points)}] {name} ({' '.join(point)}): failed", flush=True)
                continue
            done[name] = {**result, "point": point}
            how = (
                "already on origin"
                if result["skipped"]
                else (f"done on worker {result['worker']} in {result['seconds']} s")
            )
            print(f"[{count}/{len(points)}] {name} ({' '.join(point)}): {how}", flush=True)
    except KeyboardInterrupt:
        # Every trial not done stops: a running one kills its run and publishes nothing more;
        # one not started ends at once. Waited for, so that on a cluster of this machine none
        # is cut off half-way when the cluster closes.
        print("sweep: stopping the trials not done; they publish nothing", file=sys.stderr)
        stop.set()
        wait(list(futures), timeout=STOP_TIMEOUT_SECONDS)
        raise
    finally:
        client.unsubscribe_topic(STARTED_TOPIC)
    return done, failed
