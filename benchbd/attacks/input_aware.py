"""Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020): every image gets its own trigger.

A pattern generator G and a mask generator M (the same encoder-decoder, 3 and 1 output channels)
make x' = x + (G(x) - x) * m(x), with G(x) = tanh(z) / (2 + eps) + 0.5 and the sharpened mask
m(x) = tanh(20 M(x) - 10) / (2 + eps) + 0.5, where M(x) = tanh(z) / (2 + eps) + 0.5 is the mask
network's own output (the official `threshold(netM(x))`). The official schedule, trained once per dataset, seed,
model and budget and cached as this attack's artifact (`prepare`):

1. M alone for `mask_epochs` (25): lambda_norm mean(relu(m(x1) - mask_density)) plus the
   diversity term lambda_div mean(rms(x1 - x2) / (rms(m(x1) - m(x2)) + eps)); then M is frozen.
2. G jointly with a classifier of the cell's architecture and normal recipe: per batch the first
   10% become backdoor inputs with their own pattern and mask (target label), the next 10%
   "cross" inputs with another image's pattern and mask (true label), CE on all plus the diversity
   term of G; one backward updates both (G with Adam, lr 0.01, betas (0.5, 0.9)).

Both diversity terms measure images (and patterns) in the official code's normalised units
(`official_std`, CIFAR-10's in registry.yaml). G's gradients are zeroed every step unless `accumulate_generator_grads` asks
for the official loop, which never zeroes them (docs/attacks.md measures the difference).

The victim is then trained by benchbd's normal recipe with the same per-batch rule and the frozen,
trained G and M (per_batch.py), so defenses meet one victim recipe for every attack. x2 is another
image of the same batch (the official code reads a second, independently shuffled loader).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check
from ..data.augment import to_float, to_image
from ..data.splits import Split
from ..errors import BenchbdError
from ..models.base import channel_std
from ..train import make_optimizer, make_schedule, steps_per_epoch
from .base import ATTACKS, AttackParams, AttackTools
from .per_batch import PerBatchAttack

EPSILON = 1e-7


@dataclass
class InputAwareParams(AttackParams):
    cross_ratio: float = 0.1  # p_cross: samples per batch with another image's trigger, labels kept
    lambda_div: float = 1.0
    lambda_norm: float = 100.0
    mask_density: float = 0.032
    mask_epochs: int = 25
    generator_lr: float = 0.01  # lr_G and lr_M
    # the official loop never zeroes G's gradients (only the classifier's): True reproduces that
    accumulate_generator_grads: bool = False
    # the std of the official input normalisation (CIFAR-10's, in whose units the constants were
    # tuned; GTSRB is fed raw: None, [0, 1] pixels): the diversity terms measure images in its units
    official_std: tuple[float, float, float] | None = (0.247, 0.243, 0.261)

    def __post_init__(self):
        super().__post_init__()
        check(self.official_std is None or min(self.official_std) > 0, f"official_std={self.official_std} must be positive")
        check(0 <= self.cross_ratio < 1, f"cross_ratio={self.cross_ratio} must be in [0, 1)")
        check(0 < self.mask_density < 1, f"mask_density={self.mask_density} must be in (0, 1)")
        check(self.mask_epochs >= 1, f"mask_epochs={self.mask_epochs} must be at least 1")
        check(self.generator_lr > 0, f"generator_lr={self.generator_lr} must be positive")


def conv_block(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    """3x3 conv, BN (momentum 0.05, as the official blocks.py), ReLU unless last."""
    layers = [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class TriggerNet(nn.Module):
    """The official generator's encoder-decoder: three stages of two 3x3 conv blocks and a 2x
    down-sampling (32 -> 64 -> 128 channels), a middle block, three 2x up-samplings each followed
    by two conv blocks, the last without ReLU; `out_channels` 3 (patterns) or 1 (masks)."""

    def __init__(self, out_channels: int, width: int = 32, steps: int = 3):
        super().__init__()
        layers, cin, c = [], 3, width
        for step in range(steps):
            layers += [conv_block(cin, c), conv_block(c, c), nn.MaxPool2d(2)]
            cin, c = c, (c * 2 if step < steps - 1 else c)
        layers.append(conv_block(c, c))
        for step in range(steps):
            out = out_channels if step == steps - 1 else c // 2
            upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            layers += [upsample, conv_block(c, c), conv_block(c, out, relu=step < steps - 1)]
            c = out
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def pattern(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(x)) / (2 + EPSILON) + 0.5

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The official threshold applied to the network's own output, which already ends in
        tanh(z) / (2 + eps) + 0.5 (so z = 0 gives 0.5, not 0)."""
        return torch.tanh(self.pattern(x) * 20 - 10) / (2 + EPSILON) + 0.5


def stamp(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x + (pattern - x) * mask


def diversity(inputs1: torch.Tensor, inputs2: torch.Tensor, out1: torch.Tensor, out2: torch.Tensor) -> torch.Tensor:
    """mean over pairs of rms(x1 - x2) / (rms(g(x1) - g(x2)) + eps): different images, different triggers.
    Callers pass images (and patterns) in the official code's normalised units (`official_std`): on
    CIFAR-10 the mask stage's ratio is about 4 times its value in [0, 1] pixels."""
    images = (inputs1 - inputs2).pow(2).mean(dim=(1, 2, 3)).sqrt()
    outputs = (out1 - out2).pow(2).mean(dim=(1, 2, 3)).sqrt()
    return (images / (outputs + EPSILON)).mean()


def partner(x: torch.Tensor, gen: torch.Generator, avoid: int = 0) -> torch.Tensor:
    """For each image another image of the same batch: the batch rolled by an offset in [1, n) other
    than `avoid` (the official second loader). The generator stage compares x[i] with the partner of
    x[n_bd + i], so an offset of n_bd would pair images with themselves: a zero distance, whose sqrt
    has an infinite derivative, and the generator turns NaN (1 step in n - 1)."""
    n = len(x)
    offsets = [o for o in range(1, n) if o != avoid % n]
    if not offsets:
        return torch.roll(x, 1 if n > 1 else 0, 0)
    pick = int(torch.randint(0, len(offsets), (1,), device=x.device, generator=gen))
    return torch.roll(x, offsets[pick], 0)


@ATTACKS.register("input_aware", aliases=("inputaware", "input-aware"))
class InputAware(PerBatchAttack):
    """Input-aware: a trained generator gives every image its own masked pattern (modern; first cell about 6.5 normal trainings)."""

    Params = InputAwareParams
    in_all = False
    group = "modern"
    sample_specific = True
    source = "Nguyen & Tran, NeurIPS 2020"
    # 5: the victim's batches stamped after crop and flip, as the official train_step stamps the loader's augmented batch;
    # 4: diversity in the official normalised units, never an image against itself (NaN before); 3: BN momentum 0.05 as the official blocks;
    # 2: the mask thresholds the mask network's tanh output
    version = 5
    stamps_after_augmentation = True  # the official loader crops and flips, then train_step stamps

    def __init__(self, params, num_classes, image_size, name="input_aware"):
        super().__init__(params, num_classes, image_size, name)
        self.patterns: TriggerNet | None = None
        self.masks: TriggerNet | None = None

    def prepare(self, tools: AttackTools) -> None:
        """Load the cell's trained generators from the cache, training them first if needed."""
        state = tools.cached("input_aware_generator", {}, lambda: self.train_generators(tools))
        patterns, masks = TriggerNet(3), TriggerNet(1)
        patterns.load_state_dict({k.removeprefix("pattern."): v for k, v in state.items() if k.startswith("pattern.")})
        masks.load_state_dict({k.removeprefix("mask."): v for k, v in state.items() if k.startswith("mask.")})
        self.patterns, self.masks = patterns.eval().requires_grad_(False), masks.eval().requires_grad_(False)

    def train_generators(self, tools: AttackTools) -> dict[str, torch.Tensor]:
        trainer, p = tools.trainer, self.params
        masks = self.train_masks(tools)
        patterns = TriggerNet(3).to(trainer.device)
        classifier = trainer.prepare(tools.new_model())
        scale = self._units(trainer.device)
        recipe = tools.recipe
        optimizer = make_optimizer(recipe, classifier.parameters())
        pattern_optimizer = torch.optim.Adam(patterns.parameters(), p.generator_lr, betas=(0.5, 0.9))
        epochs = trainer.run_epochs("input_aware: generator", recipe.epochs, tools.clean_train)
        schedule = make_schedule(recipe, optimizer, epochs)
        # the official G milestones 200, 300, 400, 500 of 600 epochs, kept in their place in the run
        milestones = [max(1, round(epochs * m / 600)) for m in (200, 300, 400, 500)]
        pattern_schedule = torch.optim.lr_scheduler.MultiStepLR(pattern_optimizer, milestones)
        gen = torch.Generator(device=trainer.device).manual_seed(trainer.seed)
        trainer.progress.start_run("input_aware: generator", epochs * self._steps(tools, recipe.batch_size), recipe.batch_size)
        for epoch in range(epochs):
            classifier.train()
            patterns.train()
            for x, y in trainer.batches(tools.clean_train, recipe.batch_size, f"input_aware generator {epoch}", augment=True):
                n_bd, n_cross = int(p.poison_ratio * len(x)), int(p.cross_ratio * len(x))
                x2 = partner(x, gen, avoid=n_bd)
                pattern1 = patterns.pattern(x[:n_bd])
                pattern2 = patterns.pattern(x2[n_bd : n_bd + n_cross])
                with torch.no_grad():
                    mask1, mask2 = masks.mask(x[:n_bd]), masks.mask(x2[n_bd : n_bd + n_cross])
                backdoor, cross = stamp(x[:n_bd], pattern1, mask1), stamp(x[n_bd : n_bd + n_cross], pattern2, mask2)
                inputs = torch.cat([backdoor, cross, x[n_bd + n_cross :]])
                labels = torch.cat([torch.full_like(y[:n_bd], p.target), y[n_bd:]])
                k = min(n_bd, n_cross)
                loss = F.cross_entropy(classifier(inputs), labels)
                if k:
                    images, others = x[:k] / scale, x2[n_bd : n_bd + k] / scale
                    loss = loss + p.lambda_div * diversity(images, others, pattern1[:k] / scale, pattern2[:k] / scale)
                optimizer.zero_grad(set_to_none=True)
                if not p.accumulate_generator_grads:
                    pattern_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                pattern_optimizer.step()
                trainer.progress.advance(1)
            trainer.progress.advance(0, f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
            schedule.step()
            pattern_schedule.step()
        trainer.progress.end_run()
        return {f"{net}.{k}": v.cpu() for net, model in (("pattern", patterns), ("mask", masks)) for k, v in model.state_dict().items()}

    def train_masks(self, tools: AttackTools) -> TriggerNet:
        """Stage A: M alone, for sparse (density) and diverse masks; returned frozen."""
        trainer, p = tools.trainer, self.params
        masks = TriggerNet(1).to(trainer.device)
        scale = self._units(trainer.device)
        optimizer = torch.optim.Adam(masks.parameters(), p.generator_lr, betas=(0.5, 0.9))
        epochs = trainer.run_epochs("input_aware: masks", p.mask_epochs, tools.clean_train)
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, round(epochs * m / 25)) for m in (10, 20)])
        gen = torch.Generator(device=trainer.device).manual_seed(trainer.seed + 1)
        batch = tools.recipe.batch_size
        trainer.progress.start_run("input_aware: masks", epochs * self._steps(tools, batch), batch)
        for epoch in range(epochs):
            masks.train()
            for x, _ in trainer.batches(tools.clean_train, batch, f"input_aware masks {epoch}", augment=True):
                x2 = partner(x, gen)
                m1, m2 = masks.mask(x), masks.mask(x2)
                loss = p.lambda_norm * F.relu(m1 - p.mask_density).mean() + p.lambda_div * diversity(x / scale, x2 / scale, m1, m2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                trainer.progress.advance(1)
            trainer.progress.advance(0, f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
            schedule.step()
        trainer.progress.end_run()
        return masks.eval().requires_grad_(False)

    def _units(self, device) -> torch.Tensor | float:
        return channel_std(self.params.official_std, device)

    @staticmethod
    def _steps(tools: AttackTools, batch: int) -> int:
        return steps_per_epoch(len(tools.clean_train), batch, tools.trainer.budget)

    def _nets(self, device) -> tuple[TriggerNet, TriggerNet]:
        if self.patterns is None:
            raise BenchbdError(
                "attack input_aware's triggers come from a generator trained per dataset, seed and budget: "
                "run it through the runner (benchbd run --attacks input_aware), which trains and caches it"
            )
        return self.patterns.to(device), self.masks.to(device)

    @torch.no_grad()
    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Each image with its own pattern and mask."""
        patterns, masks = self._nets(images.device)
        out = [to_image(stamp(x, patterns.pattern(x), masks.mask(x))) for x in map(to_float, images.split(512))]
        return torch.cat(out) if out else images.clone()

    @torch.no_grad()
    def accuracy_sets(self, test: Split, device: torch.device | str = "cpu") -> dict[str, Split]:
        """Cross-trigger images: every test image with the pattern and mask of the next test image,
        its true label kept. A model that classifies them correctly has learnt that a trigger works
        on its own image only (the official evaluation's cross accuracy, about 88% on CIFAR-10)."""
        patterns, masks = self._nets(torch.device(device))
        crossed, others = [], torch.roll(test.images, -1, 0)
        for start in range(0, len(test), 512):
            x, other = (to_float(t[start : start + 512].to(device)) for t in (test.images, others))
            crossed.append(to_image(stamp(x, patterns.pattern(other), masks.mask(other))).cpu())
        return {"cross_trigger": Split(torch.cat(crossed) if crossed else test.images.clone(), test.labels.clone())}

    def extra_count(self, batch: int, backdoor: int) -> int:
        return int(self.params.cross_ratio * batch)

    @torch.no_grad()
    def extra_samples(self, batch, positions, gen):
        """Cross samples: each image with the pattern and mask of another image of the batch."""
        patterns, masks = self._nets(batch.device)
        n = len(batch)
        if n < 2:
            return batch[positions]
        offset = torch.randint(1, n, (len(positions),), device=batch.device, generator=gen)
        x, other = to_float(batch[positions]), to_float(batch[(positions + offset) % n])
        return to_image(stamp(x, patterns.pattern(other), masks.mask(other)))
