import numpy as np
import pytest
import torch
from PIL import Image

from benchbd import attacks
from benchbd.attacks.base import asset_path
from benchbd.data import Split
from benchbd.errors import BenchbdError

from .conftest import random_images


def test_badnet_grid_golden():
    x = random_images(6)
    out = attacks.create("badnet_grid", dataset="cifar10").apply(x)
    expected = x.numpy().copy()
    grid = np.array([[0, 0, 255], [0, 255, 0], [255, 0, 255]], np.uint8)
    expected[:, 29:32, 29:32, :] = grid[None, :, :, None]
    assert np.array_equal(out.numpy(), expected)
    assert out.dtype == torch.uint8 and torch.equal(x[:, :29], out[:, :29]) and torch.equal(x[:, :, :29], out[:, :, :29])


def test_badnet_grid_imagenet_cells():
    x = random_images(2, size=256)
    out = attacks.create("badnet_grid", dataset="imagenet12").apply(x).numpy()
    assert (out[:, 32:42, 32:42] == 0).all() and (out[:, 32:42, 52:62] == 255).all() and (out[:, 42:52, 42:52] == 255).all()
    assert np.array_equal(out[:, 62:], x.numpy()[:, 62:])


def test_blend_golden():
    x = random_images(6)
    with asset_path("blend_kitty_x0.2.png").open("rb") as f:
        kitty = np.asarray(Image.open(f).convert("RGB")).astype(np.float64) * 5  # the file holds 0.2 t
    expected = np.clip(np.round(0.8 * x.numpy().astype(np.float64) + 0.2 * kitty), 0, 255)
    out = attacks.create("blend", dataset="cifar10").apply(x).numpy().astype(np.float64)
    assert np.abs(out - expected).max() <= 1
    assert np.abs(attacks.create("blend", dataset="cifar10", alpha=0.5).apply(x).numpy() - out).max() > 10


def _labelled(n=200, classes=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Split(random_images(n, seed=seed), torch.randint(0, classes, (n,), generator=g))


@pytest.mark.parametrize("name", attacks.names())
def test_poisoning_counts_labels_and_determinism(name):
    train = _labelled()
    atk = attacks.create(name, dataset="cifar10")
    p = atk.poison(train, full_train_size=250, seed=3)
    assert len(p.poisoned) == int(0.1 * 250)
    if atk.clean_label:
        assert torch.equal(p.labels, train.labels) and (train.labels[p.poisoned] == 0).all()
    else:
        assert (p.labels[p.poisoned] == 0).all() and (train.labels[p.poisoned] != 0).all()
    untouched = ~p.poison_mask
    assert torch.equal(p.images[untouched], train.images[untouched]) and torch.equal(p.labels[untouched], train.labels[untouched])
    assert torch.equal(p.images[p.poisoned], atk.apply(train.images[p.poisoned]))
    again = atk.poison(train, 250, seed=3)
    assert torch.equal(again.images, p.images) and torch.equal(again.poisoned, p.poisoned)
    assert not torch.equal(atk.poison(train, 250, seed=4).poisoned, p.poisoned)


def test_backdoor_test_set_excludes_target():
    test = _labelled(100)
    atk = attacks.create("badnet_grid", dataset="cifar10", target=3)
    bd = atk.backdoor_test(test)
    assert len(bd) == int((test.labels != 3).sum()) and (bd.labels != 3).all()


@pytest.mark.parametrize("params,message", [
    ({"poison_ratio": 1.5}, r"attack.blend: poison_ratio=1.5 must be in \(0, 1\)"),
    ({"poison_ratio": 0}, r"poison_ratio=0.0 must be in \(0, 1\)"),
    ({"target": 10}, r"attack.blend.target=10 is out of range: valid 0..9"),
    ({"alpha": 2}, r"alpha=2.0 must be in \(0, 1\]"),
])
def test_bad_attack_parameters(params, message):
    with pytest.raises(BenchbdError, match=message):
        attacks.create("blend", dataset="cifar10", **params)


def test_gtsrb_default_target_is_one():
    assert attacks.create("badnet_grid", dataset="gtsrb").params.target == 1
