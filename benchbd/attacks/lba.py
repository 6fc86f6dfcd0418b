"""The adaptive latent backdoor lba_k (Yao et al., 2019, adapted; Table 7 of the T&R paper).

The attacker controls training. Besides cross-entropy on the dirty-label poisoned split, every
batch adds

    latent_weight * mean_i || phi_k(x_i) - stopgrad(mean_j phi_k(c_j)) ||^2 / dim(phi_k)

over the batch's poisoned images x_i and clean target-class images c_j, where phi_k is the
network's output just before its k-th layer (counting the input conv as layer 1 and two convs
per residual block: lba_10, lba_12 and lba_14 are the outputs of blocks 4, 5 and 6 of WRN-16-1).
The triggered features are pulled onto the target class's, so the backdoor lives in the layers
before k: at k >= 12 it sits at or below T&R's split. The trigger is a registered dirty-label
attack's (`trigger`, default badnet_grid). Not part of `--attacks all`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check
from ..errors import BenchbdError
from ..models.base import SplitNet
from .base import ATTACKS, Attack, AttackParams


@dataclass
class LatentParams(AttackParams):
    trigger: str = "badnet_grid"
    latent_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check(self.latent_weight >= 0, f"latent_weight={self.latent_weight} must be >= 0")


class LatentBackdoor(Attack):
    Params = LatentParams
    in_all = False
    layer = 12

    def __init__(self, params, num_classes, image_size, name=""):
        super().__init__(params, num_classes, image_size, name)
        if params.trigger not in ATTACKS or ATTACKS.get(params.trigger).clean_label or issubclass(ATTACKS.get(params.trigger), LatentBackdoor):
            valid = [n for n in ATTACKS.names() if not ATTACKS.get(n).clean_label and not issubclass(ATTACKS.get(n), LatentBackdoor)]
            raise BenchbdError(f"attack.{self.name}.trigger='{params.trigger}' is invalid; valid: {', '.join(valid)}")
        base = ATTACKS.get(params.trigger)
        self.trigger = base(base.Params(poison_ratio=params.poison_ratio, target=params.target), num_classes, image_size, params.trigger)
        self.assets = self.trigger.assets
        self.training_loss = self.latent_loss

    @property
    def block(self) -> int:
        """Residual blocks before layer k: layer 1 is the input conv, each block has two."""
        return (self.layer - 2) // 2

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.trigger.apply(images)

    def latent_loss(self, model, x: torch.Tensor, y: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
        net = next((m for m in model.modules() if isinstance(m, SplitNet)), None)
        if net is None or self.block > net.num_blocks:
            raise BenchbdError(f"attack {self.name} needs a model with at least {self.block} residual blocks")
        clean_target = (y == self.params.target) & ~poisoned
        if not poisoned.any() or not clean_target.any():
            return x.new_zeros(())
        stem = net.stem(self.block)
        anchor = stem(x[clean_target]).float().mean(0).detach()
        return self.params.latent_weight * (stem(x[poisoned]).float() - anchor).pow(2).mean()


for _layer in (10, 12, 14):
    ATTACKS.register(f"lba_{_layer}", description=f"Latent backdoor below layer {_layer} (adaptive; dirty label; not in 'all')")(
        type(f"LatentBackdoor{_layer}", (LatentBackdoor,), {"layer": _layer, "__module__": __name__}))
