"""The paper's analysis figures, drawn from tensors and result rows (no training here):
Figure 2 (stem features by PCA), a CA-against-ASR scatter of a results directory, and Figure 4
(images and their reconstructions by T&R's stage-1 decoder)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .figures import pyplot, save
from .tables import AVERAGE, Grid

if TYPE_CHECKING:  # torch only where features and images are drawn: the scatter of a report needs none
    import torch

GROUP_STYLE = {  # Figure 2's three groups
    "clean target": dict(color="tab:blue", marker="o"),
    "clean source": dict(color="tab:green", marker="^"),
    "poisoned source": dict(color="tab:red", marker="x"),
}
MARKERS = "osD^vP*Xph<>8"


def pca_projection(features: torch.Tensor, components: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Project rows of `features` [N, ...] (flattened) onto their top principal components.

    Returns (coordinates [N, components], share of the variance each component explains).
    Components are sign-fixed (largest loading positive) so figures do not flip between runs."""
    import torch

    x = features.reshape(len(features), -1).double()
    x = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    basis = vh[:components]
    signs = torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
    basis = basis * signs
    variance = s.pow(2)
    return (x @ basis.T).float(), (variance[:components] / variance.sum()).float()


def pca_figure(panels: list[tuple[str, dict[str, torch.Tensor]]], out: Path | str, title: str = "") -> Path:
    """One panel per model: its features of each group, projected by a PCA fitted on that model's
    features of all groups together."""
    import torch

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (label, groups) in zip(axes[0], panels):
        names = list(groups)
        coords, explained = pca_projection(torch.cat([groups[n] for n in names]))
        start = 0
        for name in names:
            n = len(groups[name])
            xy = coords[start : start + n].numpy()
            ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5, label=f"{name} ({n})", **GROUP_STYLE.get(name, {}))
            start += n
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of variance)", fontsize=8)
        ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}%)", fontsize=8)
        ax.legend(fontsize=7, markerscale=2)
    return save(fig, out, title)


def scatter_figure(grids: list[Grid], out: Path | str, title: str = "") -> Path:
    """CA against ASR for every (attack, defense) cell (mean over seeds): colour by attack, marker by
    defense, a legend for each instead of text beside the points (which overlapped); one panel per
    table (dataset, budget, group of defenses)."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(4.8 * len(grids), 4.4), squeeze=False)
    for ax, grid in zip(axes[0], grids):
        attacks = [a for a in grid.attacks if a != AVERAGE]
        colours = {a: plt.cm.tab10(i % 10) for i, a in enumerate(attacks)}
        for i, defense in enumerate(grid.defenses):
            asr = np.nan_to_num(grid.mean["asr"].loc[attacks, defense].to_numpy(dtype=float), nan=0.0)
            ca = grid.mean["ca"].loc[attacks, defense].to_numpy(dtype=float)
            ax.scatter(asr, ca, marker=MARKERS[i % len(MARKERS)], s=36, c=[colours[a] for a in attacks], alpha=0.85)
            retuned = _retuned_points(grid, attacks, defense)
            for attack, (start, end) in retuned.items():  # the same cell after the retuning check, joined to it
                ax.plot([start[0], end[0]], [start[1], end[1]], color=colours[attack], linestyle=":", linewidth=1, alpha=0.8)
                ax.scatter([end[0]], [end[1]], marker=MARKERS[i % len(MARKERS)], s=36, facecolors="none", edgecolors=[colours[attack]])
        by_defense = [
            Line2D([], [], marker=MARKERS[i % len(MARKERS)], color="0.3", linestyle="", label=d) for i, d in enumerate(grid.defenses)
        ]
        if "asr_after_retuning" in grid.mean:
            by_defense.append(Line2D([], [], marker="o", color="0.3", markerfacecolor="none", linestyle=":", label="after retuning"))
        by_attack = [Line2D([], [], marker="o", color=colours[a], linestyle="", label=a) for a in attacks]
        first = ax.legend(handles=by_defense, fontsize=6, title="defense", title_fontsize=7, loc="lower left")
        ax.add_artist(first)
        ax.legend(handles=by_attack, fontsize=6, title="attack", title_fontsize=7, loc="lower right")
        ax.set_xlabel("ASR (%)")
        ax.set_ylabel("CA (%)")
        ax.set_xlim(-3, 103)
        ax.set_title(f"{grid.dataset} ({grid.budget})" + (f", {grid.group}" if grid.group else ""), fontsize=9)
        ax.grid(alpha=0.3)
    return save(fig, out, title)


def _retuned_points(grid: Grid, attacks: list[str], defense: str) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """attack -> ((ASR, CA), (ASR, CA) after the retuning check) where the cell has both."""
    if "asr_after_retuning" not in grid.mean or "ca_after_retuning" not in grid.mean:
        return {}
    out = {}
    for attack in attacks:
        values = [float(grid.mean[m].loc[attack, defense]) for m in ("asr", "ca", "asr_after_retuning", "ca_after_retuning")]
        if np.isfinite(values).all():
            out[attack] = ((values[0], values[1]), (values[2], values[3]))
    return out


def recon_figure(rows: list[tuple[str, torch.Tensor]], out: Path | str, title: str = "") -> Path:
    """A grid of images: one row per (label, uint8 [N, H, W, 3] batch)."""
    plt = pyplot()
    n = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c].cpu().numpy(), interpolation="nearest")
        axes[r][0].set_ylabel(label, fontsize=8)
    return save(fig, out, title)
