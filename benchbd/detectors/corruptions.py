"""Common corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019) at its five severities,
written in torch on uint8-quantised [0, 1] batches, for TeCo.

The eight that need neither an external asset nor a library outside benchbd's dependencies:
frost reads texture files; glass blur, motion blur, snow, fog, zoom blur and elastic transform
need scikit-image / scipy / Wand code paths, left out here. The severity constants are the
ImageNet-C ones that TeCo's `imagecorruptions` uses (harsh on 32x32: many clean images flip at
severity 1 under the blurs). Pixelate resizes with area averaging and nearest up-sampling where
PIL uses its BOX filter both ways.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SEVERITIES = (1, 2, 3, 4, 5)

GAUSSIAN_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_PHOTONS = (60, 25, 12, 5, 3)
IMPULSE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)
DEFOCUS = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # (disk radius, Gaussian sigma of its alias blur)
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to HSV value
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
JPEG_QUALITY = (25, 18, 15, 10, 7)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats on the uint8 grid, as the corruption library works on uint8 images."""
    return (x.clamp(0, 1) * 255).round() / 255


def gaussian_noise(x, s, gen):
    return x + GAUSSIAN_SIGMA[s - 1] * torch.randn(x.shape, generator=gen, device=gen.device).to(x.device)


def shot_noise(x, s, gen):
    c = SHOT_PHOTONS[s - 1]
    return torch.poisson((x * c).to(gen.device), generator=gen).to(x.device) / c


def impulse_noise(x, s, gen):
    """Salt and pepper on each value independently: `amount` of them, half 1, half 0."""
    u = torch.rand(x.shape, generator=gen, device=gen.device).to(x.device)
    salt = torch.rand(x.shape, generator=gen, device=gen.device).to(x.device) < 0.5
    hit = u < IMPULSE_AMOUNT[s - 1]
    return torch.where(hit, salt.to(x.dtype), x)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = torch.outer(k, k)
    return k / k.sum()


def _disk(radius: int, alias_sigma: float) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).float()
    disk = disk / disk.sum()
    g = _gaussian_kernel(alias_sigma)
    disk = F.conv2d(disk[None, None], g[None, None], padding=g.shape[-1] // 2)[0, 0]
    return disk / disk.sum()


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel 2-D filtering with reflected borders (OpenCV's default, BORDER_REFLECT_101)."""
    r = kernel.shape[-1] // 2
    padded = F.pad(x, (r, r, r, r), mode="reflect")
    weight = kernel.to(x)[None, None].expand(x.shape[1], 1, *kernel.shape)
    return F.conv2d(padded, weight, groups=x.shape[1])


def defocus_blur(x, s, gen):
    radius, alias = DEFOCUS[s - 1]
    return _filter(x, _disk(radius, alias))


def brightness(x, s, gen):
    """HSV value + c with hue and saturation kept: RGB scales with V (a black pixel becomes grey c)."""
    value = x.amax(1, keepdim=True)
    new = (value + BRIGHTNESS[s - 1]).clamp(max=1)
    return torch.where(value > 0, x * new / value.clamp_min(1e-12), new.expand_as(x))


def contrast(x, s, gen):
    means = x.mean((2, 3), keepdim=True)
    return (x - means) * CONTRAST[s - 1] + means


def pixelate(x, s, gen):
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(int(h * PIXELATE[s - 1]), int(w * PIXELATE[s - 1])), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def jpeg_compression(x, s, gen):
    """Through PIL, as imagecorruptions (torchvision's codec gave the same bytes; its image I/O is deprecated)."""
    out = []
    for img in x:
        buffer = io.BytesIO()
        pixels = (img * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=JPEG_QUALITY[s - 1])
        out.append(torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1))
    return torch.stack(out).to(x) / 255


CORRUPTIONS = {
    f.__name__: f for f in (gaussian_noise, shot_noise, impulse_noise, defocus_blur, brightness, contrast, pixelate, jpeg_compression)
}


def corrupt(x: torch.Tensor, name: str, severity: int, gen: torch.Generator) -> torch.Tensor:
    """`name` at `severity` applied to the clean batch `x` ([B, 3, H, W] in [0, 1]), uint8-quantised in and out."""
    return quantise(CORRUPTIONS[name](quantise(x), severity, gen))
