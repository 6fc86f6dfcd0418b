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
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal((padded[i].flip(1) if flip else padded[i])[dy : dy + 32, dx : dx + 32], out[i])
        ]
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


def test_a_missing_data_root_is_not_created_when_loading_fails(tmp_path, monkeypatch):
    def offline(self, root):
        root.mkdir(parents=True, exist_ok=True)  # as torchvision does before it tries the network
        raise OSError("network unreachable")

    monkeypatch.setattr(DATASETS.get("cifar10"), "download", offline)
    typo = tmp_path / "dtaa"
    with pytest.raises(BenchbdError):
        make("cifar10", data_root=typo).load()
    assert not typo.exists()
    kept = tmp_path / "existing"
    kept.mkdir()
    with pytest.raises(BenchbdError):
        make("cifar10", data_root=kept).load()
    assert kept.is_dir()  # a folder the user made stays


@pytest.mark.parametrize(
    "spec,message",
    [
        ("npz", "needs a path"),
        ("cifar10:/x", "takes no path"),
        ("cifar1O", r"did you mean 'cifar10'"),
        ("npz:", "needs a path"),
    ],
)
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


def _fake_gtsrb_tree(root, per_class=3):
    """The official archives' layout: Final_Training/Images/<class>/*.ppm (+ a CSV ImageFolder skips),
    Final_Test/Images/*.ppm and GT-final_test.csv; images of varied sizes."""
    rng = np.random.default_rng(0)
    train = root / "GTSRB" / "Final_Training" / "Images"
    for label in (0, 1):
        folder = train / f"{label:05d}"
        folder.mkdir(parents=True)
        (folder / f"GT-{label:05d}.csv").write_text("Filename;Width\n")
        for i in range(per_class):
            size = (30 + 7 * i, 41 + 3 * i)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"00000_{i:05d}.ppm")
    test = root / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    lines = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, label in enumerate((1, 0)):
        Image.fromarray(rng.integers(0, 256, (50, 45, 3), dtype=np.uint8)).save(test / f"{i:05d}.ppm")
        lines.append(f"{i:05d}.ppm;45;50;5;5;40;45;{label}")
    (root / "GTSRB" / "GT-final_test.csv").write_text("\n".join(lines) + "\n")
    return root / "GTSRB"


def test_gtsrb_reads_the_official_archives_as_the_tnr_code(tmp_path):
    tree = _fake_gtsrb_tree(tmp_path)
    data = make("gtsrb", data_root=tmp_path).load()
    assert len(data.train) == 6 and data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.test.labels.tolist() == [1, 0]
    first = tree / "Final_Training" / "Images" / "00000" / "00000_00000.ppm"
    expected = np.asarray(Image.open(first).resize((32, 32)))  # the T&R code: PIL's default filter
    assert np.array_equal(data.train.images[0].numpy(), expected)
    assert (tmp_path / "gtsrb.npz").is_file()  # decoded once, then read from the .npz
    # a whole GTSRB of another size than the paper's 39,209 is said, with how to get the paper's set
    assert len(data.warnings) == 1 and "gtsrb has 6 training images, not the paper's 39,209" in data.warnings[0]
    assert "GTSRB_Final_Training_Images.zip" in data.warnings[0]
    assert make("gtsrb", data_root=tmp_path, limit_train=4).load().warnings == []  # a slice asked for: no warning


def test_a_dataset_of_the_wrong_size_is_warned_in_the_row_and_the_table(tmp_path):
    from click.testing import CliRunner

    from benchbd.cli import main

    _fake_gtsrb_tree(tmp_path, per_class=40)
    results = tmp_path / "r"
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--dataset",
            "gtsrb",
            "--data-root",
            str(tmp_path),
            "--budget",
            "smoke",
            "--quiet",
            "--attacks",
            "badnet_grid",
            "--defenses",
            "none",
            "--results",
            str(results),
            "--set",
            "attack.poison_ratio=0.05",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "warning: gtsrb has 80 training images, not the paper's 39,209" in res.output
    from benchbd.runner import Results

    (row,) = Results(results).rows()
    assert row["data_warnings"] and "80 training images" in row["data_warnings"][0]
    for fmt, marker in (
        ("markdown", "**Warning**: gtsrb has 80"),
        ("latex", "% warning: gtsrb has 80"),
        ("html", "<b>Warning</b>: gtsrb has 80"),
    ):
        out = CliRunner().invoke(main, ["table", "--results", str(results), "--format", fmt]).output
        assert marker in out, out


def _npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(40) % 4,
        "x_test": rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(12) % 4,
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"x_train": np.random.default_rng(0).random((40, 32, 32, 3)).astype(np.float32)},
            "x_train is float32 in [0, 1]: multiply by 255 and round; benchbd needs uint8 images 0-255",
        ),
        ({"y_test": np.arange(11) % 4}, "x_test has 12 images but y_test has 11 labels"),
        ({"y_train": np.arange(40) % 4 - 1}, "y_train has negative labels (the smallest is -1)"),
        ({"y_train": np.eye(4)[np.arange(40) % 4]}, "y_train has shape (40, 4); benchbd needs one class index per image (one-hot labels?"),
        ({"classes": np.array(["a", "b"])}, "classes lists 2 names but the labels go up to 3"),
        ({"x_test": np.zeros((12, 32, 32), np.uint8)}, "x_test has shape (12, 32, 32); benchbd needs [N, H, W, 3]"),
        ({"y_test": None}, "it lacks y_test"),
    ],
)
def test_bad_npz_data_is_refused_in_one_line_before_training(overrides, message, tmp_path):
    from click.testing import CliRunner

    from benchbd.cli import main

    path = _npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(BenchbdError) as err:
        make("npz", str(path)).load()
    assert message in str(err.value) and str(path) in str(err.value)
    for extra in ([], ["--dry-run"]):
        res = CliRunner().invoke(
            main, ["run", "--dataset", f"npz:{path}", "--budget", "smoke", "--quiet", "--results", str(tmp_path / "r"), *extra]
        )
        assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, res.output
        assert not (tmp_path / "r" / "rows").exists()


def test_bad_image_folders_and_holdouts_are_one_line(tmp_path):
    from click.testing import CliRunner

    from benchbd.cli import main

    empty = tmp_path / "empty"
    for split in ("train", "val"):
        (empty / split / "cat").mkdir(parents=True)
    broken = tmp_path / "broken"
    for split in ("train", "val"):
        (broken / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(broken / split / "cat" / "ok.png")
    (broken / "train" / "cat" / "bad.png").write_bytes(b"not a png")
    cases = [
        (["--dataset", f"imagefolder:{empty}"], "has class folders (cat) but no images in them"),
        (["--dataset", f"imagefolder:{broken}"], f"cannot read image '{broken / 'train' / 'cat' / 'bad.png'}'"),
        (
            ["--dataset", f"npz:{_npz(tmp_path / 'ok.npz')}", "--set", "dataset.holdout_fraction=0.0001"],
            "holdout_fraction=0.0001 leaves no holdout image of 40 training images",
        ),
    ]
    for args, message in cases:
        for extra in ([], ["--dry-run"]):
            res = CliRunner().invoke(main, ["run", *args, "--budget", "smoke", "--quiet", "--results", str(tmp_path / "r"), *extra])
            assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, res.output
