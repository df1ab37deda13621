"""Write a generated ImageNet-layout dataset (``make-data``'s library side): folders, JPEGs, manifest.

``OUT_DIR/train/<class>/*.JPEG`` and ``OUT_DIR/val/<class>/*.JPEG``, rendered by
:mod:`orderdp_dali.synthetic_images` in chunks, inline or in a process pool; every image
has its own seeded generator, so the files do not depend on the chunking or the worker count.
A finished dataset holds ``orderdp_dataset.json``, written last and atomically; a run that
finds a matching one returns at once, and one that finds a half-written dataset of ours
(marked by ``.orderdp_dataset.partial``) regenerates it.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from orderdp_dali.atomic import write_text_atomic
from orderdp_dali.errors import DatasetError
from orderdp_dali.processes import process_pool
from orderdp_dali.synthetic_images import (
    DIGITS_QUALITY,
    MAX_SYNTHETIC_CLASSES,
    PHOTO_QUALITY,
    SMALL_QUALITY,
    ClassStyle,
    class_styles,
    load_digits,
    render_digit,
    render_photo,
    render_small,
    sample_photos,
)

__all__ = ["DEFAULTS", "MANIFEST_NAME", "MODES", "PARTIAL_NAME", "class_names", "make_dataset", "read_manifest"]

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
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_STREAM = 88  # second seed word of the split's generator (any fixed number)


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


def class_names(mode: str, num_classes: int) -> List[str]:
    """Folder names; zero-padded so that sorted order (ImageFolder's label order) is index order."""
    if mode == "digits":
        return [f"digit_{c}" for c in range(num_classes)]
    width = max(3, len(str(num_classes - 1)))
    return [f"c{c:0{width}d}_synthetic" for c in range(num_classes)]


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
            image, quality = render_digit(job.digits[k]), DIGITS_QUALITY
        elif style is not None and job.mode == "small":
            image, quality = render_small(rng, style, blend), SMALL_QUALITY
        elif job.style is not None and job.mode == "imagenet-like":
            image, quality = render_photo(rng, job.style), PHOTO_QUALITY
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


def _digits_split(
    seed: int, num_classes: int, train_per_class: Optional[int], val_per_class: Optional[int]
) -> Dict[str, List[np.ndarray]]:
    """Seeded stratified 80/20 split: split -> per-class (k, 8, 8) image arrays."""
    images, labels = load_digits()
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
        sample_photos()  # load once here, so forked workers inherit it
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

