"""The attacks published after the paper (`--attacks modern`): poisoning protocols, training
control and training triggers, recomputed here. Their test-time triggers are golden-tested in
test_attacks.py with the paper's attacks."""

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchbd import attacks
from benchbd.attacks.base import attack_groups
from benchbd.cli import main
from benchbd.data import PoisonedSplit, Split
from benchbd.data.augment import SmallImages
from benchbd.models import create_model
from benchbd.runner import Results
from benchbd.train import Budget, Trainer, TrainRecipe

from .conftest import random_images
from .test_attacks import bilinear_sample, finish, png, seeded_generators, wanet_grid
from .test_cli import SYN

MODERN = ["adap_blend", "adap_patch", "bpp", "input_aware", "wanet"]


def labelled(n, seed=1, classes=10):
    return Split(random_images(n, seed=seed), torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed)))


def test_modern_group_and_all_stay_apart():
    groups = attack_groups()
    assert sorted(groups["modern"]) == MODERN
    assert not set(groups["modern"]) & set(groups["all"]) and len(groups["all"]) == 10
    from benchbd.attacks import ATTACKS

    assert ATTACKS.expand("all,modern", groups) == groups["all"] + groups["modern"]
    assert ATTACKS.expand("wanet,modern", groups)[0] == "wanet" and len(ATTACKS.expand("wanet,modern", groups)) == 5


@pytest.mark.parametrize("name", ["wanet", "bpp", "input_aware"])
def test_per_batch_rule_counts_labels_and_spares_the_holdout(name):
    atk = seeded_generators(attacks.create(name, dataset="cifar10"))
    batch = labelled(128)
    eligible = torch.ones(128, dtype=torch.bool)
    eligible[:5] = False  # e.g. holdout images the attacker must not touch
    gen = torch.Generator().manual_seed(0)
    images, labels, backdoor = atk.training_control.shape_batch(batch.images, batch.labels, None, eligible, gen)
    n_backdoor = int(atk.params.poison_ratio * 128)
    n_extra = {"wanet": 2 * n_backdoor, "bpp": int(0.2 * 128), "input_aware": int(0.1 * 128)}[name]  # cross / negative / cross
    assert (n_backdoor, n_extra) == {"wanet": (12, 24), "bpp": (12, 25), "input_aware": (12, 12)}[name]
    order = torch.arange(5, 128)  # the first eligible samples, in batch order
    bd, extra, rest = order[:n_backdoor], order[n_backdoor : n_backdoor + n_extra], order[n_backdoor + n_extra :]
    assert torch.equal(torch.nonzero(backdoor).flatten(), bd)
    assert (labels[bd] == atk.params.target).all()
    assert (images[bd].int() - atk.apply(batch.images[bd]).int()).abs().max() <= 1  # input_aware: convs of another batch size
    assert torch.equal(labels[extra], batch.labels[extra])  # noise / negative samples keep their labels
    assert not torch.equal(images[extra], batch.images[extra]) and not torch.equal(images[extra], atk.apply(batch.images[extra]))
    assert torch.equal(images[rest], batch.images[rest]) and torch.equal(labels[rest], batch.labels[rest])
    assert torch.equal(images[:5], batch.images[:5]) and torch.equal(labels[:5], batch.labels[:5])


def test_wanet_noise_samples_are_warped_on_the_backdoor_grid_plus_one_pixel_of_noise():
    atk = attacks.create("wanet", dataset="cifar10")
    batch = random_images(4)
    out = atk.extra_samples(batch, torch.arange(4), torch.Generator().manual_seed(0)).numpy()
    noise = (torch.rand(4, 32, 32, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1).numpy()  # the same draw
    grid = wanet_grid()
    for k in range(4):
        want = finish(bilinear_sample(batch.numpy()[k : k + 1].astype(np.float64), np.clip(grid + noise[k] / 32, -1, 1)))
        assert np.abs(out[k] - want[0]).max() <= 1
    assert not np.array_equal(out, atk.apply(batch).numpy())  # not the backdoor warp itself


def test_bpp_negative_is_the_residual_of_another_image():
    atk = attacks.create("bpp", dataset="cifar10")
    batch = random_images(6)
    out = atk.extra_samples(batch, torch.tensor([1, 4]), torch.Generator().manual_seed(0)).numpy().astype(np.float64)
    x = batch.numpy().astype(np.float64)
    residuals = np.round(x / 255 * 7) / 7 * 255 - x  # Q(x_j) - x_j of every image of the batch
    for row, i in zip(out, (1, 4)):
        matches = [j for j in range(6) if np.abs(row - np.clip(np.round(x[i] + residuals[j]), 0, 255)).max() <= 1]
        assert matches and i not in matches  # another image's residual, never its own (that is the trigger)


@pytest.mark.parametrize("name", ["wanet", "bpp", "input_aware"])
def test_a_defense_training_on_its_own_sees_the_poison_as_a_fixed_split(name):
    """ABL, DP-SGD, SS/AC train on the poisoned data without the attacker: the same rule once,
    over the whole split in a seeded order, holdout never touched; the attacker's stored split is clean."""
    atk = seeded_generators(attacks.create(name, dataset="cifar10"))
    train = labelled(300)
    stored = atk.poison(train, 320, seed=0)
    assert len(stored.poisoned) == 0 and torch.equal(stored.images, train.images)
    whole = PoisonedSplit(stored.images, stored.labels, poisoned=stored.poisoned, training_control=atk.training_control)
    whole = whole.plus_clean(labelled(20, seed=2))
    static = whole.static(seed=0)
    assert static.training_control is None
    n_backdoor = int(atk.params.poison_ratio * 320)
    assert len(static.poisoned) == n_backdoor and (static.labels[static.poisoned] == atk.params.target).all()
    assert torch.equal(static.images[static.poisoned], atk.apply(whole.images[static.poisoned]))
    assert torch.equal(static.images[300:], whole.images[300:]) and torch.equal(static.labels[300:], whole.labels[300:])
    changed = (static.images != whole.images).flatten(1).any(1)
    kept_label = changed & (static.labels == whole.labels) & ~static.poison_mask
    extra = {"wanet": 2 * n_backdoor, "bpp": int(0.2 * 320), "input_aware": int(0.1 * 320)}[name]
    assert int(kept_label.sum()) >= extra - 3  # noise / negative / cross samples
    assert torch.equal(whole.static(seed=0).images, static.images) and not torch.equal(whole.static(seed=1).poisoned, static.poisoned)


def test_trainer_trains_on_the_batches_the_control_shapes():
    seen = []

    class EveryLabelThree(attacks.base.TrainingControl):
        def shape_batch(self, images, labels, poisoned, eligible, gen):
            return 255 - images, torch.full_like(labels, 3), poisoned

    def record(model, x, y, gen):
        seen.append((x.detach().clone(), y.clone()))
        return torch.nn.functional.cross_entropy(model(x), y)

    data = labelled(64)
    split = PoisonedSplit(data.images, data.labels, poisoned=torch.empty(0, dtype=torch.long), training_control=EveryLabelThree())
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=1, max_steps_per_epoch=2), "cpu", 0)
    trainer.fit(create_model("wrn16_1", 10), split, TrainRecipe(epochs=1, batch_size=32), loss=record, augment=False)
    assert len(seen) == 2 and all((y == 3).all() for _, y in seen)
    assert all(any(torch.allclose(x[0], 1 - SmallImages().test(data.images[i : i + 1])[0]) for i in range(64)) for x, _ in seen)


@pytest.mark.parametrize("after", [False, True])
def test_a_control_stamps_before_or_after_the_crop_and_flip_as_its_official_code(after):
    """A 2x2 white corner stamped on black images: after augmentation every model input has it in
    place; before, crop and flip move it (most of the 64 inputs lose the exact corner). Input-aware's
    official train_step stamps the loader's augmented batch; WaNet's and BppAttack's loaders do not
    augment and their PostTensorTransform follows the poisoning."""
    seen = []

    class WhiteCorner(attacks.base.TrainingControl):
        after_augmentation = after

        def shape_batch(self, images, labels, poisoned, eligible, gen):
            assert images.dtype == torch.uint8 and images.shape[1:] == (32, 32, 3)
            images = images.clone()
            images[:, :2, :2] = 255
            return images, labels, poisoned

    def record(model, x, y, gen):
        seen.append(x.detach().clone())
        return torch.nn.functional.cross_entropy(model(x), y)

    data = labelled(64)
    black = torch.zeros_like(data.images)
    split = PoisonedSplit(black, data.labels, poisoned=torch.empty(0, dtype=torch.long), training_control=WhiteCorner())
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=1, max_steps_per_epoch=2), "cpu", 0)
    trainer.fit(create_model("wrn16_1", 10), split, TrainRecipe(epochs=1, batch_size=32), loss=record)
    inputs = torch.cat(seen)
    corner_in_place = (inputs[:, :, :2, :2] == 1).flatten(1).all(1)
    white_pixels = (inputs == 1).flatten(1).sum(1)
    if after:
        assert corner_in_place.all() and (white_pixels == 12).all()
    else:
        assert int(corner_in_place.sum()) < 16 and (white_pixels <= 12).all()
    expected = {name: name == "input_aware" for name in ("wanet", "bpp", "input_aware")}
    assert {name: attacks.create(name, dataset="cifar10").training_control.after_augmentation for name in expected} == expected


def test_adaptive_poison_and_cover_sets():
    train = labelled(2000)
    for name, ratios in (("adap_blend", (0.003, 0.003)), ("adap_patch", (0.003, 0.006))):
        atk = attacks.create(name, dataset="cifar10")
        assert (atk.params.poison_ratio, atk.params.cover_ratio) == ratios
        p = atk.poison(train, 2100, seed=0)
        poison, cover = atk.poison_and_cover(train, 2100, seed=0)
        assert torch.equal(p.poisoned, poison) and (len(poison), len(cover)) == (int(ratios[0] * 2100), int(ratios[1] * 2100))
        assert not set(poison.tolist()) & set(cover.tolist())
        assert (p.labels[poison] == atk.params.target).all() and torch.equal(p.labels[cover], train.labels[cover])
        changed = (p.images != train.images).flatten(1).any(1)
        assert changed[cover].all() and changed[poison].all() and int(changed.sum()) == len(poison) + len(cover)
    gtsrb = attacks.create("adap_patch", dataset="gtsrb").params
    assert (gtsrb.poison_ratio, gtsrb.cover_ratio) == (0.005, 0.01)
    assert attacks.create("adap_blend", poison_ratio=0.05).params.poison_ratio == 0.05


def test_adaptive_blend_training_trigger_masks_half_the_pieces():
    atk = attacks.create("adap_blend", dataset="cifar10")
    images = random_images(5)
    out = atk.training_trigger(images, torch.Generator().manual_seed(0)).numpy()
    x = images.numpy().astype(np.float64)
    blended = x + 0.15 * (5 * png("blend_kitty_x0.2.png") - x)  # the training opacity, weaker than the test's 0.2
    masks = []
    for k in range(5):
        pieces = []
        for r in range(4):
            for c in range(4):
                block = (slice(8 * r, 8 * r + 8), slice(8 * c, 8 * c + 8))
                if np.allclose(out[k][block], x[k][block]):
                    pieces.append(0)
                else:
                    assert np.allclose(out[k][block], blended[k][block], atol=1e-3)
                    pieces.append(1)
        assert sum(pieces) == 8  # mask_rate 0.5 of 16 pieces
        masks.append(tuple(pieces))
    assert len(set(masks)) > 1  # redrawn per image


def test_adaptive_patch_trains_on_four_weak_triggers_in_equal_groups():
    atk = attacks.create("adap_patch", dataset="cifar10")
    images = random_images(8)
    out = atk.training_trigger(images, torch.Generator()).numpy()
    x = images.numpy().astype(np.float64)
    for i in range(8):
        (pattern, mask), alpha = atk.triggers[i // 2], atk.training_opacities[i // 2]  # 8 images: groups of two
        want = x[i] + alpha * mask.numpy()[:, :, None] * (pattern.numpy() - x[i])
        assert np.allclose(out[i], want, atol=1e-3)
    assert atk.training_opacities == (0.5, 0.2, 0.5, 0.3) and all(a < 1 for a in atk.training_opacities)


def box(mask):
    rows, cols = np.nonzero(mask.numpy())
    return (rows.min(), rows.max(), cols.min(), cols.max())


def test_adaptive_patch_triggers_sit_where_the_official_ones_do():
    """The official CIFAR-10 layout: a 5x5 corner patch (rows/cols 27-31), a 13x13 logo (rows 1-13, cols
    18-30), 3x3 checkers in the four corners, an 8x8 square (rows/cols 21-28); test: the 5x5 patch in both
    bottom corners plus the checkers. The logo stays clear of the patch and the square."""
    atk = attacks.create("adap_patch", dataset="cifar10")
    patch, logo, checkers, square = (mask for _, mask in atk.triggers)
    assert box(patch) == (27, 31, 27, 31) and box(logo) == (1, 13, 18, 30) and box(square) == (21, 28, 21, 28)
    corners = [(0, 0), (0, 29), (29, 0), (29, 29)]
    assert checkers.sum() == 36 and all(checkers[r : r + 3, c : c + 3].all() for r, c in corners)
    assert not (logo.bool() & (patch.bool() | square.bool())).any()
    out = atk.apply(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))[0].float().sum(-1)
    assert out[27:32, 0:5].sum() > 0 and out[27:32, 27:32].sum() > 0  # both bottom corners
    assert out[0:3, 0:3].sum() > 0 and out[0:3, 29:32].sum() > 0  # top checkers
    assert out[3:27].sum() == 0  # nothing in between


def input_aware_tools(n=96):
    from benchbd.attacks import AttackTools

    train = labelled(n)
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=2, max_steps_per_epoch=3), "cpu", 0)
    recipe = TrainRecipe(epochs=2, batch_size=32)
    return AttackTools(trainer, train, None, lambda: create_model("wrn16_1", 10), recipe, None)


def test_input_aware_mask_stage_lowers_its_loss_and_the_joint_stage_keeps_the_masks_frozen(monkeypatch):
    from benchbd.attacks.input_aware import TriggerNet, diversity

    atk = attacks.create("input_aware", dataset="cifar10", mask_epochs=2)
    tools = input_aware_tools()
    x = SmallImages().test(tools.clean_train.images[:32])
    x2 = torch.roll(x, 1, 0)

    def mask_loss(net):
        with torch.no_grad():
            m1, m2 = net.mask(x), net.mask(x2)
            return float(100 * torch.relu(m1 - 0.032).mean() + diversity(x, x2, m1, m2))

    torch.manual_seed(0)
    start = mask_loss(TriggerNet(1).eval())
    torch.manual_seed(0)
    trained = atk.train_masks(tools)
    assert mask_loss(trained) < start  # stage A: sparser and more diverse masks
    assert not any(p.requires_grad for p in trained.parameters())
    monkeypatch.setattr(atk, "train_masks", lambda tools: trained)
    state = atk.train_generators(tools)
    assert all(torch.equal(state[f"mask.{k}"], v) for k, v in trained.state_dict().items())  # M frozen in stage B
    torch.manual_seed(0)
    fresh = TriggerNet(3).state_dict()
    assert any(not torch.equal(state[f"pattern.{k}"], v) for k, v in fresh.items() if v.is_floating_point())  # G trained


def test_input_aware_diversity_is_in_the_official_normalised_units(monkeypatch):
    """The official code computes both diversity terms on mean/std-normalised images (patterns
    normalised too; masks not): on CIFAR-10 the mask stage's ratio is about 4 times its pixel value.
    benchbd's models take raw pixels, so the units are the official loader's, from the parameters."""
    import benchbd.attacks.input_aware as ia

    assert attacks.create("input_aware", dataset="cifar10").params.official_std == (0.247, 0.243, 0.261)
    assert attacks.create("input_aware", dataset="gtsrb").params.official_std is None  # fed raw there
    std = torch.tensor([0.25, 0.2, 0.1]).view(1, 3, 1, 1)
    tools = input_aware_tools()
    seen = []
    real = ia.diversity
    monkeypatch.setattr(ia, "diversity", lambda *args: seen.append(args) or real(*args))
    atk = attacks.create("input_aware", dataset="cifar10", mask_epochs=1, official_std=(0.25, 0.2, 0.1))
    masks = atk.train_masks(tools)
    assert seen
    for images, _, m1, _ in seen:  # mask stage: images / std, masks as they are
        assert images.shape[1] == 3 and images[:, 2].max() > 1.5 and 0 <= (images * std).min() and (images * std).max() <= 1
        assert m1.shape[1] == 1 and m1.max() <= 1
    seen.clear()
    monkeypatch.setattr(atk, "train_masks", lambda tools: masks)
    atk.train_generators(tools)
    assert seen
    for images, _, p1, _ in seen:  # generator stage: images and patterns / std
        for t in (images, p1):
            assert t[:, 2].max() > 1.5 and 0 <= (t * std).min() and (t * std).max() <= 1


def test_input_aware_diversity_never_pairs_an_image_with_itself(monkeypatch):
    """The generator stage compares x[i] with the partner of x[n_bd + i]: a roll by n_bd would pair
    each image with itself, a zero distance whose sqrt turned the generator NaN in a real run."""
    import benchbd.attacks.input_aware as ia

    x = torch.arange(20.0).view(20, 1, 1, 1).expand(20, 3, 2, 2)
    for seed in range(300):
        rolled = ia.partner(x, torch.Generator().manual_seed(seed), avoid=2)
        offset = int(rolled[0, 0, 0, 0]) and 20 - int(rolled[0, 0, 0, 0])
        assert offset not in (0, 2)
    tools = input_aware_tools()
    atk = attacks.create("input_aware", dataset="cifar10", mask_epochs=1)
    masks = atk.train_masks(tools)
    monkeypatch.setattr(atk, "train_masks", lambda tools: masks)
    avoided = []
    real = ia.partner
    monkeypatch.setattr(ia, "partner", lambda x, gen, avoid=0: avoided.append(avoid) or real(x, gen, avoid))
    atk.train_generators(tools)
    assert avoided == [int(0.1 * 32)] * 6  # batches of 32: n_bd = 3, every step


@pytest.mark.parametrize("accumulate", [False, True])
def test_input_aware_generator_grads_are_zeroed_unless_the_official_accumulation_is_asked(monkeypatch, accumulate):
    """The official loop zeroes only the classifier's gradients, so G's accumulate over every step."""
    tools = input_aware_tools()
    atk = attacks.create("input_aware", dataset="cifar10", mask_epochs=1, accumulate_generator_grads=accumulate)
    masks = atk.train_masks(tools)
    monkeypatch.setattr(atk, "train_masks", lambda tools: masks)
    zeroed = []
    real = torch.optim.Adam.zero_grad
    # G's optimiser is the Adam with betas (0.5, 0.9)
    zero = lambda self, *a, **k: zeroed.append(self.defaults["betas"] == (0.5, 0.9)) or real(self, *a, **k)  # noqa: E731
    monkeypatch.setattr(torch.optim.Adam, "zero_grad", zero)
    atk.train_generators(tools)
    steps = 2 * 3  # 2 epochs of 3 batches (the test budget)
    assert sum(zeroed) == (0 if accumulate else steps)


def test_input_aware_needs_its_trained_generator():
    with pytest.raises(Exception, match="run it through the runner"):
        attacks.create("input_aware").apply(random_images(2))


def test_input_aware_cross_samples_take_another_images_trigger():
    atk = seeded_generators(attacks.create("input_aware"))
    batch = random_images(4)
    out = atk.extra_samples(batch, torch.tensor([0]), torch.Generator().manual_seed(0))
    from benchbd.attacks.input_aware import stamp, to_image

    x = SmallImages().test(batch)
    candidates = [to_image(stamp(x[:1], atk.patterns.pattern(x[j : j + 1]), atk.masks.mask(x[j : j + 1]))) for j in range(4)]
    matches = [j for j in range(4) if (candidates[j].int() - out.int()).abs().max() <= 1]
    assert matches and 0 not in matches  # another image's pattern and mask, not its own


def test_input_aware_cross_trigger_set_stamps_the_next_images_trigger_and_keeps_true_labels():
    from benchbd.attacks.input_aware import stamp, to_image

    atk = seeded_generators(attacks.create("input_aware"))
    test = labelled(5)
    ((name, crossed),) = atk.accuracy_sets(test).items()
    assert name == "cross_trigger" and torch.equal(crossed.labels, test.labels)
    x = SmallImages().test(test.images)
    for i in range(5):
        j = (i + 1) % 5
        expected = to_image(stamp(x[i : i + 1], atk.patterns.pattern(x[j : j + 1]), atk.masks.mask(x[j : j + 1])))
        assert (expected.int() - crossed.images[i : i + 1].int()).abs().max() <= 1
        own = atk.apply(test.images[i : i + 1])
        assert (own.int() - crossed.images[i : i + 1].int()).abs().max() > 1  # not the image's own trigger
    assert attacks.create("blend").accuracy_sets(test) == {}


def test_modern_attacks_run_through_the_cli_and_the_defenses(tmp_path):
    """A smoke grid of the modern group against the defenses that read the poisoned data or the
    backdoored model, through the same runner and CLI as the paper's attacks."""
    res = CliRunner().invoke(main, ["run", *SYN, "--attacks", "modern", "--defenses", "none,tnr,abl", "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = Results(tmp_path).rows()
    assert {(r["attack"], r["defense"]) for r in rows} == {(a, d) for a in MODERN for d in ("none", "tnr", "abl")}
    assert all(r["status"] == "ok" for r in rows)
    assert all(("cross_trigger_accuracy" in r["metrics"]) == (r["attack"] == "input_aware") for r in rows)
    assert len(list((tmp_path / "cache" / "input_aware_generator").glob("*.pt"))) == 1  # trained once, shared by the defenses
    out = tmp_path / "gallery.png"
    show = ["show", "attacks", *SYN[:6], "--attacks", "input_aware", "--budget", "smoke", "--results", str(tmp_path), "--out", str(out)]
    res = CliRunner().invoke(main, show)
    assert res.exit_code == 0 and out.is_file(), res.output
    res = CliRunner().invoke(main, ["list", "attacks"], env={"COLUMNS": "250"})
    assert re.search(r"^wanet +modern +dirty +WaNet", res.output, re.M), res.output
    res = CliRunner().invoke(main, ["show", "attack", "wanet"])
    assert "Nguyen" in res.output and "group: modern (not in 'all')" in res.output


def test_input_aware_generator_is_the_official_network():
    """VinAIResearch's Generator (tests/fixtures/official/input_aware_generator.npz, from
    tools/official_fixtures.py): built after the same seed, benchbd's pattern network has the same
    state entry for entry (so the same layers in the same order), the same output, and the same BN
    momentum (0.05) after one training pass."""
    import importlib
    import sys

    from benchbd.attacks.input_aware import TriggerNet

    from .conftest import REPO

    sys.path.insert(0, str(REPO / "tools"))
    draw_bn_statistics = importlib.import_module("official_fixtures").draw_bn_statistics
    fixture = np.load(REPO / "tests" / "fixtures" / "official" / "input_aware_generator.npz")
    torch.manual_seed(0)
    net = TriggerNet(3)
    draw_bn_statistics(net)
    sums = np.array([float(v.double().sum()) for v in net.state_dict().values()])
    assert sums.shape == fixture["state_sums"].shape and np.allclose(sums, fixture["state_sums"], rtol=1e-6)
    x = torch.from_numpy(fixture["input"])
    with torch.no_grad():
        assert torch.allclose(net.eval().pattern(x), torch.from_numpy(fixture["output"]), atol=1e-5)
        net.train()(x)
    first_bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.allclose(first_bn.running_mean, torch.from_numpy(fixture["first_bn_mean_after_train_pass"]), atol=1e-6)


def test_wanet_grid_and_warp_are_the_official_ones():
    """VinAIResearch/Warping-based_Backdoor_Attack-release train.py (tests/fixtures/official/wanet_grid.npz,
    tools/official_fixtures.py): from the same control points, the same backdoor grid, and the same
    warped images up to benchbd's uint8 rounding."""
    from benchbd.attacks.wanet import identity_grid, warp, warp_field

    from .test_modern_defenses import official

    fixture = official("wanet_grid")
    points = torch.from_numpy(fixture["control_points"])
    assert torch.allclose(warp_field(points, 32), torch.from_numpy(fixture["noise_grid"]), atol=1e-6)
    grid = (identity_grid(32) + 0.5 * warp_field(points, 32) / 32).clamp(-1, 1)
    assert torch.allclose(grid, torch.from_numpy(fixture["grid"]), atol=1e-6)
    ours = warp(torch.from_numpy(fixture["images"]).permute(0, 2, 3, 1), grid).permute(0, 3, 1, 2).float()
    theirs = torch.from_numpy(fixture["warped"])
    assert (ours - theirs).abs().max() <= 0.5 + 1e-3  # ours is theirs rounded to uint8


def test_bpp_trigger_and_negatives_are_the_official_ones():
    """RU-System-Software-and-Security/BppAttack bppattack.py (tests/fixtures/official/bpp_squeeze.npz):
    the squeezed images and the negatives (an image plus another's quantisation residual, clamped) of
    the official code, on normalised tensors, equal benchbd's on uint8 pixels up to rounding."""
    from benchbd.attacks.bpp import negatives

    from .test_modern_defenses import official

    fixture = official("bpp_squeeze")
    images = torch.from_numpy(fixture["images"]).permute(0, 2, 3, 1)
    squeezed = attacks.create("bpp", dataset="cifar10").apply(images).permute(0, 3, 1, 2).float()
    assert (squeezed - torch.from_numpy(fixture["squeezed"])).abs().max() <= 0.5 + 1e-3
    ours = negatives(images, images.roll(-1, 0), 8).permute(0, 3, 1, 2).float()  # each with the next image's residual
    assert (ours - torch.from_numpy(fixture["negatives"])).abs().max() <= 0.5 + 1e-3
