"""Adaptive-Blend and Adaptive-Patch (Qi, Xie, Li, Mahloujifar & Mittal, ICLR 2023): static
poisons built to defeat latent-separation defenses, at the method's own low rates.

Two disjoint random sets of the training split: `poison_ratio` x the full training set poisoned
(training trigger, target label) and `cover_ratio` x it "cover" samples (the same kind of trigger,
true labels kept), which keep the poisoned samples' features close to their class. Training
triggers are weaker than the test trigger. Every blend is x + alpha * mask * (t - x).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import check
from ..data.splits import PoisonedSplit, Split
from ..errors import BenchbdError
from ..seeding import generator
from .base import ATTACKS, Attack, AttackParams, load_asset, to_uint8
from .blend import KITTY_FILE

SOURCE = "Qi et al., ICLR 2023"


@dataclass
class AdaptiveParams(AttackParams):
    poison_ratio: float = 0.003  # the method's own low rate, of the whole training set
    cover_ratio: float = 0.003  # label-keeping cover samples, of the whole training set

    def __post_init__(self):
        super().__post_init__()
        check(0 <= self.cover_ratio < 1, f"cover_ratio={self.cover_ratio} must be in [0, 1)")


def blend(images: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """x + alpha * mask * (t - x) in float; `mask` [.., H, W] broadcast over channels."""
    x = images.float()
    return x + alpha * mask[..., None].to(x.device) * (pattern.to(x.device) - x)


class AdaptiveAttack(Attack):
    """Poison and cover sets drawn once; subclasses give the training trigger per group of samples."""

    Params = AdaptiveParams
    in_all = False
    group = "modern"
    source = SOURCE

    @abc.abstractmethod
    def training_trigger(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Float [N, H, W, 3]: the training trigger on `images`, the i-th of a set of N in order."""

    def poison_and_cover(self, train: Split, full_train_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Disjoint, sorted index sets into `train`: the poisoned samples and the cover samples."""
        n_poison = int(self.params.poison_ratio * full_train_size)
        n_cover = int(self.params.cover_ratio * full_train_size)
        if n_poison + n_cover > len(train):
            raise BenchbdError(
                f"attack.{self.name}: poison_ratio + cover_ratio ask for {n_poison + n_cover} images of a {len(train)}-image training split"
            )
        order = torch.randperm(len(train), generator=generator(seed, f"poison:{self.name}"))
        return order[:n_poison].sort().values, order[n_poison : n_poison + n_cover].sort().values

    def poison(self, train: Split, full_train_size: int, seed: int, tools=None) -> PoisonedSplit:
        poison, cover = self.poison_and_cover(train, full_train_size, seed)
        gen = generator(seed, f"training trigger:{self.name}")
        images, labels = train.images.clone(), train.labels.clone()
        for chosen in (cover, poison):  # each set gets its own groups / masks, as the official code
            if len(chosen):
                images[chosen] = to_uint8(self.training_trigger(train.images[chosen], gen))
        labels[poison] = self.params.target
        return PoisonedSplit(images, labels, poisoned=poison)


@dataclass
class AdaptiveBlendParams(AdaptiveParams):
    alpha: float = 0.15  # training opacity
    test_alpha: float = 0.2
    pieces: int = 16  # the image is cut into a sqrt(pieces) x sqrt(pieces) grid
    mask_rate: float = 0.5  # share of the pieces masked out of each training trigger

    def __post_init__(self):
        super().__post_init__()
        check(0 < self.alpha <= 1 and 0 < self.test_alpha <= 1, f"alpha={self.alpha}, test_alpha={self.test_alpha} must be in (0, 1]")
        check(math.isqrt(self.pieces) ** 2 == self.pieces, f"pieces={self.pieces} must be a square number")
        check(0 <= self.mask_rate < 1, f"mask_rate={self.mask_rate} must be in [0, 1)")


def piece_masks(count: int, size: int, pieces: int, masked: int, gen: torch.Generator) -> torch.Tensor:
    """[count, size, size] masks of ones with `masked` random pieces of a sqrt(pieces)-grid zeroed
    (piece i: rows of block i mod side, columns of block i div side, as the official code)."""
    side = math.isqrt(pieces)
    step = size // side
    masks = torch.ones(count, size, size)
    for k in range(count):
        for piece in torch.randperm(pieces, generator=gen)[:masked].tolist():
            row, col = piece % side, piece // side
            masks[k, row * step : (row + 1) * step, col * step : (col + 1) * step] = 0
    return masks


@ATTACKS.register("adap_blend", aliases=("adaptive_blend", "adap-blend"))
class AdaptiveBlend(AdaptiveAttack):
    """Adaptive-Blend: Hello-Kitty blend at 0.15 with half its 16 pieces masked, 0.3% poison + 0.3% cover (modern)."""

    Params = AdaptiveBlendParams
    assets = (KITTY_FILE,)

    def __init__(self, params, num_classes, image_size, name="adap_blend"):
        super().__init__(params, num_classes, image_size, name)
        if image_size % math.isqrt(params.pieces):
            raise BenchbdError(f"attack.{name}.pieces={params.pieces}: {image_size}-pixel images do not divide into that grid")
        self.picture = load_asset(KITTY_FILE) * 5.0

    def training_trigger(self, images, gen):
        masked = round(self.params.mask_rate * self.params.pieces)
        masks = piece_masks(len(images), images.shape[1], self.params.pieces, masked, gen)
        return blend(images, self.picture, masks, self.params.alpha)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The whole, unmasked picture at test_alpha."""
        ones = torch.ones(images.shape[1:3])
        return to_uint8(blend(images, self.picture, ones, self.params.test_alpha))


def place(picture: torch.Tensor, top: int, left: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A [h, w, 3] picture at (top, left) of a size x size canvas, masked to its non-black pixels."""
    h, w = picture.shape[:2]
    pattern = torch.zeros(size, size, 3)
    pattern[top : top + h, left : left + w] = picture
    return pattern, (pattern > 0).any(-1).float()


def shrink(picture: torch.Tensor, side: int) -> torch.Tensor:
    """A [h, w, 3] picture resized to side x side by area averaging (pixels under half covered drop to black)."""
    chw = picture.permute(2, 0, 1)[None]
    cover = F.interpolate((chw > 0).any(1, keepdim=True).float(), size=(side, side), mode="area")
    small = F.interpolate(chw, size=(side, side), mode="area") / cover.clamp_min(1e-6)
    return (small * (cover >= 0.5))[0].permute(1, 2, 0).round().clamp(0, 255)


def corner_checkers(size: int = 32, cells: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A `cells` x `cells` black-and-white checker in each of the four corners, and their squares as mask."""
    checker = ((torch.arange(cells)[:, None] + torch.arange(cells)[None, :]) % 2 * 255.0)[..., None].expand(cells, cells, 3)
    pattern, mask = torch.zeros(size, size, 3), torch.zeros(size, size)
    for top in (0, size - cells):
        for left in (0, size - cells):
            pattern[top : top + cells, left : left + cells] = checker
            mask[top : top + cells, left : left + cells] = 1
    return pattern, mask


@dataclass
class AdaptivePatchParams(AdaptiveParams):
    cover_ratio: float = 0.006


@ATTACKS.register("adap_patch", aliases=("adaptive_patch", "adap-patch"))
class AdaptivePatch(AdaptiveAttack):
    """Adaptive-Patch: four patch triggers at opacities 0.5/0.2/0.5/0.3 in training, two at 1 in test, 0.3% + 0.6% (modern)."""

    Params = AdaptivePatchParams
    version = 2  # 2: the official positions and sizes (1 crowded three triggers into the bottom-right corner)

    # The official logos (phoenix, firefox) ship without a licence we can use: benchbd's own MIT trigger
    # files stand in for them, at the official positions, sizes and opacities (docs/deviations.md).
    assets = ("trojan_sq_9x9.png", "trojan_wm.png")
    training_opacities = (0.5, 0.2, 0.5, 0.3)

    def __init__(self, params, num_classes, image_size, name="adap_patch"):
        super().__init__(params, num_classes, image_size, name)
        square = load_asset("trojan_sq_9x9.png")[21:30, 21:30]  # I-BAU's 9x9 Trojan square
        patch = shrink(square, 5)
        logo = shrink(load_asset("trojan_wm.png")[:30, :30], 13)
        self.triggers = [
            place(patch, 27, 27),  # the official 5x5 corner patch, rows/cols 27-31
            place(logo, 1, 18),  # the official 13x13 logo, rows 1-13, cols 18-30
            corner_checkers(),  # 3x3 checkers in the four corners
            place(square[:8, :8], 21, 21),  # the official 8x8 square, rows/cols 21-28
        ]
        bottom_corners = place(patch, 27, 27)[0] + place(patch, 27, 0)[0]
        # test: the 5x5 patch in both bottom corners, then the four checkers, each at opacity 1
        self.test_triggers = [(bottom_corners, (bottom_corners > 0).any(-1).float()), self.triggers[2]]

    def training_trigger(self, images, gen):
        """Sample i of N gets trigger j for i < (j + 1) N / 4: four equal groups in order."""
        out = images.float().clone()
        n, k = len(images), len(self.triggers)
        group = torch.arange(n) * k // max(n, 1)
        for j, ((pattern, mask), alpha) in enumerate(zip(self.triggers, self.training_opacities)):
            rows = group == j
            out[rows] = blend(images[rows], pattern, mask, alpha)
        return out

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        for pattern, mask in self.test_triggers:
            x = blend(x, pattern, mask, 1.0)
        return to_uint8(x)
