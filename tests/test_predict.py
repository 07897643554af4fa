"""Predicting a user's own images: MNIST test digits made to look like a user's (dark ink on
light paper, enlarged, off-centre on a larger canvas, RGB PNG and JPEG), through the command
line, against a model trained here on real MNIST."""

import json
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from stages.download import MIRROR_ENV
from stages.files import read_npz
from stages.user_images import centre_by_mass, crop_to_ink, fit_box, light_ink_on_dark
from tests.helpers import PROJECT_ROOT, copy_project, readme_line, run_stage_cli, write_params

# Enough training for a model that reads digits well (about 97 %), in under a minute.
TRAINED = {
    "preprocess.max_train_images": 12000,
    "preprocess.max_test_images": 200,
    "train.epochs": 2,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_dir) -> Path:
    """The project, with a model trained on 12,000 real MNIST images."""
    folder = tmp_path_factory.mktemp("project")
    copy_project(folder)
    write_params(folder, TRAINED)
    for stage in ("download", "preprocess", "train"):
        result = run_stage_cli(stage, folder, env={MIRROR_ENV: str(mnist_dir)})
        assert result.returncode == 0, result.stderr
    return folder


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
    return run_stage_cli("predict", project, arguments=arguments)


def test_user_style_images_get_the_digit_the_model_gives_the_original(project, tmp_path):
    test = read_npz(project / "data/prepared/test.npz")
    originals = test["images"][:100]
    rng = np.random.default_rng(0)
    paths = []
    for index, digit in enumerate(originals):
        path = tmp_path / f"digit_{index}.{'png' if index % 2 else 'jpg'}"
        user_style(digit, rng).save(path)
        paths.append(str(path))

    result = predict(project, "--json", *paths)
    assert result.returncode == 0, result.stderr
    named = [entry["digit"] for entry in json.loads(result.stdout)]
    model = keras.models.load_model(project / "models/model.keras")
    expected = model.predict(originals[..., None], verbose=0).argmax(axis=1).tolist()
    agree = sum(a == b for a, b in zip(named, expected, strict=True))
    assert agree >= 98, f"{agree} of 100 agree"


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

    result = predict(project, str(good), str(text), str(truncated), str(blank), str(missing))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{good}: ") and result.stdout.count("\n") == 1
    assert result.stderr.splitlines() == [
        f"error: {text}: not an image (expected PNG, JPEG, BMP or GIF)",
        f"error: {truncated}: cannot read the image (image file is truncated)",
        f"error: {blank}: no ink found (a blank image?)",
        f"error: {missing}: not found",
    ]


def test_the_readme_example(project):
    """The committed example image: the README's command names its digit."""
    for path in (PROJECT_ROOT / "examples").iterdir():
        (project / "examples").mkdir(exist_ok=True)
        (project / "examples" / path.name).write_bytes(path.read_bytes())
    command = readme_line("python -m stages.predict examples/")
    result = predict(project, *command.split()[3:])
    assert result.returncode == 0, result.stderr
    image, _, rest = result.stdout.strip().partition(": ")
    assert image == "examples/seven.png" and rest.startswith("7 (")


def test_preparation_steps_on_a_drawn_digit():
    """Dark ink on light paper becomes light on black, cropped, 20 pixels on its long side,
    centred by mass in 28x28."""
    paper = np.full((100, 60), 240.0)
    paper[10:90, 20:30] = 10  # a tall stroke: a "1"
    image = light_ink_on_dark(paper)
    assert image[0, 0] == 0 and image[50, 25] == 230
    digit = fit_box(crop_to_ink(image))
    assert max(digit.shape) == 20 and digit.shape == (20, 2)
    centred = centre_by_mass(digit)
    rows, columns = np.nonzero(centred > 64)
    assert centred.shape == (28, 28)
    assert abs(rows.mean() - 14) <= 0.5 and abs(columns.mean() - 14) <= 0.5
