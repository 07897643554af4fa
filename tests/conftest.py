import itertools
import json
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnist_cnn.errors import PipelineError
from mnist_cnn.fetch import MIRROR_ENV
from mnist_cnn.params import Params, parse_params
from tests.helpers import (
    CHANGES,
    PROJECT_ROOT,
    S3_BUCKET,
    STAGES,
    FileServer,
    Repo,
    built_once,
    copy_project,
    copy_repository,
    free_port,
    mnist_folder,
    params_with,
    s3_client,
)


@pytest.fixture(autouse=True)
def sigint_handler_kept() -> Iterator[None]:
    """Every test leaves Ctrl-C's handler as it found it: the runner's tests check that it puts
    the caller's back, and a handler left behind (SIGINT ignored, seen once in a full run)
    would change what the tests after it see."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    assert after is before, f"SIGINT's handler left as {after!r}, was {before!r}"


@pytest.fixture(scope="session", autouse=True)
def nothing_left_outside(tmp_path_factory) -> Iterator[None]:
    """What the tests and the programs they start write as temporary files goes under pytest's
    own folder, which pytest prunes, not the machine's: TensorFlow's autograph files (left by
    the processes a test kills), uv's lock files, DVC's. And DVC sends no usage report: outside
    a repository whose config turns it off (`dvc get`, its own daemon), it tried to reach its
    server, a network target the tests must not have, and left its report in /tmp."""
    folder = tmp_path_factory.mktemp("tmp")
    before = {name: os.environ.get(name) for name in ("TMPDIR", "DVC_NO_ANALYTICS")}
    os.environ.update(TMPDIR=str(folder), DVC_NO_ANALYTICS="1")
    tempfile.tempdir = None  # this process's too: read again from TMPDIR
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    tempfile.tempdir = None


@pytest.fixture
def default_params() -> Params:
    return parse_params(params_with({}))


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """A 127.0.0.1 URL nobody listens on."""
    return f"http://127.0.0.1:{free_port()}/"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1, with the tests' bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3_client(endpoint).create_bucket(Bucket=S3_BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """A folder with the real MNIST files, verified: $MNIST_MIRROR, the project's downloaded
    data, or fetched once per test session as the download stage would (see mnist_folder)."""
    params = parse_params(params_with({}))
    try:
        return mnist_folder(
            os.environ.get(MIRROR_ENV),
            PROJECT_ROOT / params.paths.raw_dir,
            tmp_path_factory.mktemp("mnist"),
            params.download,
        )
    except PipelineError as error:
        problem = str(error)
    pytest.fail(f"the tests need the MNIST files: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, mnist_dir) -> Path:
    """The project on the quick params in a git repository (branch main), after one real
    `dvc repro` of all five stages, results committed: built once per test session (one worker
    builds it under `pytest -n`), for the
    tests that need a pipeline that has run (each works on a copy: `built`)."""

    def build(root: Path) -> None:
        copy_project(root)
        repo = Repo(root, {MIRROR_ENV: str(mnist_dir)})
        repo.set_params({})
        repo.run("git", "init", "-q", "-b", "main")
        repo.commit("project")
        assert repo.repro() == STAGES
        repo.commit("results")

    return built_once(tmp_path_factory, "baseline", build)


@pytest.fixture
def built(baseline, tmp_path, mnist_dir) -> Repo:
    """A copy of the baseline: the quick pipeline run once, its results committed."""
    return copy_repository(baseline, tmp_path / "project", {MIRROR_ENV: str(mnist_dir)})


@pytest.fixture(scope="session")
def changed(tmp_path_factory, baseline, mnist_dir) -> Path:
    """The baseline changed twice, as a user would, and run after each change (once per test
    session): first `evaluate.sample_images` (committed, results too), then `train.epochs`
    1 -> 2 (run, not committed). What each `dvc repro` ran is in ran.json beside the project:
    the tests of a change check it, and work on a copy of the project (`a_change`)."""

    def build(folder: Path) -> None:
        repo = copy_repository(baseline, folder / "project", {MIRROR_ENV: str(mnist_dir)})
        ran = {"nothing": repo.repro()}
        for name, changes in CHANGES.items():
            repo.set_params(changes)
            ran[name] = repo.repro()
            if name != list(CHANGES)[-1]:
                repo.commit(f"{name} changed")
        (folder / "ran.json").write_text(json.dumps(ran))

    return built_once(tmp_path_factory, "changed", build)


@pytest.fixture
def a_change(changed, tmp_path, mnist_dir) -> Repo:
    """A copy of `changed`: the baseline with `train.epochs` changed to 2 and run, not
    committed, on top of a committed change of `evaluate.sample_images`."""
    return copy_repository(changed / "project", tmp_path / "project", {MIRROR_ENV: str(mnist_dir)})


KINDS = ("e2e", "network", "cli")  # the markers of pyproject.toml besides unit, slowest first
# The fixtures built once per session (helpers.built_once), each before the one it starts from.
BUILT_ONCE = ("changed", "baseline", "project")


def kind_rank(item: pytest.Item) -> int:
    return next((rank for rank, kind in enumerate(KINDS) if item.get_closest_marker(kind)), 3)


def run_order(items: list[pytest.Item]) -> list[pytest.Item]:
    """The slowest kinds first, the end-to-end and network tests together (the network tests
    mostly wait). Within each: first a test that builds each shared pipeline no kind before
    has built (for the end-to-end tests `changed`, and the baseline it starts from); then,
    while it builds, the tests that need none; then the others, the baseline's before
    changed's. So no worker waits for another's build."""

    def group(item: pytest.Item) -> int:
        kind = kind_rank(item)
        return 0 if kind <= KINDS.index("network") else kind

    def shared(item: pytest.Item) -> list[str]:
        return [name for name in BUILT_ONCE if name in item.fixturenames]

    def needs(item: pytest.Item) -> int:
        """0: no shared pipeline; else the deeper the pipeline, the higher."""
        names = shared(item)
        return len(BUILT_ONCE) - BUILT_ONCE.index(names[0]) if names else 0

    ordered: list[pytest.Item] = []
    built: set[str] = set()
    for _, tests in itertools.groupby(sorted(items, key=lambda i: (group(i), needs(i))), group):
        tests = list(tests)  # stable: each file's order kept
        builders = []
        for name in BUILT_ONCE:
            builder = next((test for test in tests if shared(test)[:1] == [name]), None)
            if name not in built and builder:
                builders.append(builder)
                built.update(shared(builder))  # `changed` builds the baseline too
        ordered += builders + [test for test in tests if test not in builders]
    return ordered


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked with no kind is a unit test: in-process, seconds (`pytest -m unit`, the
    fast tier).

    Under `pytest -n N`, xdist's load scheduling (`--dist load --maxschedchunk 1`, in
    pyproject.toml) hands each worker the next test in this order whenever it has fewer than
    two waiting: slowest first, so that the short ones fill the end."""
    for item in items:
        if kind_rank(item) == len(KINDS):
            item.add_marker(pytest.mark.unit)
    items[:] = run_order(items)
