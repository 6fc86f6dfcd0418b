"""Classifiers that can be cut into a stem and a head, as Trap-and-Replace needs.

A `SplitNet` is normalise -> units[0] (the input conv) -> residual blocks units[1:] -> tail.
Split k puts the input conv and the first k residual blocks in the stem; the head is the rest.
Models take float inputs in [0, 1]; a dataset's mean/std is applied inside the model.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.enabled = mean is not None
        if self.enabled:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.enabled else x


def channel_std(values: Sequence[float] | None, device: torch.device | str = "cpu") -> torch.Tensor | float:
    """A per-channel std as [1, C, 1, 1] on `device` (1 when None): a pixel difference divided by it
    is in the normalised units an official code writes its constants in."""
    return 1.0 if values is None else torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


class SplitNet(nn.Module):
    default_split: int = 0
    stage_ends: tuple[int, ...] = ()  # indices into `units` of the last block of each stage (NAD's attention points)

    def __init__(self, units: Sequence[nn.Module], tail: nn.Module, mean=None, std=None, input_size: int = 32):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.units = nn.ModuleList(units)
        self.tail = tail
        self.input_size = input_size

    @property
    def num_blocks(self) -> int:
        return len(self.units) - 1

    def check_split(self, split: int) -> None:
        if not 0 <= split <= self.num_blocks:
            raise ValueError(f"split={split} must be in [0, {self.num_blocks}] for {type(self).__name__}")

    def stem(self, split: int) -> nn.Sequential:
        """The first `split` residual blocks with the input conv (modules shared with self)."""
        self.check_split(split)
        return nn.Sequential(self.normalize, *self.units[: 1 + split])

    def head(self, split: int) -> nn.Sequential:
        self.check_split(split)
        return nn.Sequential(*self.units[1 + split :], self.tail)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        for unit in self.units:
            x = unit(x)
        return self.tail(x)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's input (the last hidden layer): everything but the tail's final Linear."""
        x = self.normalize(x)
        for unit in self.units:
            x = unit(x)
        return self.tail[:-1](x)

    def _spatial_end(self) -> int:
        """Index into `tail` of its first pooling or flattening module: before it, features keep their map."""
        kinds = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool2d, nn.Flatten)
        return next((i for i, module in enumerate(self.tail) if isinstance(module, kinds)), len(self.tail) - 1)

    def spatial_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before pooling, [N, C, H, W] (the official BTI-DBF's `from_input_to_features`)."""
        x = self.normalize(x)
        for unit in self.units:
            x = unit(x)
        return self.tail[: self._spatial_end()](x)

    def from_spatial_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from `spatial_features`: pooling and the classifier."""
        return self.tail[self._spatial_end() :](features)

    @property
    def classifier(self) -> nn.Module:
        """The final layer of the tail: penultimate features -> logits."""
        return self.tail[-1]

    def stem_shape(self, split: int) -> tuple[int, int, int]:
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self.stem(split)(torch.zeros(1, 3, self.input_size, self.input_size, device=device))
        self.train(was_training)
        return tuple(out.shape[1:])

    def decodable_splits(self) -> list[int]:
        """Splits whose stem output is smaller than the input: the ones a T&R decoder upsamples from."""
        return [split for split in range(self.num_blocks + 1) if self.stem_shape(split)[1] < self.input_size]

    def decoder(self, split: int) -> nn.Module:
        """T&R's image decoder from the stem output back to the input size (the WRN forms of the
        official wideresnet_ae.py). One doubling (WRN split 3 or 4, 32x16x16): ConvT(c->c, k4, s2),
        ReLU, ConvT(c->3, k3, s1), Sigmoid; more: stride-2 ConvT layers halving the channels."""
        channels, height, _ = self.stem_shape(split)
        if height >= self.input_size:
            raise ValueError(f"split={split} keeps the input resolution: no decoder; valid splits {self.decodable_splits()}")
        layers = int(round(math.log2(self.input_size / height)))
        if layers == 1:
            return nn.Sequential(
                nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(channels, 3, kernel_size=3, stride=1, padding=1),
                nn.Sigmoid(),
            )
        return upsampling_decoder(channels, layers)


def upsampling_decoder(
    channels: int, layers: int, norm_after: Sequence[int] = (), relu_after: Callable[[int], bool] | None = None
) -> nn.Sequential:
    """Stride-2 ConvTranspose(k4, p1) layers, halving channels, ending at 3 channels and a Sigmoid.

    By default every layer but the last is followed by ReLU (the WRN decoder of the T&R code);
    `norm_after` adds a parameter-free InstanceNorm after those layers (1-based)."""
    relu_after = relu_after or (lambda i: i < layers)
    mods: list[nn.Module] = []
    c = channels
    for i in range(1, layers + 1):
        out = 3 if i == layers else max(c // 2, 3)
        mods.append(nn.ConvTranspose2d(c, out, kernel_size=4, stride=2, padding=1))
        if i in norm_after:
            mods.append(nn.InstanceNorm2d(out, affine=False))
        if i < layers and relu_after(i):
            mods.append(nn.ReLU(inplace=True))
        c = out
    mods.append(nn.Sigmoid())
    return nn.Sequential(*mods)
