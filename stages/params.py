"""params.yaml: the schema every stage validates before doing any work.

Unknown keys, missing keys, wrong types and out-of-range values stop the stage with one line
that names the key and what was expected.
"""

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stages.errors import PipelineError

PARAMS_FILE = Path("params.yaml")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    # strict: "10" is not an int, 1.5 is not an int; extra="forbid": a typo is an error.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PathsParams(Section):
    raw_dir: str
    train_data: str
    validation_data: str
    test_data: str
    model: str
    train_metrics: str
    train_loss: str
    train_accuracy: str
    evaluate_metrics: str
    predictions: str
    evaluate_images: str


class DownloadParams(Section):
    mirrors: list[str]
    timeout_seconds: PositiveFloat
    retries: Annotated[int, Field(ge=0)]


class PreprocessParams(Section):
    validation_images: PositiveInt
    # null: use every image; a number: a deterministic random subset (for quick runs and tests).
    max_train_images: PositiveInt | None
    max_test_images: PositiveInt | None


class ModelParams(Section):
    conv_filters: Annotated[list[PositiveInt], Field(min_length=1)]
    conv_kernel: PositiveInt
    pool_size: PositiveInt
    dense_units: Annotated[list[PositiveInt], Field(min_length=1)]
    dropout: Fraction


class AugmentParams(Section):
    """Random affine distortion of training images; all zero turns augmentation off."""

    rotation_degrees: Annotated[float, Field(ge=0, le=180)]
    zoom: Fraction
    shift: Fraction

    @property
    def enabled(self) -> bool:
        return any((self.rotation_degrees, self.zoom, self.shift))


class TrainParams(Section):
    epochs: PositiveInt
    batch_size: PositiveInt
    optimizer: Literal["adam", "sgd", "rmsprop"]
    learning_rate: PositiveFloat
    lr_schedule: Literal["constant", "cosine"]
    precision: Literal["auto", "float32", "mixed_bfloat16"]
    steps_per_execution: PositiveInt
    augment: AugmentParams


class EvaluateParams(Section):
    batch_size: PositiveInt
    sample_images: Annotated[int, Field(gt=0, le=100)]
    misclassified_images: Annotated[int, Field(gt=0, le=100)]


class Params(Section):
    seed: Annotated[int, Field(ge=0)]
    threads: Annotated[int, Field(ge=0)]  # TensorFlow's threads per operation; 0: every core
    paths: PathsParams
    download: DownloadParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams


def describe_error(error: dict, source: Path) -> str:
    """One pydantic error as `params.yaml: train.epochs: <what is expected> (got <value>)`."""
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key"
    if error["type"] == "missing":
        return f"{source}: {key}: missing key"
    expected = error["msg"][:1].lower() + error["msg"][1:]
    return f"{source}: {key}: {expected} (got {error['input']!r})"


def parse_params(data: object, source: Path = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PipelineError(describe_error(errors[0], source) + more) from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run the stage from the project root)") from None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise PipelineError(f"{path}: not valid YAML: {reason}") from None
    return parse_params(data, path)
