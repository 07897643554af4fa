"""A user's photo or scan of a digit, made into what MNIST's images are.

MNIST digits are light ink on black, the ink's bounding box scaled to fit 20x20 pixels
(anti-aliased, aspect ratio kept), then placed in a 28x28 image so that the ink's centre of
mass is at the centre. A digit drawn dark on white, large and off-centre, is predicted wrongly
unless it is made the same: these are the steps, each a small pure function. Photos are lit
unevenly (a shadow, light from one side): the paper's level is estimated locally, not once.
"""

import itertools
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_cnn import mnist
from mnist_cnn.errors import PipelineError

DIGIT_BOX = 20  # MNIST's digits fit 20x20 inside the 28x28 image
# Ink is what stands out from the background by more than this (of 255); below, it is noise.
INK_THRESHOLD = 64
# ... and, in a photo, more than this share of the strongest ink: what is left of a shadow's
# edge or a crease is fainter than any pen stroke.
RELATIVE_INK = 0.4
# Decoding costs about 4 bytes a pixel, more while converting: a 231 KB PNG can hold 13000x13000
# pixels (3.4 GB). 50 megapixels is more than most phones' photos (12 to 48).
MAX_PIXELS = 50_000_000
# The background's level is estimated at this size (the longer side, in pixels) ...
WORK_SIDE = 128
# ... over windows this share of the longer side: wider than a pen stroke (a digit's strokes
# are about a tenth of its height), narrower than a shadow or a change of light.
STROKE_FRACTION = 0.15
# Which way the ink goes is told in a GRID x GRID grid of cells.
GRID = 8


def read_grayscale(path: Path) -> np.ndarray:
    """Any image Pillow reads (PNG, JPEG, BMP, GIF, TIFF...), any mode, 8 or 16 bits, as float
    grayscale 0-255.

    Transparent pixels count as white paper; a photo's EXIF orientation is applied.
    """
    if path.exists() and not path.is_file():
        raise PipelineError(f"{path}: not a regular file (expected an image file)")
    try:
        with warnings.catch_warnings():
            # Pillow's two-line warning about large images: refused in one line just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            if image.width * image.height > MAX_PIXELS:
                raise PipelineError(
                    f"{path}: {image.width}x{image.height} pixels, expected at most "
                    f"{MAX_PIXELS // 1_000_000} megapixels (scale the image down)"
                )
            image.load()
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found") from None
    except UnidentifiedImageError:
        expected = "PNG, JPEG, BMP, GIF or TIFF"
        raise PipelineError(f"{path}: not an image (expected {expected})") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise PipelineError(f"{path}: cannot read the image ({error})") from None
    try:
        gray = grayscale(ImageOps.exif_transpose(image))
    except (OSError, ValueError) as error:  # a mode Pillow cannot convert
        raise PipelineError(f"{path}: cannot read {image.mode} images ({error})") from None
    if not np.isfinite(gray).all():  # a float TIFF: one NaN would turn the ink's level over
        count = int((~np.isfinite(gray)).sum())
        raise PipelineError(f"{path}: {count} pixel(s) not a number (NaN or infinite)")
    return gray


def grayscale(image: Image.Image) -> np.ndarray:
    if image.mode.startswith(("I", "F")):  # 16- or 32-bit integers, floats: 16-bit if over 255
        values = np.asarray(image, dtype=np.float32)
        return values / 257 if values.max() > 255 else values
    if image.mode == "LAB":  # its L channel is the lightness, 0-255
        return np.asarray(image.getchannel("L"), dtype=np.float32)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32)


def working_copy(gray: np.ndarray) -> Image.Image:
    """The image at WORK_SIDE pixels on its longer side (if larger), for the background."""
    height, width = gray.shape
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return Image.fromarray(gray.astype(np.float32), mode="F").resize(size, Image.BOX)


def background(small: Image.Image, ink: str) -> np.ndarray:
    """The background's level under `ink` ("dark" or "light") strokes, following uneven light:
    a closing (the local max, then the local min) for dark strokes, an opening for light ones,
    over a window wider than any stroke: the strokes fill in with the background around them,
    while a shadow's edge or a gradient, which rise one way only, stay where they are."""
    size = 2 * round(max(small.size) * STROKE_FRACTION / 2) + 1  # odd, for the filters
    first, second = (np.max, np.min) if ink == "dark" else (np.min, np.max)
    # The light goes on beyond the border as at the border: without that, the filters would
    # see a valley or a peak there that is not in the light, and put ink along the edge.
    padded = np.pad(np.asarray(small), size, mode="edge")
    level = window_extreme(window_extreme(padded, size, first), size, second)
    return level[size : size + small.height, size : size + small.width]


def window_extreme(values: np.ndarray, size: int, extreme: Callable) -> np.ndarray:
    """`extreme` (np.max or np.min) of the size x size window around each value, the edges
    repeated past the border: along one axis, then the other, which gives the same values in
    2 * size steps a value instead of size ** 2 (PIL's MaxFilter and MinFilter, which took
    most of a photo's preparation)."""
    for axis in (0, 1):
        padding = [(0, 0), (0, 0)]
        padding[axis] = (size // 2, size // 2)
        windows = sliding_window_view(np.pad(values, padding, mode="edge"), size, axis=axis)
        values = extreme(windows, axis=-1)
    return values


def light_ink_on_dark(gray: np.ndarray) -> np.ndarray:
    """Ink light, background dark (0), as in MNIST, under even or uneven light.

    Light falling on paper multiplies its brightness, so dark ink is what the paper reflects
    less than the paper around it, 1 - gray / paper: the same under a shadow as in full light.
    Light ink on a dark background is what is brighter than the background around it.
    """
    ink = "dark" if dark_ink(gray) else "light"
    level = Image.fromarray(background(working_copy(gray), ink), mode="F")
    level = np.asarray(level.resize(gray.shape[::-1], Image.BILINEAR), dtype=np.float32)
    if ink == "dark":
        return np.clip(1 - gray / np.maximum(level, 1), 0, 1) * 255
    return np.clip(gray - level, 0, 255)


def dark_ink(gray: np.ndarray) -> bool:
    """Whether the ink is darker than the background: in each cell of a GRID x GRID grid, the
    strokes are the tail of the brightness values; over the image, the dark tails are longer
    than the light ones. (Not the border's brightness: a shadow can darken most of a page's
    border.)"""
    height, width = gray.shape
    row_edges = np.linspace(0, height, min(GRID, height) + 1).astype(int)
    column_edges = np.linspace(0, width, min(GRID, width) + 1).astype(int)
    dark_tails = light_tails = 0.0
    for top, bottom in itertools.pairwise(row_edges):
        for left, right in itertools.pairwise(column_edges):
            low, middle, high = np.percentile(gray[top:bottom, left:right], [2, 50, 98])
            dark_tails += middle - low
            light_tails += high - middle
    return dark_tails > light_tails


def crop_to_ink(image: np.ndarray) -> np.ndarray:
    """The bounding box of the ink; raises ValueError if there is none (a blank canvas)."""
    if image.max() <= INK_THRESHOLD:
        raise ValueError("no ink found (a blank image?)")
    rows, columns = np.nonzero(image > max(INK_THRESHOLD, image.max() * RELATIVE_INK))
    return image[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]


def fit_box(image: np.ndarray, box: int = DIGIT_BOX) -> np.ndarray:
    """Scale so that the longer side is `box` pixels, keeping the aspect ratio, anti-aliased."""
    height, width = image.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize(size, Image.LANCZOS)
    return np.clip(np.asarray(resized), 0, 255)


def centre_by_mass(image: np.ndarray, side: int = mnist.IMAGE_SIDE) -> np.ndarray:
    """Paste into a side x side black image so that the centre of mass is at the centre."""
    height, width = image.shape
    rows, columns = np.indices(image.shape)
    mass = image.sum()
    centre_row, centre_column = (rows * image).sum() / mass, (columns * image).sum() / mass
    # side / 2, not (side - 1) / 2: where MNIST's digits have their centre of mass (14, 14).
    top = int(np.clip(round(side / 2 - centre_row), 0, side - height))
    left = int(np.clip(round(side / 2 - centre_column), 0, side - width))
    canvas = np.zeros((side, side), np.float32)
    canvas[top : top + height, left : left + width] = image
    return canvas


def prepare(path: Path) -> np.ndarray:
    """The image at `path` as a 28x28 uint8 MNIST-style digit (light on dark, centred)."""
    image = light_ink_on_dark(read_grayscale(path))
    try:
        digit = crop_to_ink(image)
    except ValueError as error:
        raise PipelineError(f"{path}: {error}") from None
    # Stretch the ink to full brightness, as MNIST's pen strokes are.
    digit = digit * (255 / digit.max())
    return np.round(centre_by_mass(fit_box(digit))).astype(np.uint8)
