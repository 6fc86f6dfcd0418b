"""WRN-16-1 as in the official Trap-and-Replace code (SPEC section 4)."""

from __future__ import annotations

import torch
from torch import nn

from .base import SplitNet
from .registry import MODELS


class PreActBlock(nn.Module):
    """Pre-activation basic block, LeakyReLU(0.1), conv bias on, optional dropout before conv2.

    Quirk kept from the official code: where widths differ, bn1 + activation are computed but
    unused, and conv1 and the 1x1 shortcut both read the raw input."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = nn.LeakyReLU(0.1, inplace=False)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.LeakyReLU(0.1, inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act1(self.bn1(x))
        if self.shortcut is None:
            out = self.conv1(activated)
            residual = x
        else:
            out = self.conv1(x)
            residual = self.shortcut(x)
        out = self.conv2(self.dropout(self.act2(self.bn2(out))))
        return out + residual


class WideResNet(SplitNet):
    default_split = 5
    stage_ends = (2, 4, 6)

    def __init__(
        self, depth: int = 16, width: int = 1, num_classes: int = 10, dropout: float = 0.0, mean=None, std=None, input_size: int = 32
    ):
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        units: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1)]
        cin = widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                units.append(PreActBlock(cin, cout, stride if i == 0 else 1, dropout))
                cin = cout
        tail = nn.Sequential(
            nn.BatchNorm2d(cin), nn.LeakyReLU(0.1, inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)
        )
        super().__init__(units, tail, mean, std, input_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)


@MODELS.register("wrn16_1", aliases=("wrn-16-1",))
def wrn16_1(num_classes: int, dropout: float = 0.0, mean=None, std=None, input_size: int = 32) -> WideResNet:
    """WRN-16-1 (175,626 parameters at 10 classes), T&R split 5: the cifar10/gtsrb model."""
    return WideResNet(16, 1, num_classes, dropout, mean, std, input_size)
