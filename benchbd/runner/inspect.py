"""Models for figures that look inside a defended network (PCA of stem features, reconstructions):
one cell is planned and defended exactly as in a grid (same cache entries, same result row)."""

from __future__ import annotations

import torch

from ..errors import BenchbdError
from ..models.base import SplitNet
from .grid import Cell, Defended, Runner


def defend_all(runner: Runner, dataset: str, attack: str, defenses: list[str], seed: int, budget: str) -> list[tuple[Cell, Defended]]:
    """`defend_one` for each defense in turn, under the runner's progress display."""
    progress = runner.progress
    with progress:
        progress.start_grid(len(defenses))
        out = []
        for defense in defenses:
            progress.start_cell(f"{dataset} / {attack} / {defense} / seed {seed}")
            out.append(defend_one(runner, dataset, attack, defense, seed, budget))
            progress.end_cell("trained")
    return out


def pca_panels(runner: Runner, dataset: str, attack: str, defenses: list[str], seed: int, budget: str, source, split):
    """Figure 2's data: per defended model, stem features of clean target-class, clean source-class
    and triggered source-class test images; returns (panels, title). `source` (a class other than
    the target; default the first) is checked before anything trains."""
    _, name, _, data = runner.dataset(dataset)
    target = runner.attack(attack, name, data).params.target
    classes = [c for c in range(len(data.classes)) if c != target]
    source = classes[0] if source is None else source
    if source not in classes:
        raise BenchbdError(f"--source {source} is invalid: valid classes other than the target {target}: 0..{len(data.classes) - 1}")
    trained = defend_all(runner, dataset, attack, defenses, seed, budget)
    cell, outcome = trained[-1]
    test = outcome.splits.test
    source_images = test.images[test.labels == source]
    triggered = cell.attack.apply(source_images)
    if torch.equal(triggered, source_images):
        raise BenchbdError(f"attack {cell.attack.name} changes no image, so there is no poisoned group to plot")
    groups = {"clean target": test.images[test.labels == target], "clean source": source_images, "poisoned source": triggered}
    panels = [(label, {g: stem_features(o, images, split) for g, images in groups.items()}) for label, (_, o) in zip(defenses, trained)]
    return panels, f"{cell.dataset_name} / {cell.attack.name}: stem features (target {target}, source {source})"


def reconstruction_rows(runner: Runner, dataset: str, attack: str, defense: str, seed: int, budget: str, count: int):
    """Figure 4's data: `count` non-target test images, clean and triggered, each above its stage-1
    reconstruction; returns (rows, title)."""
    if count < 1:
        raise BenchbdError(f"--count {count} is invalid: must be at least 1")
    ((cell, outcome),) = defend_all(runner, dataset, attack, [defense], seed, budget)
    test = outcome.splits.test
    images = test.images[test.labels != cell.attack.params.target][:count]
    clean, clean_rec = reconstructions(outcome, images)
    triggered, triggered_rec = reconstructions(outcome, cell.attack.apply(images))
    rows = [("clean", clean), ("reconstructed", clean_rec), ("triggered", triggered), ("reconstructed", triggered_rec)]
    mse = outcome.context.metrics.get("recon_mse")
    return rows, f"{cell.dataset_name} / {cell.attack.name} / {defense}" + (f": holdout recon MSE {mse:.4f}" if mse is not None else "")


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
