"""Official-output fixtures: run a method's official code on fixed inputs, store inputs and outputs.

    python tools/official_fixtures.py bti_dbf_unet --checkout PATH/TO/xuxiong0214/BTIDBF
    python tools/official_fixtures.py nc_mad --checkout PATH/TO/bolunwang/backdoor
    python tools/official_fixtures.py clp_bound --checkout PATH/TO/rkteddy/channel-Lipschitzness-based-pruning
    python tools/official_fixtures.py input_aware_generator --checkout PATH/TO/VinAIResearch/input-aware-backdoor-attack-release
    python tools/official_fixtures.py wanet_grid --checkout PATH/TO/VinAIResearch/Warping-based_Backdoor_Attack-release
    python tools/official_fixtures.py bpp_squeeze --checkout PATH/TO/RU-System-Software-and-Security/BppAttack
    python tools/official_fixtures.py spectral_scores --checkout PATH/TO/MadryLab/backdoor_data_poisoning
    PYTHONPATH=DIR python tools/official_fixtures.py ac_clusters --checkout PATH/TO/Trusted-AI/adversarial-robustness-toolbox
      (DIR holding scikit-learn, narwhals, joblib, threadpoolctl and tqdm, which ART imports)

Each fixture is an .npz under tests/fixtures/official/ holding the inputs, the official outputs (and
weights, where a network is compared), the official repository and its commit; the tests feed
benchbd the same inputs and compare. Official code is only run here, never copied into benchbd:
the fixtures are data, with this command as their recipe.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
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


def official_function(path: Path, name: str, namespace: dict):
    """A top-level function of an official file, compiled alone (the file's own imports, e.g. keras,
    are not needed by it and may not be installed)."""
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


# Mask L1 norms of ten labels: one clear outlier, one near the threshold 2, an even count (numpy's
# median is the mean of the two middle values), a case with nothing flagged.
NC_NORMS = [
    [92.0, 101.0, 18.0, 97.0, 88.0, 110.0, 95.0, 104.0, 99.0, 90.0],
    [50.0, 61.0, 58.0, 47.0, 66.0, 63.0, 55.0, 60.0, 38.0, 57.0],
    [20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0, 28.0, 29.0],
]


def nc_mad(checkout: Path) -> dict[str, np.ndarray]:
    """Neural Cleanse's MAD test (mad_outlier_detection.outlier_detection) on fixed mask norms: the
    anomaly index and the flagged labels it prints, per case."""
    test = official_function(checkout / "mad_outlier_detection.py", "outlier_detection", {"np": np})
    indices, flagged = [], []
    for norms in NC_NORMS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            test(np.array(norms), {label: label for label in range(len(norms))})
        lines = out.getvalue().splitlines()
        indices.append(float(next(line for line in lines if line.startswith("anomaly index:")).split(":")[1]))
        listed = next(line for line in lines if line.startswith("flagged label list:")).split(":", 1)[1]
        labels = [int(item.split(":")[0]) for item in listed.split(",") if item.strip()]
        flagged.append([1 if label in labels else 0 for label in range(len(norms))])
    return {"norms": np.array(NC_NORMS), "anomaly_index": np.array(indices), "flagged": np.array(flagged)}


def clp_bound(checkout: Path) -> dict[str, np.ndarray]:
    """CLP (defense.CLP) on a seeded conv -> BN -> ReLU -> conv -> BN network with drawn BN statistics and
    one planted high-bound channel per layer, at u = 3 and u = 0: which BN channels it zeroes."""
    from torch import nn

    clp = official_function(checkout / "defense.py", "CLP", {"torch": torch, "nn": nn})
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        net[0].weight[5] *= 8  # a channel with a far larger Lipschitz bound
        net[3].weight[11] *= 8
    state = {f"state:{k}": v.detach().clone().numpy() for k, v in net.state_dict().items()}
    zeroed = {}
    for u in (3.0, 0.0):
        pruned = copy.deepcopy(net)
        with contextlib.redirect_stdout(io.StringIO()):
            clp(pruned, u)
        zeroed[f"zeroed_u{int(u)}"] = np.stack([(pruned[i].weight == 0).numpy() for i in (1, 4)])
    return {**state, **zeroed}


def input_aware_generator(checkout: Path) -> dict[str, np.ndarray]:
    """Input-aware's Generator (networks/models.py, CIFAR-10, 3 output channels) built right after
    torch.manual_seed(0), its BN statistics then drawn module by module: its eval-mode output
    (tanh(z) / (2 + eps) + 0.5) on two seeded images, the sum of every state entry in module order
    (the weights themselves would be 2.7 MB: a network built in the same order from the same seed has
    them), and the first BN's running mean after one train-mode pass (its momentum)."""
    import types

    sys.path.insert(0, str(checkout))
    from networks.models import Generator  # the official module, from the checkout

    torch.manual_seed(0)
    net = Generator(types.SimpleNamespace(dataset="cifar10", input_channel=3))
    draw_bn_statistics(net)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sums = np.array([float(v.double().sum()) for v in net.state_dict().values()])
    with torch.no_grad():
        y = net.eval()(x)
        net.train()(x)
    first_bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    return {"input": x.numpy(), "output": y.numpy(), "state_sums": sums, "first_bn_mean_after_train_pass": first_bn.running_mean.numpy()}


def official_statements(path: Path, function: str, starts: list[str]) -> list[ast.stmt]:
    """Statements inside an official function (at any depth), the first whose source begins with each
    of `starts`, in that order: for computations the official code writes inline, not as functions."""
    source = path.read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == function)
    found = [n for n in ast.walk(node) if isinstance(n, (ast.Assign, ast.AugAssign))]
    found.sort(key=lambda n: (n.lineno, n.col_offset))
    return [next(n for n in found if ast.get_source_segment(source, n).startswith(start)) for start in starts]


def run_statements(path: Path, statements: list[ast.stmt], namespace: dict) -> dict:
    for statement in statements:
        exec(compile(ast.Module(body=[statement], type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def seeded_images(n: int = 4, seed: int = 1) -> torch.Tensor:
    """uint8 [n, 3, 32, 32] drawn from a fixed generator."""
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def wanet_grid(checkout: Path) -> dict[str, np.ndarray]:
    """WaNet's warp as train.py builds it (main: control points, upsampled field, identity grid;
    train: the backdoor grid and the grid_sample of a batch), on k = 4, s = 0.5, 32x32, after
    torch.manual_seed(0): the raw control points, the grids, and four seeded images warped."""
    import types

    import torch.nn.functional as F

    path = checkout / "train.py"
    opt = types.SimpleNamespace(k=4, s=0.5, input_height=32, grid_rescale=1, device="cpu")
    build = official_statements(
        path, "main", ["ins = torch.rand", "ins = ins /", "noise_grid = (", "array1d =", "x, y =", "identity_grid = torch.stack"]
    )
    torch.manual_seed(0)
    ns = run_statements(path, build[:1], {"torch": torch, "F": F, "opt": opt})
    raw = ns["ins"].clone()
    with contextlib.redirect_stderr(io.StringIO()):
        run_statements(path, build[1:], ns)
    images = seeded_images()
    ns.update(inputs=images.float() / 255, num_bd=len(images))
    warp = official_statements(path, "train", ["grid_temps = (identity_grid", "grid_temps = torch.clamp", "inputs_bd = F.grid_sample"])
    run_statements(path, warp, ns)
    return {"control_points": raw.numpy(), "noise_grid": ns["noise_grid"].numpy(), "grid": ns["grid_temps"].numpy(),
            "images": images.numpy(), "warped": (ns["inputs_bd"] * 255).numpy()}  # fmt: skip


def bpp_squeeze(checkout: Path) -> dict[str, np.ndarray]:
    """BppAttack's trigger and negatives as bppattack.py computes them on CIFAR-10 (normalised tensors,
    back_to_np_4d / np_4d_to_tensor around the inline quantisation of train(); main()'s residual of
    another image added to a negative sample, clamped): squeeze_num 8, four seeded images, each
    negative taking the residual of the next image."""
    import types

    path = checkout / "bppattack.py"
    opt = types.SimpleNamespace(dataset="cifar10", squeeze_num=8)
    ns = {"torch": torch, "opt": opt, "squeeze_num": 8}
    to_pixels = official_function(path, "back_to_np_4d", ns)
    to_tensor = official_function(path, "np_4d_to_tensor", ns)
    images = seeded_images()
    inputs = to_tensor(images.float(), opt)  # what the official loader gives: ToTensor + Normalize
    ns.update(inputs_bd=to_pixels(inputs, opt))
    run_statements(path, official_statements(path, "train", ["inputs_bd = torch.round(inputs_bd/255.0"]), ns)
    squeezed = to_pixels(to_tensor(ns["inputs_bd"], opt), opt)
    negatives = []
    for i in range(len(images)):
        other = inputs[[(i + 1) % len(images)]]
        ns.update(temp_negetive=to_pixels(other, opt))
        run_statements(path, official_statements(path, "main", ["residual = torch.round(temp_negetive"]), ns)
        ns.update(inputs=inputs[[i]], num_bd=0, num_neg=1, residual_list_train=[ns["residual"]], random=__import__("random"))
        run_statements(path, official_statements(path, "train", ["inputs_negative = back_to_np_4d", "inputs_negative=torch.clamp"]), ns)
        negatives.append(to_pixels(to_tensor(ns["inputs_negative"], opt), opt)[0])
    return {"images": images.numpy(), "squeezed": squeezed.numpy(), "negatives": torch.stack(negatives).numpy()}


def spectral_features(seed: int = 0) -> np.ndarray:
    """One label's representations (non-negative, as post-ReLU features): 80 clean rows around a
    positive mean and 20 poisoned ones shifted along one direction, in 12 dimensions; the mean's own
    projection on the top singular vector is large, so centring changes the ranking."""
    rng = np.random.default_rng(seed)
    clean = np.abs(rng.normal(2.0, 0.6, size=(80, 12)))
    shift = np.zeros(12)
    shift[:3] = 1.5
    poisoned = np.abs(rng.normal(2.0, 0.6, size=(20, 12)) + shift)
    return np.concatenate([clean, poisoned])


def spectral_scores(checkout: Path) -> dict[str, np.ndarray]:
    """Spectral Signatures as compute_corr.py scores one label (inline in compute_corr): the top right
    singular vector of the centred representations, each representation's |projection| on it
    (uncentred, as the official line 101) and the removal above the 85th percentile (config.json)."""
    path = checkout / "compute_corr.py"
    statements = official_statements(
        path, "compute_corr",
        ["full_mean = np.mean(full_cov", "centered_cov = full_cov - full_mean", "u,s,v = np.linalg.svd(centered_cov", "eigs = v[0:1]",
         "p = total_p", "corrs = np.matmul(eigs", "scores = np.linalg.norm(corrs", "p_score = np.percentile", "top_scores = np.where"],
    )  # fmt: skip
    features = spectral_features()
    ns = run_statements(path, statements, {"np": np, "full_cov": features, "total_p": 85})
    return {"features": features, "top_vector": ns["eigs"][0], "scores": ns["scores"], "removed": ns["top_scores"]}


# Per label: (clean rows, poisoned rows). A third of the label; half of it; 52 of 150 (34.67%, which
# ART rounds to 0.35 before its test "< 0.35"); a clean label alone.
AC_LABELS = [(40, 20), (30, 30), (98, 52), (60, 0)]


def ac_activations(seed: int = 0) -> list[np.ndarray]:
    """One label's last hidden activations per entry of AC_LABELS (24 dimensions, non-negative):
    the poisoned rows shifted in a few dimensions; the clean-only label spread in two blobs."""
    rng = np.random.default_rng(seed)
    out = []
    for clean, poisoned in AC_LABELS:
        rows = np.abs(rng.normal(1.0, 0.3, size=(clean + poisoned, 24)))
        rows[clean:, :4] += 2.0
        if poisoned == 0:
            rows[: clean // 3, 4:8] += 1.5
        out.append(rows)
    return out


def ac_clusters(checkout: Path) -> dict[str, np.ndarray]:
    """ART's ActivationDefence pieces on fixed activations (AC_LABELS): cluster_activations (PCA to
    10 dimensions, 2-means) and ClusteringAnalyzer.analyze_by_relative_size (0.35), as the
    ActivationDefence defaults; KMeans drawn from numpy's global generator, seeded here."""
    sys.path.insert(0, str(checkout))
    from art.defences.detector.poison.activation_defence import cluster_activations
    from art.defences.detector.poison.clustering_analyzer import ClusteringAnalyzer

    activations = ac_activations()
    np.random.seed(0)
    clusters, reduced = cluster_activations(activations, nb_clusters=2, nb_dims=10, reduce="PCA")
    out = {"sizes": np.array(AC_LABELS)}
    for i, (rows, assign, points) in enumerate(zip(activations, clusters, reduced)):
        try:  # one label at a time: its report line tests `id in np.where(...)`, an error under numpy 2
            clean, poison, _ = ClusteringAnalyzer().analyze_by_relative_size([assign], size_threshold=0.35)
            clean, poison = np.asarray(clean[0], dtype=np.int64), poison[0]
        except ValueError:  # raised only when no cluster is flagged (the empty np.where); numpy 1 read it as False
            clean, poison = np.ones(len(assign), dtype=np.int64), np.zeros(2)
        out.update({f"activations_{i}": rows, f"clusters_{i}": assign, f"reduced_{i}": points})
        out.update({f"assigned_clean_{i}": clean, f"poison_clusters_{i}": poison})
    return out


def draw_bn_statistics(net: torch.nn.Module) -> None:
    """BN affine parameters and running statistics away from their defaults, module by module, from
    the global generator (the tests draw them the same way for benchbd's network)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


FIXTURES = {
    "bti_dbf_unet": (bti_dbf_unet, "xuxiong0214/BTIDBF"),
    "nc_mad": (nc_mad, "bolunwang/backdoor"),
    "clp_bound": (clp_bound, "rkteddy/channel-Lipschitzness-based-pruning"),
    "input_aware_generator": (input_aware_generator, "VinAIResearch/input-aware-backdoor-attack-release"),
    "wanet_grid": (wanet_grid, "VinAIResearch/Warping-based_Backdoor_Attack-release"),
    "bpp_squeeze": (bpp_squeeze, "RU-System-Software-and-Security/BppAttack"),
    "spectral_scores": (spectral_scores, "MadryLab/backdoor_data_poisoning"),
    "ac_clusters": (ac_clusters, "Trusted-AI/adversarial-robustness-toolbox"),
}


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
