"""Spectral Signatures' score, centred (the paper) against uncentred (the official code), on a cached
backdoored model's poisoned training split: per label, what each removes under benchbd's rule
(min(1.5 x budget x N, half the label)) and under the official 85th percentile of the target label
(for docs/deviations.md; reads the poison mask, as an analysis, never as part of the defense).

    python tools/spectral_study.py --dataset cifar10 --attack blend --seed 0 --budget fast --cache-dir DIR [--data-root DIR]
        [--blocks-before-end 1]
"""

from __future__ import annotations

import torch
from cached_cell import cached_runner, cell_arguments

from benchbd.defenses import Need
from benchbd.defenses.common import features
from benchbd.defenses.spectral import SpectralSignatures, spectral_scores


def main() -> None:
    parser = cell_arguments(__doc__.splitlines()[0])
    parser.add_argument("--blocks-before-end", type=int, default=0, help="1: the official layer (the output one residual block earlier)")
    args = parser.parse_args()
    runner = cached_runner(args, "/tmp/spectral-study")
    (cell,) = runner.plan([args.dataset], args.attack, "spectral", [args.seed], args.budget)
    seen = {}

    def capture(self, ctx):  # the defense's inputs, without its retraining
        seen.update(data=ctx.need(Need.POISONED_TRAIN), model=ctx.need(Need.BACKDOORED_MODEL), trainer=ctx.trainer, params=self.params)
        return seen["model"]

    SpectralSignatures.run = capture
    runner.defend(cell)
    data, model, trainer, p = seen["data"], seen["model"], seen["trainer"], seen["params"]
    model = trainer.prepare(model).eval()
    block = model.num_blocks - args.blocks_before_end
    representation = features(trainer, data.images, model.stem(block))
    print(f"representation: the output of residual block {block} of {model.num_blocks}, {representation.shape[1]} dimensions")
    poisoned = torch.zeros(len(data), dtype=torch.bool)
    poisoned[data.poisoned] = True
    per_label = round(p.removal_factor * p.poison_budget * len(data))
    target = cell.attack.params.target
    totals = {True: [0, 0], False: [0, 0]}
    for label in data.labels.unique().tolist():
        members = torch.nonzero(data.labels == label).flatten()
        count = min(per_label, int(p.max_label_share * len(members)))
        line = [f"label {label}: {len(members)} images, {int(poisoned[members].sum())} poisoned, removes {count}"]
        for centred in (True, False):
            scores = spectral_scores(representation[members], centred)
            chosen = members[scores.topk(count).indices]
            caught = int(poisoned[chosen].sum())
            totals[centred][0] += caught
            totals[centred][1] += count - caught
            line.append(f"{'centred' if centred else 'uncentred'}: {caught} poisoned, {count - caught} clean")
            if label == target:
                top = members[scores > torch.quantile(scores, 0.85)]
                line.append(f"(85th percentile: {int(poisoned[top].sum())} poisoned of {len(top)})")
        print("  ".join(line))
    n = int(poisoned.sum())
    for centred in (True, False):
        caught, clean = totals[centred]
        print(f"{'centred' if centred else 'uncentred'}: removes {caught} of {n} poisoned ({100 * caught / n:.1f}%) and {clean} clean")


if __name__ == "__main__":
    main()
