"""A user's photo or scan of a digit, made into what MNIST's images are.

MNIST digits are light ink on black, the ink's bounding box scaled to fit 20x20 pixels
(anti-aliased, aspect ratio kept), then placed in a 28x28 image so that the ink's centre of
mass is at the centre. A digit drawn dark on white, large and off-centre, is predicted wrongly
unless it is made the same: these are the steps, each a small pure function.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages import mnist
from stages.errors import PipelineError

DIGIT_BOX = 20  # MNIST's digits fit 20x20 inside the 28x28 image
# Ink is what stands out from the background by more than this (of 255); below, it is noise.
INK_THRESHOLD = 64


def read_grayscale(path: Path) -> np.ndarray:
    """Any image Pillow reads (PNG, JPEG, BMP, GIF...), any mode, as float grayscale 0-255.

    Transparent pixels count as white paper; a photo's EXIF orientation is applied.
    """
    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found") from None
    except UnidentifiedImageError:
        raise PipelineError(f"{path}: not an image (expected PNG, JPEG, BMP or GIF)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise PipelineError(f"{path}: cannot read the image ({error})") from None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32)


def light_ink_on_dark(gray: np.ndarray) -> np.ndarray:
    """Ink light, background dark (0), as in MNIST: the border tells the background.

    A light border means dark ink on paper, so the image is inverted. The background level
    is then subtracted, so that grey paper becomes black.
    """
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:
        gray = 255 - gray
        border = 255 - border
    return np.clip(gray - np.median(border), 0, 255)


def crop_to_ink(image: np.ndarray) -> np.ndarray:
    """The bounding box of the ink; raises ValueError if there is none (a blank canvas)."""
    rows, columns = np.nonzero(image > INK_THRESHOLD)
    if rows.size == 0:
        raise ValueError("no ink found (a blank image?)")
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
