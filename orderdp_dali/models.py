"""Classification models by name: torchvision's, CIFAR-style ResNets and a tiny CNN for CPU tests.

* any torchvision classification model (``resnet50``, ``resnet18``, ``mobilenet_v3_small``,
  ...), randomly initialised with ``num_classes`` outputs;
* ``cifar_resnet18/34/50/101``: torchvision's ResNet with the stem adapted to 32x32 inputs
  (a 3x3 stride-1 first convolution and no max-pool, as in the CIFAR literature), so the
  last stage still sees 4x4 feature maps;
* ``tiny``: three conv-BN-ReLU blocks and a linear head (~25k parameters), for fast tests.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["build_model", "cifar_resnet", "TinyCNN"]


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
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"Unknown model {name!r}: not a torchvision classification model, 'tiny' or 'cifar_resnetNN'")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
