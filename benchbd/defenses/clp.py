"""CLP, Channel Lipschitzness-based Pruning (Zheng, Tang, Li & Liu, ECCV 2022): data-free.

For each BatchNorm that normalises a convolution's output directly, channel k's upper bound on its
Lipschitz constant is UCLC_k = sigma_max(W_k |gamma_k| / sqrt(running_var_k)), W_k the conv's
kernel of output channel k as a [C_in, kh kw] matrix; channels with UCLC_k > mean + u std of their
layer are pruned by zeroing the BN's gamma_k and beta_k. No data and no fine-tuning.

The official code pairs each BN with the last conv seen in `named_modules()`, which is right for
conv -> BN networks only (its README asks to adapt it for pre-activation ones). benchbd pairs each
BN with the conv whose output it receives, traced in one forward pass of a blank image: in the
pre-activation WRN that is each block's conv1 -> bn2 and the stem conv -> the first block's bn1;
a BN that normalises a residual sum has no such conv and is left alone. On conv -> BN networks
(resnet34) this is the official pairing.

On the pre-activation WRN-16-1 that pairing examines 7 of its 15 convolutions: every block's conv2
and both shortcut convolutions feed a residual sum, not a BN. `residual_convs=True` (off by
default: the official method) also examines those with the weight-only bound UCLC_k =
sigma_max(W_k) and prunes a chosen channel by zeroing the convolution's output channel k. The
measurement on the blend model is in docs/defenses.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..config import check
from .base import DEFENSES, Defense, Need


@dataclass
class ClpParams:
    u: float = 3.0  # prune channels more than u standard deviations above their layer's mean UCLC
    residual_convs: bool = False  # also the convolutions no BN follows (they feed a residual sum): weight-only bound

    def __post_init__(self):
        check(self.u >= 0, f"u={self.u} must be >= 0")


@torch.no_grad()
def conv_bn_pairs(model: nn.Module, input_size: int) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) where the BN's input is exactly the conv's output, in forward order."""
    produced: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}  # the output is kept alive so its id is not reused
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def conv_hook(module, args, out):
        produced[id(out)] = (module, out)

    def bn_hook(module, args):
        conv, out = produced.get(id(args[0]), (None, None))
        if out is args[0]:
            pairs.append((conv, module))

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(bn_hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return pairs


def channel_lipschitz(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    """UCLC of every output channel: the largest singular value of its BN-scaled kernel (of the
    kernel alone where no BN follows)."""
    kernels = conv.weight.detach().float().flatten(2)  # [C_out, C_in, kh kw]
    if bn is not None:
        scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).abs()
        kernels = kernels * scale.detach().float()[:, None, None]
    return torch.linalg.matrix_norm(kernels, ord=2)


def outliers(uclc: torch.Tensor, u: float) -> torch.Tensor:
    """Channels more than u (sample) standard deviations above their layer's mean."""
    return uclc > uclc.mean() + u * uclc.std()


@DEFENSES.register("clp")
class ChannelLipschitzPruning(Defense):
    """CLP: prune channels whose Lipschitz upper bound is an outlier in their layer; data-free (modern)."""

    Params = ClpParams
    needs = frozenset({Need.BACKDOORED_MODEL})
    group = "modern"
    source = "Zheng et al., ECCV 2022"

    @torch.no_grad()
    def run(self, ctx):
        net = copy.deepcopy(ctx.need(Need.BACKDOORED_MODEL))
        pruned = 0
        pairs = conv_bn_pairs(net, getattr(net, "input_size", 32))
        for conv, bn in pairs:
            chosen = outliers(channel_lipschitz(conv, bn), self.params.u)
            bn.weight[chosen] = 0
            bn.bias[chosen] = 0
            pruned += int(chosen.sum())
        ctx.metrics["pruned_channels"] = pruned
        ctx.metrics["clp_layers"] = len(pairs)
        if self.params.residual_convs:
            paired = {id(conv) for conv, _ in pairs}
            alone = [m for m in net.modules() if isinstance(m, nn.Conv2d) and id(m) not in paired]
            for conv in alone:
                chosen = outliers(channel_lipschitz(conv, None), self.params.u)
                conv.weight[chosen] = 0
                if conv.bias is not None:
                    conv.bias[chosen] = 0
                pruned += int(chosen.sum())
            ctx.metrics["pruned_channels"] = pruned
            ctx.metrics["clp_residual_layers"] = len(alone)
        return net
