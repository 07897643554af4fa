"""params.yaml, and the paths in dvc.yaml: the schema every stage validates before doing any
work.

Unknown keys, missing keys, wrong types and out-of-range values stop the stage with one line
that names the file, the key and what was expected. So does a path that leaves the project.
"""

import difflib
import re
import reprlib
from pathlib import Path
from typing import Annotated, Literal, Self, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mnist_cnn import mnist
from mnist_cnn.errors import PipelineError

PARAMS_FILE = Path("params.yaml")
PIPELINE_FILE = Path("dvc.yaml")  # beside params.yaml; its vars hold the paths

Schema = TypeVar("Schema", bound=BaseModel)
PositiveInt = Annotated[int, Field(gt=0)]
# allow_inf_nan=False: `.inf` and `.nan` are floats to YAML, and no setting means them.
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    # strict: "10" is not an int, 1.5 is not an int; extra="forbid": a typo is an error.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def inside_the_project(path: Path) -> Path:
    """`path`, if it names a place inside the project (the current folder: stages run from the
    project's root) once `..` and symlinked folders are resolved. The file itself may be a
    link: DVC links outputs to its cache (cache.type symlink), which may be anywhere (a shared
    cache, or the workspace's own for an experiment run in a temporary copy)."""
    root = Path.cwd().resolve()
    target = root / path
    if target.name in ("", ".", ".."):
        where = target.resolve()
    else:
        where = target.parent.resolve() / target.name
    if path.is_absolute() or not where.is_relative_to(root):
        raise PydanticCustomError("outside_project", "expected a path inside the project")
    return path


# Relative to the project root: text in dvc.yaml, a Path here (strict mode would take only a
# Path object).
ProjectPath = Annotated[Path, Field(strict=False), AfterValidator(inside_the_project)]


class PathsParams(Section):
    raw_dir: ProjectPath
    train_data: ProjectPath
    validation_data: ProjectPath
    test_data: ProjectPath
    model: ProjectPath
    model_info: ProjectPath
    train_metrics: ProjectPath
    train_loss: ProjectPath
    train_accuracy: ProjectPath
    evaluate_metrics: ProjectPath
    predictions: ProjectPath
    per_digit: ProjectPath
    evaluate_images: ProjectPath
    saved_model: ProjectPath
    onnx_model: ProjectPath
    tflite_model: ProjectPath
    export_metrics: ProjectPath
    export_details: ProjectPath


class DownloadParams(Section):
    mirrors: list[str]
    timeout_seconds: Annotated[float, Field(gt=0, le=600, allow_inf_nan=False)]
    retries: Annotated[int, Field(ge=0, le=10)]


class PreprocessParams(Section):
    validation_images: PositiveInt
    # null: use every image; a number: a deterministic random subset (for quick runs and tests).
    max_train_images: PositiveInt | None
    max_test_images: PositiveInt | None


# 100 million: 400 MB of float32 weights, about 1.6 GB with Adam's state and the gradients; 60
# times the seed notebook's model.
MAX_PARAMETERS = 100_000_000


class ModelParams(Section):
    conv_filters: Annotated[list[PositiveInt], Field(min_length=1)]
    # Larger than the image, a kernel ("same" padding) only adds zeros.
    conv_kernel: Annotated[int, Field(gt=0, le=mnist.IMAGE_SIDE)]
    pool_size: PositiveInt
    dense_units: Annotated[list[PositiveInt], Field(min_length=1)]
    dropout: Fraction

    @model_validator(mode="after")
    def image_survives_pooling(self) -> Self:
        """Each MaxPooling2D divides the side (rounding down): 28 must not reach 0 pixels."""
        blocks, pool, side = len(self.conv_filters), self.pool_size, mnist.IMAGE_SIDE
        if pool > side:
            problem = f"{pool} is larger than the {side}x{side} image; expected at most {side}"
        elif pool**blocks > side:
            most = max(n for n in range(blocks) if pool**n <= side)
            problem = (
                f"{pool} with {blocks} conv blocks (model.conv_filters) pools the {side}x{side}"
                f" image down to nothing; expected at most {most} conv blocks with pool_size {pool}"
            )
        else:
            return self
        raise PydanticCustomError("impossible_setting", problem, {"field": "pool_size"})

    @model_validator(mode="after")
    def fits_in_memory(self) -> Self:
        """Refuse, before any work, a model too large to train on any machine this runs on
        (TensorFlow would fail deep inside with an out-of-memory or shape error)."""
        if (count := self.parameter_count()) <= MAX_PARAMETERS:
            return self
        problem = (
            f"{count:,} parameters; expected at most {MAX_PARAMETERS:,}: make "
            "model.dense_units, model.conv_filters or model.conv_kernel smaller"
        )
        raise PydanticCustomError("impossible_setting", problem, {"field": "dense_units"})

    def parameter_count(self) -> int:
        """What Keras' model.count_params() will say, computed without building the model."""
        side, channels, count = mnist.IMAGE_SIDE, 1, 0
        for filters in self.conv_filters:
            count += (self.conv_kernel**2 * channels + 1) * filters
            side, channels = side // self.pool_size, filters
        inputs = side * side * channels
        for units in [*self.dense_units, mnist.NUM_CLASSES]:
            count += (inputs + 1) * units
            inputs = units
        return count


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
    warmup_epochs: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    adam_beta_1: Fraction
    adam_beta_2: Fraction
    label_smoothing: Fraction
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
    steps_per_execution: PositiveInt
    augment: AugmentParams

    @model_validator(mode="after")
    def warmup_within_training(self) -> Self:
        if self.warmup_epochs < self.epochs:
            return self
        problem = (
            f"{self.warmup_epochs:g} is not less than train.epochs ({self.epochs}); expected"
            " fewer warm-up epochs than epochs"
        )
        raise PydanticCustomError("impossible_setting", problem, {"field": "warmup_epochs"})


class EvaluateParams(Section):
    batch_size: PositiveInt
    sample_images: Annotated[int, Field(gt=0, le=100)]
    misclassified_images: Annotated[int, Field(gt=0, le=100)]


class ExportParams(Section):
    min_agreement: Annotated[float, Field(gt=0, le=1)]  # of test images, each format vs Keras
    batch_size: PositiveInt
    onnx_opset: Annotated[int, Field(ge=13, le=18)]  # 13 to 18: what tf2onnx 1.17 writes


class Params(Section):
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]  # what NumPy and TensorFlow take
    # TensorFlow's threads per operation; 0: every core. Thousands make training crawl.
    threads: Annotated[int, Field(ge=0, le=256)]
    paths: PathsParams
    download: DownloadParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    export: ExportParams


def dotted(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def typo_of(key: str, missing: list[str]) -> str | None:
    """The missing key that an unknown `key` most likely misspells, in the same section."""
    parent, _, name = key.rpartition(".")
    siblings = [m.rpartition(".")[2] for m in missing if m.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(name, siblings, n=1)
    return f"{parent + '.' if parent else ''}{close[0]}" if close else None


# A value quoted in a message is cut short: a list of a million items is still one line.
VALUE_IN_A_MESSAGE = reprlib.Repr()
VALUE_IN_A_MESSAGE.maxlevel, VALUE_IN_A_MESSAGE.maxlist = 3, 6
VALUE_IN_A_MESSAGE.maxstring = VALUE_IN_A_MESSAGE.maxother = 80


def describe_error(error: dict, source: Path, meant: str | None = None) -> str:
    """One pydantic error as `params.yaml: train.epochs: <what is expected> (got <value>)`.

    `meant`: for an unknown key, the missing key it misspells, if any.
    """
    key = dotted(error)
    if error["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key" + (f" (did you mean {meant}?)" if meant else "")
    if error["type"] == "missing":
        return f"{source}: {key}: missing key"
    if error["type"] == "impossible_setting":
        return f"{source}: {key}.{error['ctx']['field']}: {error['msg']}"
    expected = error["msg"][:1].lower() + error["msg"][1:]
    return f"{source}: {key}: {expected} (got {VALUE_IN_A_MESSAGE.repr(error['input'])})"


def parse_params(data: object, source: Path = PARAMS_FILE) -> Params:
    return validated(Params, data, source)


def validated(schema: type[Schema], data: object, source: Path, prefix: str = "") -> Schema:
    """`data` as `schema`, or one line naming `source`, the key (after `prefix`) and what was
    expected."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errors = [
            {**error, "loc": (prefix, *error["loc"]) if prefix else error["loc"]}
            for error in exc.errors()
        ]
    # A typo shows as an unknown key and a missing one: name the typo first, and once.
    unknown = [error for error in errors if error["type"] == "extra_forbidden"]
    missing = [dotted(error) for error in errors if error["type"] == "missing"]
    first = (unknown or errors)[0]
    meant = typo_of(dotted(first), missing) if unknown else None
    others = len(errors) - 1 - (meant is not None)
    more = f" (and {others} more)" if others else ""
    raise PipelineError(describe_error(first, source, meant) + more)


# What each load_params() call read, to tell whether the file changed while a stage ran.
params_read: dict[Path, Params] = {}


def load_params(path: Path = PARAMS_FILE) -> Params:
    params_read[path] = read_params(path)
    return params_read[path]


def changed_since_read() -> list[Path]:
    """The params files read by this process whose params are no longer what it read.

    DVC records a stage's params from the file as it is when the stage *ends*: an edit made
    while it ran (or a `dvc exp run -S` started meanwhile) would be recorded, and cached, as the
    params of outputs made from the old ones.
    """
    changed = []
    for path, params in params_read.items():
        try:
            if read_params(path) != params:
                changed.append(path)
        except PipelineError:  # deleted, or no longer valid: changed too
            changed.append(path)
    return changed


def raise_if_changed(stage: str) -> None:
    """Fail `stage` if a params file it read changed since (see `changed_since_read`)."""
    for path in changed_since_read():
        raise PipelineError(
            f"{path} changed while {stage} ran: its outputs are for the params it read at the "
            "start and are not recorded; run dvc repro again"
        )


class SettingsLoader(yaml.SafeLoader):
    """YAML as settings are written: plain values, each key once.

    An alias (`*name`) is refused: a few nested ones expand to gigabytes (a "billion laughs"),
    and settings need none. A key given twice is refused: YAML forbids it, DVC refuses it, and
    PyYAML alone would keep the last without a word.
    """

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            alias = self.peek_event()
            raise SettingsError(
                f"line {alias.start_mark.line + 1}: an alias (*{alias.anchor}); expected plain "
                "values, without anchors or aliases"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # an unhashable key: SafeLoader names it itself
            if key in seen:
                raise SettingsError(
                    f"line {key_node.start_mark.line + 1}: key {key!r} given twice, expected "
                    "each key once"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


# A number in exponent form without a point, `1e-05`: a float in YAML 1.2, which DVC reads
# and writes (`dvc exp run -S train.learning_rate=1e-5` writes `1e-05`), and a string to
# PyYAML's YAML 1.1, which would have refused it as "not a number".
SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class SettingsError(yaml.YAMLError):
    """YAML that is valid, but not as settings are written."""


def read_yaml(path: Path) -> object:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=SettingsLoader)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run the stage from the project root)") from None
    except SettingsError as exc:
        raise PipelineError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise PipelineError(f"{path}: not valid YAML: {reason}") from None
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:  # a folder, no permission
        raise PipelineError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_paths(pipeline: Path = PIPELINE_FILE) -> PathsParams:
    """The paths in dvc.yaml's vars (`vars: - paths: ...`), each checked to stay inside the
    project."""
    found = paths_entry(read_yaml(pipeline))
    if found is None:
        raise PipelineError(f"{pipeline}: no paths: expected them in its vars (vars: - paths:)")
    return validated(PathsParams, found, pipeline, prefix="paths")


def paths_entry(pipeline: object) -> object | None:
    """The `paths` entry of a loaded dvc.yaml's vars, as written there; None without one."""
    entries = (pipeline.get("vars") or []) if isinstance(pipeline, dict) else []
    return next((e["paths"] for e in entries if isinstance(e, dict) and "paths" in e), None)


def read_params(path: Path) -> Params:
    """params.yaml's settings, with the paths from dvc.yaml beside it."""
    data = read_yaml(path)
    if isinstance(data, dict) and "paths" in data:
        raise PipelineError(
            f"{path}: paths: the paths are the pipeline's, in {PIPELINE_FILE} (vars: - paths:); "
            f"expected none here"
        )
    paths = read_paths(path.parent / PIPELINE_FILE)
    return parse_params({**data, "paths": paths} if isinstance(data, dict) else data, path)
