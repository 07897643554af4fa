"""Sharing results, for real: an S3-compatible server (moto's standalone server) on 127.0.0.1,
a bare git repository as `origin`, and two clones, A and B, each with its own DVC cache, driven
with the commands the README's "Share results" section shows."""

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    CHANGES,
    S3_BUCKET,
    S3_CREDENTIALS,
    Repo,
    copy_repository,
    documented_code_block,
    free_port,
    s3_client,
    stages_run,
)

pytestmark = pytest.mark.e2e

@dataclass
class Team:
    origin: Path  # the bare git repository everyone pushes to
    env: dict[str, str]
    workdir: Path

    def clone(self, name: str) -> Repo:
        """A teammate's fresh clone of origin, with an empty DVC cache."""
        subprocess.run(
            ["git", "clone", "-q", str(self.origin), str(self.workdir / name)],
            check=True,
            capture_output=True,
        )
        return Repo(self.workdir / name, self.env)


@pytest.fixture(scope="module")
def team(tmp_path_factory, s3_endpoint, mnist_dir, baseline) -> Team:
    """Teammate A has set up the project with a remote, run it, and pushed everything."""
    workdir = tmp_path_factory.mktemp("team")
    origin = workdir / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    # COLUMNS: tables as wide as a terminal's (without one, dvc draws them 16 columns wide).
    env = {**S3_CREDENTIALS, "MNIST_MIRROR": str(mnist_dir), "COLUMNS": "200"}
    team = Team(origin, env, workdir)

    # The baseline: the project on the quick params, run and committed.
    a = copy_repository(baseline, workdir / "a", team.env)
    a.run("git", "remote", "add", "origin", str(origin))
    # The README's lines for an S3-compatible server, then its commit of the remote.
    a.dvc("remote", "add", "-d", "storage", f"s3://{S3_BUCKET}/dvcstore")
    a.dvc("remote", "modify", "storage", "endpointurl", s3_endpoint)
    for line in documented_code_block("verify true").splitlines():
        a.run(*shlex.split(line, comments=True))
    a.run("git", "add", ".dvc/config")
    a.run("git", "commit", "-q", "-m", "Team remote")
    assert "storage" in a.run("git", "show", "HEAD:.dvc/config").stdout
    assert a.repro() == []  # the baseline's results are this commit's
    a.run("git", "push", "-q", "origin", "main")
    a.dvc("push", "--run-cache")
    return team


# A param set the remote has never seen, run elsewhere: the tests of a change ran it (`changed`).
RUN_ELSEWHERE = CHANGES["train.epochs"]


def clone_that_ran_elsewhere(team: Team, changed: Path, name: str) -> Repo:
    """Teammate A's clone of origin on a machine that has run RUN_ELSEWHERE: its DVC cache and
    run-cache are `changed`'s. Training is what the tests of a change already paid for; these
    tests check what travels."""
    a = team.clone(name)
    shutil.copytree(changed / "project/.dvc/cache", a.root / ".dvc/cache", dirs_exist_ok=True)
    return a


def ran_elsewhere(team: Team, changed: Path, name: str) -> Repo:
    """Teammate A's clone with RUN_ELSEWHERE's results in the workspace, restored from the
    run-cache."""
    a = clone_that_ran_elsewhere(team, changed, name)
    a.set_params(RUN_ELSEWHERE)
    assert a.repro() == []  # all restored
    return a


def test_teammate_pulls_results_instead_of_rerunning(team):
    a = Repo(team.workdir / "a", team.env)
    b = team.clone("b-pull")
    b.dvc("pull")
    assert "up to date" in b.dvc("status")
    assert b.repro() == []
    assert b.read("models/model.keras") == a.read("models/model.keras")
    assert b.results() == a.results()


def test_run_cache_shares_a_param_set_run_elsewhere(team, changed):
    a = ran_elsewhere(team, changed, "a-run-cache")
    a.dvc("push")
    pushed = a.run(sys.executable, "-m", "mnist_cnn", "push-run-cache").stdout
    records = len(a.run_records())  # the baseline's, already on the remote, and the new ones
    assert re.fullmatch(
        rf"pushed {records} run record\(s\) and [1-9]\d* new file\(s\); skipped 0\n", pushed
    )

    # `dvc pull --run-cache` brings the run records (a few hundred bytes each), not the files
    # they name; `dvc repro --pull` fetches those it needs and restores the stages.
    b = team.clone("b-run-cache")
    b.dvc("pull")
    b.set_params(RUN_ELSEWHERE)
    b.dvc("pull", "--run-cache")
    assert a.run_records() <= b.run_records()
    assert b.repro("--pull") == []  # train, evaluate and export restored, not run
    assert b.results() == a.results()
    assert b.read("models/model.keras") == a.read("models/model.keras")

    # In one command, from a clone that has pulled nothing.
    c = team.clone("c-run-cache")
    c.set_params(RUN_ELSEWHERE)
    assert c.repro("--pull") == []
    assert c.results() == a.results()


def test_experiments_travel_through_origin(team, changed):
    """The docs' lines as written, the teammate's HEAD past the experiment's commit: plain
    `dvc exp show` lists only experiments made from HEAD, `-A` lists it."""
    push, pull, show, apply = [
        shlex.split(line, comments=True)
        for line in documented_code_block("dvc exp push origin").splitlines()
    ]
    name = push[-1]
    a = clone_that_ran_elsewhere(team, changed, "a-exp")
    settings = [arg for key, value in RUN_ELSEWHERE.items() for arg in ("-S", f"{key}={value}")]
    ran = a.dvc("exp", "run", "-n", name, *settings)
    assert stages_run(ran) == []  # restored from the run-cache
    a.run(*push)
    pushed = {path: a.read(path) for path in ("metrics/evaluate.json", "models/model.keras")}

    b = team.clone("b-exp")
    b.run("git", "commit", "-q", "--allow-empty", "-m", "the teammate's own work")
    b.run(*pull)
    assert name not in b.dvc("exp", "show", "--no-pager")  # DVC's: not made from HEAD
    assert name in b.run(*show, env={"COLUMNS": "200"}).stdout

    b.run(*apply)  # the model and metrics come from the remote
    for path, data in pushed.items():
        assert b.read(path) == data
    assert b.repro() == []  # nothing to train: the workspace matches the experiment


def test_registry_version_is_fetched_by_anyone(team, tmp_path):
    outsider = Repo(tmp_path, team.env)  # not a clone: any folder, with the remote's keys
    untagged = outsider.dvc_fails("artifacts", "get", str(team.origin), "mnist-cnn")
    assert "Unable to find artifact" in untagged.stderr  # no version before the first tag

    a = team.clone("a-registry")
    # A version is a git tag `mnist-cnn@<version>`: by GTO, or by git alone on a later commit.
    a.run("gto", "register", "mnist-cnn", "--version", "v1.0.0")
    (a.root / "NOTES.md").write_text("a later commit\n")
    a.commit("notes")
    a.run("git", "tag", "-a", "mnist-cnn@v1.1.0", "-m", "mnist-cnn v1.1.0")
    a.run("git", "push", "-q", "origin", "main", "mnist-cnn@v1.0.0", "mnist-cnn@v1.1.0")
    listed = a.run("gto", "show", "mnist-cnn").stdout
    assert "v1.0.0" in listed and "v1.1.0" in listed
    published = Repo(team.workdir / "a", team.env).read("models/model.keras")

    for version in ("v1.0.0", "v1.1.0"):
        outsider.dvc(
            "artifacts",
            "get",
            str(team.origin),
            "mnist-cnn",
            "--rev",
            version,
            "-o",
            f"model-{version}.keras",
        )
        assert outsider.read(f"model-{version}.keras") == published
    outsider.dvc("artifacts", "get", str(team.origin), "mnist-cnn", "-o", "latest.keras")
    assert outsider.read("latest.keras") == published

    missing = outsider.dvc_fails("artifacts", "get", str(team.origin), "mnist-cnn", "--rev", "v9")
    errors = [line for line in missing.stderr.splitlines() if line.startswith("ERROR")]
    # As the docs say: DVC's line about Studio first, then the one that matters.
    assert errors[0].startswith("ERROR: Failed to download artifact 'mnist-cnn' via Studio"), errors
    assert "Unable to find artifact" in errors[-1], errors

    # The exports are artifacts too, versioned the same way; the SavedModel is a folder.
    a.run("gto", "register", "mnist-cnn-onnx", "--version", "v1.0.0")
    a.run("gto", "register", "mnist-cnn-savedmodel", "--version", "v1.0.0")
    a.run("git", "push", "-q", "origin", "mnist-cnn-onnx@v1.0.0", "mnist-cnn-savedmodel@v1.0.0")
    origin = str(team.origin)
    outsider.dvc("artifacts", "get", origin, "mnist-cnn-onnx", "--rev", "v1.0.0", "-o", "m.onnx")
    assert outsider.read("m.onnx") == Repo(team.workdir / "a", team.env).read("models/model.onnx")
    outsider.dvc("artifacts", "get", origin, "mnist-cnn-savedmodel", "-o", "saved_model")
    saved = outsider.root / "saved_model"
    assert {p.name for p in saved.rglob("*") if p.is_file()} >= {"saved_model.pb", "fingerprint.pb"}


def test_a_shared_folder_serves_as_remote(team, tmp_path):
    folder = tmp_path / "shared"
    a = team.clone("a-folder")
    a.dvc("pull")
    a.dvc("remote", "add", "-d", "-f", "storage", str(folder))
    a.dvc("push")
    a.commit("the team's remote is a shared folder")
    a.run("git", "push", "-q", "origin", "HEAD:folder-remote")

    b = team.clone("b-folder")
    b.run("git", "checkout", "-q", "folder-remote")
    b.dvc("pull")
    assert b.read("models/model.keras") == a.read("models/model.keras")
    assert b.repro() == []


def cache_listing(repo: Repo) -> dict[str, bytes]:
    cache = repo.root / ".dvc/cache"
    return {str(p.relative_to(cache)): p.read_bytes() for p in cache.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("endpointurl", "unreachable"),  # filled in with a closed port on 127.0.0.1
        ("url", "s3://no-such-bucket/dvcstore"),
    ],
)
def test_push_to_a_broken_remote_fails_and_keeps_the_cache(team, setting, value):
    repo = team.clone(f"broken-{setting}")
    repo.dvc("pull", "--run-cache")
    assert repo.run_records()  # something to push
    if value == "unreachable":
        value = f"http://127.0.0.1:{free_port()}"
    repo.dvc("remote", "modify", "storage", setting, value)
    before = cache_listing(repo)
    failed = repo.dvc_fails("push")
    assert "ERROR" in failed.stderr
    assert cache_listing(repo) == before

    failed = repo.run(sys.executable, "-m", "mnist_cnn", "push-run-cache", check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("error: run-cache not pushed: ")
    assert len(failed.stderr.strip().splitlines()) == 1
    assert cache_listing(repo) == before


def test_remote_settings_are_the_readmes(team):
    config = team.clone("config").read(".dvc/config").decode()
    settings = ("verify = true", "connect_timeout = 10", "read_timeout = 20")
    for setting in (*settings, "configpath = aws-config"):
        assert setting in config


def lock_entry(lock: str | bytes, stage: str, path: str) -> dict:
    """The entry of output `path` of `stage` in the text of a dvc.lock."""
    outs = yaml.safe_load(lock)["stages"][stage]["outs"]
    return next(out for out in outs if out["path"] == path)


def saved_model_files(repo: Repo, lock: str | bytes) -> list[dict]:
    """The files of the SavedModel folder a dvc.lock names, as DVC's cache lists them."""
    folder = lock_entry(lock, "export", "models/saved_model")["md5"]
    return json.loads(repo.read(f".dvc/cache/files/md5/{folder[:2]}/{folder[2:]}"))


def test_a_corrupt_file_on_the_remote_is_refused(team, s3_endpoint):
    """`verify = true` (the README's set-up): DVC re-hashes what it downloads. A model whose
    object was damaged on the remote is not checked out, nor kept under its name in the cache."""
    a = team.clone("a-corrupt")
    a.dvc("pull")
    # A remote folder of its own: the other tests keep an intact one.
    a.dvc("remote", "modify", "storage", "url", f"s3://{S3_BUCKET}/corrupt")
    a.dvc("push")
    a.commit("own remote")
    md5 = lock_entry(a.read("dvc.lock"), "train", "models/model.keras")["md5"]
    key = f"corrupt/files/md5/{md5[:2]}/{md5[2:]}"
    s3 = s3_client(s3_endpoint)
    body = s3.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=S3_BUCKET, Key=key, Body=bytes([body[0] ^ 1]) + body[1:])

    b = Repo(team.workdir / "b-corrupt", team.env)
    subprocess.run(["git", "clone", "-q", str(a.root), str(b.root)], check=True)
    failed = b.dvc_fails("pull")
    assert "Checkout failed for following targets:\nmodels/model.keras" in failed.stderr
    assert not (b.root / "models/model.keras").exists()
    assert not (b.root / f".dvc/cache/files/md5/{md5[:2]}/{md5[2:]}").exists()
    assert b.read("data/prepared/test.npz") == a.read("data/prepared/test.npz")  # the rest came


def test_push_run_cache_skips_a_record_with_a_file_missing_here(team, changed):
    """A file of the SavedModel folder gone from the local cache: the export's record is not
    pushed (it would name a file the remote lacks), the line says so, the others go."""
    a = ran_elsewhere(team, changed, "a-missing")
    # A remote folder of its own: what the other tests push is not there.
    a.dvc("remote", "modify", "storage", "url", f"s3://{S3_BUCKET}/missing")
    a.dvc("push")
    files = saved_model_files(a, a.read("dvc.lock"))
    (lost,) = [file for file in files if file["relpath"].startswith("variables/variables.data")]
    committed = saved_model_files(a, a.run("git", "show", "HEAD:dvc.lock").stdout)
    assert lost["md5"] not in [file["md5"] for file in committed]  # the weights of this run only
    (a.root / f".dvc/cache/files/md5/{lost['md5'][:2]}/{lost['md5'][2:]}").unlink()

    pushed = a.run(sys.executable, "-m", "mnist_cnn", "push-run-cache").stdout.splitlines()
    others = len(a.run_records()) - 1
    assert pushed[-1].startswith(f"pushed {others} run record(s) and ") and pushed[-1].endswith(
        "; skipped 1"
    )
    assert re.fullmatch(
        rf"skipped run record \w{{8}}: models/saved_model/{re.escape(lost['relpath'])} not in "
        r"this cache \(pulled without its files, or garbage-collected\)",
        pushed[0],
    )

    b = team.clone("b-missing")
    b.dvc("remote", "modify", "storage", "url", f"s3://{S3_BUCKET}/missing")
    b.set_params(RUN_ELSEWHERE)
    b.dvc("pull", "--run-cache")
    assert b.repro("--pull") == ["export"]  # train and evaluate restored


class SilentServer:
    """An endpoint on 127.0.0.1 that accepts connections, reads each request and never answers;
    `tries` counts the requests by path: a client's retries of one request share its path."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.tries: Counter[str] = Counter()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                connection = self.listener.accept()[0]
            except OSError:  # closed
                return
            self.held.append(connection)
            threading.Thread(target=self.read, args=(connection,), daemon=True).start()

    def read(self, connection: socket.socket) -> None:
        try:
            request = connection.recv(65536).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError:
            return
        if request:
            self.tries[request.split(" ")[1].split("?")[0]] += 1

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_a_silent_remote_fails_within_the_timeouts(team, silent_server):
    """`dvc push` and push_run_cache to a server that never answers end with one error line.
    (Repo.run's timeout guards the test; with no timeouts set, each would wait for hours.)"""
    repo = Repo(team.workdir / "silent", team.env)
    shutil.copytree(team.workdir / "a", repo.root)  # A's cache: every record with its files
    repo.dvc("remote", "modify", "storage", "endpointurl", silent_server.url)
    repo.dvc("remote", "modify", "storage", "read_timeout", "1")
    repo.dvc("remote", "modify", "storage", "connect_timeout", "1")
    # The documented configpath, .dvc/aws-config: botocore tries once, s3fs five times.
    failed = repo.run(sys.executable, "-m", "dvc", "push", check=False)
    assert failed.returncode != 0 and "Read timeout on endpoint URL" in failed.stderr
    # s3fs's five tries of each request, botocore's one each: without the file, 25 (a push
    # then waits 25 read timeouts; with the documented 20 s, 8 minutes instead of under 2).
    assert silent_server.tries and max(silent_server.tries.values()) <= 5, silent_server.tries
    pushed = repo.run(sys.executable, "-m", "mnist_cnn", "push-run-cache", check=False)
    assert pushed.returncode == 1, pushed.stderr
    line = pushed.stderr.strip()
    assert line.startswith("error: run-cache not pushed: Read timeout on endpoint URL"), line
    assert "\n" not in line and "Traceback" not in pushed.stderr
