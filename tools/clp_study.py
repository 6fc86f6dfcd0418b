"""CLP on a cached backdoored model, layer by layer: what the official pairing examines, what it
prunes, and what each pruned channel costs (for docs/defenses.md; reads the test set, as an
analysis, never as part of the defense).

    python tools/clp_study.py --dataset cifar10 --attack blend --seed 0 --budget fast --cache-dir DIR [--data-root DIR]
"""

from __future__ import annotations

import copy

import torch
from cached_cell import cached_runner, cell_arguments
from torch import nn

from benchbd.defenses.clp import channel_lipschitz, conv_bn_pairs, outliers


def main() -> None:
    parser = cell_arguments(__doc__.splitlines()[0])
    parser.add_argument("--u", type=float, default=3.0)
    args = parser.parse_args()
    runner = cached_runner(args, "/tmp/clp-study")
    (cell,) = runner.plan([args.dataset], args.attack, "none", [args.seed], args.budget)
    outcome = runner.defend(cell)  # the cached backdoored model
    model, trainer, test = outcome.model, outcome.trainer, outcome.splits.test

    def scores(net):
        s = runner.evaluate(trainer, net, cell.attack, test)
        return f"ASR {s.asr:.2f} CA {s.ca:.2f}"

    print(f"backdoored: {scores(model)}")
    names = {id(m): n for n, m in model.named_modules()}
    pairs = conv_bn_pairs(model, 32)
    paired = {id(c) for c, _ in pairs}
    layers = [(c, bn) for c, bn in pairs] + [(m, None) for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in paired]
    for conv, bn in layers:
        uclc = channel_lipschitz(conv, bn)
        z = (uclc - uclc.mean()) / uclc.std()
        chosen = outliers(uclc, args.u).nonzero().flatten().tolist()
        kind = f"-> {names[id(bn)]}" if bn is not None else "(residual, weight-only)"
        print(f"{names[id(conv)]:28s} {kind:24s} channels {len(uclc):3d}  max z {float(z.max()):.2f}  pruned at u={args.u}: {chosen}")
        for k in chosen:
            net = copy.deepcopy(model)
            part = dict(net.named_modules())
            with torch.no_grad():
                if bn is not None:
                    part[names[id(bn)]].weight[k] = 0
                    part[names[id(bn)]].bias[k] = 0
                else:
                    part[names[id(conv)]].weight[k] = 0
            print(f"    channel {k} alone: {scores(net)}")


if __name__ == "__main__":
    main()
