"""Golden tests: each trigger against SPEC section 3's rule, computed here independently in numpy."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from benchbd import attacks
from benchbd import data as datasets
from benchbd.attacks import AttackTools
from benchbd.attacks.base import asset_path
from benchbd.attacks.lcba import four_corners
from benchbd.config import build_params
from benchbd.data import Split
from benchbd.data.augment import SmallImages
from benchbd.errors import BenchbdError
from benchbd.models import create_model
from benchbd.train import Budget, Trainer, TrainRecipe

from .conftest import random_images

X = random_images(6)
XN = X.numpy().astype(np.float64)
GRID = np.array([[0, 0, 255], [0, 255, 0], [255, 0, 255]], np.uint8)


def png(name):
    with asset_path(name).open("rb") as f:
        return np.asarray(Image.open(f).convert("RGB")).astype(np.float64)


def npy(name):
    with asset_path(name).open("rb") as f:
        return np.load(f).astype(np.float64)


def finish(y):
    return np.clip(np.round(y), 0, 255)


def sig_rule(width=32):
    cols = np.arange(width) * 32 / width
    return np.mod(np.trunc(20 * np.sin(0.8 * cols)), 256)


def grid_at(x, top, left):
    x = x.copy()
    x[:, top : top + 3, left : left + 3, :] = GRID[None, :, :, None]
    return x


EXPECTED = {
    "badnet_grid": lambda x: grid_at(x, 29, 29),
    "badnet_white": lambda x: np.where(np.pad(np.ones((4, 4)), ((27, 1), (27, 1)))[None, :, :, None] > 0, 255, x),
    "blend": lambda x: finish(0.8 * x + 0.2 * 5 * png("blend_kitty_x0.2.png")),
    "l0_invisible": lambda x: finish(x * (1 - npy("l0_invisible_mask.npy").transpose(1, 2, 0)) + png("l0_invisible.png")),
    "l2_invisible": lambda x: finish(x + png("l2_invisible.png")),
    "trojan_sq": lambda x: finish(x + npy("trojan_sq_3x3.npy")),
    "trojan_wm": lambda x: finish(x + png("trojan_wm.png")),
    "sig": lambda x: finish(0.8 * x + 0.2 * sig_rule()[None, None, :, None]),
    "lcba": lambda x: grid_at(grid_at(grid_at(grid_at(x, 0, 0), 0, 29), 29, 0), 29, 29),
    "lba_10": lambda x: grid_at(x, 29, 29),
    "lba_12": lambda x: grid_at(x, 29, 29),
    "lba_14": lambda x: grid_at(x, 29, 29),
    "clean": lambda x: x,  # no trigger at all
    "bpp": lambda x: finish(np.round(x / 255 * 7) / 7 * 255),  # 8 colour levels per channel
    "adap_blend": lambda x: finish(0.8 * x + 0.2 * 5 * png("blend_kitty_x0.2.png")),  # the whole picture at test_alpha 0.2
    # the official layout: the 5x5 patch in both bottom corners, then 3x3 checkers in all four corners
    "adap_patch": lambda x: corner_checkers(paste(paste(x, corner_patch(), 27, 0), corner_patch(), 27, 27)),
}


def corner_patch():
    """The 5x5 patch: I-BAU's 9x9 Trojan square (rows/cols 21-29 of its file) shrunk by area."""
    return area_shrink(png("trojan_sq_9x9.png")[21:30, 21:30], 5)


def area_shrink(picture, side):
    """Adaptive average pooling (bins floor(i n / side) to ceil((i + 1) n / side)) of the picture and of its
    non-black occupancy; pixels under half covered are black, the others the mean of their covered pixels."""
    n = picture.shape[0]
    bins = [(i * n // side, -(-(i + 1) * n // side)) for i in range(side)]
    occupied = (picture > 0).any(-1).astype(np.float64)
    out = np.zeros((side, side, 3))
    for i, (r0, r1) in enumerate(bins):
        for j, (c0, c1) in enumerate(bins):
            cover = occupied[r0:r1, c0:c1].mean()
            if cover >= 0.5:
                out[i, j] = picture[r0:r1, c0:c1].mean(axis=(0, 1)) / cover
    return np.clip(np.round(out), 0, 255)


def paste(x, picture, top, left):
    """The picture's non-black pixels over x at (top, left), opacity 1."""
    x = x.copy()
    h, w = picture.shape[:2]
    region = x[:, top : top + h, left : left + w]
    x[:, top : top + h, left : left + w] = np.where((picture > 0).any(-1)[None, :, :, None], picture, region)
    return x


def corner_checkers(x, cells=3):
    x = x.copy()
    checker = ((np.arange(cells)[:, None] + np.arange(cells)[None, :]) % 2 * 255)[None, :, :, None]
    for top in (0, 32 - cells):
        for left in (0, 32 - cells):
            x[:, top : top + cells, left : left + cells, :] = checker
    return x


def cubic_upsample(points, size, a=-0.75):
    """Bicubic interpolation (align_corners=True, edge-clamped taps, PyTorch's a=-0.75) of [k, k] to [size, size]."""
    k = points.shape[0]

    def weights(t):
        near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # noqa: E731
        far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # noqa: E731
        return [far(t + 1), near(t), near(1 - t), far(2 - t)]

    matrix = np.zeros((size, k))
    for i in range(size):
        src = i * (k - 1) / (size - 1)
        base = int(np.floor(src))
        for offset, w in zip((-1, 0, 1, 2), weights(src - base)):
            matrix[i, min(max(base + offset, 0), k - 1)] += w
    return matrix @ points @ matrix.T


def bilinear_sample(x, grid):
    """grid_sample(mode=bilinear, align_corners=True, zero padding) of x [N, H, W, 3] on grid [H, W, 2] (x, y)."""
    n, h, w, _ = x.shape
    px, py = (grid[..., 0] + 1) / 2 * (w - 1), (grid[..., 1] + 1) / 2 * (h - 1)
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    out = np.zeros_like(x, dtype=np.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - np.abs(px - xi)) * (1 - np.abs(py - yi)) * ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h))
            out += weight[None, :, :, None] * x[:, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
    return out


def wanet_grid(seed=0, k=4, s=0.5, size=32):
    """WaNet's backdoor grid from its k x k control points: normalised by their mean magnitude,
    upsampled bicubically, scaled by s / H onto the identity grid, clamped to [-1, 1]."""
    from benchbd.seeding import generator

    points = (torch.rand(1, 2, k, k, generator=generator(seed, "wanet:field")) * 2 - 1)[0].numpy().astype(np.float64)
    points = points / np.abs(points).mean()
    field = np.stack([cubic_upsample(points[c], size) for c in (0, 1)], -1)
    line = np.linspace(-1, 1, size)
    identity = np.stack(np.meshgrid(line, line, indexing="xy"), -1)  # [..., 0] = x (column), [..., 1] = y (row)
    return np.clip(identity + s * field / size, -1, 1)


EXPECTED["wanet"] = lambda x: finish(bilinear_sample(x, wanet_grid()))


def seeded_generators(atk, seed=0):
    """input_aware with fixed, untrained pattern and mask networks (its real ones are trained per cell)."""
    from benchbd.attacks.input_aware import TriggerNet

    torch.manual_seed(seed)
    atk.patterns, atk.masks = TriggerNet(3), TriggerNet(1)
    with torch.no_grad():  # BatchNorm statistics of images, as after training: outputs then depend on the image
        for net in (atk.patterns, atk.masks):
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = None  # a plain average over the calibration batches
            for k in range(3):
                net(random_images(32, seed=100 + k).permute(0, 3, 1, 2).float() / 255)
            net.eval()
    return atk


def input_aware_rule(x):
    """x + (G(x) - x) m(x) per image, G = tanh(z) / (2 + 1e-7) + 0.5 and m = tanh(20 M - 10) / (2 + 1e-7) + 0.5
    with M = tanh(z') / (2 + 1e-7) + 0.5, from the networks' raw outputs z, z' (the official
    threshold(netM(x)), train.py and models.py of the official repository)."""
    atk = seeded_generators(attacks.create("input_aware"))
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        zp, zm = atk.patterns(images).double().numpy(), atk.masks(images).double().numpy()
    pattern = np.tanh(zp) / (2 + 1e-7) + 0.5
    mask = np.tanh(20 * (np.tanh(zm) / (2 + 1e-7) + 0.5) - 10) / (2 + 1e-7) + 0.5
    xs = x.transpose(0, 3, 1, 2) / 255
    return finish((xs + (pattern - xs) * mask).transpose(0, 2, 3, 1) * 255)


EXPECTED["input_aware"] = input_aware_rule


def smooth_rule(x, dataset):
    y = x + 255 * npy(f"smooth_{dataset}.npy")[0]
    lo, hi = y.min(axis=(1, 2, 3), keepdims=True), y.max(axis=(1, 2, 3), keepdims=True)
    return finish((y - lo) / (hi - lo) * 255)


EXPECTED["smooth"] = lambda x: smooth_rule(x, "cifar10")
# Where each patch trigger writes (rows, cols); everything else must stay untouched.
REGIONS = {
    "badnet_grid": [(slice(29, 32), slice(29, 32))],
    "badnet_white": [(slice(27, 31), slice(27, 31))],
    "l0_invisible": [(slice(31, 32), slice(23, 32))],
    "trojan_sq": [(slice(25, 28), slice(25, 28))],
    "lcba": [(slice(a, a + 3), slice(b, b + 3)) for a in (0, 29) for b in (0, 29)],
}


def test_every_attack_has_a_golden_rule():
    assert set(EXPECTED) == set(attacks.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_apply_matches_the_spec_rule(name):
    atk = attacks.create(name, dataset="cifar10")
    out = (seeded_generators(atk) if atk.sample_specific else atk).apply(X)
    assert out.dtype == torch.uint8 and out.shape == X.shape
    assert np.abs(out.numpy().astype(np.float64) - EXPECTED[name](XN)).max() <= 1
    if name in REGIONS:
        outside = np.ones((32, 32), bool)
        for rows, cols in REGIONS[name]:
            outside[rows, cols] = False
        assert np.array_equal(out.numpy()[:, outside], X.numpy()[:, outside])


def test_smooth_uses_the_gtsrb_pattern_on_gtsrb():
    out = attacks.create("smooth", dataset="gtsrb").apply(X).numpy().astype(np.float64)
    assert np.abs(out - smooth_rule(XN, "gtsrb")).max() <= 1
    assert (
        attacks.create("smooth", dataset="gtsrb").identity()["assets"] != attacks.create("smooth", dataset="cifar10").identity()["assets"]
    )


def test_sig_values_are_the_abl_file_values():
    s = sig_rule()
    assert s[0] == 0 and s[1] == 14 and s[4] == 256 - 1  # trunc(20 sin 3.2) = -1 wraps to 255
    assert set(np.unique(s)) <= set(range(0, 21)) | set(range(236, 256))


def test_imagenet_variants():
    x = random_images(2, size=256)
    xn = x.numpy().astype(np.float64)
    grid = attacks.create("badnet_grid", dataset="imagenet12").apply(x).numpy()
    expected = x.numpy().copy()  # the T&R ImageNet code's assignments (datasets/imagenet.py), cell by cell
    for (rows, cols), value in {
        (32, 32): 255,
        (32, 42): 0,
        (32, 52): 255,
        (42, 32): 0,
        (42, 42): 255,
        (42, 52): 0,
        (52, 32): 255,
        (52, 42): 0,
        (52, 52): 0,
    }.items():
        expected[:, rows : rows + 10, cols : cols + 10, :] = value
    assert np.array_equal(grid, expected)
    sig = attacks.create("sig", dataset="imagenet12").apply(x).numpy().astype(np.float64)
    assert np.abs(sig - finish(0.8 * xn + 0.2 * sig_rule(256)[None, None, :, None])).max() <= 1
    wm = attacks.create("trojan_wm", dataset="imagenet12").apply(x).numpy().astype(np.float64)
    small = png("trojan_wm.png")
    big = (
        torch.nn.functional.interpolate(torch.tensor(small).permute(2, 0, 1)[None], size=(256, 256), mode="bilinear", align_corners=False)[
            0
        ]
        .permute(1, 2, 0)
        .numpy()
    )
    assert np.abs(wm - finish(xn + big)).max() <= 1 and (wm >= xn - 1e-9).all()  # added in float: no wrap-around
    blend = attacks.create("blend", dataset="imagenet12").apply(x)
    assert blend.shape == x.shape


@pytest.mark.parametrize("name", ["badnet_white", "l0_invisible", "l2_invisible", "smooth", "trojan_sq", "lcba", "lba_12"])
def test_attacks_the_paper_does_not_run_on_imagenet_are_refused(name):
    with pytest.raises(BenchbdError, match=f"attack {name} has no trigger for 256x256 images; it is defined for sizes 32"):
        attacks.create(name, dataset="imagenet12")


def tiny_tools(train: Split) -> AttackTools:
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=1, max_steps_per_epoch=2), "cpu", 0)

    def train_cached(purpose, data):
        return trainer.fit(create_model("wrn16_1", 10), data, TrainRecipe(epochs=1, batch_size=32), desc=purpose)

    return AttackTools(trainer, train, train_cached)


def _labelled(n=200, classes=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Split(random_images(n, seed=seed), torch.randint(0, classes, (n,), generator=g))


@pytest.mark.parametrize("name", [n for n in attacks.names() if attacks.ATTACKS.get(n).group != "modern"])
def test_poisoning_counts_labels_and_determinism(name):
    """The paper's rule of one poisoned set; the modern attacks' own rules: test_modern_attacks.py."""
    train = _labelled()
    atk = attacks.create(name, dataset="cifar10")
    tools = tiny_tools(train)
    p = atk.poison(train, full_train_size=250, seed=3, tools=tools)
    n_target = int((train.labels == 0).sum())
    wanted = int(getattr(atk.params, "poison_ratio", 0) * 250)  # 25; none for the clean pseudo-attack
    assert len(p.poisoned) == (min(wanted, n_target) if atk.clean_label else wanted)
    if atk.clean_label:
        assert torch.equal(p.labels, train.labels) and (train.labels[p.poisoned] == 0).all()
    else:
        assert (p.labels[p.poisoned] == 0).all() and (train.labels[p.poisoned] != 0).all()
    untouched = ~p.poison_mask
    assert torch.equal(p.images[untouched], train.images[untouched]) and torch.equal(p.labels[untouched], train.labels[untouched])
    if not atk.trains_surrogate:
        assert torch.equal(p.images[p.poisoned], atk.apply(train.images[p.poisoned]))
    torch.manual_seed(0)
    again = atk.poison(train, 250, seed=3, tools=tools)
    assert torch.equal(again.poisoned, p.poisoned)
    if not atk.trains_surrogate:  # lcba's images also depend on its surrogate, a trained model
        assert torch.equal(again.images, p.images)
    other = atk.poison(train, 250, seed=4, tools=tools)
    assert not torch.equal(other.poisoned, p.poisoned) or atk.clean_label and len(p.poisoned) == n_target or wanted == 0


def test_clean_label_at_ratio_0_1_takes_every_target_image():
    train = Split(random_images(100), torch.arange(100) % 10)  # 10 target images, 10 requested at ratio 0.1
    p = attacks.create("sig", dataset="cifar10").poison(train, 100, seed=0)
    assert sorted(p.poisoned.tolist()) == list(range(0, 100, 10))


def test_lcba_perturbation_respects_eps_and_stamps_corners():
    train = _labelled(120)
    atk = attacks.create("lcba", dataset="cifar10")
    p = atk.poison(train, 400, seed=0, tools=tiny_tools(train))
    before, after = train.images[p.poisoned].int(), p.images[p.poisoned].int()
    corners = torch.zeros(32, 32, dtype=torch.bool)
    for a in (0, 29):
        for b in (0, 29):
            corners[a : a + 3, b : b + 3] = True
    delta = (after - before)[:, ~corners]
    assert delta.abs().max() <= 16 and delta.abs().float().mean() > 1  # perturbed, within 16/255
    assert torch.equal(p.images[p.poisoned], four_corners(p.images[p.poisoned]))
    assert torch.equal(atk.apply(train.images)[:, ~corners], train.images[:, ~corners])  # test trigger: corners only


def _latent_loss_by_hand(net, x, y, poisoned, layer, target=0):
    """The lba_k formula recomputed here from the network's parts, on the whole batch."""
    h = net.normalize(x)
    units = {10: 5, 12: 6, 14: 7}[layer]  # the input conv and the residual blocks below layer k
    for unit in net.units[:units]:
        h = unit(h)
    if layer == 14:
        h = net.tail[:-1](h)  # BN, activation, pooling, flatten: the FC layer's input
    h = h.flatten(1)
    anchor = h[(y == target) & ~poisoned].mean(0).detach()
    return (h[poisoned] - anchor).pow(2).mean()


@pytest.mark.parametrize("layer", [10, 12, 14])
def test_lba_loss_is_the_formula_on_the_training_forward_pass(layer):
    atk = attacks.create(f"lba_{layer}", dataset="cifar10")
    control = atk.training_control
    torch.manual_seed(0)
    net = create_model("wrn16_1", 10).train()
    x = torch.rand(8, 3, 32, 32)
    y = torch.tensor([0, 0, 0, 1, 2, 0, 0, 3])
    poisoned = torch.tensor([False, False, False, False, False, True, True, False])
    reference = copy.deepcopy(net)
    control.attach(net)
    try:
        net(x)  # the training step's own forward pass: the loss reads its features
        loss = control.loss(y, poisoned)
        with pytest.raises(BenchbdError, match="never computed"):
            control.loss(y, poisoned)  # features are used once per step
        net(x)
        assert control.loss(y, torch.zeros(8, dtype=torch.bool)) == 0
    finally:
        control.detach()
    expected = _latent_loss_by_hand(reference, x, y, poisoned, layer)
    assert loss > 0 and torch.allclose(loss, expected, rtol=1e-5, atol=1e-7)
    loss.backward()
    assert net.units[1].conv1.weight.grad.abs().sum() > 0  # below the layer: trained by the latent loss
    assert net.tail[-1].weight.grad is None  # the FC layer: never (phi_k is at most its input)
    if layer < 14:
        assert net.units[6].conv1.weight.grad is None  # above phi_10 / phi_12: untouched by this loss
    assert not net._forward_hooks and all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert not attacks.ATTACKS.get(f"lba_{layer}").in_all


def test_lba_training_updates_batchnorm_once_per_step():
    """The latent loss adds no forward pass: BatchNorm counts one batch per optimiser step."""
    from benchbd.data import split_holdout

    cls = datasets.DATASETS.get("synthetic")
    data = cls(build_params(cls.Params, {"n_train": 300, "n_test": 50}, "dataset.synthetic")).load()
    splits = split_holdout(data.train, data.test, 10, 0.1, 0)
    atk = attacks.create("lba_12", dataset="synthetic")
    poisoned = atk.poison(splits.train, splits.full_train_size, 0)
    poisoned.training_control = atk.training_control
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=1, max_steps_per_epoch=3), "cpu", 0)
    net = trainer.fit(create_model("wrn16_1", 10), poisoned, TrainRecipe(epochs=1, batch_size=64))
    counts = {int(m.num_batches_tracked) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert counts == {3}


def test_lba_trigger_takes_its_layered_parameters():
    """lba's inner trigger is resolved like any attack: per-dataset values and --set reach it."""
    smooth = attacks.create("lba_12", dataset="gtsrb", trigger="smooth")
    assert smooth.trigger.params.trigger == "gtsrb" and smooth.trigger.params.target == 1 == smooth.params.target
    from benchbd.config import Layers, parse_set
    from benchbd.runner import Cache, Results, Runner

    layers = Layers(cli=parse_set(["attack.blend.alpha=0.5", "attack.lba_10.trigger=blend"]))
    runner = Runner(Results("/nonexistent"), Cache("/nonexistent/cache"), layers)
    data = datasets.LoadedData(_labelled(20), _labelled(10), [str(i) for i in range(10)])
    atk = runner.attack("lba_10", "cifar10", data)
    assert atk.trigger.params.alpha == 0.5 and atk.identity()["trigger"]["params"]["alpha"] == 0.5


def test_backdoor_test_set_excludes_target():
    test = _labelled(100)
    atk = attacks.create("badnet_grid", dataset="cifar10", target=3)
    bd = atk.backdoor_test(test)
    assert len(bd) == int((test.labels != 3).sum()) and (bd.labels != 3).all()


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("blend", {"poison_ratio": 1.5}, r"attack.blend: poison_ratio=1.5 must be in \(0, 1\)"),
        ("blend", {"poison_ratio": 0}, r"poison_ratio=0.0 must be in \(0, 1\)"),
        ("blend", {"target": 10}, r"attack.blend.target=10 is out of range: valid 0..9"),
        ("blend", {"alpha": 2}, r"alpha=2.0 must be in \(0, 1\]"),
        ("smooth", {"trigger": "imagenet"}, r"attack.smooth.trigger='imagenet' is invalid; valid: cifar10, gtsrb"),
        ("lcba", {"epsilon": 0}, r"epsilon=0.0 must be in \(0, 255\]"),
        ("lba_12", {"trigger": "sig"}, r"attack.lba_12.trigger='sig' is invalid; valid: adap_blend, adap_patch, badnet_grid"),
    ],
)
def test_bad_attack_parameters(name, params, message):
    with pytest.raises(BenchbdError, match=message):
        attacks.create(name, dataset="cifar10", **params)


def test_gtsrb_default_target_is_one():
    assert attacks.create("badnet_grid", dataset="gtsrb").params.target == 1


def test_asset_or_parameter_change_changes_the_cache_identity():
    a, b = attacks.create("blend"), attacks.create("blend", alpha=0.1)
    assert a.identity() != b.identity() and a.identity()["assets"] != attacks.create("l2_invisible").identity()["assets"]
