"""ResNet-34 for imagenet12 (SPEC section 4) and PreAct-ResNet-18 (the BackdoorBench default)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet34 as tv_resnet34

from .base import SplitNet, upsampling_decoder
from .registry import MODELS


class ResNet34(SplitNet):
    """torchvision's ResNet-34; stem through layer4[1] (512x7x7 at 224), head = layer4[2] + pool + FC."""

    default_split = 15
    stage_ends = (3, 7, 13, 16)

    def __init__(self, num_classes: int, dropout: float = 0.0, mean=None, std=None, input_size: int = 224):
        net = tv_resnet34(num_classes=num_classes)
        blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
        if dropout > 0:
            for block in blocks:  # dropout between the block's activation and its second conv
                block.conv2 = nn.Sequential(nn.Dropout(dropout), block.conv2)
        units = [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), *blocks]
        super().__init__(units, nn.Sequential(net.avgpool, nn.Flatten(), net.fc), mean, std, input_size)

    def decoder(self, split: int) -> nn.Module:
        channels, height, _ = self.stem_shape(split)
        layers = max(1, round(torch.log2(torch.tensor(self.input_size / height)).item()))
        # The T&R ImageNet decoder: InstanceNorm + ReLU after the 2nd and 4th layers only.
        return upsampling_decoder(channels, layers, norm_after=(2, 4), relu_after=lambda i: i in (2, 4))


@MODELS.register("resnet34")
def resnet34(num_classes: int, dropout: float = 0.0, mean=None, std=None, input_size: int = 224) -> ResNet34:
    """ResNet-34, T&R split 15 (through layer4[1]): the imagenet12 model."""
    return ResNet34(num_classes, dropout, mean, std, input_size)


class PreActBasic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        residual = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + residual


class PreActResNet18(SplitNet):
    default_split = 7
    stage_ends = (2, 4, 6, 8)

    def __init__(self, num_classes: int, dropout: float = 0.0, mean=None, std=None, input_size: int = 32):
        units: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False)]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            units += [PreActBasic(cin, cout, stride, dropout), PreActBasic(cout, cout, 1, dropout)]
            cin = cout
        tail = nn.Sequential(nn.BatchNorm2d(512), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))
        super().__init__(units, tail, mean, std, input_size)


@MODELS.register("preact_resnet18", aliases=("preactresnet18", "preact-resnet18"))
def preact_resnet18(num_classes: int, dropout: float = 0.0, mean=None, std=None, input_size: int = 32) -> PreActResNet18:
    """PreAct-ResNet-18 (BackdoorBench's default), split 7 (through layer4[0])."""
    return PreActResNet18(num_classes, dropout, mean, std, input_size)
