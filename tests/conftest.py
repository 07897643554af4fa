import gzip
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import mnist
from stages.params import PARAMS_FILE, Params, parse_params

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_params() -> Params:
    return parse_params(yaml.safe_load((PROJECT_ROOT / PARAMS_FILE).read_text()))


def run_stage_cli(stage: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m stages.<stage>` in `cwd`, as dvc.yaml does, with the project importable."""
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=300,
    )


def idx_images(images: np.ndarray) -> bytes:
    count, rows, columns = images.shape
    return np.array([2051, count, rows, columns], ">i4").tobytes() + images.astype(np.uint8).tobytes()


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
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests[self.path] += 1
                body = server.files.get(self.path)
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

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def serve(self, path: str, body: bytes, truncated: bool = False) -> None:
        self.files[path] = body
        if truncated:
            self.truncated.add(path)


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
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """A folder with the real MNIST files: $MNIST_MIRROR, else the project's downloaded data."""
    params = yaml.safe_load((PROJECT_ROOT / PARAMS_FILE).read_text())
    folder = Path(os.environ.get("MNIST_MIRROR", PROJECT_ROOT / params["paths"]["raw_dir"]))
    if not all((folder / name).exists() for name in mnist.SHA256):
        pytest.fail(f"the MNIST files are not in {folder}: set MNIST_MIRROR to a folder holding them")
    return folder.resolve()


def write_params(folder: Path, changes: dict[str, object]) -> dict:
    """Copy the project's params.yaml into `folder` with dotted keys changed: {"train.epochs": 1}."""
    params = yaml.safe_load((PROJECT_ROOT / PARAMS_FILE).read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = params
        for parent in parents:
            section = section[parent]
        section[key] = value
    (folder / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))
    return params


TINY_MODEL = {"model.conv_filters": [4], "model.dense_units": [16], "train.epochs": 1, "train.batch_size": 16}
