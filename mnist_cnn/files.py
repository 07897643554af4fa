"""Reading the stages' inputs, each refused in one line if missing or unreadable; writing every
output atomically and byte-reproducibly.

Every output is written to a temporary file beside its target and renamed into place, so an
interrupted stage never leaves a partial file; a killed one may leave the temporary file, which
the stage's next run removes first. Zip-based formats (.npz, .keras) get fixed timestamps so the
same content always gives the same bytes, and the same hash in dvc.lock.
"""

import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mnist_cnn.errors import PipelineError

# The earliest date a zip entry can hold; any fixed value would do.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


TEMPORARY_SUFFIX = ".tmp"


def temporary_prefix(path: Path) -> str:
    """Temporary files for `path` are `.<name>.<random>.tmp` beside it: hidden, and findable."""
    return f".{path.name}."


def write_failure(path: Path, error: OSError) -> PipelineError:
    """Disk full, read-only folder, permissions: one line that names the file."""
    return PipelineError(f"{path}: could not write ({error.strerror or error})")


def umask_mode(mode: int = 0o666) -> int:
    """`mode` as the umask allows it: what open() would give a new file (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; rename it over `path` only if the block succeeds.

    An OSError (disk full, read-only folder) becomes a PipelineError naming `path`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX
        )
    except OSError as error:
        raise write_failure(path, error) from None
    try:
        # mkstemp makes the file private (0600); outputs are for everyone the umask allows.
        os.chmod(temporary, umask_mode())
        with os.fdopen(handle, "wb") as file:
            yield file
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise write_failure(path, error) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def scratch_directory_beside(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path`, on the same disk (so a full disk names `path`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.mkdtemp(
            dir=path.parent, prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX
        )
    except OSError as error:
        raise write_failure(path, error) from None
    try:
        yield Path(scratch)
    except OSError as error:
        raise write_failure(path, error) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def replace_directory(source: Path, target: Path) -> None:
    """Move the folder `source` (made in scratch_directory_beside(target)) to `target`,
    replacing what is there. os.replace cannot replace a folder that holds files, so the old
    one is first moved aside (to a temporary name that remove_stale_temporaries knows)."""
    try:
        if target.exists():
            aside = tempfile.mkdtemp(
                dir=target.parent, prefix=temporary_prefix(target), suffix=TEMPORARY_SUFFIX
            )
            os.replace(target, aside)
            os.replace(source, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(source, target)
    except OSError as error:
        raise write_failure(target, error) from None


def remove_stale_temporaries(outputs: list[Path]) -> None:
    """Delete what a killed earlier run left of these outputs' temporary files.

    A folder output's own files have their temporaries inside it.
    """
    for output in outputs:
        leftovers = list(output.parent.glob(f"{temporary_prefix(output)}*{TEMPORARY_SUFFIX}"))
        if output.is_dir():
            leftovers += output.glob(f".*{TEMPORARY_SUFFIX}")
        for leftover in leftovers:
            remove_path(leftover)


def remove_path(path: Path) -> None:
    """Delete a file or a folder, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def removed_on_failure(paths: Iterable[Path]) -> Iterator[None]:
    """Whatever ends the block early (an error, Ctrl-C, a full disk), `paths` are removed: a
    stage leaves a whole result or none, never half of one or new files beside older ones."""
    try:
        yield
    except BaseException:
        for path in paths:
            remove_path(path)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as file:
        file.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Strict JSON: NaN and Infinity, which strict parsers reject and which no result should
    be, stop the stage instead."""
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except ValueError:
        raise PipelineError(f"{path}: not written: a value is NaN or infinite") from None
    write_text(path, text + "\n")


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


def check_model_file(path: Path) -> None:
    """Refuse a model file that is missing or not a .keras file (before Keras, seconds to
    import, loads it: mnist_cnn/model.py)."""
    if not path.exists():
        raise PipelineError(f"{path}: not found (run the train stage first)")
    if path.suffix != ".keras":  # Keras would suggest TFSMLayer
        raise PipelineError(
            f"{path}: not a .keras file (this command runs Keras models; the ONNX, TFLite and "
            "SavedModel exports run in their own runtimes: see the README, Serve the model)"
        )
