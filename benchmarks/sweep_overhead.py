"""What a sweep on Dask costs over DVC's own ways of running the same experiments, side by side
on this machine.

    python -m benchmarks.sweep_overhead [--output FILE.json]

Four quick trials (the committed params on 5,000 training images, the README's quick
experiment, at four learning rates), run three ways, each from its own copy of the same
baseline (run once, pushed to a bare `origin` and a folder as the DVC remote), so that no way
restores another's runs from a cache:

- `dvc exp run`, one after another, each with every core (`threads: 0`, as committed);
- DVC's queue, `dvc exp run --queue ... -S threads=1` then `dvc queue start -j 2`;
- `mnist-cnn sweep` on a Dask cluster of this machine (2 single-threaded workers): a clone,
  `dvc exp run --pull`, then the publishing (`dvc push`, `push-run-cache`, `dvc exp push`) per
  trial, and `dvc exp pull` of all at the end.

It prints and writes the wall time of each way, the sweep's seconds per step of each trial,
and the seconds Python takes to import TensorFlow here (each `dvc exp run` starts three stage
processes that do). Needs the MNIST files as the pipeline does ($MNIST_MIRROR, or the network).
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mnist_cnn.errors import PipelineError
from mnist_cnn.tools import run_tool

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RATES = ["0.004", "0.008", "0.016", "0.032"]  # none the committed rate: every trial trains
QUICK = ("  max_train_images:\n", "  max_train_images: 5000\n")
WORKERS = 2


def run(command: list[str], cwd: Path) -> str:
    """Run a command of the benchmark's (git): its output, or a PipelineError that says why."""
    return run_tool(command, " ".join(command[:2]), cwd)


def dvc(*arguments: str, cwd: Path) -> str:
    return run_tool([sys.executable, "-m", "dvc", *arguments], f"dvc {arguments[0]}", cwd)


def baseline(folder: Path) -> Path:
    """The committed project on the quick data, run once and committed."""
    project = folder / "baseline"
    run(["git", "clone", "-q", str(PROJECT_ROOT), str(project)], folder)
    params = project / "params.yaml"
    text = params.read_text()
    if text.count(QUICK[0]) != 1:
        sys.exit(f"error: {params}: no single '{QUICK[0].strip()}' line to set to 5000")
    params.write_text(text.replace(*QUICK))
    dvc("repro", "-q", cwd=project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "the quick baseline, run"], project)
    return project


def copy_of(base: Path, folder: Path) -> Path:
    """A copy of the baseline with its own bare `origin` and DVC remote, everything pushed."""
    folder.mkdir()
    project = folder / "project"
    shutil.copytree(base, project, symlinks=True)
    run(["git", "init", "-q", "--bare", str(folder / "origin.git")], folder)
    run(["git", "remote", "set-url", "origin", str(folder / "origin.git")], project)
    dvc("remote", "add", "-d", "storage", str(folder / "dvc-remote"), cwd=project)
    run(["git", "commit", "-q", "-am", "the remotes"], project)
    run(["git", "push", "-q", "-u", "origin", "HEAD"], project)
    dvc("push", "-q", cwd=project)
    return project


@contextlib.contextmanager
def timed(into: dict, key: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    into[key] = round(time.monotonic() - start, 1)


def one_after_another(project: Path) -> dict:
    seconds: dict = {}
    with timed(seconds, "wall"):
        for rate in RATES:
            with timed(seconds, rate):
                dvc("exp", "run", "-S", f"train.learning_rate={rate}", cwd=project)
    return seconds


def dvc_queue(project: Path) -> dict:
    seconds: dict = {}
    grid = f"train.learning_rate={','.join(RATES)}"
    with timed(seconds, "wall"):
        dvc("exp", "run", "--queue", "-S", grid, "-S", "threads=1", cwd=project)
        # Not through run(): the queue's workers would hold its pipes until they stop.
        start = [sys.executable, "-m", "dvc", "queue", "start", "-j", str(WORKERS)]
        subprocess.run(start, cwd=project, check=True, stdout=subprocess.DEVNULL)
        while True:  # as the docs say: watch the status (the workers may linger, dvc#10398)
            status = dvc("queue", "status", cwd=project)
            if status.count("Success") == len(RATES) and "Worker status: 0 active" in status:
                break
            if "Failed" in status:
                sys.exit(f"error: dvc queue: a run failed:\n{status}")
            time.sleep(1)
    end_lingering_queue_workers(project)
    return seconds


def end_lingering_queue_workers(project: Path) -> None:
    """End the queue's worker processes that run in `project` and stayed on after the queue was
    done (treeverse/dvc#10398); no other process."""
    import psutil

    for process in psutil.process_iter(["cmdline", "cwd"]):
        command, cwd = " ".join(process.info["cmdline"] or []), process.info["cwd"]
        if "queue-worker" in command and cwd and Path(cwd).is_relative_to(project):
            process.kill()


def mnist_cnn_sweep(project: Path) -> tuple[dict, dict]:
    """The sweep command's own steps, in this process (so that each trial's steps come back)."""
    from mnist_cnn.sweep import check_workers, check_workspace, connect, run_trials

    seconds: dict = {}
    here = Path.cwd()
    os.chdir(project)
    try:
        with timed(seconds, "wall"):
            commit, origin = check_workspace()
            with contextlib.ExitStack() as stack:
                with timed(seconds, "cluster start"):
                    client = stack.enter_context(connect(None))
                    check_workers(client)
                points = [[f"train.learning_rate={rate}"] for rate in RATES]
                done, failed = run_trials(client, origin, commit, points)
            if failed:
                sys.exit("error: sweep: " + "; ".join(failed))
            with timed(seconds, "dvc exp pull"):
                dvc("exp", "pull", "origin", *done, cwd=project)
    finally:
        os.chdir(here)
    steps = {result["point"][0].split("=")[1]: result["steps"] for result in done.values()}
    return seconds, steps


def tensorflow_import_seconds(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "import tensorflow"], check=True)
        times.append(time.monotonic() - start)
    return round(statistics.median(times), 2)


def accuracies(project: Path) -> dict[str, float]:
    """Each experiment's test accuracy, by learning rate."""
    shown = json.loads(dvc("exp", "show", "--json", cwd=project))
    found = {}
    for row in shown:
        for experiment in row.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            rate = data["params"]["params.yaml"]["data"]["train"]["learning_rate"]
            found[str(rate)] = data["metrics"]["metrics/evaluate.json"]["data"]["accuracy"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    arguments = parser.parse_args()
    from benchmarks.machine import describe

    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as scratch:
        folder = Path(scratch)
        print("the baseline: dvc repro of the committed project on 5,000 images", flush=True)
        base = baseline(folder)
        ways = {
            "dvc exp run, one after another (threads 0)": one_after_another,
            f"dvc queue start -j {WORKERS} (threads 1)": dvc_queue,
            f"mnist-cnn sweep, {WORKERS} local Dask workers (threads 1)": mnist_cnn_sweep,
        }
        figures: dict = {"trials": len(RATES), "learning_rates": RATES, "ways": {}}
        for number, (way, measure) in enumerate(ways.items()):
            project = copy_of(base, folder / f"way-{number}")
            print(f"{way}: ...", flush=True)
            measured = measure(project)
            seconds, steps = measured if isinstance(measured, tuple) else (measured, None)
            figures["ways"][way] = {"seconds": seconds, "test_accuracy": accuracies(project)}
            if steps:
                figures["ways"][way]["steps_per_trial"] = steps
            print(f"{way}: {seconds['wall']} s", flush=True)
        figures["tensorflow_import_seconds"] = tensorflow_import_seconds()
    figures["machine"] = describe()
    print(json.dumps(figures, indent=2))
    if arguments.output:
        arguments.output.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except PipelineError as error:
        sys.exit(f"error: {error}")
