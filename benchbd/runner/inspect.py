"""Models for figures that look inside a defended network (PCA of stem features, reconstructions):
one cell is planned and defended exactly as in a grid (same cache entries, same result row)."""

from __future__ import annotations

import torch

from ..errors import BenchbdError
from ..models.base import SplitNet
from .grid import Cell, Defended, Runner


def defend_one(runner: Runner, dataset: str, attack: str, defense: str, seed: int, budget: str) -> tuple[Cell, Defended]:
    """Plan and defend one cell; `defense` may carry settings: 'tnr[rec_weight=0, tv_weight=0]'.
    The cell's result row is written too if the results directory lacks it."""
    from ..experiments import Column

    column = Column.parse(defense)
    (cell,) = runner.plan([dataset], attack, column.defense, [seed], budget, layers=runner.layers.with_sets(column.layer()))
    outcome = runner.defend(cell)
    if not runner.results.done(cell.key):
        with runner.results.lock():
            runner.results.write(runner.run_cell(cell, outcome))
    return cell, outcome


@torch.no_grad()
def stem_features(outcome: Defended, images: torch.Tensor, split: int | None = None) -> torch.Tensor:
    """Features at the stem/head split of a defended model, float on the CPU.

    A model that knows its own stem (T&R's) says so with `stem_features`; a plain SplitNet is cut
    at `split` (default: the architecture's own split)."""
    model, trainer = outcome.model, outcome.trainer
    if hasattr(model, "stem_features"):
        extract = model.stem_features
    elif isinstance(model, SplitNet):
        stem = model.stem(model.default_split if split is None else split)
        extract = stem
    else:
        raise BenchbdError(
            f"the defended model ({type(model).__name__}) has no stem to take features from; "
            "figures of stem features need a SplitNet or a model with `stem_features`"
        )
    model = trainer.prepare(model).eval()
    out = []
    for _, x in trainer.inputs(images, 512):
        with trainer.autocast():
            out.append(extract(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstructions(outcome: Defended, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(model inputs, the defense's stage-1 reconstructions of them), both uint8 [N, H, W, 3]."""
    network = outcome.context.artifacts.get("reconstruction")
    if network is None:
        raise BenchbdError(
            "this defense exposes no reconstruction network: `plot recon` needs T&R (or a defense that "
            "puts a model with `reconstruct` in ctx.artifacts['reconstruction']) with a reconstruction weight > 0"
        )
    trainer = outcome.trainer
    network = trainer.prepare(network).eval()
    inputs, outputs = [], []
    for _, x in trainer.inputs(images, 512):
        with trainer.autocast():
            rec = network.reconstruct(x).float()
        inputs.append(_to_uint8(x))
        outputs.append(_to_uint8(rec))
    return torch.cat(inputs), torch.cat(outputs)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float [N, 3, H, W] in [0, 1] -> uint8 [N, H, W, 3] on the CPU."""
    return x.float().mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
