"""Reading the prepared data; writing every output atomically and byte-reproducibly.

Every output is written to a temporary file beside its target and renamed into place, so an
interrupted stage never leaves a partial file. Zip-based formats (.npz, .keras) get fixed
timestamps so the same content always gives the same bytes, and the same hash in dvc.lock.
"""

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from stages.errors import PipelineError

# The earliest date a zip entry can hold; any fixed value would do.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; rename it over `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as file:
        file.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_zip(path: Path, entries: Mapping[str, bytes], compression: int) -> None:
    """Write a zip whose bytes depend only on `entries`: fixed timestamps, given order."""
    with atomic_writer(path) as file, zipfile.ZipFile(file, "w") as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Like np.savez_compressed, without pickles and without the save time in the bytes."""
    entries = {}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
        entries[f"{name}.npy"] = buffer.getvalue()
    write_zip(path, entries, zipfile.ZIP_DEFLATED)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run the preprocess stage first)") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise PipelineError(f"{path}: not a readable .npz file ({exc})") from None
