"""Model names a config may give, checked without building a model (no torch import).

Shared by :mod:`orderdp_dali.config` (which checks ``model.name`` and ``model.compile_mode``
when a config loads) and :mod:`orderdp_dali.models` (which builds the model), so neither
imports the other.
"""
from __future__ import annotations

import difflib

__all__ = ["COMPILE_MODES", "TIMM_LISTING", "TIMM_PREFIX", "check_timm_name"]

# torch.compile's modes (``default`` is torch's own default); here so that configs check them without torch.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TIMM_PREFIX = "timm/"


TIMM_LISTING = "list them with python -c \"import timm; print(timm.list_models('resnet*'))\""


def check_timm_name(name: str) -> None:
    """Raise ValueError unless ``name`` is ``timm/<architecture>`` for an architecture timm knows.

    A pretrained tag (``timm/resnet50d.ra2_in1k``) is refused: models here start from random
    weights, and a tag would only suggest otherwise.
    """
    if not name.startswith(TIMM_PREFIX):
        raise ValueError(f"{name!r} is not a timm model name: write {TIMM_PREFIX}<name>, e.g. timm/resnet50d")
    arch = name[len(TIMM_PREFIX):]
    if not arch:
        raise ValueError(f"{name!r} names no timm model: write {TIMM_PREFIX}<name>, e.g. timm/resnet50d; "
                         f"{TIMM_LISTING}")
    import timm

    if "." in arch and timm.is_model(arch):
        base, tag = arch.split(".", 1)
        raise ValueError(
            f"{name!r} names pretrained weights (tag {tag!r}), but models start from random weights here: "
            f"write {TIMM_PREFIX}{base}"
        )
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(TIMM_PREFIX + c for c in close)}?)" if close else ""
        raise ValueError(f"unknown timm model {arch!r}{hint}; {TIMM_LISTING}")
