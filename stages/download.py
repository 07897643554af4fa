"""Stage 1: fetch the four MNIST files into the raw data folder, verified by SHA-256.

Mirrors are tried in order: $MNIST_MIRROR first when set (a URL, a file:// URL or a plain
directory, which is how offline machines, tests and CI run), then `download.mirrors`.
"""

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from stages import mnist
from stages.errors import PipelineError, run_stage
from stages.files import atomic_writer
from stages.params import load_params

MIRROR_ENV = "MNIST_MIRROR"
CHUNK_BYTES = 1 << 16


@dataclass
class FetchError(Exception):
    """Why one attempt at one mirror failed; `transient` failures are worth retrying."""

    reason: str
    transient: bool

    def __str__(self) -> str:
        return self.reason


def mirror_urls(configured: list[str], from_environment: str | None) -> list[str]:
    """The mirrors to try, in order, as base URLs ending with '/'."""
    locations = ([from_environment] if from_environment else []) + configured
    urls = []
    for location in locations:
        url = location if "://" in location else Path(location).resolve().as_uri()
        urls.append(url if url.endswith("/") else url + "/")
    return urls


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, destination: Path, expected_sha256: str, timeout: float) -> None:
    """Stream `url` into `destination`; it appears only if complete and its checksum matches."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected_bytes = int(length) if length else None
            digest = hashlib.sha256()
            received = 0
            with (
                atomic_writer(destination) as file,
                tqdm(
                    total=expected_bytes,
                    unit="B",
                    unit_scale=True,
                    desc=destination.name,
                    disable=not sys.stderr.isatty(),
                ) as progress,
            ):
                while chunk := response.read(CHUNK_BYTES):
                    file.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
                if expected_bytes is not None and received < expected_bytes:
                    raise FetchError(f"truncated ({received} of {expected_bytes} bytes)", True)
                if digest.hexdigest() != expected_sha256:
                    raise FetchError(
                        f"checksum mismatch (sha256 {digest.hexdigest()[:12]}…, "
                        f"expected {expected_sha256[:12]}…)",
                        False,
                    )
    except urllib.error.HTTPError as exc:
        raise FetchError(f"HTTP {exc.code}", exc.code >= 500) from None
    except http.client.IncompleteRead as exc:
        raise FetchError(
            f"truncated ({len(exc.partial)} bytes, then the connection closed)", True
        ) from None
    except urllib.error.URLError as exc:
        missing = isinstance(exc.reason, FileNotFoundError)
        reason = "not found" if missing else f"unreachable ({exc.reason})"
        raise FetchError(reason, not missing) from None
    except TimeoutError:
        raise FetchError(f"timed out after {timeout:g} s", True) from None
    except (ConnectionError, http.client.HTTPException) as exc:
        raise FetchError(f"connection failed ({exc})", True) from None


def download_file(
    name: str,
    expected_sha256: str,
    mirrors: list[str],
    raw_dir: Path,
    timeout: float,
    retries: int,
    retry_delay: float = 1.0,
) -> str:
    """Make `raw_dir/name` hold the verified file; return where it came from."""
    destination = raw_dir / name
    if destination.exists():
        if sha256_of(destination) == expected_sha256:
            return "already present"
        destination.unlink()
    failures = []
    for mirror in mirrors:
        for attempt in range(retries + 1):
            try:
                fetch(mirror + name, destination, expected_sha256, timeout)
                return mirror
            except FetchError as failure:
                if not failure.transient or attempt == retries:
                    failures.append(f"{mirror}: {failure}")
                    break
                time.sleep(retry_delay * (attempt + 1))
    if not mirrors:
        failures.append(f"no mirror configured (set download.mirrors or ${MIRROR_ENV})")
    raise PipelineError(f"could not download {name}: " + "; ".join(failures))


def main() -> None:
    params = load_params()
    raw_dir = Path(params.paths.raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    mirrors = mirror_urls(params.download.mirrors, os.environ.get(MIRROR_ENV))
    for name, expected_sha256 in mnist.SHA256.items():
        source = download_file(
            name,
            expected_sha256,
            mirrors,
            raw_dir,
            params.download.timeout_seconds,
            params.download.retries,
        )
        print(f"{name}: {source}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
