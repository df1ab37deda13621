"""Generate ImageNet-layout JPEG folders for tests, demos and benchmarks.

``OUT_DIR/train/<class>/*.JPEG`` and ``OUT_DIR/val/<class>/*.JPEG``, in three modes:

* ``small``: tiny synthetic images (64-160 px, a few KB): fast enough for unit tests.
* ``imagenet-like``: photographic crops of scikit-learn's two sample photos at ImageNet's
  resolution and file-size statistics (mean ~400x350 px, ~110 KB), so that decode cost,
  and therefore what pruning saves, is realistic.
* ``digits``: scikit-learn's 8x8 handwritten digits, upscaled: real data for an accuracy check.

Synthetic classes must be *learnable*, or accuracy numbers mean nothing. Every class is a
colour palette (a dominant hue, a secondary hue, saturation, brightness) painted as an
isotropic blob texture of a class-specific scale. These are global properties, so they
survive random-resized-crop and flips, the augmentations of the training recipe. Within a
class, hue, scale, mixing fraction and the blob layout vary per image.

Two knobs make ``small`` harder, so that accuracy can tell policies apart (both off by
default, which leaves the images byte-identical to earlier versions):

* ``hard_fraction``: that share of the images, train and val alike, are *hard examples*:
  the pattern of another, randomly chosen class is blended in at 25-45% strength, so the
  colours are a mixture that belongs to neither palette. Learnable (the own class always
  dominates), but only from such examples: a model must see them to get them right.
* ``label_noise``: that share of the *train* images are filed under a wrong class (an image
  of a random other class); val stays clean. Mislabelled images keep a high loss, so a
  policy that prefers high-loss samples (OrderDP, InfoBatch) spends budget on them.

A finished dataset holds ``orderdp_dataset.json``, written last and atomically; a run that
finds a matching one returns at once, and one that finds a half-written dataset of ours
(marked by ``.orderdp_dataset.partial``) regenerates it.
"""
from __future__ import annotations

import argparse
import colorsys
import gzip
import importlib.util
import io
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from orderdp_dali.atomic import write_text_atomic
from orderdp_dali.errors import DatasetError
from orderdp_dali.processes import process_pool

__all__ = ["MODES", "MANIFEST_NAME", "make_dataset", "read_manifest", "main"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

MODES = ("small", "imagenet-like", "digits")
MANIFEST_NAME = "orderdp_dataset.json"
PARTIAL_NAME = ".orderdp_dataset.partial"
MANIFEST_VERSION = 1
# Bump when the rendering changes, so that datasets made by an older generator are not reused.
GENERATOR_VERSION = 1
SPLITS = ("train", "val")

# mode -> (classes, train per class, val per class); None: all digits of the 80/20 split.
DEFAULTS: Dict[str, Tuple[int, Optional[int], Optional[int]]] = {
    "small": (10, 60, 10),
    "imagenet-like": (10, 100, 20),
    "digits": (10, None, None),
}

# Hard examples: the strength of the blended-in pattern of another class (its weight in the
# pixel mix; the own class keeps the rest, so it always dominates).
HARD_BLEND = (0.25, 0.45)

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
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_STREAM = 88  # second seed word of the split's generator (any fixed number)


@dataclass(frozen=True)
class ClassStyle:
    """The look of one synthetic class (hues in [0, 1))."""

    hue: float
    secondary_offset: float
    cycles: float
    brightness: float
    saturation: float


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to render one chunk of images (picklable)."""

    mode: str
    seed: int
    split_id: int
    label: int
    style: Optional[ClassStyle]
    paths: Tuple[str, ...]
    start: int  # index within the class and split, seeds the per-image generator
    digits: Optional[np.ndarray] = None  # (k, 8, 8) float images for mode "digits"
    others: Tuple[ClassStyle, ...] = ()  # every class's style, when hard examples or label noise need them
    hard_fraction: float = 0.0
    label_noise: float = 0.0  # train split only


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


def class_names(mode: str, num_classes: int) -> List[str]:
    """Folder names; zero-padded so that sorted order (ImageFolder's label order) is index order."""
    if mode == "digits":
        return [f"digit_{c}" for c in range(num_classes)]
    width = max(3, len(str(num_classes - 1)))
    return [f"c{c:0{width}d}_synthetic" for c in range(num_classes)]


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
def _sample_photos() -> Tuple[np.ndarray, ...]:
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


def _render_photo(rng: np.random.Generator, style: ClassStyle) -> Image.Image:
    """A random crop of a sample photo at an ImageNet-like size, blended with the class texture."""
    photos = _sample_photos()
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


def _render_small(
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


def _render_digit(image8: np.ndarray) -> Image.Image:
    """An 8x8 digit (ink 0..16) as white-on-black RGB, bilinearly upscaled."""
    gray = Image.fromarray(np.round(image8 * (255.0 / 16.0)).astype(np.uint8), mode="L")
    return gray.resize((DIGITS_SIZE, DIGITS_SIZE), Image.BILINEAR).convert("RGB")


def _pick_other(rng: np.random.Generator, label: int, num_classes: int) -> int:
    """A uniformly random class other than ``label``."""
    return (label + 1 + int(rng.integers(num_classes - 1))) % num_classes


def _run_job(job: _Job) -> List[Tuple[int, int, int, int, int]]:
    """Render and write one chunk; returns (bytes, width, height, hard, mislabelled) per file."""
    out = []
    for k, path in enumerate(job.paths):
        # One generator per image: the output does not depend on chunking or worker count.
        rng = np.random.default_rng([job.seed, job.split_id, job.label, job.start + k])
        style, blend, shown = job.style, None, job.label  # shown: the class the image depicts
        # Drawn only when a knob is on, so that the default images stay as they were.
        mislabelled = job.label_noise > 0 and rng.random() < job.label_noise
        if mislabelled:
            shown = _pick_other(rng, job.label, len(job.others))
            style = job.others[shown]
        hard = job.hard_fraction > 0 and rng.random() < job.hard_fraction
        if hard:
            blend = (job.others[_pick_other(rng, shown, len(job.others))], float(rng.uniform(*HARD_BLEND)))
        if job.digits is not None:
            image, quality = _render_digit(job.digits[k]), DIGITS_QUALITY
        elif style is not None and job.mode == "small":
            image, quality = _render_small(rng, style, blend), SMALL_QUALITY
        elif job.style is not None and job.mode == "imagenet-like":
            image, quality = _render_photo(rng, job.style), PHOTO_QUALITY
        else:
            raise ValueError(f"job for mode {job.mode!r} lacks its style or digit images")
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        data = buf.getvalue()
        with open(path, "wb") as f:
            f.write(data)
        out.append((len(data), image.width, image.height, int(hard), int(mislabelled)))
    return out


# ----------------------------------------------------------------------------- planning


def _load_digits() -> Tuple[np.ndarray, np.ndarray]:
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


def _digits_split(
    seed: int, num_classes: int, train_per_class: Optional[int], val_per_class: Optional[int]
) -> Dict[str, List[np.ndarray]]:
    """Seeded stratified 80/20 split: split -> per-class (k, 8, 8) image arrays."""
    images, labels = _load_digits()
    rng = np.random.default_rng([seed, DIGITS_SPLIT_STREAM])
    split: Dict[str, List[np.ndarray]] = {"train": [], "val": []}
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(DIGITS_VAL_FRACTION * len(idx)))
        split["val"].append(images[idx[:n_val]])
        split["train"].append(images[idx[n_val:]])
    for name, option, want in (
        ("train", "--train-per-class", train_per_class),
        ("val", "--val-per-class", val_per_class),
    ):
        have = min(len(a) for a in split[name])
        if want is not None:
            if want > have:
                raise ValueError(
                    f"{option} must be <= {have} for mode 'digits' "
                    f"(the {name} split has that many per class), got {want}"
                )
            split[name] = [a[:want] for a in split[name]]
    return split


def _chunks(n: int, size: int) -> Iterator[Tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _plan_jobs(root: Path, request: Dict[str, Any], split: Optional[Dict[str, List[np.ndarray]]]) -> List[_Job]:
    """Create the class folders and cut the work into chunks (``split``: digits only)."""
    mode, seed, num_classes = request["mode"], request["seed"], request["num_classes"]
    names = class_names(mode, num_classes)
    chunk = 256 if mode == "digits" else (64 if mode == "small" else 16)
    jobs: List[_Job] = []
    if split is not None:
        counts = {s: [len(a) for a in split[s]] for s in SPLITS}
    else:
        styles = class_styles(num_classes)
        counts = {"train": [request["train_per_class"]] * num_classes, "val": [request["val_per_class"]] * num_classes}
    for split_id, split_name in enumerate(SPLITS):
        for label, name in enumerate(names):
            folder = root / split_name / name
            folder.mkdir(parents=True, exist_ok=True)
            for start, stop in _chunks(counts[split_name][label], chunk):
                paths = tuple(str(folder / f"{name}_{split_name}_{i:05d}.JPEG") for i in range(start, stop))
                if split is not None:
                    jobs.append(
                        _Job(mode, seed, split_id, label, None, paths, start, split[split_name][label][start:stop])
                    )
                else:
                    hard, noise = request.get("hard_fraction", 0.0), request.get("label_noise", 0.0)
                    noise = noise if split_name == "train" else 0.0
                    others = tuple(styles) if hard or noise else ()
                    jobs.append(
                        _Job(mode, seed, split_id, label, styles[label], paths, start, None, others, hard, noise)
                    )
    return jobs


# ----------------------------------------------------------------------------- manifest


def read_manifest(out_dir: PathLike) -> Optional[Dict[str, Any]]:
    """The manifest of a finished dataset in ``out_dir``, or None if there is none (or it is unreadable)."""
    try:
        with open(Path(out_dir) / MANIFEST_NAME, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _resolve_request(
    mode: str,
    num_classes: Optional[int],
    train_per_class: Optional[int],
    val_per_class: Optional[int],
    seed: int,
    hard_fraction: float = 0.0,
    label_noise: float = 0.0,
) -> Dict[str, Any]:
    """Validate the options and fill in the mode's defaults; messages name the CLI option."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    d_classes, d_train, d_val = DEFAULTS[mode]
    num_classes = d_classes if num_classes is None else num_classes
    train_per_class = d_train if train_per_class is None else train_per_class
    val_per_class = d_val if val_per_class is None else val_per_class
    max_classes = 10 if mode == "digits" else MAX_SYNTHETIC_CLASSES
    for option, value, lo in (
        ("--classes", num_classes, 1),
        ("--train-per-class", train_per_class, 1),
        ("--val-per-class", val_per_class, 1),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo):
            raise ValueError(f"{option} must be an integer >= {lo}, got {value!r}")
    if num_classes > max_classes:
        raise ValueError(f"--classes must be <= {max_classes} for mode {mode!r}, got {num_classes}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    knobs = {}  # in the request only when on, so that datasets made before the knobs still match
    for key, option, value, hi in (
        ("hard_fraction", "--hard-fraction", hard_fraction, 1.0),
        ("label_noise", "--label-noise", label_noise, 0.5),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0.0 <= value <= hi:
            raise ValueError(f"{option} must be a number in [0, {hi}], got {value!r}")
        if value:
            if mode != "small":
                raise ValueError(f"{option} applies to mode 'small' only, got mode {mode!r}")
            if num_classes < 2:
                raise ValueError(f"{option} needs --classes >= 2, got {num_classes}")
            knobs[key] = float(value)
    return {
        "version": MANIFEST_VERSION,
        "generator": GENERATOR_VERSION,
        "mode": mode,
        "num_classes": int(num_classes),
        "train_per_class": None if train_per_class is None else int(train_per_class),
        "val_per_class": None if val_per_class is None else int(val_per_class),
        "seed": int(seed),
        **knobs,
    }


def _prepare_out_dir(root: Path, request: Dict[str, Any], force: bool) -> None:
    """Refuse to write over something that is not a dataset of ours, then clear our old output."""
    if root.exists() and not root.is_dir():
        raise DatasetError(f"output path {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    entries = set(os.listdir(root))
    ours = set(SPLITS) | {MANIFEST_NAME, PARTIAL_NAME, "tar"}  # tar/: make-data --format tar
    if not force and entries:
        manifest = read_manifest(root)
        if manifest is not None:
            theirs = {k: manifest.get("request", {}).get(k) for k in request}
            raise DatasetError(
                f"{root} holds a different generated dataset ({_describe(theirs)}; asked for "
                f"{_describe(request)}); pass --force (force=True) to regenerate it"
            )
        if PARTIAL_NAME not in entries or not entries <= ours:
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise DatasetError(
                f"{root} is not empty and holds no generated dataset ({shown}); choose another "
                f"folder or pass --force (force=True) to replace its train/ and val/"
            )
        log.warning("%s holds a half-written dataset; regenerating it", root)
    for name in ours:
        path = root / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    others = entries - ours
    if others:
        log.warning("leaving %d unrelated entries in %s untouched", len(others), root)


def _describe(request: Dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={request.get(k)}"
        for k in ("mode", "num_classes", "train_per_class", "val_per_class", "seed", "generator")
    ) + "".join(f", {k}={request[k]}" for k in ("hard_fraction", "label_noise") if request.get(k))


def make_dataset(
    out_dir: PathLike,
    mode: str = "small",
    num_classes: Optional[int] = None,
    train_per_class: Optional[int] = None,
    val_per_class: Optional[int] = None,
    seed: int = 0,
    workers: Optional[int] = None,
    force: bool = False,
    progress: bool = False,
    hard_fraction: float = 0.0,
    label_noise: float = 0.0,
) -> Path:
    """Write an ImageNet-layout dataset to ``out_dir`` (or reuse a matching finished one).

    Args:
        out_dir: output folder; gets ``train/``, ``val/`` and ``orderdp_dataset.json``.
        mode: ``"small"``, ``"imagenet-like"`` or ``"digits"``.
        num_classes: classes (default 10; at most 10 for digits, 1728 otherwise).
        train_per_class: train images per class (defaults: small 60, imagenet-like 100,
            digits all of its 80% split, about 143).
        val_per_class: val images per class (defaults: 10, 20, all of the 20% split).
        seed: seeds every image; the same arguments give byte-identical files.
        workers: processes to render with (default ``os.cpu_count()``; 1 renders inline).
        force: regenerate even if a matching dataset exists, and replace ``train/`` and
            ``val/`` of a folder that holds something else.
        progress: show a progress bar on stderr.
        hard_fraction: mode ``small``: share of train and val images blended with another
            class's pattern at 25-45% strength (hard examples); default 0.
        label_noise: mode ``small``: share of train images filed under a wrong class (an
            image of a random other class); val stays clean; at most 0.5, default 0.

    Returns:
        ``out_dir`` as an absolute Path.

    Raises:
        ValueError: a bad option; the message names it.
        DatasetError: ``out_dir`` holds something else and ``force`` is off.
    """
    request = _resolve_request(mode, num_classes, train_per_class, val_per_class, seed, hard_fraction, label_noise)
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
    root = Path(out_dir).expanduser().absolute()
    manifest = read_manifest(root)
    if not force and manifest is not None and manifest.get("request") == request:
        log.info("reusing the finished dataset in %s (%s)", root, _describe(request))
        return root
    # Validated before anything on disk changes (the digits split can reject the counts).
    digits = None
    if mode == "digits":
        digits = _digits_split(seed, request["num_classes"], request["train_per_class"], request["val_per_class"])
    _prepare_out_dir(root, request, force)
    _write_json_atomic(root / PARTIAL_NAME, {"request": request})

    t0 = time.perf_counter()
    if mode == "imagenet-like":
        _sample_photos()  # load once here, so forked workers inherit it
    jobs = _plan_jobs(root, request, digits)
    total = sum(len(j.paths) for j in jobs)
    stats = np.zeros(3, dtype=np.float64)  # bytes, width, height sums
    hard = {s: 0 for s in SPLITS}
    mislabelled = 0
    with tqdm(total=total, unit="img", desc=f"make-data {mode}", file=sys.stderr, disable=not progress) as bar:
        for job, results in zip(jobs, _map(jobs, min(workers, len(jobs)))):  # map keeps the job order
            sums = np.asarray(results, dtype=np.float64).sum(axis=0)
            stats += sums[:3]
            hard[SPLITS[job.split_id]] += int(sums[3])
            mislabelled += int(sums[4])
            bar.update(len(results))
    seconds = time.perf_counter() - t0

    counts = {
        s: sum(len(j.paths) for j in jobs if SPLITS[j.split_id] == s) for s in SPLITS
    }
    manifest = {
        "format": "orderdp-dali generated dataset",
        "request": request,
        "classes": class_names(mode, request["num_classes"]),
        "counts": counts,
        "stats": {
            "files": total,
            "mean_bytes": stats[0] / total,
            "mean_width": stats[1] / total,
            "mean_height": stats[2] / total,
        },
        "seconds": round(seconds, 3),
    }
    if request.get("hard_fraction") or request.get("label_noise"):
        manifest["difficulty"] = {"hard": hard, "mislabelled_train": mislabelled}
    if mode != "digits":
        manifest["class_styles"] = [asdict(s) for s in class_styles(request["num_classes"])]
    _write_json_atomic(root / MANIFEST_NAME, manifest)
    (root / PARTIAL_NAME).unlink()
    log.info("wrote %d images to %s in %.1f s", total, root, seconds)
    return root


def _map(jobs: Sequence[_Job], workers: int) -> Iterator[List[Tuple[int, int, int, int, int]]]:
    """Run jobs inline (one worker) or in a process pool, yielding results as they finish."""
    if workers <= 1:
        for job in jobs:
            yield _run_job(job)
        return
    with process_pool(workers) as pool:  # spawned: this may run beside DALI's threads
        yield from pool.map(_run_job, jobs)


# ----------------------------------------------------------------------------- CLI


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    return parse


def _fraction(hi: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not 0.0 <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [0, {hi}], got {value}")
        return value

    return parse


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderdp-dali make-data",
        description="Generate an ImageNet-layout folder (OUT_DIR/{train,val}/<class>/*.JPEG).",
        epilog="Difficulty of mode small: every class is a colour palette with a blob texture; up to 24 "
               "classes get hues 360/N degrees apart, so more classes differ by finer colour steps "
               "(24: 15 degrees; beyond 24, classes share hues and differ by saturation, brightness, "
               "texture scale or a second hue). "
               "--hard-fraction adds hard examples, --label-noise wrong labels. The quick start "
               "(configs/bench_cpu_demo.yaml) uses 24 classes and --hard-fraction 0.2, no label noise.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    p.add_argument("--mode", choices=MODES, default="small",
                   help="small: tiny synthetic images; imagenet-like: photo-like ~110 KB JPEGs at "
                        "ImageNet resolution; digits: scikit-learn's handwritten digits (default: small)")
    p.add_argument("--classes", type=_int_at_least(1), default=None, help="number of classes (default 10)")
    p.add_argument("--train-per-class", type=_int_at_least(1), default=None,
                   help="train images per class (default: small 60, imagenet-like 100, digits all ~143)")
    p.add_argument("--val-per-class", type=_int_at_least(1), default=None,
                   help="val images per class (default: small 10, imagenet-like 20, digits all ~36)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    p.add_argument("--hard-fraction", type=_fraction(1.0), default=0.0, metavar="F",
                   help="small only: share F of train and val images that are hard examples, their class "
                        "pattern blended with a random other class's at 25-45%% strength (default 0)")
    p.add_argument("--label-noise", type=_fraction(0.5), default=0.0, metavar="F",
                   help="small only: share F of train images filed under a wrong class (val stays clean); "
                        "mislabelled images keep a high loss, which works against policies that prefer "
                        "high-loss samples, such as OrderDP and InfoBatch (default 0)")
    p.add_argument("--workers", type=_int_at_least(1), default=None,
                   help=f"worker processes (default: all {os.cpu_count()} CPUs)")
    p.add_argument("--format", choices=("folder", "tar"), default="folder",
                   help="tar: also write the dataset as tar shards OUT_DIR/tar/<split>/*.tar (data.dataset=tar)")
    p.add_argument("--shard-size", type=_int_at_least(1), default=1000, help="samples per tar shard (default 1000)")
    p.add_argument("--force", action="store_true",
                   help="regenerate even if a matching dataset exists, replacing OUT_DIR's train/ and val/")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed the message (or --help)
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        root = make_dataset(
            args.out_dir,
            mode=args.mode,
            num_classes=args.classes,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            seed=args.seed,
            workers=args.workers,
            force=args.force,
            progress=True,
            hard_fraction=args.hard_fraction,
            label_noise=args.label_noise,
        )
    except (ValueError, OSError) as e:  # DatasetError is a ValueError
        print(f"orderdp-dali make-data: error: {e}", file=sys.stderr)
        return 2
    if args.format == "tar":
        from orderdp_dali.make_shards import folder_to_shards

        try:
            shards = folder_to_shards(root, root / "tar", shard_size=args.shard_size)
        except (ValueError, OSError) as e:
            print(f"orderdp-dali make-data: error: {e}", file=sys.stderr)
            return 2
        print(f"tar shards: {', '.join(f'{s} {len(v)}' for s, v in shards.items())} in {root / 'tar'}")
    manifest = read_manifest(root) or {}
    counts, stats = manifest.get("counts", {}), manifest.get("stats", {})
    print(f"dataset: {root}")
    print(f"  mode {args.mode}, {len(manifest.get('classes', []))} classes, "
          f"train {counts.get('train')} images, val {counts.get('val')} images")
    if manifest.get("difficulty"):
        diff = manifest["difficulty"]
        print(f"  hard examples: train {diff['hard']['train']}, val {diff['hard']['val']}; "
              f"mislabelled train images: {diff['mislabelled_train']}")
    if stats:
        print(f"  mean file size {stats['mean_bytes'] / 1000:.1f} KB, "
              f"mean resolution {stats['mean_width']:.0f} x {stats['mean_height']:.0f} px (w x h)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
