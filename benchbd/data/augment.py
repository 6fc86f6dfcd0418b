"""Device-side input pipelines: uint8 NHWC batches in, float NCHW in [0, 1] out.

Images stay uint8 on the device; cropping and flipping index the uint8 tensor directly, and the
NHWC -> NCHW permute yields channels_last memory for free.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1] (channels_last memory)."""
    return x.permute(0, 3, 1, 2).float().div_(255)


def to_image(x: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3], rounded: exact on to_float's output."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop of the original size from a zero-padded image, then a random horizontal flip."""
    b, h, w, _ = x.shape
    dev = x.device
    padded = F.pad(x, (0, 0, pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=gen)
    flip = torch.rand(b, 1, device=dev, generator=gen) < 0.5
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip, w - 1 - cols, cols) + ox
    rows = torch.arange(h, device=dev) + oy
    return padded[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]


class SmallImages:
    """32x32 datasets (cifar10, gtsrb): 4-pixel zero-pad crop + flip, no normalisation."""

    mean = None
    std = None

    def __init__(self, pad: int = 4):
        self.pad = pad

    def train(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return to_float(random_crop_flip(x, self.pad, gen))

    def test(self, x: torch.Tensor) -> torch.Tensor:
        return to_float(x)


class LargeImages:
    """ImageNet-style: stored at 256x256; RandomResizedCrop(224, scale 0.2-1) + flip for training,
    centre crop 224 for testing; ImageNet mean/std applied inside the model."""

    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, scale, ratio

    def train(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, h, w, _ = x.shape
        dev = x.device
        area = torch.empty(b, device=dev).uniform_(*self.scale, generator=gen)
        log_ratio = torch.empty(b, device=dev).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]), generator=gen)
        ratio = log_ratio.exp()
        # Width and height as fractions of the image; clamped to the image instead of torchvision's
        # retry loop, which ends in a centre crop after 10 misses.
        cw = (area * ratio).sqrt().clamp(max=1.0)
        ch = (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, device=dev, generator=gen) * 2 - 1) * (1 - cw)
        cy = (torch.rand(b, device=dev, generator=gen) * 2 - 1) * (1 - ch)
        flip = torch.where(torch.rand(b, device=dev, generator=gen) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2] = cw * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = ch, cy
        grid = F.affine_grid(theta, (b, 3, self.size, self.size), align_corners=False)
        return F.grid_sample(to_float(x), grid, mode="bilinear", padding_mode="border", align_corners=False)

    def test(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return to_float(x[:, top : top + self.size, left : left + self.size])


def cutmix(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix with lambda ~ Beta(1, 1): paste a box from a shuffled copy of the batch.

    Returns the mixed batch, both label sets and lambda reset to the kept area."""
    b, _, h, w = x.shape
    lam = float(torch.rand(1, generator=gen, device=gen.device))
    perm = torch.randperm(b, device=x.device, generator=gen)
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    centre = torch.randint(0, h * w, (1,), generator=gen, device=gen.device).item()
    cy, cx = divmod(centre, w)
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, y, y[perm], kept
