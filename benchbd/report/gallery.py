"""The trigger gallery (the paper's Figure 3): per attack, a clean test image, its triggered
version, and the difference amplified."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .figures import pyplot, save


def gallery_image(data, attacks: list, index: int) -> torch.Tensor:
    """The `index`-th test image of `data` (uint8 [H, W, 3]) whose class is none of the attacks' targets."""
    from ..errors import BenchbdError

    targets = torch.tensor(sorted({a.params.target for a in attacks}), dtype=data.test.labels.dtype)
    candidates = torch.nonzero(~torch.isin(data.test.labels, targets)).flatten()
    if not 0 <= index < len(candidates):
        raise BenchbdError(f"--index {index} is out of range: valid 0..{len(candidates) - 1}")
    return data.test.images[candidates[index]]


def attack_gallery(attacks: list, image: torch.Tensor, out: Path | str, amplify: float = 5.0, title: str = "") -> Path:
    """Write a PNG with one column per attack: clean, triggered, |difference| x `amplify`."""
    plt = pyplot()
    clean = image[None]
    fig, axes = plt.subplots(3, len(attacks), figsize=(1.6 * len(attacks), 5.2), squeeze=False)
    for col, attack in enumerate(attacks):
        triggered = attack.apply(clean)[0]
        diff = (triggered.float() - image.float()).abs().mul(amplify).clamp(0, 255).to(torch.uint8)
        for row, picture in enumerate((image, triggered, diff)):
            ax = axes[row][col]
            ax.imshow(np.asarray(picture), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][col].set_title(attack.name, fontsize=8)
    for row, text in enumerate(("clean", "triggered", f"|diff| x{amplify:g}")):
        axes[row][0].set_ylabel(text, fontsize=8)
    return save(fig, out, title)
