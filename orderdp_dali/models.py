"""Classification models by name: torchvision's, timm's, CIFAR-style ResNets and a tiny CNN for CPU tests.

All are randomly initialised with ``num_classes`` outputs (nothing is downloaded):

* any torchvision classification model (``resnet50``, ``resnet18``, ``mobilenet_v3_small``,
  ...);
* any timm model as ``timm/<name>`` (``timm/resnet50d``, ``timm/convnext_tiny``, ...; list
  the names with ``timm.list_models("resnet*")``), built with ``pretrained=False``;
* ``cifar_resnet18/34/50/101``: torchvision's ResNet with the stem adapted to 32x32 inputs
  (a 3x3 stride-1 first convolution and no max-pool, as in the CIFAR literature), so the
  last stage still sees 4x4 feature maps;
* ``tiny``: three conv-BN-ReLU blocks and a linear head (~25k parameters), for fast tests.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional, Tuple

import torch
from torch import nn

from orderdp_dali.model_names import COMPILE_MODES, TIMM_PREFIX, check_timm_name

__all__ = [
    "COMPILE_MODES",
    "TIMM_PREFIX",
    "TinyCNN",
    "build_model",
    "check_timm_name",
    "cifar_resnet",
    "compile_model",
    "fixed_input_size",
    "timm_model",
]



class TinyCNN(nn.Module):
    """conv(3->16)-conv(16->32, /2)-conv(32->64, /2), global average pool, linear head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers = []
        width_in = 3
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            layers += [
                nn.Conv2d(width_in, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            width_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def cifar_resnet(depth: int, num_classes: int) -> nn.Module:
    """torchvision ``resnet{depth}`` with a 3x3/1 stem convolution and no max-pool (32x32 inputs)."""
    import torchvision

    builders = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101"}
    if depth not in builders:
        raise ValueError(f"Invalid CIFAR ResNet depth: {depth!r} (choose one of {sorted(builders)})")
    model = torchvision.models.get_model(builders[depth], weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, num_classes: int) -> nn.Module:
    """The randomly initialised model ``name`` with ``num_classes`` outputs.

    Raises:
        ValueError: unknown name or ``num_classes < 1``.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"Invalid num_classes: {num_classes!r} (need an int >= 1)")
    if name == "tiny":
        return TinyCNN(num_classes)
    if name.startswith("cifar_resnet"):
        depth = name[len("cifar_resnet"):]
        if not depth.isdigit():
            raise ValueError(f"Unknown model {name!r}")
        return cifar_resnet(int(depth), num_classes)
    if name.startswith(TIMM_PREFIX):
        return timm_model(name, num_classes)
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(
            f"Unknown model {name!r}: not a torchvision classification model, 'tiny', 'cifar_resnetNN' "
            f"or {TIMM_PREFIX}<a timm model>"
        )
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def timm_model(name: str, num_classes: int) -> nn.Module:
    """timm's model ``timm/<architecture>``, randomly initialised (``pretrained=False``: no download)."""
    check_timm_name(name)
    import timm

    return timm.create_model(name[len(TIMM_PREFIX):], pretrained=False, num_classes=num_classes)


def fixed_input_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """(height, width) when ``model`` only takes inputs of that size (a timm model whose
    ``pretrained_cfg`` says ``fixed_input_size``, e.g. a ViT's patch grid), else ``None``."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not cfg.get("fixed_input_size") or not cfg.get("input_size"):
        return None
    height, width = cfg["input_size"][-2:]
    return int(height), int(width)


def compile_model(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """Compile ``model`` in place with ``torch.compile`` (``nn.Module.compile``) and return it.

    In place, as PyTorch advises for a model that is then wrapped in DDP (DDP's hooks stay
    outside the compiled graph, which dynamo splits at the gradient buckets): the module
    keeps its own ``state_dict`` keys (no ``_orig_mod.`` prefix), so a checkpoint of a
    compiled run loads into an uncompiled one and back. Compilation itself happens at the
    first forward (and again for a new input shape or for eval mode).

    Raises:
        ValueError: ``mode`` is not one of :data:`COMPILE_MODES`, or ``device`` is the CPU
            and no C++ compiler is found (inductor's CPU kernels are C++: ``$CXX`` or ``g++``).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"Invalid compile mode: {mode!r} (choose one of {', '.join(COMPILE_MODES)})")
    if device.type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if shutil.which(cxx) is None:
            raise ValueError(
                f"torch.compile on the CPU needs a C++ compiler and {cxx!r} is not on the PATH: install g++ "
                "(or point $CXX at one), or leave compilation off"
            )
    model.compile(mode=mode)
    return model
