"""BTI-DBF(U), backdoor trigger inversion by decoupling benign features (Xu et al., ICLR 2024).

The classifier is cut before its pooling: g(x) is the last feature map [C, H, W], as the official
`from_input_to_features`, and h pools and classifies. A UNet generator G (the official
architecture: instance norm, leaky ReLU, 3x3 transposed convolutions) is first trained to be a
near-identity map on the clean holdout. Then, for each of 5 rounds, on a copy of the current
classifier:
1. decouple benign features: a spatial feature mask m (tanh-parametrised, randomly initialised)
   trained for 20 epochs with Adam (lr 0.01) on CE(h(m g(x)), y) - CE(h((1 - m) g(x)), y);
2. invert the trigger: G trained for 30 epochs to move the non-benign features
   ((1 - m) g(G(x)) away from (1 - m) g(x)) while keeping the benign ones (weight 0.01); when the
   image MSE exceeds 0.3 or the benign-feature MSE exceeds 3 only the image MSE is minimised; from
   round 2 on, CE(f(G(x)), detected target) is added;
3. after round 1 the target label is the most frequent prediction on G(x + 0.03 N(0, 1)) over the
   clean holdout;
4. unlearn: 30 epochs of Adam (lr 1e-4) on the classifier, 10% + 1 of each batch replaced by G(x),
   loss CE(f(mix), y) + MSE(g(x), g(mix)).
The generator's warm-up (50 epochs; its image term weighs 100 while the image MSE is above 0.1)
does not depend on the round and is cached.

Units: the official code feeds mean/std-normalised tensors, so its image bounds (0.3, 0.1) and its
detection noise (0.03) are in normalised units (an image MSE about 25 times the [0, 1] pixel one
on CIFAR-10, std about 0.2). benchbd's CIFAR-10 and GTSRB models take raw pixels, so the official
normalisation is a parameter (`official_mean` / `official_std`, per dataset in registry.yaml: the
official CIFAR-10 and ImageNet statistics, none for GTSRB as the official loader): G runs on images
normalised by it and image differences are measured in its units, so the official constants keep
their meaning (version 4; versions 2-3 read the classifier's normalisation, none on CIFAR-10, and
so compared the bounds with pixels as version 1 did).

Official code: xuxiong0214/BTIDBF (pretrain.py, btidbfu.py, evaluate.get_target_label,
models/unet_model.py); our UNet is written from its description and checked against its outputs
(tests/fixtures/official), not copied.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check
from ..models.base import channel_std
from ..seeding import derive, generator
from .base import DEFENSES, Defense, Need


@dataclass
class BtiDbfParams:
    rounds: int = 5  # nround
    pretrain_epochs: int = 50  # preround: the generator's near-identity warm-up
    mask_epochs: int = 20  # mround
    generator_epochs: int = 30  # uround
    unlearning_epochs: int = 30  # ul_round
    generator_lr: float = 1e-3
    mask_lr: float = 0.01
    unlearning_lr: float = 1e-4
    norm_bound: float = 0.3  # image MSE (normalised units) above which the generator only shrinks it
    feature_bound: float = 3.0  # benign-feature MSE above which likewise
    benign_weight: float = 0.01
    generated_share: float = 0.1  # of each unlearning batch (plus one image) replaced by G(x)
    detection_noise: float = 0.03  # std of the noise added before target detection, normalised units
    warmup_switch: float = 0.1  # the warm-up's image term weighs 100 above this image MSE (normalised), 0.01 below
    # the official input normalisation (CIFAR-10's by default, ImageNet's on imagenet12; GTSRB is fed
    # raw: None, [0, 1] pixels), whose units the bounds and the noise above are written in
    official_mean: tuple[float, float, float] | None = (0.4914, 0.4822, 0.4465)
    official_std: tuple[float, float, float] | None = (0.2023, 0.1994, 0.2010)
    batch_size: int = 128
    generator_width: int = 32  # the UNet's base filters (official 32)

    def __post_init__(self):
        for name in ("rounds", "pretrain_epochs", "mask_epochs", "generator_epochs", "unlearning_epochs"):
            check(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        check(self.norm_bound > 0 and self.feature_bound > 0, "norm_bound and feature_bound must be > 0")
        check(self.warmup_switch > 0, f"warmup_switch={self.warmup_switch} must be > 0")
        check(0 <= self.generated_share < 1, f"generated_share={self.generated_share} must be in [0, 1)")
        check(self.batch_size >= 2, f"batch_size={self.batch_size} must be >= 2")
        check((self.official_mean is None) == (self.official_std is None), "official_mean and official_std go together")
        check(self.official_std is None or min(self.official_std) > 0, f"official_std={self.official_std} must be positive")


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by an affine instance norm and a leaky ReLU (slope 0.01)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(cout, affine=True)
        self.norm2 = nn.InstanceNorm2d(cout, affine=True)

    def forward(self, x):
        x = F.leaky_relu(self.norm1(self.conv1(x)))
        return F.leaky_relu(self.norm2(self.conv2(x)))


class UpBlock(nn.Module):
    """A 3x3 stride-2 transposed convolution keeping the channels, a leaky ReLU, the skip joined, a ConvBlock."""

    def __init__(self, cin: int, skip: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(cin, cin, 3, stride=2, padding=1, output_padding=1)
        self.block = ConvBlock(cin + skip, skip)

    def forward(self, x, skip):
        return self.block(torch.cat([F.leaky_relu(self.upsample(x)), skip], 1))


class UNet(nn.Module):
    """The official image-to-image UNet: `levels` ConvBlocks with 2x max-pooling, `base` filters doubling
    per level (at most 512), a bottleneck of twice the last width, UpBlocks back up; raw 1x1 output."""

    def __init__(self, base: int = 32, levels: int = 4):
        super().__init__()
        widths = [min(base * 2**i, 512) for i in range(levels)]
        self.down = nn.ModuleList(ConvBlock(cin, cout) for cin, cout in zip([3, *widths[:-1]], widths))
        self.bottom = ConvBlock(widths[-1], 2 * widths[-1])
        ins = [2 * widths[-1], *reversed(widths[1:])]
        self.up = nn.ModuleList(UpBlock(cin, skip) for cin, skip in zip(ins, reversed(widths)))
        self.out = nn.Conv2d(widths[0], 3, 1)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
        return self.out(x)


def image_mse(a: torch.Tensor, b: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """MSE between two pixel batches in the official code's normalised units (per-channel `std`)."""
    return F.mse_loss(a / std, b / std)


class NormalisedGenerator(nn.Module):
    """G as the official code runs it, on mean/std-normalised images (None: as they are); pixels in,
    pixels out."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean or (0.0, 0.0, 0.0), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std or (1.0, 1.0, 1.0), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std) * self.std + self.mean


def feature_mask(raw: torch.Tensor) -> torch.Tensor:
    """The official bounded mask, tanh(raw) / (2 + 1e-7) + 0.5."""
    return torch.tanh(raw) / (2 + 1e-7) + 0.5


@DEFENSES.register("bti_dbf", aliases=("btidbf", "bti"))
class BtiDbf(Defense):
    """BTI-DBF(U): invert the trigger with a generator that shifts non-benign features, unlearn it (modern)."""

    Params = BtiDbfParams
    needs = frozenset({Need.BACKDOORED_MODEL, Need.HOLDOUT})
    group = "modern"
    source = "Xu et al., ICLR 2024"
    # 4: the official normalisation from the parameters (2-3 read the classifier's, which benchbd's
    # CIFAR-10 and GTSRB models do not have: pixels); 3: the last partial batch is kept, as the official
    # loader; 2: bounds and noise in normalised units, spatial features, the official UNet
    # (1: [0, 1] pixels, pooled features)
    version = 4

    def run(self, ctx):
        p, trainer = self.params, ctx.trainer
        holdout = ctx.need(Need.HOLDOUT)
        classifier = trainer.prepare(copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive(ctx.seed, "init:bti_generator"))
            gen_net = trainer.prepare(NormalisedGenerator(UNet(base=p.generator_width), p.official_mean, p.official_std))
        warm = {
            "version": self.version,
            "pretrain_epochs": p.pretrain_epochs,
            "generator_lr": p.generator_lr,
            "batch_size": p.batch_size,
            "n_holdout": len(holdout),
            "width": p.generator_width,
            "warmup_switch": p.warmup_switch,
            "official_mean": p.official_mean,
            "official_std": p.official_std,
        }
        ctx.cached_model("generator_warmup", warm, gen_net, lambda g: self.warm_up(ctx, classifier, g, holdout))
        gen_optimizer = torch.optim.Adam(gen_net.parameters(), lr=p.generator_lr)
        cls_optimizer = torch.optim.Adam(classifier.parameters(), lr=p.unlearning_lr)
        target = None
        for round_ in range(p.rounds):
            self.invert(ctx, classifier, gen_net, gen_optimizer, holdout, round_, target)
            if round_ == 0:
                target = self.detect_target(ctx, classifier, gen_net, holdout)
            self.unlearn(ctx, classifier, gen_net, cls_optimizer, holdout, round_)
        ctx.metrics["bti_target"] = target
        if ctx.attack_target is not None:
            ctx.metrics["bti_found_target"] = target == ctx.attack_target
        with torch.no_grad():
            x = next(trainer.inputs(holdout.images[: p.batch_size]))[1]
            ctx.metrics["bti_image_mse"] = round(float(image_mse(gen_net.eval()(x), x, self.units(trainer.device))), 5)  # normalised units
        return classifier

    def units(self, device) -> torch.Tensor | float:
        """The official std (1: pixels) that image differences and the detection noise are scaled by."""
        return channel_std(self.params.official_std, device)

    def warm_up(self, ctx, classifier, gen_net, holdout) -> None:
        """G towards identity: outputs (as the official code: CE between the softmax outputs),
        features and image alike; the image term weighs 100 while its MSE is above `warmup_switch`."""
        p, trainer = self.params, ctx.trainer
        frozen = copy.deepcopy(classifier).eval().requires_grad_(False)
        optimizer = torch.optim.Adam(gen_net.parameters(), lr=p.generator_lr)
        epochs = trainer.run_epochs("BTI-DBF generator warm-up", p.pretrain_epochs, holdout)
        std = self.units(trainer.device)  # once, not per step
        trainer.progress.start_run("BTI-DBF generator warm-up", epochs)
        for epoch in range(epochs):
            gen_net.train()
            for x, _ in trainer.batches(holdout, p.batch_size, f"bti:warm:{epoch}", augment=True, drop_last=False):
                out = gen_net(x)
                feat, out_feat = frozen.spatial_features(x), frozen.spatial_features(out)
                logits, out_logits = frozen.from_spatial_features(feat), frozen.from_spatial_features(out_feat)
                pred = F.cross_entropy(F.softmax(logits, 1), F.softmax(out_logits, 1))
                norm = image_mse(out, x, std)
                loss = pred + F.mse_loss(out_feat, feat) + (100 if float(norm.detach()) > p.warmup_switch else 0.01) * norm
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            trainer.progress.advance(1, f"epoch {epoch + 1}/{epochs}")
        trainer.progress.end_run()

    def invert(self, ctx, classifier, gen_net, optimizer, holdout, round_: int, target: int | None) -> None:
        """Steps 1-2 on a copy of the current classifier: the benign feature mask, then G."""
        p, trainer = self.params, ctx.trainer
        inverse = copy.deepcopy(classifier).requires_grad_(False)
        shape = inverse.eval().spatial_features(next(trainer.inputs(holdout.images[:1]))[1]).shape  # [1, C, H, W]
        raw = torch.randn(shape, generator=generator(ctx.seed, f"bti:mask:{round_}")).to(trainer.device).requires_grad_()
        mask_optimizer = torch.optim.Adam([raw], lr=p.mask_lr)
        epochs = trainer.run_epochs(f"BTI-DBF round {round_ + 1}: benign features", p.mask_epochs, holdout)
        trainer.progress.start_run(f"BTI-DBF round {round_ + 1}: benign features", epochs)
        for epoch in range(epochs):
            inverse.train()  # as the official code: batch statistics while the mask learns
            for x, y in trainer.batches(holdout, p.batch_size, f"bti:mask:{round_}:{epoch}", augment=True, drop_last=False):
                mask = feature_mask(raw)
                feat = inverse.spatial_features(x)
                loss = F.cross_entropy(inverse.from_spatial_features(mask * feat), y) - F.cross_entropy(
                    inverse.from_spatial_features((1 - mask) * feat), y
                )
                mask_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                mask_optimizer.step()
            trainer.progress.advance(1, f"epoch {epoch + 1}/{epochs}")
        trainer.progress.end_run()
        mask = feature_mask(raw).detach()
        inverse.eval()
        epochs = trainer.run_epochs(f"BTI-DBF round {round_ + 1}: trigger generator", p.generator_epochs, holdout)
        std = self.units(trainer.device)  # once, not per step
        trainer.progress.start_run(f"BTI-DBF round {round_ + 1}: trigger generator", epochs)
        for epoch in range(epochs):
            gen_net.train()
            for x, y in trainer.batches(holdout, p.batch_size, f"bti:gen:{round_}:{epoch}", augment=True, drop_last=False):
                out = gen_net(x)
                feat, out_feat = inverse.spatial_features(x), inverse.spatial_features(out)
                benign = F.mse_loss(mask * feat, mask * out_feat)
                shifted = F.mse_loss((1 - mask) * feat, (1 - mask) * out_feat)
                norm = image_mse(x, out, std)
                if float(norm.detach()) > p.norm_bound or float(benign.detach()) > p.feature_bound:
                    loss = norm
                else:
                    loss = -shifted + p.benign_weight * benign
                if round_ > 0:
                    loss = loss + F.cross_entropy(inverse.from_spatial_features(out_feat), torch.full_like(y, target))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            trainer.progress.advance(1, f"epoch {epoch + 1}/{epochs}")
        trainer.progress.end_run()

    @torch.no_grad()
    def detect_target(self, ctx, classifier, gen_net, holdout) -> int:
        """The most frequent prediction on G(x + 0.03 noise) over the clean holdout (noise in normalised units)."""
        trainer, gen = ctx.trainer, generator(ctx.seed, "bti:detect", ctx.trainer.device)
        classifier.eval()
        gen_net.eval()
        counts = torch.zeros(ctx.num_classes, dtype=torch.long)
        scale = self.params.detection_noise * self.units(trainer.device)
        for _, x in trainer.inputs(holdout.images, self.params.batch_size):
            noise = scale * torch.randn(x.shape, generator=gen, device=x.device)
            noisy = x + noise
            counts += torch.bincount(classifier(gen_net(noisy)).argmax(1).cpu(), minlength=ctx.num_classes)
        return int(counts.argmax())

    def unlearn(self, ctx, classifier, gen_net, optimizer, holdout, round_: int) -> None:
        """Train the classifier with 10% + 1 of each batch replaced by G(x), true labels kept,
        and their features pulled to the clean images' features."""
        p, trainer = self.params, ctx.trainer
        gen_net.eval()
        gen = generator(ctx.seed, f"bti:unlearn:{round_}", trainer.device)
        epochs = trainer.run_epochs(f"BTI-DBF round {round_ + 1}: unlearning", p.unlearning_epochs, holdout)
        trainer.progress.start_run(f"BTI-DBF round {round_ + 1}: unlearning", epochs)
        for epoch in range(epochs):
            classifier.train()
            for x, y in trainer.batches(holdout, p.batch_size, f"bti:unlearn:{round_}:{epoch}", augment=True, drop_last=False):
                count = min(len(x), int(p.generated_share * len(x) + 1))
                chosen = torch.randperm(len(x), generator=gen, device=x.device)[:count]
                mixed = x.clone()
                with torch.no_grad():
                    mixed[chosen] = gen_net(x[chosen])
                feat, mixed_feat = classifier.spatial_features(x), classifier.spatial_features(mixed)
                loss = F.cross_entropy(classifier.from_spatial_features(mixed_feat), y) + F.mse_loss(mixed_feat, feat)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            trainer.progress.advance(1, f"epoch {epoch + 1}/{epochs}")
        trainer.progress.end_run()
