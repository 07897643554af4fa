"""Predicting a user's own images: MNIST test digits made to look like a user's (dark ink on
light paper, enlarged, off-centre on a larger canvas, RGB PNG and JPEG), through the command
line, against a model trained here on real MNIST."""

import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from mnist_cnn.fetch import MIRROR_ENV
from mnist_cnn.files import read_npz
from mnist_cnn.user_images import (
    centre_by_mass,
    crop_to_ink,
    fit_box,
    light_ink_on_dark,
    window_extreme,
)
from tests.helpers import (
    PROJECT_ROOT,
    built_once,
    copy_project,
    documented_line,
    error_line,
    project_environment,
    run_command,
    run_stage_cli,
    write_params,
)

# Enough training for a model that reads digits well (about 97 %), in under a minute.
TRAINED = {
    "preprocess.max_train_images": 12000,
    "preprocess.max_test_images": 200,
    "train.epochs": 4,  # 188 steps at the default batch: a model that reads photos as digits
}


@pytest.fixture(scope="session")
def project(tmp_path_factory, mnist_dir) -> Path:
    """The project, with a model trained on 12,000 real MNIST images (once per session)."""

    def build(folder: Path) -> None:
        copy_project(folder)
        write_params(folder, TRAINED)
        for stage in ("download", "preprocess", "train"):
            result = run_stage_cli(stage, folder, env={MIRROR_ENV: str(mnist_dir)})
            assert result.returncode == 0, result.stderr

    return built_once(tmp_path_factory, "predict_project", build)


def user_style(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An MNIST digit as a user might hand it in: dark ink on slightly grey paper, 3-8 times
    larger, somewhere on a larger RGB canvas."""
    paper, ink = int(rng.integers(215, 256)), int(rng.integers(0, 60))
    on_paper = paper + (ink - paper) * (digit.astype(np.float32) / 255)
    scale = int(rng.integers(3, 9))
    drawn = Image.fromarray(on_paper.astype(np.uint8)).resize(
        (28 * scale, 28 * scale), Image.BICUBIC
    )
    width = drawn.width + int(rng.integers(20, 300))
    height = drawn.height + int(rng.integers(20, 300))
    canvas = Image.new("L", (width, height), paper)
    left = int(rng.integers(0, width - drawn.width))
    top = int(rng.integers(0, height - drawn.height))
    canvas.paste(drawn, (left, top))
    return canvas.convert("RGB")


def predict(project: Path, *arguments: str) -> subprocess.CompletedProcess:
    return run_command(("predict", *arguments), project)


def gradient(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Light from one side: full on one edge, a third of it on the opposite one."""
    across = np.linspace(1.0, 0.35, width if rng.integers(2) else height)
    field = np.tile(across, (height, 1)) if across.size == width else np.tile(across, (width, 1)).T
    return field if rng.integers(2) else field[::-1, ::-1]


def shadow(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A soft-edged shadow (40 % of the light) over a random half of the page, the digit's
    part included."""
    rows, columns = np.indices((height, width))
    angle = rng.uniform(0, 2 * np.pi)
    distance = (columns - width / 2) * np.cos(angle) + (rows - height / 2) * np.sin(angle)
    edge = max(width, height) / 6  # the penumbra's width
    return 0.4 + 0.6 / (1 + np.exp(-distance / (edge / 4)))


def even(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    return np.ones((height, width))


@pytest.mark.cli
@pytest.mark.parametrize("light", [even, gradient, shadow])
def test_user_photos_get_the_digit_the_model_gives_the_original(project, tmp_path, light):
    """100 test digits as user photos, lit evenly, by a gradient or under a shadow: the paper's
    level is local, so a shadow is not taken for ink (it was: a shadowed 2 was read as a 1)."""
    test = read_npz(project / "data/prepared/test.npz")
    originals = test["images"][:100]
    rng = np.random.default_rng(0)
    paths = []
    for index, digit in enumerate(originals):
        photo = np.asarray(user_style(digit, rng), dtype=np.float32)
        lit = photo * light(photo.shape[1], photo.shape[0], rng)[..., None]
        path = tmp_path / f"digit_{index}.{'png' if index % 2 else 'jpg'}"
        Image.fromarray(np.round(lit).astype(np.uint8)).save(path)
        paths.append(str(path))

    result = predict(project, "--json", *paths)
    assert result.returncode == 0, result.stderr
    named = [entry["digit"] for entry in json.loads(result.stdout)]
    model = keras.models.load_model(project / "models/model.keras")
    expected = model.predict(originals[..., None], verbose=0).argmax(axis=1).tolist()
    agree = sum(a == b for a, b in zip(named, expected, strict=True))
    assert agree >= 98, f"{agree} of 100 agree"


@pytest.mark.cli
def test_sixteen_bit_and_lab_images_are_read(project, tmp_path):
    digit = read_npz(project / "data/prepared/test.npz")["images"][0]
    eight_bit = np.asarray(user_style(digit, np.random.default_rng(3)).convert("L"))
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(eight_bit.astype(np.uint16) * 257).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    lab = tmp_path / "lab.tif"
    Image.fromarray(eight_bit).convert("RGB").convert("LAB").save(lab)
    assert Image.open(lab).mode == "LAB"
    plain = tmp_path / "plain.png"
    Image.fromarray(eight_bit).save(plain)

    result = predict(project, str(plain), str(sixteen), str(lab))
    assert result.returncode == 0, result.stderr
    digits = [line.split(": ")[1].split()[0] for line in result.stdout.splitlines()]
    assert len(digits) == 3 and len(set(digits)) == 1, result.stdout


@pytest.mark.cli
def test_bad_files_get_one_line_each_and_the_rest_are_predicted(project, tmp_path):
    good = tmp_path / "seven.png"
    user_style(
        read_npz(project / "data/prepared/test.npz")["images"][0], np.random.default_rng(1)
    ).save(good)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 120), "white").save(blank)
    missing = tmp_path / "missing.png"
    # 13000x13000 white pixels compress to a few hundred KB and decode to 3.4 GB.
    huge = tmp_path / "huge.png"
    huge.write_bytes(huge_png(13000, 13000))
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)  # would block a reader forever
    not_a_number = tmp_path / "float.tif"  # 32-bit float pixels, one of them NaN
    pixels = np.asarray(Image.open(good).convert("L"), dtype=np.float32)
    pixels[3, 4] = np.nan
    Image.fromarray(pixels, mode="F").save(not_a_number)
    two_lines = tmp_path / "seven\nagain.png"
    two_lines.write_bytes(good.read_bytes())

    result = predict(
        project, str(good), str(text), str(truncated), str(blank), str(missing), str(huge),
        str(fifo), str(not_a_number), str(two_lines),
    )
    assert result.returncode == 1
    assert result.stdout.startswith(f"{good}: ") and result.stdout.count("\n") == 2
    assert result.stdout.splitlines()[1].startswith(f"{tmp_path}/seven\\nagain.png: ")
    assert result.stderr.splitlines() == [
        f"error: {text}: not an image (expected PNG, JPEG, BMP, GIF or TIFF)",
        f"error: {truncated}: cannot read the image (image file is truncated)",
        f"error: {blank}: no ink found (a blank image?)",
        f"error: {missing}: not found",
        f"error: {huge}: 13000x13000 pixels, expected at most 50 megapixels (scale the image down)",
        f"error: {fifo}: not a regular file (expected an image file)",
        f"error: {not_a_number}: 1 pixel(s) not a number (NaN or infinite)",
    ]


def huge_png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of white rows, written without holding the image in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    rows = zlib.compress((b"\0" + b"\xff" * width) * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.cli
def test_outside_the_project_without_a_model_says_to_give_one(tmp_path):
    result = run_command(("predict", str(PROJECT_ROOT / "examples/seven.png")), tmp_path)
    assert error_line(result) == (
        "error: no project here (dvc.yaml not found): run predict in the project's root, or "
        "give the model: --model PATH"
    )


@pytest.mark.cli
def test_a_model_in_another_format_is_named(project, tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07")
    result = predict(project, "--model", str(onnx), str(PROJECT_ROOT / "examples/seven.png"))
    assert error_line(result) == (
        f"error: {onnx}: not a .keras file (this command runs Keras models; the ONNX, TFLite and "
        "SavedModel exports run in their own runtimes: see the README, Serve the model)"
    )


@pytest.mark.cli
def test_the_readme_example(project):
    """The committed example image: the README's command names its digit."""
    for path in (PROJECT_ROOT / "examples").iterdir():
        (project / "examples").mkdir(exist_ok=True)
        (project / "examples" / path.name).write_bytes(path.read_bytes())
    command = documented_line("python -m mnist_cnn predict examples/")
    result = predict(project, *command.split()[4:])
    assert result.returncode == 0, result.stderr
    image, _, rest = result.stdout.strip().partition(": ")
    assert image == "examples/seven.png" and rest.startswith("7 (")


def test_preparation_steps_on_a_drawn_digit():
    """Dark ink on light paper becomes light on black, cropped, 20 pixels on its long side,
    centred by mass in 28x28."""
    paper = np.full((100, 60), 240.0)
    paper[10:90, 20:30] = 10  # a tall stroke: a "1"
    image = light_ink_on_dark(paper)
    assert image[0, 0] == 0 and image[50, 25] == 255 * (1 - 10 / 240)
    digit = fit_box(crop_to_ink(image))
    assert max(digit.shape) == 20 and digit.shape == (20, 2)
    centred = centre_by_mass(digit)
    rows, columns = np.nonzero(centred > 64)
    assert centred.shape == (28, 28)
    assert abs(rows.mean() - 14) <= 0.5 and abs(columns.mean() - 14) <= 0.5


def test_the_background_filter_is_the_square_windows_extreme():
    """The background's local max and min, taken one axis after the other, are those of each
    whole square window, the edges repeated past the border (as PIL's MaxFilter and MinFilter,
    which they replace, gave them)."""
    values = np.random.default_rng(0).random((23, 17)).astype(np.float32)
    for size in (1, 3, 7):
        half = size // 2
        padded = np.pad(values, half, mode="edge")
        for extreme in (np.max, np.min):
            expected = [
                [extreme(padded[row : row + size, column : column + size]) for column in range(17)]
                for row in range(23)
            ]
            assert np.array_equal(window_extreme(values, size, extreme), np.array(expected))


@pytest.mark.cli
@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal")
def test_many_images_show_their_progress_on_a_terminal(project, tmp_path):
    """About 12 ms an image: a hundred or more get a bar on stderr where it is a terminal, and
    it goes once they are read; what goes to stdout is the same as ever."""
    import pty  # Unix only, as is termios
    import termios

    image = tmp_path / "seven.png"
    image.write_bytes((PROJECT_ROOT / "examples/seven.png").read_bytes())
    leader, follower = pty.openpty()
    termios.tcsetwinsize(follower, (24, 80))  # a terminal's size (a new one's is 0x0)
    shown = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the other end closed
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    result = subprocess.run(
        [sys.executable, "-m", "mnist_cnn", "predict", *[str(image)] * 100],
        cwd=project,
        env=project_environment(),
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        timeout=300,
    )
    os.close(follower)
    reader.join(timeout=10)
    os.close(leader)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 100 and len(set(lines)) == 1 and lines[0].startswith(f"{image}: 7 (")
    assert "| 0/100 [" in shown.decode(errors="replace")  # the bar, drawn from the start
