"""LCBA, the label-consistent backdoor (Turner et al.; MadryLab code): target-class training
images are made hard to classify by a PGD perturbation of a surrogate model, then stamped with
the 3x3 grid in all four corners, labels unchanged. The released images cannot be fetched here,
so they are regenerated: the surrogate is trained on the clean training split (cached per
dataset, seed and budget) and the perturbed split is cached like every poisoned split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import check
from ..errors import BenchbdError
from .badnet_grid import stamp
from .base import ATTACKS, Attack, AttackParams, AttackTools, to_uint8


@dataclass
class LcbaParams(AttackParams):
    epsilon: float = 16.0  # L-inf bound, in grey levels (of 255)
    pgd_steps: int = 10
    pgd_step_size: float = 2.0  # grey levels per step

    def __post_init__(self):
        super().__post_init__()
        check(0 < self.epsilon <= 255, f"epsilon={self.epsilon} must be in (0, 255] grey levels")
        check(self.pgd_steps >= 1 and self.pgd_step_size > 0, "pgd_steps must be >= 1 and pgd_step_size > 0")


def four_corners(images: torch.Tensor) -> torch.Tensor:
    """The grid in every corner, same orientation."""
    far = images.shape[1] - 3
    for top, left in ((0, 0), (0, far), (far, 0), (far, far)):
        images = stamp(images, top, left)
    return images


def pgd_linf(model, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int) -> torch.Tensor:
    """Untargeted L-inf PGD from x (float [0, 1]): maximise the model's loss on the true label."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp_(0, 1)
    return adv.detach()


@ATTACKS.register("lcba", aliases=("label_consistent",))
class LabelConsistent(Attack):
    """LCBA: PGD-perturbed target-class images (eps 16/255) + four-corner grid (clean label)."""

    Params = LcbaParams
    clean_label = True
    trains_surrogate = True

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return four_corners(images)

    def poison_images(self, images, labels, tools: AttackTools | None, seed: int) -> torch.Tensor:
        if tools is None:
            raise BenchbdError("attack lcba trains a surrogate model: poison it through the runner, which provides the tools")
        surrogate = tools.train_cached("lcba surrogate", tools.clean_train)
        trainer = tools.trainer
        surrogate = trainer.prepare(surrogate).eval().requires_grad_(False)
        p = self.params
        out = []
        for start in range(0, len(images), 256):
            chunk = images[start : start + 256].to(trainer.device)
            x = trainer.pipeline.test(chunk)
            adv = pgd_linf(
                surrogate, x, labels[start : start + 256].to(trainer.device), p.epsilon / 255, p.pgd_step_size / 255, p.pgd_steps
            )
            adv8 = to_uint8(adv.permute(0, 2, 3, 1) * 255)
            # rounding may step half a grey level past the bound: clip back into it in integer space
            base = chunk.int()
            adv8 = torch.min(torch.max(adv8.int(), base - int(p.epsilon)), base + int(p.epsilon)).clamp(0, 255).to(torch.uint8)
            out.append(self.apply(adv8).cpu())
        return torch.cat(out)
