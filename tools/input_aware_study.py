"""Input-aware's choices measured on a reduced run of its official joint training (docs/attacks.md):
the diversity terms in the official normalised units (benchbd, version 4) or in [0, 1] pixels
(version 3); the generator's gradients zeroed every step (benchbd) or accumulated (the official
loop never zeroes them); the trigger stamped before crop and flip (benchbd's victim) or after (the
official code).

    python tools/input_aware_study.py --data-root DIR [--train-images 10000] [--test-images 2000]
        [--epochs 10] [--mask-epochs 5] [--seed 0]

DIR holds cifar10.npz. The mask network is trained once per unit, then the pattern network jointly
with a surrogate WRN-16-1 (the official joint training, benchbd's own code) once per variant, on the
first N training images; each surrogate's clean accuracy, backdoor success (non-target test images
with their own trigger) and cross-trigger accuracy (each image with the next one's trigger, true
label) are printed, with the masks' mean density. The stamping order: the trigger stamped then
cropped and flipped against the trigger of the cropped, flipped image, the same crop and flip.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchbd import attacks
from benchbd.attacks import AttackTools
from benchbd.attacks.input_aware import TriggerNet
from benchbd.budgets import BUDGETS
from benchbd.data.augment import SmallImages, random_crop_flip, to_float
from benchbd.data.datasets import read_npz
from benchbd.data.splits import Split
from benchbd.models import create_model
from benchbd.train import Trainer, TrainRecipe

CIFAR10_STD = (0.247, 0.243, 0.261)  # the official dataloader's


def nets(state: dict) -> tuple[TriggerNet, TriggerNet]:
    patterns, masks = TriggerNet(3), TriggerNet(1)
    patterns.load_state_dict({k.removeprefix("pattern."): v for k, v in state.items() if k.startswith("pattern.")})
    masks.load_state_dict({k.removeprefix("mask."): v for k, v in state.items() if k.startswith("mask.")})
    return patterns.eval().requires_grad_(False), masks.eval().requires_grad_(False)


def scores(trainer: Trainer, atk, classifier, test: Split) -> dict[str, float]:
    """The official evaluation of the joint training's classifier, in %."""
    others = test.labels != atk.params.target
    triggered = atk.apply(test.images[others])
    success = (trainer.predict(classifier, triggered) == atk.params.target).double().mean()
    cross = atk.accuracy_sets(test)["cross_trigger"]
    with torch.no_grad():
        density = atk.masks.mask(to_float(test.images[:500])).mean()
    return {
        "clean": 100 * trainer.accuracy(classifier, test),
        "backdoor": 100 * float(success),
        "cross": 100 * trainer.accuracy(classifier, cross),
        "mask density": float(density),
    }


@torch.no_grad()
def stamping_order(atk, trainer: Trainer, classifier, test: Split, seed: int) -> dict[str, float]:
    """Crop + flip after the stamp (benchbd's victim) against before it (official), one draw for both."""
    x = test.images[test.labels != atk.params.target][:1000]
    stamped = atk.apply(x)
    after = random_crop_flip(stamped, 4, torch.Generator().manual_seed(seed))
    before = atk.apply(random_crop_flip(x, 4, torch.Generator().manual_seed(seed)))
    moved = random_crop_flip(x, 4, torch.Generator().manual_seed(seed))
    trigger = (to_float(before) - to_float(moved)).pow(2).mean().sqrt()
    gap = (to_float(after) - to_float(before)).pow(2).mean().sqrt()
    target = atk.params.target
    return {
        "rms(difference) / rms(trigger)": float(gap / trigger),
        "backdoor, stamped then cropped": 100 * float((trainer.predict(classifier, after) == target).double().mean()),
        "backdoor, cropped then stamped": 100 * float((trainer.predict(classifier, before) == target).double().mean()),
    }


def described(numbers: dict[str, float]) -> str:
    """Percentages with one decimal, ratios and densities with three."""
    return ", ".join(f"{k} {v:.3f}" if v < 1.5 else f"{k} {v:.1f}" for k, v in numbers.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--mask-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = read_npz(Path(args.data_root) / "cifar10.npz")
    train = Split(data.train.images[: args.train_images], data.train.labels[: args.train_images])
    test = Split(data.test.images[: args.test_images], data.test.labels[: args.test_images])
    trainer = Trainer(SmallImages(), BUDGETS.get("fast"), "cpu", args.seed)
    recipe = TrainRecipe(epochs=args.epochs)  # benchbd's normal recipe (Adam 1e-3, cosine), shortened
    made = []
    tools = AttackTools(trainer, train, None, lambda: made.append(create_model("wrn16_1", 10)) or made[-1], recipe, None)
    print(f"{len(train)} training images, {len(test)} test images, {args.mask_epochs} mask epochs, {args.epochs} joint epochs")
    variants = {
        "benchbd (normalised units, gradients zeroed)": {"official_std": CIFAR10_STD},
        "official gradient accumulation": {"official_std": CIFAR10_STD, "accumulate_generator_grads": True},
        "version 3 (pixel units)": {"official_std": None},
    }
    masks_by_units, first = {}, None
    for name, params in variants.items():
        atk = attacks.create("input_aware", dataset="cifar10", mask_epochs=args.mask_epochs, **params)
        units = params["official_std"]
        start = time.time()
        if units not in masks_by_units:
            torch.manual_seed(args.seed)
            masks_by_units[units] = atk.train_masks(tools)
        atk.train_masks = lambda tools, masks=masks_by_units[units]: masks
        torch.manual_seed(args.seed)
        state = atk.train_generators(tools)
        atk.patterns, atk.masks = nets(state)
        classifier = made[-1].eval()
        print(f"{name}: {described(scores(trainer, atk, classifier, test))} ({time.time() - start:.0f} s)", flush=True)
        first = first or (atk, classifier)
    atk, classifier = first
    order = stamping_order(atk, trainer, classifier, test, args.seed)
    print(f"stamping order (first variant): {described(order)}")


if __name__ == "__main__":
    main()
