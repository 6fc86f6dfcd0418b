"""Dataset sources. Each loads a whole train and test set as uint8 [N, H, W, 3] + int64 labels.

Real datasets come from a `.npz` in `--data-root` when one is there (offline), else from
torchvision with download; `npz:PATH` and `imagefolder:PATH` take any user data.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..config import check
from ..errors import BenchbdError
from ..registry import Registry
from .augment import LargeImages, SmallImages
from .splits import Split

DATASETS: Registry[type["Dataset"]] = Registry("dataset")


def default_data_root() -> Path:
    return Path(os.environ.get("BENCHBD_DATA", Path.home() / ".cache" / "benchbd" / "data"))


@dataclass
class DatasetParams:
    holdout_fraction: float = 0.05
    # Defenses get only this many holdout images (a seeded random subset): how much clean data the
    # defender needs (Table 9). The training split and the backdoored model do not change.
    holdout_size: Optional[int] = None
    model: str = "wrn16_1"
    limit_train: Optional[int] = None  # first N training images only (a slice for quick runs)
    limit_test: Optional[int] = None

    def __post_init__(self):
        check(0 < self.holdout_fraction < 1, f"holdout_fraction={self.holdout_fraction} must be in (0, 1)")
        for name in ("limit_train", "limit_test", "holdout_size"):
            value = getattr(self, name)
            check(value is None or value > 0, f"{name}={value} must be positive")


@dataclass
class LoadedData:
    train: Split
    test: Split
    classes: list[str]
    warnings: list[str] = field(default_factory=list)  # said once at load, and recorded in every row and table
    sha256: str = ""  # content hash of the whole train and test sets as read (before any limit)
    identity: dict = field(default_factory=dict)  # what determines these splits, for cell and cache keys


def content_sha256(train: Split, test: Split) -> str:
    """sha256 of the pixels and labels of both sets, with their shapes: the same content hashes the
    same wherever it came from (a file, torchvision, an image tree) and on any machine."""
    digest = hashlib.sha256()
    for tensor in (train.images, train.labels, test.images, test.labels):
        digest.update(f"{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def hash_memo_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "benchbd" / "data-hashes.json"


def remembered_sha256(path: Path | None, compute) -> str:
    """`compute()`, remembered by the file's resolved path, size and mtime, so a run does not
    re-hash 180 MB each time; a file whose size or mtime changed is hashed again."""
    signature = file_signature(path) if path is not None else None
    if signature is None:
        return compute()
    memo_path, name = hash_memo_path(), str(Path(path).resolve())
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(name)
    if isinstance(entry, dict) and {k: entry.get(k) for k in signature} == signature and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = compute()
    memo[name] = {**signature, "sha256": digest}
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".{memo_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo, indent=1, sort_keys=True))
        os.replace(tmp, memo_path)
    except OSError:
        pass  # a read-only home: the hash is computed again next time
    return digest


class Dataset(abc.ABC):
    """A source of (train, test); subclasses set `Params`, `pipeline` and implement `read`."""

    Params = DatasetParams
    takes_path = False  # True for `name:PATH` sources
    num_classes: int | None = None  # known before loading, where fixed
    paper_dataset: str | None = None  # the paper's dataset these numbers compare with
    image_size: int | None = None
    paper_train_size: int | None = None  # the paper's training-set size: a whole dataset of another size is warned about
    size_hint = ""  # how to get the paper's set, for that warning

    def __init__(self, params: DatasetParams, data_root: Path | None = None, path: str | None = None):
        self.params = params
        self.data_root = Path(data_root) if data_root else default_data_root()
        self.path = path
        self.pipeline = SmallImages()

    @abc.abstractmethod
    def read(self) -> LoadedData:
        """The whole train and test sets."""

    def source(self) -> dict:
        """Where the data comes from and how it is read (loads once per process per source)."""
        return {
            "source": type(self).__name__,
            "path": self.path,
            "data_root": str(self.data_root),
            "limit_train": self.params.limit_train,
            "limit_test": self.params.limit_test,
        }

    def content_file(self) -> Path | None:
        """The one file the data is read from, when there is one: its hash is remembered by path, size and mtime."""
        return None

    def load(self) -> LoadedData:
        data = self.read()
        sha256 = remembered_sha256(self.content_file(), lambda: content_sha256(data.train, data.test))
        lt, ls = self.params.limit_train, self.params.limit_test
        train = data.train.subset(slice(0, lt)) if lt else data.train
        test = data.test.subset(slice(0, ls)) if ls else data.test
        warnings = list(data.warnings)
        if self.paper_train_size and not lt and len(data.train) != self.paper_train_size:
            warnings.append(
                f"{self.paper_dataset} has {len(data.train):,} training images, not the paper's "
                f"{self.paper_train_size:,}: numbers are not comparable with the paper's. {self.size_hint}".strip()
            )
        identity = {"sha256": sha256, "limit_train": lt, "limit_test": ls}
        return LoadedData(train, test, data.classes, warnings, sha256, identity)


def file_signature(path: Path) -> dict | None:
    """Size and modification time, so a cached artifact is rebuilt when the data file changes."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)), torch.from_numpy(np.asarray(y, dtype=np.int64)))


def _checked(path: Path, name: str, x: np.ndarray, y: np.ndarray) -> Split:
    """One split of an .npz, refused in one line when it is not uint8 NHWC images with class indices."""

    def bad(problem: str) -> BenchbdError:
        return BenchbdError(f"'{path}': {problem}")

    if x.dtype != np.uint8:
        hint = " in [0, 1]: multiply by 255 and round" if np.issubdtype(x.dtype, np.floating) and x.size and float(x.max()) <= 1.0 else ""
        raise bad(f"x_{name} is {x.dtype}{hint}; benchbd needs uint8 images 0-255 (np.uint8) and does not convert silently")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise bad(f"x_{name} has shape {x.shape}; benchbd needs [N, H, W, 3] (NHWC, RGB)")
    if y.ndim != 1:
        raise bad(
            f"y_{name} has shape {y.shape}; benchbd needs one class index per image"
            + (" (one-hot labels? use y.argmax(1))" if y.ndim == 2 else "")
        )
    if len(x) != len(y):
        raise bad(f"x_{name} has {len(x)} images but y_{name} has {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer) and not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
        raise bad(f"y_{name} is {y.dtype}; benchbd needs integer class indices")
    if len(y) and y.min() < 0:
        raise bad(f"y_{name} has negative labels (the smallest is {int(y.min())}); classes are 0..K-1")
    return _split(x, y)


def read_npz(path: Path) -> LoadedData:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise BenchbdError(
                    f"'{path}' is not a benchbd .npz: it lacks {', '.join(missing)} "
                    "(needs x_train, y_train, x_test, y_test; uint8 NHWC images)"
                )
            train, test = _checked(path, "train", z["x_train"], z["y_train"]), _checked(path, "test", z["x_test"], z["y_test"])
            n_classes = int(max(train.labels.max(), test.labels.max())) + 1
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else [str(i) for i in range(n_classes)]
    except (ValueError, OSError) as exc:
        raise BenchbdError(f"'{path}' is not a readable .npz: {exc}") from exc
    if len(classes) < n_classes:
        raise BenchbdError(f"'{path}': classes lists {len(classes)} names but the labels go up to {n_classes - 1}")
    return LoadedData(train, test, classes)


def write_npz(path: Path, data: LoadedData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        x_train=data.train.images.numpy(),
        y_train=data.train.labels.numpy(),
        x_test=data.test.images.numpy(),
        y_test=data.test.labels.numpy(),
        classes=np.array(data.classes),
    )
    os.replace(tmp, path)


class TorchvisionDataset(Dataset):
    """Offline from `<data-root>/<name>.npz`, else torchvision's download (then saved as that .npz)."""

    npz_name = ""

    def content_file(self) -> Path | None:
        npz = self.data_root / self.npz_name
        return npz if npz.is_file() else None

    def read(self) -> LoadedData:
        npz = self.data_root / self.npz_name
        if npz.is_file():
            return read_npz(npz)
        existed = self.data_root.exists()
        try:
            data = self.download(self.data_root / "torchvision")
        except Exception as exc:  # torchvision raises many kinds when offline
            if not existed:  # a mistyped --data-root is not left behind as an empty folder tree
                shutil.rmtree(self.data_root, ignore_errors=True)
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise BenchbdError(
                f"dataset not found: no '{npz}' and torchvision could not download it ({reason}); "
                f"put a {self.npz_name} (x_train, y_train, x_test, y_test) in --data-root, or run once online"
            ) from exc
        write_npz(npz, data)
        return data

    @abc.abstractmethod
    def download(self, root: Path) -> LoadedData:
        """Fetch through torchvision into `root`."""


@DATASETS.register("cifar10", aliases=("cifar-10",))
class Cifar10(TorchvisionDataset):
    """CIFAR-10, 32x32, 10 classes (torchvision or <data-root>/cifar10.npz)."""

    npz_name = "cifar10.npz"
    num_classes, image_size, paper_dataset = 10, 32, "cifar10"
    paper_train_size = 50_000

    def download(self, root: Path) -> LoadedData:
        from torchvision.datasets import CIFAR10

        train, test = (CIFAR10(str(root), train=t, download=True) for t in (True, False))
        return LoadedData(_split(train.data, train.targets), _split(test.data, test.targets), list(train.classes))


def _resized(paths: list[str], size: int) -> np.ndarray:
    """Whole images resized as the T&R code does (`Image.resize` with PIL's default filter, bicubic)."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))
        except OSError as exc:
            raise BenchbdError(f"cannot read image '{p}': {exc}") from exc
    return out


@DATASETS.register("gtsrb")
class Gtsrb(TorchvisionDataset):
    """GTSRB, 43 classes, whole images resized to 32x32: <data-root>/gtsrb.npz, else the official
    archives unpacked in <data-root>/GTSRB (the paper's 39,209 training images), else torchvision."""

    npz_name = "gtsrb.npz"
    num_classes, image_size, paper_dataset = 43, 32, "gtsrb"
    paper_train_size = 39_209
    size_hint = (
        "torchvision's GTSRB 'train' split is the GTSRB-Training_fixed.zip archive (26,640 images); for the paper's "
        "Final_Training set unpack GTSRB_Final_Training_Images.zip, GTSRB_Final_Test_Images.zip and "
        "GTSRB_Final_Test_GT.zip into DATA_ROOT/GTSRB/ (or use a gtsrb.npz of them)"
    )

    def official_tree(self) -> Path:
        return self.data_root / "GTSRB"

    def read(self) -> LoadedData:
        if not (self.data_root / self.npz_name).is_file() and (self.official_tree() / "Final_Training" / "Images").is_dir():
            data = self.read_official(self.official_tree())
            write_npz(self.data_root / self.npz_name, data)
            return data
        return super().read()

    @staticmethod
    def read_official(root: Path) -> LoadedData:
        """The official archives as the T&R code reads them: Final_Training/Images/<class>/*.ppm in
        sorted order (ImageFolder's), Final_Test/Images with the labels of GT-final_test.csv."""
        train_dir = root / "Final_Training" / "Images"
        classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = sorted(p for p in (train_dir / name).iterdir() if p.suffix.lower() == ".ppm")
            paths += [str(p) for p in files]
            labels += [label] * len(files)
        if not paths:
            raise BenchbdError(f"'{train_dir}' holds no .ppm images in class folders")
        truth = next((p for p in (root / "GT-final_test.csv", root / "Final_Test" / "GT-final_test.csv") if p.is_file()), None)
        if truth is None:
            raise BenchbdError(f"'{root}' has no GT-final_test.csv (unpack GTSRB_Final_Test_GT.zip there)")
        test_rows = [line.split(";") for line in truth.read_text().splitlines()[1:] if line.strip()]
        test_paths = [str(root / "Final_Test" / "Images" / row[0]) for row in test_rows]
        test_labels = [int(row[-1]) for row in test_rows]
        return LoadedData(_split(_resized(paths, 32), labels), _split(_resized(test_paths, 32), test_labels), [str(i) for i in range(43)])

    def download(self, root: Path) -> LoadedData:
        from torchvision.datasets import GTSRB

        splits = []
        for name in ("train", "test"):
            ds = GTSRB(str(root), split=name, download=True)
            paths, labels = zip(*ds._samples)
            splits.append(_split(_resized(list(paths), 32), labels))
        return LoadedData(splits[0], splits[1], [str(i) for i in range(43)])


@DATASETS.register("npz")
class NpzDataset(Dataset):
    """Any data as npz:PATH (x_train, y_train, x_test, y_test uint8 NHWC; optional classes)."""

    takes_path = True

    def source(self) -> dict:
        return {**super().source(), "file": file_signature(Path(self.path or ""))}

    def content_file(self) -> Path | None:
        return Path(self.path or "")

    def read(self) -> LoadedData:
        path = Path(self.path or "")
        if not path.is_file():
            raise BenchbdError(f"dataset file '{path}' does not exist (npz:PATH needs a .npz with x_train, y_train, x_test, y_test)")
        return read_npz(path)


@dataclass
class ImageFolderParams(DatasetParams):
    size: int = 32  # images are resized to size x size before any trigger
    max_classes: Optional[int] = None  # keep the first N class folders in sorted order

    def __post_init__(self):
        super().__post_init__()
        check(self.size >= 8, f"size={self.size} must be at least 8")


class FolderDataset(Dataset):
    """An ImageFolder tree: ROOT/train/<class>/*, ROOT/val (or test)/<class>/*."""

    Params = ImageFolderParams

    def __init__(self, params, data_root=None, path=None):
        super().__init__(params, data_root, path)
        self.pipeline = LargeImages() if params.size > 64 else SmallImages()

    def root(self) -> Path:
        return Path(self.path or "")

    def source(self) -> dict:
        return {**super().source(), "root": str(self.root()), "size": self.params.size, "max_classes": self.params.max_classes}

    def read(self) -> LoadedData:
        root = self.root()
        train_dir = root / "train"
        test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
        if not train_dir.is_dir() or test_dir is None:
            raise BenchbdError(f"image folder '{root}' must hold train/<class>/ and val/<class>/ (or test/<class>/) folders")
        classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())[: self.params.max_classes]
        if not classes:
            raise BenchbdError(f"image folder '{train_dir}' holds no class folders")
        return LoadedData(self._read_split(train_dir, classes), self._read_split(test_dir, classes), classes)

    def _read_split(self, folder: Path, classes: list[str]) -> Split:
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp"})
            paths += [str(p) for p in files]
            labels += [label] * len(files)
        if not paths:
            raise BenchbdError(
                f"image folder '{folder}' has class folders ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}) "
                f"but no images in them (.jpg, .jpeg, .png, .webp, .bmp)"
            )
        return _split(_resized(paths, self.params.size), labels)


@DATASETS.register("imagefolder")
class ImageFolderDataset(FolderDataset):
    """Any ImageFolder tree as imagefolder:PATH (train/ and val/ or test/), resized to `size`."""

    takes_path = True


@dataclass
class ImageNet12Params(ImageFolderParams):
    holdout_fraction: float = 0.1
    model: str = "resnet34"
    size: int = 256
    max_classes: Optional[int] = 12


@DATASETS.register("imagenet12", aliases=("imagenet-12",))
class ImageNet12(FolderDataset):
    """First 12 ILSVRC-2012 classes from <data-root>/imagenet (train/, val/), 256x256, crop 224."""

    Params = ImageNet12Params
    num_classes, image_size, paper_dataset = 12, 256, "imagenet12"

    def root(self) -> Path:
        return Path(self.path) if self.path else self.data_root / "imagenet"


@dataclass
class SyntheticParams(DatasetParams):
    n_train: int = 2000
    n_test: int = 500
    n_classes: int = 10
    data_seed: int = 0  # fixes the images; the cell seed still draws holdout, poison and training

    def __post_init__(self):
        super().__post_init__()
        check(self.n_train >= 20 and self.n_test >= 10, "n_train must be at least 20 and n_test at least 10")
        check(2 <= self.n_classes <= 64, f"n_classes={self.n_classes} must be in [2, 64]")


@DATASETS.register("synthetic")
class Synthetic(Dataset):
    """Procedural 32x32 gratings, one colour and orientation per class: a CPU learns it in seconds."""

    Params = SyntheticParams

    def source(self) -> dict:
        p = self.params
        return {**super().source(), "n_train": p.n_train, "n_test": p.n_test, "n_classes": p.n_classes, "data_seed": p.data_seed}

    def read(self) -> LoadedData:
        p = self.params
        rng = np.random.default_rng(p.data_seed)
        angles = np.linspace(0, np.pi, p.n_classes, endpoint=False)
        colours = rng.uniform(0.25, 1.0, size=(p.n_classes, 3))
        yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)

        def make(n: int) -> Split:
            labels = rng.integers(0, p.n_classes, n)
            phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
            freq = rng.uniform(0.35, 0.55, (n, 1, 1))
            a = angles[labels][:, None, None]
            wave = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(a) + yy * np.sin(a)) + phase)
            img = wave[..., None] * colours[labels][:, None, None, :] * rng.uniform(0.6, 1.0, (n, 1, 1, 1))
            img = img + rng.normal(0, 0.08, img.shape)
            return _split((np.clip(img, 0, 1) * 255).round(), labels)

        return LoadedData(make(p.n_train), make(p.n_test), [f"class{i}" for i in range(p.n_classes)])


@DATASETS.register("cifar10-mini", aliases=("cifar10_mini",))
class Cifar10Mini(Dataset):
    """5,000 train / 1,000 test real CIFAR-10 images shipped with benchbd: works offline."""

    num_classes, image_size, paper_dataset = 10, 32, "cifar10"

    def read(self) -> LoadedData:
        folder = resources.files("benchbd.data").joinpath("mini")
        meta = json.loads(folder.joinpath("meta.json").read_text())
        splits = []
        for name in ("train", "test"):
            with folder.joinpath(f"{name}.webp").open("rb") as f, Image.open(f) as im:
                mosaic = np.asarray(im.convert("RGB"))
            cols = meta["tiles_per_row"]
            rows = mosaic.shape[0] // 32
            tiles = mosaic.reshape(rows, 32, cols, 32, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, 32, 32, 3)
            with folder.joinpath(f"{name}-labels.npy").open("rb") as f:
                labels = np.load(f)
            splits.append(_split(tiles[: meta["counts"][name]], labels))
        return LoadedData(splits[0], splits[1], meta["classes"])


def parse_dataset_spec(spec: str) -> tuple[str, str | None]:
    """'cifar10' -> ('cifar10', None); 'npz:/data/x.npz' -> ('npz', '/data/x.npz')."""
    name, sep, path = spec.partition(":")
    if sep:
        canonical = DATASETS.resolve(name)
        if not DATASETS.get(canonical).takes_path:
            raise BenchbdError(
                f"dataset '{canonical}' takes no path; sources with a path: "
                + ", ".join(f"{n}:PATH" for n in DATASETS.names() if DATASETS.get(n).takes_path)
            )
        if not path:
            raise BenchbdError(f"dataset '{spec}' needs a path after the colon")
        return canonical, path
    canonical = DATASETS.resolve(spec)
    if DATASETS.get(canonical).takes_path:
        raise BenchbdError(f"dataset '{canonical}' needs a path: use {canonical}:PATH")
    return canonical, None
