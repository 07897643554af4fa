"""Fetching the MNIST files from mirrors, verified by SHA-256: each mirror in turn, retrying
what is worth retrying, giving up on a stalled server or one that sends more than the file's
size, writing only a verified file. A file is streamed to disk and hashed on the way: memory
stays bounded whatever a server sends.

Mirrors are tried in order: $MNIST_MIRROR first when set (a URL, a file:// URL or a plain
directory, which is how offline machines, tests and CI run), then `download.mirrors`.
"""

import hashlib
import http.client
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from mnist_cnn.errors import PipelineError
from mnist_cnn.files import atomic_writer

MIRROR_ENV = "MNIST_MIRROR"
CHUNK_BYTES = 1 << 16
# A mirror slower than this per `download.timeout_seconds` is given up on (about 0.5 KiB/s at
# the default 30 s): far below any working connection, far above a stalled server's trickle.
MIN_BYTES_PER_TIMEOUT = 16 * 1024
POLL_SECONDS = 0.1


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
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


class Transfer(threading.Thread):
    """One HTTP(S) or file request, read in a thread so that a slow server cannot block the
    stage: the caller watches `received` and walks away from a stalled transfer. The bytes go
    to `file` and into a SHA-256 as they come; past `size` bytes the transfer stops."""

    def __init__(self, url: str, timeout: float, file: BinaryIO, size: int) -> None:
        super().__init__(daemon=True)  # an abandoned transfer must not keep the process alive
        self.url, self.timeout, self.file, self.size = url, timeout, file, size
        self.received = 0
        self.expected_bytes: int | None = None
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None
        self.abandoned = False

    def run(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
                length = response.headers.get("Content-Length")
                self.expected_bytes = int(length) if length else None
                if self.expected_bytes is not None and self.expected_bytes > self.size:
                    raise TooLarge(f"{self.expected_bytes} bytes announced, expected {self.size}")
                # read1: whatever has arrived, so `received` moves as the bytes come in.
                while not self.abandoned and (chunk := response.read1(CHUNK_BYTES)):
                    if self.received + len(chunk) > self.size:
                        raise TooLarge(f"more than the expected {self.size} bytes sent")
                    self.file.write(chunk)
                    self.digest.update(chunk)
                    self.received += len(chunk)
        except BaseException as error:  # handed to the caller, which names it
            self.error = error


class TooLarge(Exception):
    """A mirror sends more than the file's size: not this file, or a server that never ends."""


def download_error(error: BaseException, timeout: float) -> FetchError:
    """What went wrong with a request, in a few words; transient failures are retried."""
    if isinstance(error, TooLarge):
        return FetchError(f"too large ({error})", False)
    if isinstance(error, urllib.error.HTTPError):
        return FetchError(f"HTTP {error.code}", error.code >= 500)
    if isinstance(error, http.client.IncompleteRead):
        return FetchError(
            f"truncated ({len(error.partial)} bytes, then the connection closed)", True
        )
    if isinstance(error, urllib.error.URLError):
        if isinstance(error.reason, FileNotFoundError):
            return FetchError("not found", False)
        return FetchError(f"unreachable ({error.reason})", True)
    if isinstance(error, TimeoutError):
        return FetchError(f"timed out after {timeout:g} s", True)
    if isinstance(error, (OSError, http.client.HTTPException)):
        return FetchError(f"connection failed ({error})", True)
    raise error


def fetch(
    url: str, expected_sha256: str, size: int, timeout: float, name: str, destination: Path
) -> None:
    """Write the bytes at `url` to `destination`, complete, `size` bytes long and with the
    expected checksum; or nothing at all.

    A server must send at least MIN_BYTES_PER_TIMEOUT within every `timeout` seconds, from the
    request on: so a stalled or trickling server holds a file at most
    timeout * (1 + size / MIN_BYTES_PER_TIMEOUT) seconds, never forever; and one that sends
    more than `size` is stopped there.
    """
    with atomic_writer(destination) as file:
        transfer = Transfer(url, timeout, file, size)
        transfer.start()
        try:
            watch(transfer, timeout, name)  # returns once the transfer has ended
        except BaseException:
            # Left waiting on the server, if it is: its writes fail once `file` is closed.
            transfer.abandoned = True
            raise
        if transfer.error is not None:
            raise download_error(transfer.error, timeout)
        expected = transfer.expected_bytes or size
        if transfer.received < expected:
            raise FetchError(f"truncated ({transfer.received} of {expected} bytes)", True)
        digest = transfer.digest.hexdigest()
        if digest != expected_sha256:
            raise FetchError(
                f"checksum mismatch (sha256 {digest[:12]}…, expected {expected_sha256[:12]}…)",
                False,
            )


def watch(transfer: Transfer, timeout: float, name: str) -> None:
    """Show the transfer's progress until it ends; give up on it if it stalls."""
    window_start, window_bytes, shown = time.monotonic(), 0, 0
    # leave=False: the bar goes once the file is in; the stage prints its own line for it.
    bar = {"unit": "B", "unit_scale": True, "desc": name, "leave": False}
    with tqdm(**bar, disable=not sys.stderr.isatty()) as progress:
        while transfer.is_alive():
            transfer.join(POLL_SECONDS)
            progress.total = transfer.expected_bytes
            progress.update(transfer.received - shown)
            shown = transfer.received
            if time.monotonic() - window_start >= timeout and transfer.is_alive():
                if transfer.received - window_bytes < MIN_BYTES_PER_TIMEOUT:
                    raise FetchError(
                        f"stalled ({transfer.received - window_bytes} bytes in {timeout:g} s,"
                        f" expected at least {MIN_BYTES_PER_TIMEOUT})",
                        True,
                    )
                window_start, window_bytes = time.monotonic(), transfer.received


def download_file(
    name: str,
    expected_sha256: str,
    size: int,
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
                fetch(mirror + name, expected_sha256, size, timeout, name, destination)
                return mirror
            except FetchError as failure:
                if not failure.transient or attempt == retries:
                    failures.append(f"{mirror}: {failure}")
                    break
                time.sleep(retry_delay * (attempt + 1))
    if not mirrors:
        failures.append(f"no mirror configured (set download.mirrors or ${MIRROR_ENV})")
    elif not os.environ.get(MIRROR_ENV):
        failures.append(f"offline? set {MIRROR_ENV} to a folder or URL holding the MNIST files")
    raise PipelineError(f"could not download {name}: " + "; ".join(failures))
