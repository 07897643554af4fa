import hashlib
from pathlib import Path

import pytest

from mnist_cnn import mnist
from mnist_cnn.errors import PipelineError
from mnist_cnn.fetch import MIRROR_ENV, download_file, mirror_urls
from mnist_cnn.params import parse_params
from tests.helpers import mnist_folder, params_with, run_stage_cli, write_params

NAME = "t10k-labels-idx1-ubyte.gz"
PAYLOAD = bytes(range(256)) * 40
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


def fetch_into(raw_dir: Path, mirrors: list[str], retries: int = 0) -> str:
    return download_file(
        NAME, SHA256, len(PAYLOAD), mirrors, raw_dir, timeout=5, retries=retries, retry_delay=0
    )


def leftovers(raw_dir: Path) -> list[str]:
    return sorted(path.name for path in raw_dir.iterdir()) if raw_dir.exists() else []


def test_downloads_and_verifies(tmp_path, file_server):
    file_server.serve(f"/{NAME}", PAYLOAD)
    assert fetch_into(tmp_path, [file_server.url]) == file_server.url
    assert (tmp_path / NAME).read_bytes() == PAYLOAD


def test_present_file_with_right_checksum_is_not_fetched_again(tmp_path, file_server):
    file_server.serve(f"/{NAME}", PAYLOAD)
    fetch_into(tmp_path, [file_server.url])
    assert fetch_into(tmp_path, [file_server.url]) == "already present"
    assert file_server.requests[f"/{NAME}"] == 1


def test_present_file_with_wrong_checksum_is_replaced(tmp_path, file_server):
    file_server.serve(f"/{NAME}", PAYLOAD)
    (tmp_path / NAME).write_bytes(b"stale")
    fetch_into(tmp_path, [file_server.url])
    assert (tmp_path / NAME).read_bytes() == PAYLOAD


def test_falls_back_past_bad_mirrors(tmp_path, file_server, closed_port_url):
    file_server.serve(f"/corrupt/{NAME}", PAYLOAD[:-1] + b"x")
    file_server.serve(f"/truncated/{NAME}", PAYLOAD, truncated=True)
    file_server.serve(f"/good/{NAME}", PAYLOAD)
    mirrors = [
        closed_port_url,
        file_server.url + "missing/",
        file_server.url + "corrupt/",
        file_server.url + "truncated/",
        file_server.url + "good/",
    ]
    assert fetch_into(tmp_path, mirrors) == file_server.url + "good/"
    assert leftovers(tmp_path) == [NAME]


def test_all_mirrors_failing_names_each_reason_and_leaves_nothing(
    tmp_path, file_server, closed_port_url
):
    file_server.serve(f"/corrupt/{NAME}", PAYLOAD[:-1] + b"x")
    file_server.serve(f"/truncated/{NAME}", PAYLOAD, truncated=True)
    mirrors = [
        closed_port_url,
        file_server.url + "missing/",
        file_server.url + "corrupt/",
        file_server.url + "truncated/",
    ]
    with pytest.raises(PipelineError) as error:
        fetch_into(tmp_path, mirrors)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"could not download {NAME}: ")
    assert f"{closed_port_url}: unreachable" in message
    assert f"{file_server.url}missing/: HTTP 404" in message
    assert f"{file_server.url}corrupt/: checksum mismatch" in message
    assert f"{file_server.url}truncated/: truncated" in message
    assert leftovers(tmp_path) == []


def test_transient_failures_are_retried(tmp_path, file_server):
    file_server.serve(f"/{NAME}", PAYLOAD, truncated=True)
    with pytest.raises(PipelineError):
        fetch_into(tmp_path, [file_server.url], retries=2)
    assert file_server.requests[f"/{NAME}"] == 3


def test_not_found_is_not_retried(tmp_path, file_server):
    with pytest.raises(PipelineError, match="HTTP 404"):
        fetch_into(tmp_path, [file_server.url], retries=2)
    assert file_server.requests[f"/{NAME}"] == 1


def test_local_directory_and_file_url_mirrors(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / NAME).write_bytes(PAYLOAD)
    for location in [str(mirror), mirror.as_uri()]:
        raw_dir = tmp_path / location.replace("/", "_")
        fetch_into(raw_dir, mirror_urls([location], None))
        assert (raw_dir / NAME).read_bytes() == PAYLOAD


def test_missing_file_in_local_mirror(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        fetch_into(tmp_path / "raw", mirror_urls([str(tmp_path)], None))


def test_environment_mirror_comes_first(tmp_path):
    assert mirror_urls(["https://example.org/mnist"], str(tmp_path)) == [
        tmp_path.as_uri() + "/",
        "https://example.org/mnist/",
    ]
    assert mirror_urls(["https://example.org/mnist/"], None) == ["https://example.org/mnist/"]


def test_offline_failure_points_to_the_mirror_variable(tmp_path, closed_port_url, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    with pytest.raises(PipelineError) as error:
        fetch_into(tmp_path, [closed_port_url])
    assert str(error.value).endswith(
        f"offline? set {MIRROR_ENV} to a folder or URL holding the MNIST files"
    )


@pytest.mark.cli
@pytest.mark.parametrize("stalls_in", ["headers", "body"])
def test_a_stalled_server_cannot_hold_the_download(tmp_path, file_server, stalls_in):
    """A server sending one byte every 0.5 s: given up after timeout_seconds, named, nothing
    left behind. (The subprocess timeout only keeps a hanging stage from hanging the suite.)"""
    name = mnist.TRAIN_IMAGES
    file_server.serve(f"/{name}", b"x" * 100_000, trickled=stalls_in)
    write_params(
        tmp_path,
        {
            "download.mirrors": [file_server.url],
            "download.timeout_seconds": 2,
            "download.retries": 0,
        },
    )
    result = run_stage_cli("download", tmp_path, env={MIRROR_ENV: ""}, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"error: could not download {name}: {file_server.url}: stalled ("
    )
    assert "Traceback" not in result.stderr
    assert leftovers(tmp_path / "data/raw") == []


@pytest.mark.cli
def test_a_server_that_never_ends_is_stopped_past_the_files_size(tmp_path, file_server):
    """Zeros as fast as loopback carries them, no length announced: the stage stops once a
    byte more than the file's known size has come, streamed to disk meanwhile; the server
    sent that and a few socket buffers' worth, not the gigabyte it had for it."""
    name = next(iter(mnist.SHA256))  # the stage's first file
    file_server.serve(f"/{name}", b"", endless=True)
    write_params(tmp_path, {"download.mirrors": [file_server.url], "download.retries": 2})
    result = run_stage_cli("download", tmp_path, env={MIRROR_ENV: ""}, timeout=60)
    assert result.stderr.splitlines()[-1] == (
        f"error: could not download {name}: {file_server.url}: too large (more than the "
        f"expected {mnist.SIZE[name]} bytes sent); offline? set MNIST_MIRROR to a folder or "
        "URL holding the MNIST files"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert file_server.requests[f"/{name}"] == 1  # the wrong file: not retried
    assert file_server.sent[f"/{name}"] < mnist.SIZE[name] + 2**23
    assert leftovers(tmp_path / "data/raw") == []


def test_a_file_announced_larger_than_its_size_is_not_fetched(tmp_path, file_server):
    file_server.serve(f"/{NAME}", PAYLOAD + b"x")
    with pytest.raises(PipelineError) as error:
        fetch_into(tmp_path, [file_server.url])
    assert str(error.value).endswith(
        f"{file_server.url}: too large ({len(PAYLOAD) + 1} bytes announced, expected "
        f"{len(PAYLOAD)})"
    )
    assert leftovers(tmp_path) == []


def test_the_tests_fetch_mnist_as_the_stage_does_and_accept_no_corrupt_copy(
    tmp_path, file_server, mnist_dir
):
    """Without a usable $MNIST_MIRROR or data/raw, the test session fetches the files from the
    download stage's mirrors into a folder of its own; a corrupt file in the local mirror is
    neither used nor copied."""
    for name in mnist.SHA256:
        file_server.serve(f"/{name}", (mnist_dir / name).read_bytes())
    corrupt_mirror = tmp_path / "mirror"
    corrupt_mirror.mkdir()
    for name in mnist.SHA256:
        (corrupt_mirror / name).write_bytes((mnist_dir / name).read_bytes())
    (corrupt_mirror / mnist.TEST_LABELS).write_bytes(b"not the labels")
    download = parse_params(
        params_with({"download.mirrors": [file_server.url], "download.retries": 0})
    ).download
    folder = mnist_folder(str(corrupt_mirror), tmp_path / "raw", tmp_path / "cache", download)
    assert folder == (tmp_path / "cache").resolve()
    for name, expected_sha256 in mnist.SHA256.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == expected_sha256
    # Only the corrupt file had to come from the server.
    assert file_server.requests == {f"/{mnist.TEST_LABELS}": 1}


def test_the_tests_offline_without_a_mirror_fail_in_one_line_naming_it(
    tmp_path, closed_port_url, monkeypatch
):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    download = parse_params(
        params_with({"download.mirrors": [closed_port_url], "download.retries": 0})
    ).download
    with pytest.raises(PipelineError) as error:
        mnist_folder(None, tmp_path / "raw", tmp_path / "cache", download)
    assert "\n" not in str(error.value)
    assert str(error.value).endswith(f"set {MIRROR_ENV} to a folder or URL holding the MNIST files")
