"""End to end: real `dvc repro` runs of the project, copied into a temporary git repository,
on a small subset of the real MNIST files and one epoch."""

import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests import browser
from tests.helpers import (
    CHANGES,
    STAGES,
    Repo,
    copy_project,
    documented_code_block,
    documented_line,
    documented_text,
)

pytestmark = pytest.mark.e2e

# What `dvc plots show` draws: each plot file and its title (images have none).
PLOTS = {
    "plots/train/loss.csv": "Loss",
    "plots/train/accuracy.csv": "Accuracy",
    "plots/evaluate/predictions.csv": "Confusion matrix",
    "plots/evaluate/per_digit.csv": "Scores per digit",
    "plots/evaluate/images/confusion_matrix.png": None,
    "plots/evaluate/images/samples.png": None,
    "plots/evaluate/images/misclassified.png": None,
}


def test_a_change_reruns_exactly_the_stages_it_affects(changed, a_change):
    """From the baseline (all five stages run once, results committed): nothing to do, then
    exactly what each change affects (`changed` ran them), and the diffs DVC shows of the last
    one."""
    ran = json.loads((changed / "ran.json").read_text())
    assert ran == {
        "nothing": [],
        "evaluate.sample_images": ["evaluate"],
        "train.epochs": ["train", "evaluate", "export"],
    }

    repo = a_change
    before = json.loads(repo.run("git", "show", "HEAD:metrics/evaluate.json").stdout)
    params_diff = json.loads(repo.dvc("params", "diff", "--json"))
    assert params_diff["params.yaml"] == {"train.epochs": {"old": 1, "new": 2, "diff": 1}}
    metrics_diff = json.loads(repo.dvc("metrics", "diff", "--json"))
    accuracy = metrics_diff["metrics/evaluate.json"]["accuracy"]
    assert accuracy["old"] == before["accuracy"]
    assert accuracy["new"] != accuracy["old"]
    assert accuracy["diff"] == pytest.approx(accuracy["new"] - accuracy["old"])


def test_plots_and_report_of_a_change(a_change):
    """A change (one epoch to two): exactly the plots the project defines, titled, drawn offline
    in a browser by `dvc plots show` and `dvc plots diff`, and the pull-request report of it."""
    repo = a_change
    before = json.loads(repo.run("git", "show", "HEAD:metrics/evaluate.json").stdout)

    # No raw rendering of any data file.
    shown = json.loads(repo.dvc("plots", "show", "--json"))["data"]
    assert set(shown) == set(PLOTS)
    for plot, title in PLOTS.items():
        if title:
            assert shown[plot][0]["content"]["title"] in (
                title,
                {"text": title, "anchor": "middle"},
            )
    repo.dvc("plots", "show", "-o", "shown")
    repo.dvc("plots", "diff", "HEAD", "-o", "compared")
    check_pages_render_offline(repo)
    check_report(repo, before, repo.root / "metrics/evaluate.json")


def test_exports_serve_as_documented(built):
    check_exports_serve(built)
    check_exports_restored(built)


def test_a_forced_rerun_of_every_stage_changes_no_byte(built):
    published = built.results() | {"model": built.read("models/model.keras")}
    assert built.repro("-f") == STAGES
    assert built.results() | {"model": built.read("models/model.keras")} == published


def check_exports_restored(repo: Repo) -> None:
    """`dvc repro` deletes the export stage's outputs before running it: the README's two
    commands, exactly as written, bring back the last recorded ones, byte for byte."""
    outputs = ["models/model.onnx", "models/model.tflite", "models/exports.json",
               "metrics/export.json", "models/saved_model/saved_model.pb"]
    recorded = {path: repo.read(path) for path in outputs}
    shutil.rmtree(repo.root / "models/saved_model")
    for path in outputs[:-1]:
        (repo.root / path).unlink()
    documentation = documented_text()
    for command in ("dvc checkout export", "git checkout metrics/export.json"):
        assert f"`{command}`" in documentation
        repo.run(*command.split())  # `dvc` of this interpreter's environment: on repo's PATH
    assert {path: repo.read(path) for path in outputs} == recorded


def check_exports_serve(repo: Repo) -> None:
    """The README's ways to run the exports, on this run's: the ONNX and TFLite snippets name
    the digits that evaluate's Keras model named for the first five test images, the
    SavedModel has the signature TensorFlow Serving serves, and the latency benchmark runs."""
    predictions = (repo.root / "plots/evaluate/predictions.csv").read_text().splitlines()
    expected = [int(row.split(",")[1]) for row in predictions[1:6]]
    for runtime in ("onnxruntime.InferenceSession", "Interpreter(model_path"):
        printed = repo.run(sys.executable, "-c", documented_code_block(runtime)).stdout
        assert [int(digit) for digit in re.findall(r"\d", printed)] == expected, printed
    shown = repo.run(*readme_command("saved_model_cli show ")).stdout
    for line in ("inputs['images'] tensor_info:", "outputs['probabilities'] tensor_info:"):
        assert line in shown, shown
    assert shown.count("shape: (-1, 28, 28, 1)") == 1 and "shape: (-1, 10)" in shown, shown

    # The latency benchmark, as documented (a benchmark, not a test: only that it runs and
    # reports each format, and writes its figures with the machine they were measured on).
    command = documented_line("python -m benchmarks.export_latency ")
    ran = repo.run("bash", "-c", command)
    assert "XNNPACK" not in ran.stderr, ran.stderr  # LiteRT's note on every interpreter
    rows = [line for line in ran.stdout.splitlines() if re.match(r"\| \w.* \| [\d.]+ ms \|", line)]
    formats = ["Keras", "SavedModel", "ONNX", "TFLite"]
    assert [row.split(" (")[0] for row in rows] == [f"| {name}" for name in formats]
    written = json.loads(repo.read("benchmarks/export_latency.json"))
    assert [name.split(" (")[0] for name in written["formats"]] == formats
    assert written["machine"]["cores"] >= 1 and written["machine"]["date"]


def check_report(repo: Repo, before: dict, metrics: Path) -> None:
    """The README's report command on the change (epochs 1 -> 2) against the last commit: the
    real params change and accuracy delta, and every picture it shows is a PNG file beside
    it."""
    after = json.loads(metrics.read_text())
    repo.run("git", "branch", "-f", "main", "HEAD", check=False)  # unless main is checked out
    _, *arguments = readme_command("python -m mnist_cnn report ")
    repo.run(sys.executable, *arguments)
    text = (repo.root / "report.md").read_text()
    assert "| `train.epochs` | 1 | 2 |" in text
    old, new = before["accuracy"] * 100, after["accuracy"] * 100
    assert f"| test accuracy | {old:.2f} % | {new:.2f} % | {new - old:+.2f} pt |" in text
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # Loss, accuracy, the confusion matrices, the scores per digit, then the misclassified
    # digits of each revision.
    assert len(pictures) == 4 + 2
    for picture in pictures:
        assert (repo.root / picture).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "Warning" not in text

    # Params edited and not run: the report says so; a value with | and HTML stays one cell.
    params = (repo.root / "params.yaml").read_text()
    mirrors = json.loads(repo.dvc("params", "diff", "--all", "--json"))["params.yaml"]
    mirror = "http://127.0.0.1:9/<b>a|b</b>/"
    mirrors = [*mirrors["download.mirrors"]["new"], mirror]
    repo.set_params({**CHANGES["train.epochs"], "download.mirrors": mirrors})
    stale = repo.run(sys.executable, *arguments)
    warning = (
        "the workspace's results are not up to date (download changed since they ran): run "
        "dvc repro first, or these metrics are not the params' beside them"
    )
    assert stale.stderr.strip() == f"warning: {warning}"
    text = (repo.root / "report.md").read_text()
    assert f"> **Warning:** {warning}." in text
    row = next(line for line in text.splitlines() if line.startswith("| `download.mirrors`"))
    assert "http://127.0.0.1:9/&lt;b&gt;a\\|b&lt;/b&gt;/" in row
    assert row.replace("\\|", "").count("|") == 4  # three cells
    (repo.root / "params.yaml").write_text(params)


def check_pages_render_offline(repo: Repo) -> None:
    """The pages `dvc plots show` and `dvc plots diff` wrote, in Chromium with no network:
    every Vega plot drew its marks, every image loaded. DVC's own page, which loads Vega from
    a CDN, draws none: what the project's template is for."""
    vega_plots = 4  # loss, accuracy, confusion matrix, scores per digit
    for page, images in (("shown/index.html", 3), ("compared/index.html", 6)):
        seen = browser.render(repo.root / page)
        assert len(seen["plots"]) == vega_plots, page
        assert all(plot["marks"] > 0 for plot in seen["plots"]), (page, seen["plots"])
        assert len(seen["images"]) == images and all(i["loaded"] for i in seen["images"]), page
        # The confusion matrix as in the PNG: actual digits as rows, predicted as columns,
        # a count in every cell of each revision's matrix.
        (matrix,) = [plot for plot in seen["plots"] if plot["texts"]]
        axes = [axis or "" for axis in matrix["axes"]]
        assert any(axis.startswith("Y-axis titled 'actual digit'") for axis in axes), axes
        assert any(axis.startswith("X-axis titled 'predicted digit'") for axis in axes), axes
        assert matrix["texts"] >= 100, matrix
        assert "rev" not in matrix["words"], matrix  # the revisions are named, not "rev"
        # The curves' epochs are whole: ticks 1, 2, never 1.5.
        curves = [plot for plot in seen["plots"] if "epoch" in plot["words"]]
        assert len(curves) == 2, seen["plots"]
        for curve in curves:
            assert curve["xticks"] and all(t.isdigit() for t in curve["xticks"]), curve

    repo.dvc("config", "--unset", "plots.html_template")
    repo.dvc("plots", "show", "-o", "default")
    repo.run("git", "checkout", ".dvc/config")
    seen = browser.render(repo.root / "default/index.html")
    assert len(seen["plots"]) == vega_plots
    assert all(plot["marks"] == 0 for plot in seen["plots"])


def training_curves_grow(repo: Repo, command: str) -> None:
    """Run `command` (an experiment of three epochs) in bash: the loss curve and the train
    metrics are on disk after each epoch, before the run ends, for `dvc exp show` and VS Code
    to show."""
    run = subprocess.Popen(
        ["bash", "-c", command],
        cwd=repo.root,
        env=repo.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    curve, metrics = repo.root / "plots/train/loss.csv", repo.root / "metrics/train.json"
    seen = []  # (epochs in the curve, epochs in the metrics), each time either changes
    while run.poll() is None:
        try:
            state = (len(curve.read_text().splitlines()) - 1, json.loads(metrics.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            state = None  # not written yet (files are renamed into place, never half-written)
        if state and (not seen or seen[-1] != (state[0], state[1]["epochs"])):
            seen.append((state[0], state[1]["epochs"]))
        time.sleep(0.02)
    assert run.returncode == 0, run.stdout.read()
    assert seen[0] == (1, 1) and seen[-1] == (3, 3), seen
    assert (2, 2) in seen, seen


def test_run_cache_restores_every_stage(changed, a_change, baseline):
    """Going back to params run before runs nothing: DVC restores each stage from its
    run-cache, byte for byte, dvc.lock, metrics and plots included."""
    repo = a_change
    ran = json.loads((changed / "ran.json").read_text())
    # Every stage run is saved in the run-cache: the baseline's, then each change's.
    assert len(repo.run_records()) == len(STAGES) + sum(len(stages) for stages in ran.values())
    latest = repo.results() | {"model": repo.read("models/model.keras")}

    repo.run("git", "checkout", "params.yaml")  # one epoch again
    assert repo.repro() == []
    assert repo.run("git", "status", "--porcelain").stdout == ""  # the committed results
    assert repo.read("models/model.keras") == (baseline / "models/model.keras").read_bytes()

    repo.set_params(CHANGES["train.epochs"])  # two epochs again
    assert repo.repro() == []
    assert repo.results() | {"model": repo.read("models/model.keras")} == latest


def readme_command(prefix: str) -> list[str]:
    return shlex.split(documented_line(prefix), comments=True)


def experiments(repo: Repo) -> list[dict]:
    """Each experiment's data from `dvc exp show --json`, in the order shown."""
    rows = json.loads(repo.dvc("exp", "show", "--json"))
    return [e["revs"][0]["data"] for row in rows for e in row.get("experiments") or []]


def first_screen(repo: Repo, *arguments: str) -> tuple[list[str], list[str], str]:
    """`dvc <arguments>` in a 120-column terminal, which pages a wide table at its full width:
    the table header's words and every line, cut at 120 (what a user sees first), and the
    whole table."""
    table = repo.run(sys.executable, "-m", "dvc", *arguments, env={"COLUMNS": "120"}).stdout
    screen = [line[:120] for line in table.splitlines()]
    header = next(line for line in screen if "Experiment" in line).split()
    return header, screen, table


def check_metrics_fit_a_terminal(repo: Repo, experiment: dict) -> None:
    """In a 120-column terminal, with committed results and one experiment: `dvc metrics show`
    fits, and `dvc exp show --only-changed` (which a terminal pages at its full width) shows
    the test accuracy of the workspace and of the experiment on its first screen."""
    narrow = {"COLUMNS": "120"}
    shown = repo.run(sys.executable, "-m", "dvc", "metrics", "show", env=narrow).stdout
    assert max(len(line) for line in shown.splitlines()) <= 120, shown
    header, screen, table = first_screen(repo, "exp", "show", "--only-changed")
    accuracy = experiment["metrics"]["metrics/evaluate.json"]["data"]["accuracy"]
    committed = json.loads(repo.run("git", "show", "HEAD:metrics/evaluate.json").stdout)
    if committed["accuracy"] == accuracy:  # on the small test set, a tie happens: not "changed"
        assert "accuracy" not in header, table
        return
    assert header[:3] == ["Experiment", "Created", "accuracy"], table
    # The workspace's row, and the experiment's, named as `└── 2a5da5d [waspy-uvea]`.
    rows = [line for line in screen if re.match(r"\s*(workspace|└── \w+ \[[\w-]+\])\s", line)]
    assert len(rows) == 2, table
    for row in rows:
        assert f"{accuracy:.5g}" in row.split(), (accuracy, table)


def wait_for_queue(repo: Repo, experiments: int) -> None:
    """Watch `dvc queue status`, as the docs say, until every queued experiment is done and
    no worker is active; then end any worker process that stayed on after that (DVC 3.67.1
    can leave one idling for good, treeverse/dvc#10398: seen in CI)."""
    deadline = time.monotonic() + 900  # guards the suite only
    while True:
        status = repo.dvc("queue", "status")
        if status.count("Success") == experiments and "Worker status: 0 active" in status:
            break
        assert "Failed" not in status and time.monotonic() < deadline, status
        time.sleep(3)
    lingering = processes_in(repo.root, "queue-worker")
    for worker in psutil.wait_procs(lingering, timeout=30)[1]:
        worker.kill()


# The two precisions `precision: auto` picks on a CPU: bfloat16 where it has AVX512-BF16 or AMX
# (forced here, it runs on any CPU), float32 elsewhere.
PRECISIONS = ["float32", "mixed_bfloat16"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_readme_quick_experiment_as_written(tmp_path, mnist_dir, precision):
    """The README's quick experiment, exactly as written, on the committed params: a model
    that works, the workspace left as it was, and in a 120-column terminal the experiment's
    test accuracy and changed param on the first screen of `dvc exp show --only-changed`."""
    copy_project(tmp_path, published=True)  # a fresh clone: the published run is the baseline
    repo = Repo(tmp_path, {"MNIST_MIRROR": str(mnist_dir)})
    params = tmp_path / "params.yaml"  # the committed file, as written, in `precision`
    params.write_text(params.read_text().replace("precision: auto", f"precision: {precision}"))
    repo.run("git", "init", "-q")
    repo.commit("project")

    command = readme_command("dvc exp run --temp -S preprocess.max_train_images=5000")
    output = repo.dvc(*command[1:])
    assert "data/prepared/train.npz: 5000 images" in output
    assert "data/prepared/validation.npz: 5000 images" in output
    assert f"precision: {precision}" in output
    assert repo.run("git", "status", "--porcelain").stdout == ""  # the workspace as it was
    (quick,) = experiments(repo)
    assert quick["params"]["params.yaml"]["data"]["train"]["epochs"] == 6
    accuracy = quick["metrics"]["metrics/evaluate.json"]["data"]["accuracy"]
    assert 0.97 <= accuracy <= 1  # the README's "about 98 %"

    header, screen, table = first_screen(repo, "exp", "show", "--only-changed")
    assert header[:3] == ["Experiment", "Created", "accuracy"], table
    assert "preprocess.max_train_images" in header, table
    (row,) = [line for line in screen if re.match(r"\s*└── \w+ \[[\w-]+\]\s", line)]
    assert f"{accuracy:.5g}" in row.split() and "5000" in row.split(), table


def test_readme_experiments_in_order(built):
    """The README's experiment lines in order, each as written, on the committed params: the
    experiment's curves grow epoch by epoch while it trains, it changes one line of
    params.yaml, and the way back leaves the workspace as committed."""
    repo = built
    block = documented_code_block("dvc exp run -S train.epochs=3")
    run, show, params_diff, metrics_diff, plots_diff, back = block.strip().splitlines()
    training_curves_grow(repo, run)
    diff = repo.run("git", "diff", "-U0", "params.yaml").stdout.splitlines()
    changed = [line for line in diff if line[:1] in "+-" and line[:3] not in ("---", "+++")]
    assert changed == ["-  epochs: 1", "+  epochs: 3"], diff  # one line, as DVC writes it back
    assert "train.epochs" in repo.run("bash", "-c", show, env={"COLUMNS": "120"}).stdout
    assert "train.epochs" in repo.run("bash", "-c", params_diff).stdout
    assert "accuracy" in repo.run("bash", "-c", metrics_diff).stdout
    repo.run("bash", "-c", plots_diff)
    repo.run("bash", "-c", back)
    assert repo.run("git", "status", "--porcelain").stdout == ""  # params and results: HEAD's


def test_an_experiment_from_before_the_remote_takes_it_away_until_the_documented_line(a_change):
    """`dvc exp apply` of an experiment made before the remote was committed puts back that
    commit's .dvc/config (DVC's behaviour, as the docs say); their line, as written, takes
    back the remote and leaves the experiment's results."""
    repo = a_change  # two epochs, run: the experiment records these results, trains nothing
    repo.dvc("exp", "run", "-n", "before-remote", "-S", "train.epochs=2")
    applied = repo.read("metrics/evaluate.json")
    repo.run("bash", "-c", "git checkout params.yaml && dvc repro")  # from the run-cache
    repo.dvc("remote", "add", "-d", "storage", "s3://team-bucket/mnist")
    repo.commit("the team's remote")

    repo.dvc("exp", "apply", "before-remote")
    assert "storage" not in repo.dvc("remote", "list")
    repo.run("bash", "-c", documented_line("git checkout HEAD -- .dvc/config"))
    assert repo.dvc("remote", "list").split()[:2] == ["storage", "s3://team-bucket/mnist"]
    assert repo.read("metrics/evaluate.json") == applied
    assert "epochs: 2" in (repo.root / "params.yaml").read_text()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_readme_deeper_model_as_written(built, precision):
    repo = built  # the quick params in `precision`, committed: it trains on all of their data
    repo.set_params({"train.precision": precision})
    repo.commit(f"quick params in {precision}")
    repo.dvc(*readme_command("dvc exp run -S 'model.conv_filters=[32,64]'")[1:])
    (deeper,) = experiments(repo)
    assert deeper["params"]["params.yaml"]["data"]["model"]["conv_filters"] == [32, 64]
    assert deeper["params"]["params.yaml"]["data"]["train"]["precision"] == precision
    check_metrics_fit_a_terminal(repo, deeper)


def test_readme_sweep_as_written(built):
    """The sweep's lines, exactly as written: queued, each point the committed params but for
    what it sets, run two at a time, watched with `dvc queue status`, shown in 120 columns
    with none folded away. In the precision `auto` picks here, as a user's sweep (on an
    AVX512-BF16 CPU, `vs_float32` is a changed column); both precisions through `dvc exp run`
    are checked by the quick experiment and the deeper model. The committed params at
    `threads: 0`, the published value, as a user's: so the sweep's `-S threads=1` is a changed
    column too, and its point at the quick params' rate is the baseline's run, restored from
    the run-cache (DVC's behaviour, and one training fewer)."""
    built.set_params({"threads": 0})
    built.commit("threads as published")
    repo = built
    queue, start, status, show = [
        command
        for line in documented_code_block("dvc queue start").splitlines()
        if (command := shlex.split(line, comments=True))
    ]
    assert status == ["dvc", "queue", "status"]
    repo.dvc(*queue[1:])
    repo.dvc(*start[1:])
    wait_for_queue(repo, 3)
    sweep = experiments(repo)
    expected = yaml.safe_load(repo.read("params.yaml"))  # but for what the sweep sets:
    committed_rate = expected["train"].pop("learning_rate")
    del expected["threads"]
    rates = []
    for experiment in sweep:
        params = copy.deepcopy(experiment["params"]["params.yaml"]["data"])
        assert params.pop("threads") == 1
        rates.append(params["train"].pop("learning_rate"))
        assert params == expected
    assert sorted(rates) == [0.005, 0.01, 0.02]
    committed = json.loads(repo.read("metrics/evaluate.json"))
    for experiment in sweep:
        metrics = experiment["metrics"]["metrics/evaluate.json"]["data"]
        assert 0.1 < metrics["accuracy"] <= 1
        if experiment["params"]["params.yaml"]["data"]["train"]["learning_rate"] == committed_rate:
            assert metrics == committed  # the baseline's run, restored
    header, screen, table = first_screen(repo, *show[1:])
    assert header[:2] == ["Experiment", "accuracy"], table  # when and how: dropped
    assert {"threads", "train.learning_rate"} <= set(header), table  # the params that differ
    for rate in ("0.005", "0.01", "0.02"):
        assert any(rate in line.split() for line in screen), table
    assert len([line for line in screen if re.match(r"\s*[├└]── ", line)]) == 3, table


def processes_in(folder: Path, named: str) -> list[psutil.Process]:
    """This machine's processes whose command line holds `named` and that run in `folder` or
    below it (the queue's workers run in the repository; their runs start there, then move to
    a copy of it in .dvc/tmp/exps/)."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cwd, command = process.info["cwd"], " ".join(process.info["cmdline"] or [])
        if cwd and named in command and Path(cwd).is_relative_to(folder):
            found.append(process)
    return found


def test_a_killed_queue_worker_is_recovered_as_documented(built):
    """A worker killed while it runs an experiment: its run goes on to the end, nothing
    collects it, and DVC shows it Running for good. The documented lines, as written, end the
    entry, restore the run from the run-cache under its name, and clear what it left."""
    lines = [line for line in documented_code_block("dvc queue kill").splitlines() if line]
    rerun = shlex.split(lines[2], comments=True)
    name = rerun[rerun.index("-n") + 1]
    built.dvc("exp", "run", "--queue", *rerun[3:])  # queued as the lines say it was
    # Not through Repo.run: the worker would inherit its pipes, and the call return only once
    # the queue is done.
    start = [sys.executable, "-m", "dvc", "queue", "start", "-j", "1"]
    subprocess.run(start, cwd=built.root, env=built.env, check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300  # guards the suite only
    while not (runs := processes_in(built.root, "exec-run")):
        assert time.monotonic() < deadline, built.dvc("queue", "status")
        time.sleep(0.2)
    for worker in processes_in(built.root, "queue-worker"):
        worker.kill()
    psutil.wait_procs(runs, timeout=300)
    assert f"{name}" in (status := built.dvc("queue", "status")) and "Running" in status
    built.dvc_fails("queue", "remove", name)  # DVC's own behaviour, as the docs say

    done = [built.run("bash", "-c", line) for line in lines]
    assert "Running stage" not in done[2].stdout  # every stage restored from the run-cache
    assert name in built.dvc("exp", "list")
    assert "No experiment tasks in the queue" in built.dvc("queue", "status")
    assert not list((built.root / ".dvc/tmp/exps").glob("tmp*"))


def child_processes(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `pid`."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = (int(fields[1]), command)
    below, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [(p, c) for p, (ppid, c) in parents.items() if ppid == parent]
        below += children
        frontier += [p for p, _ in children]
    return below


def repro_until_training_epoch_2(repo: Repo, epochs: int) -> subprocess.Popen:
    """A `dvc repro` started in the background, once the train stage has finished epoch 1 and
    begun epoch 2."""
    repro = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo.root,
        env={**repo.env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in repro.stdout:
        if line.startswith(f"Epoch 2/{epochs}"):
            break
    return repro


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the stage's process in /proc")
def test_training_killed_mid_epoch_then_rerun_gives_the_uninterrupted_results(built, changed):
    """SIGKILL, which no code can catch, to the train stage in the middle of its second and
    last epoch; then `dvc repro train`: the same bytes as the uninterrupted training of the
    same params in another repository (`changed` ran it), and no temporary file anywhere.
    (Evaluate and export read only the model, whose bytes the forced re-run test checks
    through all five stages.)"""
    repo = built
    repo.set_params(CHANGES["train.epochs"])
    repro = repro_until_training_epoch_2(repo, epochs=2)
    train = [pid for pid, command in child_processes(repro.pid) if "stages.train" in command]
    assert train, "the train stage is not running"
    for pid in train:
        os.kill(pid, signal.SIGKILL)
    output, _ = repro.communicate(timeout=300)
    assert repro.returncode != 0, output
    assert not (repo.root / "models/model.keras").exists()

    assert repo.repro("train") == ["train"]
    assert sorted(repo.root.rglob("*.tmp")) == []
    uninterrupted = changed / "project"
    for path in ["models/model.keras", "metrics/train.json", "plots/train/loss.csv"]:
        assert repo.read(path) == (uninterrupted / path).read_bytes(), path


def edit_params_file(repo: Repo) -> None:
    repo.set_params({"train.epochs": 2})


def start_an_experiment(repo: Repo) -> None:
    """`dvc exp run -S` started during a `dvc repro`: DVC rewrites params.yaml, then finds the
    repository locked and gives up, leaving the file rewritten. At times it gives up before
    rewriting it: its stash of the workspace collides with what training writes meanwhile
    (`Stash apply resulted in merge conflicts`, DVC 3.67.1; seen in CI). Then it is started
    again, as a user would."""
    for _ in range(5):
        repo.run(sys.executable, "-m", "dvc", "exp", "run", "-S", "train.epochs=2", check=False)
        if "epochs: 2" in (repo.root / "params.yaml").read_text():
            return


@pytest.mark.parametrize("change", [edit_params_file, start_an_experiment])
def test_params_changed_while_training_are_not_recorded(built, change):
    """DVC reads a stage's params after it ran: a change made meanwhile would be recorded, and
    cached, as the params of a model trained with the old ones. The stage stops instead, at the
    end of the epoch it is in (100 epochs would take minutes: training cannot finish before the
    change, however long `dvc exp run` takes to start)."""
    repo = built
    recorded, records = repo.read("dvc.lock"), repo.run_records()
    repo.set_params({"train.epochs": 100})
    repro = repro_until_training_epoch_2(repo, epochs=100)
    change(repo)
    assert "epochs: 2" in (repo.root / "params.yaml").read_text()
    output, _ = repro.communicate(timeout=300)
    assert repro.returncode != 0, output
    assert "Epoch 100/100" not in output  # stopped at the change, not at the end
    assert (
        "error: params.yaml changed while train ran: its outputs are for the params it read at "
        "the start and are not recorded; run dvc repro again"
    ) in output
    assert "Traceback" not in output
    assert repo.read("dvc.lock") == recorded  # still the baseline's one epoch
    assert repo.run_records() == records  # no run of train with either params
