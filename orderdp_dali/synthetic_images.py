"""The synthetic images of ``make-data``: one learnable look per class, rendered from a seeded generator.

Every class is a colour palette (a dominant hue, a secondary hue, saturation, brightness)
painted as an isotropic blob texture of a class-specific scale. These are global properties,
so they survive random-resized-crop and flips, the augmentations of the training recipe.
Within a class, hue, scale, mixing fraction and the blob layout vary per image. The renderers
are functions of a ``np.random.Generator``: the same generator gives the same pixels.
The photos and digits they start from are the ones scikit-learn ships.
"""
from __future__ import annotations

import colorsys
import gzip
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from orderdp_dali.errors import DatasetError

__all__ = [
    "DIGITS_QUALITY", "MAX_SYNTHETIC_CLASSES", "PHOTO_QUALITY", "SMALL_QUALITY", "ClassStyle", "class_styles",
    "load_digits", "render_digit", "render_photo", "render_small", "sample_photos",
]

# Palette grid of the synthetic classes: 24 dominant hues x 6 secondary-hue offsets x
# 3 texture scales x 2 brightness x 2 saturation levels = 1728 distinct classes.
NUM_HUES = 24
SECONDARY_OFFSETS = (0.0, 1 / 12, -1 / 12, 1 / 6, -1 / 6, 1 / 2)  # 0.0: single-hue palette
TEXTURE_CYCLES = (2.0, 5.0, 12.0)  # blobs across the short image side
BRIGHTNESS = (0.92, 0.6)
SATURATION = (0.85, 0.5)
MAX_SYNTHETIC_CLASSES = NUM_HUES * len(SECONDARY_OFFSETS) * len(TEXTURE_CYCLES) * len(BRIGHTNESS) * len(SATURATION)

# imagenet-like: JPEG quality and film-grain strength, chosen so that the mean file size
# lands near ImageNet train's ~110 KB at its ~400x350 mean resolution (measured: see the
# manifest's "stats" and the CLI summary).
PHOTO_QUALITY = 95
PHOTO_GRAIN_LUMA = 24.0  # std of per-pixel noise shared by R, G, B (brightness grain)
PHOTO_GRAIN_CHROMA = 5.0  # std of independent per-channel noise (colour grain)
SMALL_QUALITY = 90
DIGITS_QUALITY = 95
DIGITS_SIZE = 32


@dataclass(frozen=True)
class ClassStyle:
    """The look of one synthetic class (hues in [0, 1))."""

    hue: float
    secondary_offset: float
    cycles: float
    brightness: float
    saturation: float


def class_styles(num_classes: int) -> List[ClassStyle]:
    """A distinct palette for each of ``num_classes`` classes (hues spread evenly first)."""
    if not 1 <= num_classes <= MAX_SYNTHETIC_CLASSES:
        raise ValueError(f"num_classes must be in [1, {MAX_SYNTHETIC_CLASSES}], got {num_classes}")
    num_hues = min(num_classes, NUM_HUES)
    radix = (len(SECONDARY_OFFSETS), len(TEXTURE_CYCLES), len(BRIGHTNESS), len(SATURATION))
    styles = []
    for c in range(num_classes):
        h, r = c % num_hues, c // num_hues
        k, f, v, s = np.unravel_index(r, radix)
        # Rotating the texture scale by the hue slot gives the first ``num_hues`` classes
        # different scales too; for a fixed hue slot it stays a bijection, so no duplicates.
        f = (int(f) + h) % len(TEXTURE_CYCLES)
        styles.append(
            ClassStyle(
                hue=h / num_hues,
                secondary_offset=SECONDARY_OFFSETS[int(k)],
                cycles=TEXTURE_CYCLES[f],
                brightness=BRIGHTNESS[int(v)],
                saturation=SATURATION[int(s)],
            )
        )
    return styles


# ----------------------------------------------------------------------------- rendering


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32)


def _blob_mask(rng: np.random.Generator, width: int, height: int, cycles: float, fraction: float) -> np.ndarray:
    """An isotropic random two-phase texture in [0, 1]; ``fraction`` of it is phase 1.

    Smooth noise on a coarse grid, upsampled bicubically: blob size is set by ``cycles``
    (blobs across the short side) and has no preferred position or orientation.
    """
    short = min(width, height)
    gw = max(2, int(round(cycles * width / short)) + 2)
    gh = max(2, int(round(cycles * height / short)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC))
    threshold = np.quantile(field[:: max(1, height // 32), :: max(1, width // 32)], 1.0 - fraction)
    scale = float(field.std()) * 0.15 + 1e-6  # soft edges
    return 1.0 / (1.0 + np.exp(-(field - threshold) / scale))


def _render_pattern(rng: np.random.Generator, style: ClassStyle, width: int, height: int) -> np.ndarray:
    """The class texture as float32 RGB in [0, 1], shape (height, width, 3)."""
    hue = style.hue + rng.uniform(-0.012, 0.012)
    sat = style.saturation * rng.uniform(0.9, 1.1)
    val = style.brightness * rng.uniform(0.92, 1.05)
    primary = _hsv(hue, sat, val)
    if style.secondary_offset == 0.0:  # single hue: a lighter/darker shade of it
        secondary = _hsv(hue, sat * 0.55, val * 0.7)
    else:
        secondary = _hsv(hue + style.secondary_offset, sat, val * 0.9)
    cycles = style.cycles * float(np.exp(rng.uniform(-0.2, 0.2)))
    mask = _blob_mask(rng, width, height, cycles, fraction=rng.uniform(0.2, 0.4))[..., None]
    return primary * (1.0 - mask) + secondary * mask


def _random_size(rng: np.random.Generator, long_lo: int, long_hi: int, p_long_hi: float) -> Tuple[int, int]:
    """ImageNet-like (width, height): mostly 4:3 / 3:2 landscape, some portrait, square, odd."""
    long_side = long_hi if rng.random() < p_long_hi else int(rng.integers(long_lo, long_hi + 1))
    u = rng.random()
    if u < 0.55:
        aspect = 4 / 3
    elif u < 0.75:
        aspect = 3 / 2
    elif u < 0.85:
        aspect = 1.0
    else:
        aspect = float(np.exp(rng.uniform(0.0, np.log(2.0))))
    short_side = max(16, int(round(long_side / aspect)))
    return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


@lru_cache(maxsize=1)
def sample_photos() -> Tuple[np.ndarray, ...]:
    """scikit-learn's shipped sample photos (china.jpg, flower.jpg, 427x640) as uint8 RGB.

    They are read straight from the installed package (cheap); importing sklearn only as
    the fallback costs about 2 s.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DatasetError(
            "mode 'imagenet-like' needs scikit-learn's sample photos: pip install 'orderdp-dali[sample-data]' "
            "(or scikit-learn)"
        )
    folder = Path(spec.origin).parent / "datasets" / "images"
    files = sorted(folder.glob("*.jpg"))
    if files:
        return tuple(np.asarray(Image.open(f).convert("RGB")) for f in files)
    from sklearn.datasets import load_sample_images  # layout changed: use the public API

    return tuple(np.asarray(im, dtype=np.uint8) for im in load_sample_images().images)


def render_photo(rng: np.random.Generator, style: ClassStyle) -> Image.Image:
    """A random crop of a sample photo at an ImageNet-like size, blended with the class texture."""
    photos = sample_photos()
    photo = photos[int(rng.integers(len(photos)))]
    width, height = _random_size(rng, long_lo=200, long_hi=500, p_long_hi=0.5)
    ph, pw = photo.shape[:2]
    # Crop with the target aspect ratio, covering 15-100% of the largest such crop.
    aspect = width / height
    max_w = min(pw, int(ph * aspect))
    max_h = min(ph, int(pw / aspect))
    scale = float(np.sqrt(rng.uniform(0.15, 1.0)))
    cw, ch = max(8, int(max_w * scale)), max(8, int(max_h * scale))
    x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    crop = Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw]).resize((width, height), Image.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    alpha = rng.uniform(0.4, 0.55)
    pattern = _render_pattern(rng, style, width, height) * 255.0
    mixed = np.asarray(crop, np.float32) * (1.0 - alpha) + pattern * alpha
    # Film grain: restores the per-pixel detail that resampling removes, so the JPEG has
    # photographic entropy (and ImageNet-like size) instead of compressing to a few KB.
    mixed += rng.normal(0.0, PHOTO_GRAIN_LUMA, size=(height, width, 1)).astype(np.float32)
    mixed += rng.normal(0.0, PHOTO_GRAIN_CHROMA, size=mixed.shape).astype(np.float32)
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))


def render_small(
    rng: np.random.Generator, style: ClassStyle, blend: Optional[Tuple[ClassStyle, float]] = None
) -> Image.Image:
    """A small class texture; ``blend``: (another class's style, its weight) for a hard example."""
    width, height = _random_size(rng, long_lo=64, long_hi=160, p_long_hi=0.0)
    pixels = _render_pattern(rng, style, width, height)
    if blend is not None:
        other, weight = blend
        pixels = pixels * (1.0 - weight) + _render_pattern(rng, other, width, height) * weight
    pixels = pixels * 255.0
    pixels += rng.normal(0.0, 4.0, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render_digit(image8: np.ndarray) -> Image.Image:
    """An 8x8 digit (ink 0..16) as white-on-black RGB, bilinearly upscaled."""
    gray = Image.fromarray(np.round(image8 * (255.0 / 16.0)).astype(np.uint8), mode="L")
    return gray.resize((DIGITS_SIZE, DIGITS_SIZE), Image.BILINEAR).convert("RGB")


def load_digits() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (1797, 8, 8) float images with ink 0..16, and int labels.

    Reads the CSV shipped inside scikit-learn (what ``load_digits`` reads) to avoid the
    2 s sklearn import; falls back to ``load_digits`` if the file moved.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DatasetError(
            "mode 'digits' needs scikit-learn: pip install 'orderdp-dali[sample-data]' (or scikit-learn)"
        )
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        with gzip.open(csv, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)

