"""Name the digit in your own images: photos, scans or drawings, any size and colour.

Each image is made into what MNIST's images are (mnist_cnn/user_images.py), then the model
(`paths.model` in dvc.yaml unless --model) names the digit: one line per image,
`IMAGE: DIGIT (PROBABILITY %)`, or with --json a list of
{"image", "digit", "probability", "probabilities"}. An image that cannot be read, is not an
image or holds no ink gets one line on stderr; the others are still predicted, and the exit
status is 1.
"""

import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mnist_cnn.errors import PipelineError, one_line
from mnist_cnn.files import check_model_file
from mnist_cnn.lock import check_recorded
from mnist_cnn.params import PIPELINE_FILE, read_paths
from mnist_cnn.user_images import prepare

BATCH_SIZE = 32
PROGRESS_FROM = 100  # images


def predictions(probabilities: np.ndarray, images: list[str]) -> list[dict]:
    return [
        {
            "image": image,
            "digit": int(row.argmax()),
            "probability": round(float(row.max()), 6),
            "probabilities": [round(float(p), 6) for p in row],
        }
        for image, row in zip(images, probabilities, strict=True)
    ]


def predict(images: list[Path], model_path: Path | None, as_json: bool) -> int:
    """Print the digit in each image; return the exit status (1 if any image failed)."""
    # The project (params.yaml and dvc.yaml) only when it names the model: with --model, any
    # folder will do.
    if model_path is None:
        if not PIPELINE_FILE.is_file():
            raise PipelineError(
                f"no project here ({PIPELINE_FILE} not found): run predict in the project's "
                "root, or give the model: --model PATH"
            )
        model_path = read_paths().model
        check_recorded(model_path)  # the project's model: the one dvc.lock records
    check_model_file(model_path)
    # TensorFlow and Keras only now: they take seconds to import, and a wrong model path is
    # refused at once.
    from mnist_cnn.model import load_model, predict_probabilities

    model = load_model(model_path)
    prepared, names, failed = [], [], False
    # Many images take a while to prepare: a bar on a terminal (it goes once they are read).
    shown = len(images) >= PROGRESS_FROM and sys.stderr.isatty()
    with tqdm(total=len(images), unit="image", leave=False, disable=not shown) as progress:
        for path in images:
            try:
                prepared.append(prepare(path))
                names.append(str(path))  # --json escapes it itself
            except PipelineError as error:
                progress.write(f"error: {one_line(str(error))}", file=sys.stderr)
                failed = True
            progress.update()
    if prepared:
        probabilities = predict_probabilities(model, np.stack(prepared), BATCH_SIZE)
        results = predictions(probabilities, names)
        if as_json:
            print(json.dumps(results, indent=2))
        else:
            for result in results:
                name, digit, probability = result["image"], result["digit"], result["probability"]
                print(f"{one_line(name)}: {digit} ({probability * 100:.1f} %)")
    return 1 if failed else 0
