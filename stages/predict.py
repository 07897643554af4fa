"""Name the digit in your own images: photos, scans or drawings, any size and colour.

    python -m stages.predict my_digit.png another.jpg
    python -m stages.predict --json --model models/model.keras my_digit.png

Each image is made into what MNIST's images are (stages/user_images.py), then the model
(`paths.model` from params.yaml unless --model) names the digit: one line per image,
`IMAGE: DIGIT (PROBABILITY %)`, or with --json a list of
{"image", "digit", "probability", "probabilities"}. An image that cannot be read, is not an
image or holds no ink gets one line on stderr; the others are still predicted, and the exit
status is 1.
"""

import argparse
import json
import sys
from pathlib import Path

import stages.quiet_tensorflow  # noqa: F401  (before Keras: quiets TensorFlow's start-up log)

# isort: split
import numpy as np

from stages.errors import PipelineError, run_stage
from stages.model_file import load_model
from stages.params import load_params
from stages.user_images import prepare


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


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict", description=__doc__.splitlines()[0]
    )
    parser.add_argument("images", nargs="+", type=Path, help="PNG, JPEG, BMP or GIF files")
    parser.add_argument("--model", type=Path, help="a .keras model (default: paths.model)")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    arguments = parser.parse_args()
    model = load_model(arguments.model or Path(load_params().paths.model))

    prepared, names, failed = [], [], False
    for path in arguments.images:
        try:
            prepared.append(prepare(path))
            names.append(str(path))
        except PipelineError as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
    if prepared:
        probabilities = model.predict(np.stack(prepared)[..., None], verbose=0)
        results = predictions(probabilities, names)
        if arguments.json:
            print(json.dumps(results, indent=2))
        else:
            for result in results:
                print(f"{result['image']}: {result['digit']} ({result['probability'] * 100:.1f} %)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(run_stage(main))
