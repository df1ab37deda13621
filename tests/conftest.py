"""Shared fixtures: small ImageNet-layout folders of real JPEGs, generated per session."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False


def write_jpeg_folder(root: Path, classes: int, per_class: int, seed: int = 0, size=(40, 56)) -> Path:
    """``root/<class>/<i>.JPEG`` with a class-specific colour plus noise, varied sizes."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, size=3)
        for i in range(per_class):
            h = int(size[0] + rng.integers(0, 16))
            w = int(size[1] + rng.integers(0, 16))
            img = np.clip(base + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img_{i:03d}.JPEG", quality=90)
    return root


@pytest.fixture(scope="session")
def jpeg_split(tmp_path_factory) -> Path:
    """A train split: 4 classes x 13 images (52 samples: not a multiple of common batch sizes)."""
    return write_jpeg_folder(tmp_path_factory.mktemp("data") / "train", classes=4, per_class=13)




@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The training tests' colour dataset (3 classes, 16 train + 4 val images each); a module may override it."""
    from train_helpers import write_colour_dataset

    return write_colour_dataset(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A per-module folder for index caches."""
    return tmp_path_factory.mktemp("index-cache")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
