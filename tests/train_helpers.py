"""Shared by the training tests: a tiny learnable JPEG dataset and fast CPU overrides."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

# One clearly different colour per class, so a tiny CNN learns the task in a few epochs.
PALETTE = ((220, 40, 40), (40, 200, 60), (50, 70, 230))

# Small, single-threaded, CPU-only settings shared by every training test.
FAST = [
    "data.crop=32",
    "data.val_resize=32",
    "data.num_threads=1",
    "model.name=tiny",
    "train.device=cpu",
    "train.batch_size=8",
    "train.progress=false",
    "optim.lr=0.05",
    "schedule.name=cosine",
]


def write_colour_dataset(root: Path, train_per_class: int = 16, val_per_class: int = 4, seed: int = 0) -> Path:
    """``root/{train,val}/class_k/*.JPEG``: class colour plus noise, 32-48 px sides."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for k, colour in enumerate(PALETTE):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = (int(v) for v in rng.integers(32, 49, size=2))
                img = np.clip(np.array(colour) + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:03d}.JPEG", quality=90)
    return root


def overrides(root: Path, cache: Path, *extra: str) -> List[str]:
    return [f"data.root={root}", f"data.cache_dir={cache}", *FAST, *extra]
