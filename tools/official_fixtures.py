"""Official-output fixtures: run a method's official code on fixed inputs, store inputs and outputs.

    python tools/official_fixtures.py bti_dbf_unet --checkout PATH/TO/xuxiong0214/BTIDBF

Each fixture is an .npz under tests/fixtures/official/ holding the inputs, the official outputs (and
weights, where a network is compared), the official repository and its commit; the tests feed
benchbd the same inputs and compare. Official code is only run here, never copied into benchbd:
the fixtures are data, with this command as their recipe.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "official"


def commit_of(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def bti_dbf_unet(checkout: Path) -> dict[str, np.ndarray]:
    """The official UNet (models/unet_model.py) at 4 base filters and 2 levels, seeded, with its instance
    norms' affine parameters drawn too; its output on two seeded images, every parameter by its
    official name, and the parameter count at the official size (32 filters, 4 levels) of the parts
    its forward pass uses (each decoder block also builds an interpolation conv it never calls)."""
    sys.path.insert(0, str(checkout))
    from models.unet_model import UNet  # the official module, from the checkout

    torch.manual_seed(0)
    net = UNet(n_channels=3, num_classes=3, base_filter_num=4, num_blocks=2).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "bn_op" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x)
    full = UNet(n_channels=3, num_classes=3, base_filter_num=32, num_blocks=4)
    used = sum(p.numel() for n, p in full.named_parameters() if "up_sample_interpolate" not in n)
    out = {"input": x.numpy(), "output": y.numpy(), "parameters_used_at_32x4": np.array(used)}
    out.update({f"param:{n}": p.detach().numpy() for n, p in net.named_parameters() if "up_sample_interpolate" not in n})
    return out


FIXTURES = {"bti_dbf_unet": (bti_dbf_unet, "xuxiong0214/BTIDBF")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixture", choices=sorted(FIXTURES))
    parser.add_argument("--checkout", type=Path, required=True, help="a git checkout of the official repository")
    args = parser.parse_args(argv)
    make, repository = FIXTURES[args.fixture]
    arrays = make(args.checkout)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{args.fixture}.npz"
    np.savez_compressed(path, **arrays, repository=np.array(repository), commit=np.array(commit_of(args.checkout)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
