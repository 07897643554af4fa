"""Sweeps on a real Dask cluster: a `dask scheduler` and two `dask worker --nthreads 1` processes
on 127.0.0.1, a bare git repository as `origin`, a folder or the S3 server (moto's, on 127.0.0.1)
as the DVC remote; no mocks."""

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mnist_cnn.fetch import MIRROR_ENV
from mnist_cnn.sweep import MAX_TRIALS, TABLE_COLUMNS, grid, table, trial_name
from mnist_cnn.tensorflow_setup import available_cores
from tests.helpers import (
    S3_BUCKET,
    S3_CREDENTIALS,
    Repo,
    copy_repository,
    documented_code_block,
    documented_line,
    error_line,
    free_port,
    project_environment,
)

DASK = str(Path(sys.executable).parent / "dask")
GRID = "train.learning_rate=0.005,0.02"


@contextlib.contextmanager
def dask_cluster(
    folder: Path, env: dict[str, str], scheduler: list[str], worker: list[str], workers: int = 2
) -> Iterator[str]:
    """The `scheduler` command, then `workers` times the `worker` command, which names the
    scheduler's address (tcp://127.0.0.1:PORT), in `folder`; once the scheduler has them all,
    yields that address. Ended by SIGKILL: a graceful stop held each test worker 8 s, and
    nothing is left to save."""
    folder.mkdir(parents=True, exist_ok=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": folder, "env": env}
    address = next(argument for argument in worker if argument.startswith("tcp://"))
    port = int(address.rsplit(":", 1)[1])
    processes = [subprocess.Popen(scheduler, **quiet)]
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            assert processes[0].poll() is None, f"the scheduler ended: {scheduler}"
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        processes += [subprocess.Popen(worker, **quiet) for _ in range(workers)]
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait(timeout=30)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def quiet_cluster(folder: Path, env: dict[str, str], workers: int = 2):
    """A scheduler on 127.0.0.1 at a free port and `workers` workers, without dashboards: for
    the tests that may run beside others."""
    port = free_port()
    scheduler = [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    worker = [DASK, "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--host", "127.0.0.1"]
    return dask_cluster(folder, env, scheduler, [*worker, "--no-dashboard"], workers)


@pytest.fixture(scope="module")
def workers_tmp(tmp_path_factory) -> Path:
    """The workers' temporary folder: where a trial clones, and must leave nothing."""
    return tmp_path_factory.mktemp("workers-tmp")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, workers_tmp) -> Iterator[str]:
    """Two workers, with the S3 server's dummy credentials (a DVC remote's, as a worker host
    has them) and their own temporary folder."""
    env = project_environment(**S3_CREDENTIALS, TMPDIR=str(workers_tmp))
    with quiet_cluster(tmp_path_factory.mktemp("dask"), env) as address:
        yield address


@pytest.fixture(scope="module")
def team(tmp_path_factory, baseline, mnist_dir) -> Repo:
    """The baseline (the quick params, run and committed) pushed to a bare `origin` and a
    folder as its DVC remote, as a team shares it."""
    folder = tmp_path_factory.mktemp("sweep-team")
    origin = folder / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    repo = copy_repository(baseline, folder / "user", {MIRROR_ENV: str(mnist_dir)})
    repo.run("git", "remote", "add", "origin", str(origin))
    repo.dvc("remote", "add", "-d", "storage", str(folder / "dvc-remote"))
    repo.commit("the team's remotes")
    repo.run("git", "push", "-q", "-u", "origin", "main")
    repo.dvc("push", "-q")
    return repo


def sweep(repo: Repo, *arguments: str) -> subprocess.CompletedProcess:
    return repo.run(sys.executable, "-m", "mnist_cnn", "sweep", *arguments, check=False)


def documented_cluster(
    folder: Path, credentials: dict[str, str]
) -> contextlib.AbstractContextManager[str]:
    """The docs' two lines, exactly as written, with HOST the scheduler's (127.0.0.1; the
    workers then listen there too): the scheduler on its default port, two workers, on hosts
    with the DVC remote's `credentials`."""
    scheduler, worker = [
        shlex.split(line.replace("HOST", "127.0.0.1"), comments=True)
        for line in documented_code_block("dask scheduler").splitlines()
        if line.strip()
    ]
    assert scheduler == ["dask", "scheduler"] and worker[:2] == ["dask", "worker"]
    path = {"PATH": f"{Path(DASK).parent}{os.pathsep}{os.environ['PATH']}"}  # `dask` as installed
    env = project_environment(**path, **credentials)
    return dask_cluster(folder, env, scheduler, worker, workers=2)


def start_sweep(repo: Repo, *arguments: str, own_session: bool = False) -> subprocess.Popen:
    """`python -m mnist_cnn sweep <arguments>` started in `repo`, its output piped; in a
    process group of its own if `own_session` (for Ctrl-C, as a terminal sends it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_cnn", "sweep", *arguments],
        cwd=repo.root,
        env=repo.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_session,
    )


def trials_running(
    sweep_run: subprocess.Popen, names: list[str], count: int
) -> list[psutil.Process]:
    """Once at least `count` of the trials named run their `dvc exp run`: those processes."""
    deadline = time.monotonic() + 300  # guards the suite only
    while len(running := trial_processes(names)) < count:
        assert sweep_run.poll() is None and time.monotonic() < deadline, sweep_run.communicate()
        time.sleep(0.2)
    return running


def trial_processes(names: list[str]) -> list[psutil.Process]:
    """The `dvc exp run` of each trial named running on this machine (other tests' trials may
    run beside them)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "exp" in command and "run" in command and set(names) & set(command):
            found.append(process)
    return found


def origin_refs(repo: Repo) -> list[str]:
    """The experiment refs on the repository's `origin`."""
    origin = repo.run("git", "remote", "get-url", "origin").stdout.strip()
    return repo.run("git", "ls-remote", origin, "refs/exps/*").stdout.split()[1::2]


def on_s3(team: Repo, folder: Path, endpoint: str) -> Repo:
    """A copy of the team's repository whose DVC remote is a bucket on the S3 server, the
    baseline pushed there, the change on origin (pushed to a branch of its own)."""
    repo = copy_repository(team.root, folder, {**team.env, **S3_CREDENTIALS})
    repo.dvc("remote", "modify", "storage", "url", f"s3://{S3_BUCKET}/{folder.name}")
    repo.dvc("remote", "modify", "storage", "endpointurl", endpoint)
    repo.commit("the team's remote on S3")
    repo.run("git", "push", "-q", "origin", f"HEAD:{folder.name}")
    repo.dvc("push", "-q")
    return repo


@pytest.mark.e2e
def test_a_sweep_survives_a_killed_worker_and_a_failed_trial(team, s3_endpoint, tmp_path):
    """On a cluster started by the docs' two lines, with the S3 server as the DVC remote, a
    three-point grid: the worker running one good trial SIGKILLed mid-training, Dask runs that
    trial again (its nanny restarts the worker); a diverging rate fails its trial alone, named
    with the train stage's line, and the sweep exits 1. Each good point is one experiment on
    origin, with its metrics and its worker's share of threads, shown in the results' table; a
    teammate's clone gets the killed trial's model without training; the docs' line, as
    written, on a cluster of this machine finds both done. (One sweep for all of it: each trial
    is a real pipeline run.)"""
    repo = on_s3(team, team.root.parent / "user-grid", s3_endpoint)
    commit = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    names = {trial_name(commit, [f"train.learning_rate={rate}"]): rate for rate in (0.005, 0.02)}
    points = f"{GRID},1e30"
    diverging = trial_name(commit, grid([points])[-1])  # as the sweep writes it: 1e+30
    with documented_cluster(tmp_path / "dask", S3_CREDENTIALS) as address:
        sweep_run = start_sweep(repo, "-S", points, "--scheduler", address)
        killed = trials_running(sweep_run, list(names), 1)[0]
        (killed_name,) = set(names) & set(killed.cmdline())
        killed.parent().kill()  # the worker process, under its nanny
        output, errors = sweep_run.communicate(timeout=600)
    assert sweep_run.returncode == 1, errors
    (failure,) = errors.splitlines()
    assert failure.startswith(
        f"error: sweep: {diverging} (train.learning_rate=1e+30): dvc exp run: train:"
    ), errors
    assert "a diverged run (train.learning_rate 1e+30 too high?)" in failure

    for name in names:  # the progress: each trial running on a worker (twice if killed), done
        point = rf"{name} \(train.learning_rate=\S+\)"
        running = re.findall(rf"{point}: running on worker \S+", output)
        done = re.findall(rf"\] {point}: done on worker ", output)
        assert (len(running), len(done)) == (2 if name == killed_name else 1, 1), output
    assert re.search(rf"\] {diverging} \(train.learning_rate=1e\+30\): failed", output), output
    lines = output.splitlines()
    assert all(len(line) <= TABLE_COLUMNS for line in lines), output
    header = next(line for line in lines if line.startswith("Experiment"))
    assert header.split() == ["Experiment", "train.learning_rate", "val_accuracy", "accuracy"]

    refs = origin_refs(repo)
    for name in names:
        assert len([ref for ref in refs if ref.endswith(f"/{name}")]) == 1, refs
    assert not [ref for ref in refs if ref.endswith(f"/{diverging}")], refs
    shown = json.loads(repo.dvc("exp", "show", "--json"))
    experiments = {
        e["name"]: e["revs"][0]["data"] for row in shown for e in row.get("experiments") or []
    }
    assert set(experiments) == set(names)
    for name, rate in names.items():
        params = experiments[name]["params"]["params.yaml"]["data"]
        assert params["train"]["learning_rate"] == rate
        assert params["threads"] == max(1, available_cores() // 2)  # two workers on this host
        accuracy = experiments[name]["metrics"]["metrics/evaluate.json"]["data"]["accuracy"]
        assert 0.1 < accuracy <= 1
        assert f"{accuracy:.4f}" in next(line for line in lines if line.startswith(name))

    # A teammate gets the killed trial's model from the remotes, without training it.
    mate = Repo(tmp_path / "mate", repo.env)
    origin = repo.run("git", "remote", "get-url", "origin").stdout.strip()
    repo.run("git", "clone", "-q", "-b", "user-grid", origin, str(mate.root))
    mate.dvc("exp", "pull", "origin", killed_name)
    mate.dvc("exp", "apply", killed_name)
    mate.dvc("pull", "-q")
    assert "Running stage" not in mate.dvc("repro")
    metrics = experiments[killed_name]["metrics"]["metrics/evaluate.json"]["data"]
    assert json.loads(mate.read("metrics/evaluate.json"))["accuracy"] == metrics["accuracy"]

    # The documented line, as written, on a cluster of this machine: the same sweep again.
    again = repo.run(*shlex.split(documented_line("python -m mnist_cnn sweep -S "), comments=True))
    assert again.stdout.count("already on origin") == 2, again.stdout
    assert "done on" not in again.stdout


@pytest.mark.e2e  # on the team's repository, whose baseline has run
def test_what_a_sweep_refuses_each_in_one_line(team, tmp_path, closed_port_url):
    repo = copy_repository(team.root, tmp_path / "user", team.env)
    too_many = ["-S", "train.epochs=" + ",".join(map(str, range(1, MAX_TRIALS + 2)))]
    assert error_line(sweep(repo, *too_many)) == (
        f"error: sweep: {MAX_TRIALS + 1} trials, more than {MAX_TRIALS}; add --yes to run them all"
    )
    assert error_line(sweep(repo, "-S", "train.epochs=1,,")).startswith("error: -S train.epochs")

    port = closed_port_url.rstrip("/").rsplit(":", 1)[1]
    silent = sweep(repo, "-S", GRID, "--scheduler", f"tcp://127.0.0.1:{port}")
    assert error_line(silent).startswith(
        f"error: sweep: the Dask scheduler at tcp://127.0.0.1:{port} did not answer within 10 s"
    )

    (repo.root / "NOTES.md").write_text("not pushed\n")
    repo.commit("a commit only here")
    commit = repo.run("git", "rev-parse", "--short=7", "HEAD").stdout.strip()
    assert error_line(sweep(repo, "-S", GRID)) == (
        f"error: sweep: commit {commit} is not on origin; git push it first (the workers clone it)"
    )
    repo.set_params({"train.epochs": 2})
    assert error_line(sweep(repo, "-S", GRID)) == (
        "error: sweep: the workspace has uncommitted changes; commit them first"
    )
    repo.run("git", "checkout", "params.yaml")
    repo.dvc("remote", "remove", "storage")
    repo.commit("no DVC remote")
    assert error_line(sweep(repo, "-S", GRID)).startswith("error: sweep: no default DVC remote")
    repo.dvc("remote", "add", "-d", "storage", str(tmp_path / "dvc-remote"))
    repo.run("git", "remote", "remove", "origin")
    repo.commit("no git remote")
    assert error_line(sweep(repo, "-S", GRID)) == (
        "error: sweep: no git remote 'origin'; add the repository the workers clone from"
        " (git remote add origin URL) and push this commit there"
    )


@pytest.mark.e2e
def test_workers_with_another_environment_are_refused(team, tmp_path):
    """A worker whose installed packages say another project version and another TensorFlow
    than the driver's (its own metadata first on its path), and one that cannot import the
    project: each refused in one line, before any trial."""
    other = tmp_path / "other-environment"
    for name, version in (("mnist_cnn", "0.0.1"), ("tensorflow", "0.0.1")):
        info = other / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
        )
    broken = tmp_path / "broken-project" / "mnist_cnn"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken install of the project')\n")
    repo = copy_repository(team.root, tmp_path / "user", team.env)
    refused = {}
    for case, first in (("other", other), ("broken", broken.parent)):
        env = project_environment()
        env["PYTHONPATH"] = os.pathsep.join([str(first), env["PYTHONPATH"]])
        with quiet_cluster(tmp_path / f"dask-{case}", env, workers=1) as address:
            refused[case] = sweep(repo, "-S", GRID, "--scheduler", address)
        assert "trials of commit" not in refused[case].stdout

    here = version_of("mnist-cnn")
    assert re.fullmatch(
        r"error: sweep: the Dask worker 127\.0\.0\.1:\d+ has another environment: mnist-cnn "
        rf"0\.0\.1 there, {re.escape(here)} here and 1 more; install requirements\.txt and "
        r"the project there",
        error_line(refused["other"]),
    ), refused["other"].stderr
    assert error_line(refused["broken"]) == (
        "error: sweep: a Dask worker cannot run the project's code (ImportError('a broken "
        "install of the project')); install it on every worker host (pip install --no-deps -e .)"
    ), refused["broken"].stderr


def version_of(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["a cluster of this machine", "a running cluster"])
def test_ctrl_c_stops_every_trial_and_publishes_nothing(team, cluster, workers_tmp, where):
    """Ctrl-C (SIGINT to the sweep's process group, as a terminal sends it: on a cluster of this
    machine, its workers get it too) while two trials train and a third waits: `interrupted`
    and 130; the running trials' runs killed and their clones removed; the waiting one never
    started; nothing of any on origin."""
    env = {**team.env, "TMPDIR": str(workers_tmp)}  # a cluster of this machine's workers' too
    repo = copy_repository(team.root, team.root.parent / f"user-interrupt-{len(where)}", env)
    rates = "train.learning_rate=0.011,0.012,0.013"
    scheduler = ["--scheduler", cluster] if where == "a running cluster" else []
    sweep_run = start_sweep(repo, "-S", rates, *scheduler, own_session=True)
    commit = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    names = [trial_name(commit, point) for point in grid([rates])]
    running = trials_running(sweep_run, names, min(2, available_cores()))
    time.sleep(2)  # into training
    os.killpg(sweep_run.pid, signal.SIGINT)
    output, errors = sweep_run.communicate(timeout=120)
    assert sweep_run.returncode == 130, errors
    assert errors.splitlines()[-2:] == [
        "sweep: stopping the trials not done; they publish nothing",
        "interrupted",
    ], errors
    assert output.count("running on worker") == len(running), output
    assert not any(process.is_running() for process in running)
    assert not trial_processes(names)
    assert not [path for name in names for path in workers_tmp.glob(f"{name}-*")]
    assert not [ref for ref in origin_refs(repo) if ref.rsplit("/", 1)[-1] in names]


def test_a_grid_is_every_combination_in_dvcs_grammar():
    assert grid(["train.learning_rate=0.005,0.01", "train.batch_size=128,256"]) == [
        ["train.learning_rate=0.005", "train.batch_size=128"],
        ["train.learning_rate=0.005", "train.batch_size=256"],
        ["train.learning_rate=0.01", "train.batch_size=128"],
        ["train.learning_rate=0.01", "train.batch_size=256"],
    ]
    assert grid(["model.conv_filters=[32,64]"]) == [["model.conv_filters=[32,64]"]]


def test_a_trials_name_is_fixed_by_the_commit_and_its_params():
    point = ["train.learning_rate=0.01", "train.batch_size=128"]
    name = trial_name("a" * 40, point)
    assert re.fullmatch(r"sweep-[0-9a-f]{10}", name)
    assert trial_name("a" * 40, point[::-1]) == name
    assert trial_name("b" * 40, point) != name
    assert trial_name("a" * 40, ["train.learning_rate=0.02", point[1]]) != name


def test_the_results_table_fits_a_terminal_whatever_the_grid():
    """Full param names where they fit; their last parts where those fit; else no params."""
    scores = {"val_accuracy": 0.98765, "accuracy": None}

    def header(keys: list[str]) -> list[str]:
        point = [f"{key}=0.005" for key in keys]
        shown = table([("sweep-0123456789", point, scores)]).splitlines()
        assert all(len(line) <= TABLE_COLUMNS for line in shown), shown
        row = shown[1].split()
        assert row[0] == "sweep-0123456789" and row[-2:] == ["0.9877", "-"], shown
        return shown[0].split()[1:-2]

    assert header(["train.learning_rate"]) == ["train.learning_rate"]
    five = ["train.learning_rate", "train.batch_size", "model.conv_filters", "model.dense_units"]
    five.append("train.warmup_epochs")  # in full, 141 columns
    assert header(five) == [key.split(".")[1] for key in five]
    assert header([f"train.a_setting_whose_name_never_ends_{n}" for n in range(4)]) == []
