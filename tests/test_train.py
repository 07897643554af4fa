import json
import zipfile

import keras
import numpy as np
import pandas as pd
import pytest

from stages.runtime import cpu_flags, resolve_precision
from stages.train import (
    CURVE_COLUMNS,
    build_model,
    random_affine,
    renumber_shared_objects,
)
from tests.helpers import TINY_MODEL, run_stage_cli, write_params, write_tiny_data


def test_default_model_is_the_seed_notebooks(default_params):
    model = build_model(default_params.model)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert model.count_params() == 1_674_570
    assert model.output_shape == (None, 10)


def test_conv_filters_list_stacks_conv_blocks(default_params):
    deeper = default_params.model.model_copy(update={"conv_filters": [32, 64]})
    model = build_model(deeper)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in convs] == [32, 64]
    flatten = next(layer for layer in model.layers if isinstance(layer, keras.layers.Flatten))
    assert flatten.output.shape == (None, 7 * 7 * 64)


@pytest.mark.parametrize(
    ("requested", "flags", "gpu", "expected"),
    [
        ("auto", {"avx2", "avx512_bf16"}, False, "mixed_bfloat16"),
        ("auto", {"amx_bf16"}, False, "mixed_bfloat16"),
        ("auto", {"avx2"}, False, "float32"),
        ("auto", set(), True, "mixed_bfloat16"),
        ("float32", {"amx_bf16"}, True, "float32"),
        ("mixed_bfloat16", set(), False, "mixed_bfloat16"),
    ],
)
def test_precision_resolution(requested, flags, gpu, expected):
    assert resolve_precision(requested, flags, gpu) == expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16\nbugs\t: none\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == set()


def test_shared_object_ids_are_renumbered_in_order():
    config = {
        "a": {"shared_object_id": 9001},
        "b": [{"shared_object_id": 42}, {"shared_object_id": 9001}],
    }
    assert renumber_shared_objects(config) == {
        "a": {"shared_object_id": 0},
        "b": [{"shared_object_id": 1}, {"shared_object_id": 0}],
    }


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_train_stage_is_reproducible_to_the_byte(tmp_path, precision):
    params = write_params(tmp_path, {**TINY_MODEL, "train.epochs": 2, "train.precision": precision})
    write_tiny_data(tmp_path, params)
    outputs = [
        params["paths"][key] for key in ("model", "train_metrics", "train_loss", "train_accuracy")
    ]

    runs = []
    for _ in range(2):
        result = run_stage_cli("train", tmp_path)
        assert result.returncode == 0, result.stderr
        runs.append([(tmp_path / output).read_bytes() for output in outputs])
    assert runs[0] == runs[1]

    metrics = json.loads((tmp_path / params["paths"]["train_metrics"]).read_text())
    assert metrics["precision"] == precision
    assert metrics["epochs"] == 2
    for key in ("train_loss", "train_accuracy"):
        curve = pd.read_csv(tmp_path / params["paths"][key])
        assert list(curve.columns) == CURVE_COLUMNS and list(curve["epoch"]) == [1, 2]
    final = pd.read_csv(tmp_path / params["paths"]["train_accuracy"]).iloc[-1]
    assert final["validation"] == metrics["validation"]["accuracy"]
    with zipfile.ZipFile(tmp_path / params["paths"]["model"]) as archive:
        assert "date_saved" not in json.loads(archive.read("metadata.json"))
    model = keras.models.load_model(tmp_path / params["paths"]["model"])
    assert model.count_params() == metrics["trainable_params"]


def centroid(image: np.ndarray) -> np.ndarray:
    rows, columns = np.indices(image.shape[:2])
    mass = image[..., 0].sum()
    return np.array([(rows * image[..., 0]).sum() / mass, (columns * image[..., 0]).sum() / mass])


@pytest.fixture
def centred_square() -> np.ndarray:
    image = np.zeros((1, 28, 28, 1), np.uint8)
    image[0, 11:17, 11:17] = 255
    return image


def augment(images: np.ndarray, seed: int, **settings: float) -> np.ndarray:
    import tensorflow as tf

    from stages.params import AugmentParams

    params = AugmentParams(**{"rotation_degrees": 0, "zoom": 0, "shift": 0, **settings})
    return random_affine(tf.constant(images), tf.constant([seed, 0], tf.int64), params).numpy()


def test_augmentation_off_leaves_images_unchanged(centred_square):
    assert np.array_equal(augment(centred_square, 1), centred_square.astype(np.float32))


def test_rotation_and_zoom_turn_about_the_centre(centred_square):
    for seed in range(5):
        moved = augment(centred_square, seed, rotation_degrees=30, zoom=0.2)
        assert not np.array_equal(moved, centred_square)
        assert centroid(moved[0]) == pytest.approx([13.5, 13.5], abs=0.05)


def test_shift_stays_within_its_bound(centred_square):
    offsets = [centroid(augment(centred_square, seed, shift=0.1)[0]) - 13.5 for seed in range(20)]
    assert all(np.abs(offset).max() <= 0.1 * 28 + 0.05 for offset in offsets)
    assert max(np.abs(offset).max() for offset in offsets) > 1  # it does move


def test_augmentation_is_seeded(centred_square):
    images = np.repeat(centred_square, 4, axis=0)
    settings = {"rotation_degrees": 10, "zoom": 0.1, "shift": 0.1}
    first, again = augment(images, 3, **settings), augment(images, 3, **settings)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, augment(images, 4, **settings))
    assert not np.array_equal(first[0], first[1])  # each image of a batch gets its own draw
