"""The adaptive latent backdoor lba_k (Yao et al., 2019, adapted; Table 7 of the T&R paper).

The attacker controls training. Besides cross-entropy on the dirty-label poisoned split, every
batch adds

    latent_weight * mean_i || phi_k(x_i) - stopgrad(mean_j phi_k(c_j)) ||^2 / dim(phi_k)

over the batch's poisoned images x_i and clean target-class images c_j, where phi_k is the input
of the network's k-th layer, counting the input conv as layer 1, two convs per residual block and
the final fully connected layer last. On WRN-16-1 (13 convs + FC): phi_10 and phi_12 are the
outputs of residual blocks 4 and 5 (phi_12 is T&R's default stem), and phi_14 is the input of the
FC layer, the pooled post-activation 64-d vector (the paper's Appendix C.1: "the input of the last
fully connected layer"). The features come from the training step's own forward pass through a
forward hook: no extra forward runs, so BatchNorm sees the whole batch once per step, as in any
training. The trigger is a registered dirty-label attack's (`trigger`, default badnet_grid) with
its parameters resolved through the same layers as any attack. Not part of `--attacks all`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import check
from ..errors import BenchbdError
from ..models.base import SplitNet
from .base import ATTACKS, Attack, AttackParams, TrainingControl


@dataclass
class LatentParams(AttackParams):
    trigger: str = "badnet_grid"
    latent_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check(self.latent_weight >= 0, f"latent_weight={self.latent_weight} must be >= 0")


def latent_point(net: SplitNet, layer: int) -> tuple[nn.Module, bool]:
    """(module, True if phi_k is that module's input rather than its output) for layer k of `net`."""
    block = (layer - 2) // 2  # residual blocks before layer k: layer 1 is the input conv, each block has two
    if block < net.num_blocks:
        return net.units[block], False
    fc = [m for m in net.tail.modules() if isinstance(m, nn.Linear)]
    if block == net.num_blocks and fc:
        return fc[-1], True
    raise BenchbdError(f"layer {layer} does not exist in {type(net).__name__} ({net.num_blocks} residual blocks and an FC layer)")


class LatentPull(TrainingControl):
    """The attacker's training control: captures phi_k in each step's forward pass and adds the latent loss."""

    def __init__(self, layer: int, target: int, weight: float):
        self.layer, self.target, self.weight = layer, target, weight
        self.handle = None
        self.features: torch.Tensor | None = None

    def attach(self, model: nn.Module) -> None:
        """Before a training run: hook layer k of the model's SplitNet."""
        net = next((m for m in model.modules() if isinstance(m, SplitNet)), None)
        if net is None:
            raise BenchbdError(f"the latent backdoor lba_{self.layer} needs a model cut into residual blocks (a SplitNet)")
        module, is_input = latent_point(net, self.layer)
        if is_input:
            self.handle = module.register_forward_pre_hook(lambda m, args: self._keep(args[0]))
        else:
            self.handle = module.register_forward_hook(lambda m, args, out: self._keep(out))

    def _keep(self, features: torch.Tensor) -> None:
        self.features = features

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle, self.features = None, None

    def loss(self, y: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
        """The latent loss of the step whose forward pass just ran (labels `y`, poison mask `poisoned`)."""
        features, self.features = self.features, None
        if features is None:
            raise BenchbdError(f"lba_{self.layer}: the training step never computed layer {self.layer}")
        clean_target = (y == self.target) & ~poisoned
        if not poisoned.any() or not clean_target.any():
            return features.new_zeros((), dtype=torch.float32)
        features = features.float().flatten(1)
        anchor = features[clean_target].mean(0).detach()
        return self.weight * (features[poisoned] - anchor).pow(2).mean()


class LatentBackdoor(Attack):
    Params = LatentParams
    in_all = False
    layer = 12
    version = 2  # 2: features from the training step's own forward pass; phi_14 is the FC layer's input; layered trigger

    def __init__(self, params, num_classes, image_size, name=""):
        super().__init__(params, num_classes, image_size, name)
        if (
            params.trigger not in ATTACKS
            or ATTACKS.get(params.trigger).clean_label
            or issubclass(ATTACKS.get(params.trigger), LatentBackdoor)
        ):
            valid = [n for n in ATTACKS.names() if not ATTACKS.get(n).clean_label and not issubclass(ATTACKS.get(n), LatentBackdoor)]
            raise BenchbdError(f"attack.{self.name}.trigger='{params.trigger}' is invalid; valid: {', '.join(valid)}")
        self.resolve_parts(lambda other: ATTACKS.get(other).Params())
        self.training_control = LatentPull(self.layer, params.target, params.latent_weight)

    def resolve_parts(self, params_of: Callable[[str], AttackParams]) -> None:
        """The trigger attack with its own layered parameters, and this attack's ratio and target."""
        base = ATTACKS.get(self.params.trigger)
        own = dataclasses.replace(params_of(self.params.trigger), poison_ratio=self.params.poison_ratio, target=self.params.target)
        self.trigger = base(own, self.num_classes, self.image_size, self.params.trigger)
        self.assets = self.trigger.assets

    def identity(self) -> dict:
        return {**super().identity(), "trigger": self.trigger.identity()}

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.trigger.apply(images)


for _layer in (10, 12, 14):
    ATTACKS.register(f"lba_{_layer}", description=f"Latent backdoor below layer {_layer} (adaptive; dirty label; not in 'all')")(
        type(f"LatentBackdoor{_layer}", (LatentBackdoor,), {"layer": _layer, "__module__": __name__})
    )
