import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stages import mnist
from stages.params import Params, parse_params
from tests.helpers import PROJECT_ROOT, FileServer, params_with


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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """A folder with the real MNIST files: $MNIST_MIRROR, else the project's downloaded data."""
    raw_dir = PROJECT_ROOT / params_with({})["paths"]["raw_dir"]
    folder = Path(os.environ.get("MNIST_MIRROR", raw_dir))
    if not all((folder / name).exists() for name in mnist.SHA256):
        pytest.fail(
            f"the MNIST files are not in {folder}: set MNIST_MIRROR to a folder holding them"
        )
    return folder.resolve()
