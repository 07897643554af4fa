"""Helpers shared by the tests: the project's params, stage runs, IDX bytes, an HTTP server,
git repositories that run the project with real `dvc` commands."""

import gzip
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from dvc.utils.serialize import dumps_yaml
from filelock import FileLock

from mnist_cnn import mnist
from mnist_cnn.fetch import download_file, mirror_urls, sha256_of
from mnist_cnn.files import write_npz
from mnist_cnn.params import PARAMS_FILE, PIPELINE_FILE, DownloadParams, paths_entry

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A model small enough to train in a second: for tests of the stages' mechanics.
TINY_MODEL = {
    "model.conv_filters": [4],
    "model.dense_units": [16],
    "train.epochs": 1,
    "train.batch_size": 16,
}


DOCUMENTATION = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def documented_text() -> str:
    return "\n".join(page.read_text() for page in DOCUMENTATION)


def documented_line(prefix: str) -> str:
    """The first line of the README or docs/ that starts with `prefix`: a command the tests
    run as shown."""
    return next(line for line in documented_text().splitlines() if line.startswith(prefix))


def documented_code_block(containing: str) -> str:
    """The first fenced code block of the README or docs/ that contains `containing`, without
    its fences."""
    blocks = re.findall(
        r"^```\w*\n(.*?)^```$", documented_text(), flags=re.MULTILINE | re.DOTALL
    )
    return next(block for block in blocks if containing in block)


def params_with(changes: dict[str, object]) -> dict:
    """The project's params.yaml with dotted keys changed, as `dvc exp run -S` would, and the
    paths of its dvc.yaml as `paths` (which take changes too: `paths.model`, say)."""
    params = yaml.safe_load((PROJECT_ROOT / PARAMS_FILE).read_text())
    params["paths"] = paths_entry(yaml.safe_load((PROJECT_ROOT / PIPELINE_FILE).read_text()))
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = params
        for parent in parents:
            section = section[parent]
        section[key] = value
    return params


def mnist_folder(
    mirror: str | None, raw_dir: Path, cache: Path, download: DownloadParams
) -> Path:
    """A folder holding the four MNIST files, each with its pinned SHA-256: `mirror`
    ($MNIST_MIRROR) when it is such a folder, else `raw_dir` when a `dvc repro` filled it, else
    `cache`, filled the way the download stage fills `raw_dir` (the same mirrors, $MNIST_MIRROR
    first, checksums, timeouts and retries). Offline with no mirror: the stage's one-line
    PipelineError, which names MNIST_MIRROR."""
    local = [Path(mirror)] if mirror and "://" not in mirror else []
    for folder in [*local, raw_dir]:
        files = [folder / name for name in mnist.SHA256]
        if all(file.is_file() for file in files) and all(
            sha256_of(file) == mnist.SHA256[file.name] for file in files
        ):
            return folder.resolve()
    mirrors = mirror_urls(download.mirrors, mirror)
    for name, expected_sha256 in mnist.SHA256.items():
        download_file(
            name,
            expected_sha256,
            mnist.SIZE[name],
            mirrors,
            cache,
            download.timeout_seconds,
            download.retries,
        )
    return cache.resolve()


def write_params(folder: Path, changes: dict[str, object]) -> dict:
    """Write params.yaml with `changes` into `folder`, and the project's dvc.yaml where the
    folder has none or the paths changed; return the params, with the paths as `paths`."""
    params = params_with(changes)
    settings = {key: value for key, value in params.items() if key != "paths"}
    # In the format DVC writes params back in (`dvc exp run -S`), as the project's file is:
    # then a -S changes one line here too.
    (folder / PARAMS_FILE).write_text(dumps_yaml(settings))
    written = folder / PIPELINE_FILE
    if not written.exists() or paths_entry(yaml.safe_load(written.read_text())) != (
        params["paths"]
    ):
        pipeline = yaml.safe_load((PROJECT_ROOT / PIPELINE_FILE).read_text())
        paths_entry(pipeline).update(params["paths"])
        written.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return params


# A pipeline run that takes seconds: a subset of the real MNIST files, one small epoch, one
# thread per operation (each of `pytest -n`'s workers gets its share of the cores).
QUICK = {
    "threads": 1,
    "preprocess.max_train_images": 1500,
    "preprocess.validation_images": 500,
    "preprocess.max_test_images": 1000,
    "train.epochs": 1,
    "train.batch_size": 64,
}


# The changes the `changed` fixture makes to the quick params, one after the other (each with
# the ones before it), by what they change: for the tests of a change.
CHANGES = {
    "evaluate.sample_images": {"evaluate.sample_images": 5},
    "train.epochs": {"evaluate.sample_images": 5, "train.epochs": 2},
}


@contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Keras' global dtype policy set to `precision` for the block, and float32 again after it,
    whatever happens: the next test builds its models in float32."""
    import keras  # here: most tests that import these helpers never load TensorFlow

    keras.mixed_precision.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def stages_in_run_order(pipeline: dict) -> list[str]:
    """dvc.yaml's stages in the order `dvc repro` runs them: each after the stages whose outputs
    it reads, and otherwise in the file's order, as DVC does."""
    paths = paths_entry(pipeline) or {}

    def resolved(entries: list) -> list[str]:
        names = [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]
        return [re.sub(r"\$\{paths\.(\w+)\}", lambda m: paths[m[1]], n) for n in names]

    stages = pipeline["stages"]
    outputs = {
        name: resolved([*s.get("outs", []), *s.get("metrics", []), *s.get("plots", [])])
        for name, s in stages.items()
    }
    needs = {
        name: {
            other
            for dep in resolved(stage.get("deps"))
            for other, outs in outputs.items()
            if any(dep == out or dep.startswith(f"{out}/") for out in outs)
        }
        for name, stage in stages.items()
    }
    ordered: list[str] = []
    while len(ordered) < len(stages):
        ordered.append(next(n for n in stages if n not in ordered and needs[n] <= {*ordered}))
    return ordered


STAGES = stages_in_run_order(yaml.safe_load((PROJECT_ROOT / PIPELINE_FILE).read_text()))


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` or `dvc exp run` ran, from what it printed (not those restored
    from the run-cache)."""
    return re.findall(r"Running stage '(\w+)'", output)


class Repo:
    """A git repository with the project in it, driven through real git and dvc commands."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = {
            **os.environ,
            # The stages run as `python -m ...`: make that this interpreter.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@localhost",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@localhost",
            **(env or {}),
        }

    def run(
        self, *command: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """`env`: variables set for this command only, on top of the repository's."""
        result = subprocess.run(
            command,
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=900,
        )
        if check:
            assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def dvc(self, *arguments: str) -> str:
        return self.run(sys.executable, "-m", "dvc", *arguments).stdout

    def dvc_fails(self, *arguments: str) -> subprocess.CompletedProcess:
        result = self.run(sys.executable, "-m", "dvc", *arguments, check=False)
        assert result.returncode != 0, f"dvc {arguments} should fail:\n{result.stdout}"
        return result

    def repro(self, *arguments: str) -> list[str]:
        """Run `dvc repro`; return the stages it ran (not those restored from the run-cache)."""
        return stages_run(self.dvc("repro", *arguments))

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)

    def set_params(self, changes: dict[str, object]) -> None:
        write_params(self.root, {**QUICK, **changes})

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def run_records(self) -> set[str]:
        """The names of the records in DVC's run-cache (.dvc/cache/runs/<xx>/<key>/<name>)."""
        return {record.name for record in (self.root / ".dvc/cache/runs").glob("*/*/*")}

    def results(self) -> dict[str, bytes]:
        """dvc.lock and every file under metrics/ and plots/, by path."""
        files = [self.root / "dvc.lock"]
        files += [
            p
            for folder in ("metrics", "plots")
            for p in (self.root / folder).rglob("*")
            if p.is_file()
        ]
        return {str(path.relative_to(self.root)): path.read_bytes() for path in files}


def copy_project(target: Path, published: bool = False) -> None:
    """The project's committed code and config, without its tests; without its published
    results (dvc.lock, metrics/, plots/) unless `published`, as a fresh clone has them."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    results = {"dvc.lock", "metrics", "plots"}
    for name in listed:
        if name.split("/")[0] in ({"tests"} if published else {"tests", *results}):
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target / name)


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """A folder that `build` fills once per test session: under `pytest -n`, the first worker
    that asks builds it while the others wait, then all use it (read it; copy it to change it)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's folder, above each worker's own
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def copy_repository(source: Path, target: Path, env: dict[str, str]) -> Repo:
    """A copy of a git repository with the project, its DVC cache and run-cache included."""
    shutil.copytree(source, target, symlinks=True)
    return Repo(target, env)


def run_stage_cli(
    stage: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run `python -m stages.<stage>` in `cwd`, as dvc.yaml does, with the project importable.

    `timeout` only guards the test suite against a stage that hangs.
    """
    return run_module(f"stages.{stage}", (), cwd, env, timeout)


def run_command(
    arguments: tuple[str, ...], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m mnist_cnn <arguments>` in `cwd`, with the project importable."""
    return run_module("mnist_cnn", arguments, cwd, env, timeout=300)


def run_module(
    module: str,
    arguments: tuple[str, ...],
    cwd: Path,
    env: dict[str, str] | None,
    timeout: float,
) -> subprocess.CompletedProcess:
    """Run `python -m <module> <arguments>` in `cwd`, with the project importable."""
    return run_python(["-m", module, *arguments], cwd, env, timeout)


def run_script(
    script: str,
    arguments: tuple[str, ...],
    cwd: Path,
    env: dict[str, str] | None = None,
    address_space: int | None = None,
) -> subprocess.CompletedProcess:
    """Run `python -c <script> <arguments>` in `cwd`, with the project importable; its address
    space limited to `address_space` bytes if given (setrlimit(RLIMIT_AS): Linux only)."""
    return run_python(["-c", script, *arguments], cwd, env, 300, address_space)


def project_environment(**variables: str) -> dict[str, str]:
    """This process's environment with the project importable (PYTHONPATH), and `variables`:
    what a stage or command run from a test folder needs."""
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **variables}


def run_python(
    arguments: list[str],
    cwd: Path,
    env: dict[str, str] | None,
    timeout: float,
    address_space: int | None = None,
) -> subprocess.CompletedProcess:
    def limit_address_space() -> None:
        import resource  # Unix only

        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run(
        [sys.executable, *arguments],
        cwd=cwd,
        env=project_environment(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit_address_space if address_space else None,
    )


def write_tiny_data(folder: Path, params: dict, count: int = 96) -> None:
    rng = np.random.default_rng(7)
    for key in ("train_data", "validation_data", "test_data"):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        # Images that carry their label, so a tiny model can learn something.
        images = np.zeros((count, 28, 28), np.uint8)
        images[np.arange(count), 2 * labels + 4, 4:24] = 255
        path = folder / params["paths"][key]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npz(path, {"images": images, "labels": labels})


def error_line(result: subprocess.CompletedProcess, status: int = 1) -> str:
    """A command's only stderr line, after checking its exit status and that it printed no
    traceback."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def idx_images(images: np.ndarray) -> bytes:
    count, rows, columns = images.shape
    return (
        np.array([2051, count, rows, columns], ">i4").tobytes() + images.astype(np.uint8).tobytes()
    )


def idx_labels(labels: np.ndarray) -> bytes:
    return np.array([2049, len(labels)], ">i4").tobytes() + labels.astype(np.uint8).tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


class FileServer:
    """A real HTTP server on 127.0.0.1 serving in-memory files, some deliberately broken."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncated: set[str] = set()  # announce the full length, send half, hang up
        self.trickled: dict[str, str] = {}  # path -> "body" | "headers": one byte every 0.5 s
        self.endless: set[str] = set()  # zeros as fast as they go, no length announced
        self.requests: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()  # bytes of the body sent, for the endless ones
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests[self.path] += 1
                body = server.files.get(self.path)
                if self.path in server.trickled:
                    self.trickle(body, server.trickled[self.path])
                    return
                if self.path in server.endless:
                    self.stream_zeros()
                    return
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.truncated:
                    body = body[: len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)

            def trickle(self, body: bytes, stage: str) -> None:
                """A stalled server: one byte every 0.5 s, of the headers or of the body."""
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                if stage == "body":
                    self.wfile.write(head)
                    head = b""
                self.close_connection = True
                for byte in (head + body)[:120]:  # a minute at most
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return
                    time.sleep(0.5)

            def stream_zeros(self) -> None:
                """Until the client hangs up, or 1 GiB: no test waits on an endless server."""
                self.send_response(200)
                self.end_headers()
                self.close_connection = True
                chunk = bytes(1 << 16)
                for _ in range(1 << 14):
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        return
                    server.sent[self.path] += len(chunk)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def serve(
        self,
        path: str,
        body: bytes,
        truncated: bool = False,
        trickled: str | None = None,
        endless: bool = False,
    ) -> None:
        self.files[path] = body
        if truncated:
            self.truncated.add(path)
        if endless:
            self.endless.add(path)
        if trickled:
            self.trickled[path] = trickled


# An S3-compatible server for the tests (moto's standalone server, the `s3_endpoint` fixture):
# its bucket, and dummy credentials for the tests' environments only (moto accepts any).
S3_BUCKET = "mnist-team"
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_client(endpoint: str):  # -> a boto3 S3 client
    """boto3's S3 client for the test server, with the tests' dummy credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    )


def free_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (for a URL that cannot answer, or a server of
    the tests' own to take)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
