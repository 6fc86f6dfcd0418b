"""The trigger gallery (the paper's Figure 3): per attack, a clean test image, its triggered
version, and the difference amplified."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .figures import pyplot, save


def gallery_columns(data, attacks: list, index: int) -> list[tuple[str, object, torch.Tensor]]:
    """(title, attack, clean image) per gallery column: the `index`-th test image of `data` whose
    class is none of the attacks' targets; attacks with sample-specific triggers get two more
    columns, on the next two such images."""
    from ..errors import BenchbdError

    targets = torch.tensor(sorted({a.params.target for a in attacks}), dtype=data.test.labels.dtype)
    candidates = torch.nonzero(~torch.isin(data.test.labels, targets)).flatten()
    if not 0 <= index < len(candidates):
        raise BenchbdError(f"--index {index} is out of range: valid 0..{len(candidates) - 1}")
    columns = []
    for attack in attacks:
        picks = range(index, min(index + 3, len(candidates))) if attack.sample_specific else [index]
        for k, i in enumerate(picks):
            columns.append((attack.name if k == 0 else f"{attack.name} ({k + 1})", attack, data.test.images[candidates[i]]))
    return columns


def attack_gallery(columns: list, out: Path | str, amplify: float = 5.0, title: str = "") -> Path:
    """Write a PNG with one column per (title, attack, image): clean, triggered, |difference| x `amplify`."""
    plt = pyplot()
    fig, axes = plt.subplots(3, len(columns), figsize=(1.6 * len(columns), 5.2), squeeze=False)
    for col, (name, attack, image) in enumerate(columns):
        triggered = attack.apply(image[None])[0]
        diff = (triggered.float() - image.float()).abs().mul(amplify).clamp(0, 255).to(torch.uint8)
        for row, picture in enumerate((image, triggered, diff)):
            ax = axes[row][col]
            ax.imshow(np.asarray(picture), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][col].set_title(name, fontsize=8)
    for row, text in enumerate(("clean", "triggered", f"|diff| x{amplify:g}")):
        axes[row][0].set_ylabel(text, fontsize=8)
    return save(fig, out, title)
