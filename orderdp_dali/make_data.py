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

The writer is :mod:`orderdp_dali.synthetic_dataset` and the images are drawn by
:mod:`orderdp_dali.synthetic_images`; their names are re-exported here. The ``make-data``
command line is :mod:`orderdp_dali.cli.make_data` (``python -m orderdp_dali.make_data`` runs it).
"""
from __future__ import annotations

import sys

from orderdp_dali.synthetic_dataset import MANIFEST_NAME, MODES, PARTIAL_NAME, make_dataset, read_manifest
from orderdp_dali.synthetic_images import class_styles

__all__ = ["MODES", "MANIFEST_NAME", "PARTIAL_NAME", "class_styles", "make_dataset", "read_manifest"]


if __name__ == "__main__":  # python -m orderdp_dali.make_data (the GPU check's data step)
    from orderdp_dali.cli.make_data import main

    sys.exit(main())
