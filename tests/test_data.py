import numpy as np
import pytest
import torch
from PIL import Image

from benchbd.config import build_params
from benchbd.data import DATASETS, Split, parse_dataset_spec, split_holdout
from benchbd.data.augment import LargeImages, cutmix, random_crop_flip
from benchbd.errors import BenchbdError
from benchbd.seeding import generator

from .conftest import random_images


def make(name, path=None, data_root=None, **params):
    cls = DATASETS.get(name)
    return cls(build_params(cls.Params, params, f"dataset.{name}"), data_root, path)


def test_holdout_is_seeded_and_disjoint():
    train = Split(random_images(400), torch.arange(400) % 10)
    a = split_holdout(train, train, 10, 0.05, seed=0)
    b = split_holdout(train, train, 10, 0.05, seed=0)
    c = split_holdout(train, train, 10, 0.05, seed=1)
    assert len(a.holdout) == 20 and len(a.train) == 380 and a.full_train_size == 400
    assert torch.equal(a.holdout.images, b.holdout.images)
    assert not torch.equal(a.holdout.images, c.holdout.images)
    # disjoint: every training image appears exactly once across train and holdout
    flat = torch.cat([a.train.images, a.holdout.images]).flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == 400


def test_crop_flip_is_a_padded_crop_with_random_offsets():
    x = random_images(32)
    out = random_crop_flip(x, 4, generator(0, "t"))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (0, 0, 4, 4, 4, 4))
    found = []
    for i in range(len(x)):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal((padded[i].flip(1) if flip else padded[i])[dy:dy + 32, dx:dx + 32], out[i])]
        assert matches, f"sample {i} is not a crop of its padded image"
        found.append(matches[0])
    assert len(set(found)) > 20 and {f[2] for f in found} == {False, True}


def test_large_images_crop_shapes():
    pipe = LargeImages()
    x = random_images(3, size=256)
    assert pipe.train(x, generator(0, "t")).shape == (3, 3, 224, 224)
    test = pipe.test(x)
    assert torch.allclose(test, x[:, 16:240, 16:240].permute(0, 3, 1, 2).float() / 255)


def test_cutmix_lambda_is_kept_area():
    x = torch.zeros(8, 3, 32, 32)
    x[4:] = 1
    y = torch.arange(8)
    mixed, ya, yb, lam = cutmix(x, y, generator(2, "c"))
    assert torch.equal(ya, y)
    changed = (mixed != x).float().mean(dim=(1, 2, 3))
    for i in range(8):
        if (x[i] != x[(yb[i])]).any():
            assert abs(changed[i].item() - (1 - lam)) < 1e-6


def test_synthetic_and_mini_load():
    syn = make("synthetic", n_train=100, n_test=20).load()
    assert syn.train.images.shape == (100, 32, 32, 3) and len(syn.classes) == 10
    mini = make("cifar10-mini").load()
    assert (len(mini.train), len(mini.test)) == (5000, 1000)
    assert mini.classes[0] == "airplane" and mini.train.labels.max() == 9
    assert 100 < mini.train.images.float().mean() < 140  # real photographs, not noise or blanks


def test_npz_source_and_limits(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=random_images(50).numpy(), y_train=np.arange(50) % 5, x_test=random_images(10).numpy(), y_test=np.arange(10) % 5)
    name, p = parse_dataset_spec(f"npz:{path}")
    data = make(name, p, limit_train=30).load()
    assert len(data.train) == 30 and len(data.test) == 10 and len(data.classes) == 5


def test_imagefolder_source(tmp_path):
    for split in ("train", "val"):
        for cls in ("b_cls", "a_cls", "c_cls"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 50, 3), 10 * i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    data = make("imagefolder", str(tmp_path), size=32, max_classes=2).load()
    assert data.classes == ["a_cls", "b_cls"] and data.train.images.shape == (4, 32, 32, 3)


def test_missing_dataset_is_one_clear_line(tmp_path, monkeypatch):
    def offline(self, root):
        raise OSError("network unreachable")

    monkeypatch.setattr(DATASETS.get("cifar10"), "download", offline)
    with pytest.raises(BenchbdError) as info:
        make("cifar10", data_root=tmp_path).load()
    msg = str(info.value)
    assert "\n" not in msg and "cifar10.npz" in msg and "network unreachable" in msg and "--data-root" in msg
    with pytest.raises(BenchbdError, match="does not exist"):
        make("npz", str(tmp_path / "nope.npz")).load()


@pytest.mark.parametrize("spec,message", [
    ("npz", "needs a path"), ("cifar10:/x", "takes no path"), ("cifar1O", r"did you mean 'cifar10'"), ("npz:", "needs a path"),
])
def test_bad_dataset_specs(spec, message):
    with pytest.raises(BenchbdError, match=message):
        parse_dataset_spec(spec)


def test_imagenet12_takes_the_first_12_classes_at_256(tmp_path):
    for split in ("train", "val"):
        for c in range(13):
            folder = tmp_path / "imagenet" / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            Image.fromarray(np.full((300, 200, 3), c, np.uint8)).save(folder / "a.JPEG")
    source = make("imagenet12", data_root=tmp_path)
    data = source.load()
    assert len(data.classes) == 12 and data.classes[-1] == "n00000011"
    assert data.train.images.shape == (12, 256, 256, 3) and data.test.images.shape == (12, 256, 256, 3)
    assert source.params.holdout_fraction == 0.1 and source.params.model == "resnet34"
    assert isinstance(source.pipeline, LargeImages)
