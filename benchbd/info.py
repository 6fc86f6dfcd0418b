"""`benchbd info`: what this machine offers a run, on one screen; anything missing is said, never raised."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def devices() -> list[str]:
    import torch

    from .train import precision_of

    found = [f"cpu ({torch.get_num_threads()} threads): precision {precision_of(torch.device('cpu'))}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            found.append(f"cuda:{i} {torch.cuda.get_device_name(i)}: precision {precision_of(torch.device('cuda', i))}")
    return found


def datasets(data_root: Path) -> list[str]:
    """The standard datasets found under `data_root`, with size and content hash (remembered once computed)."""
    from .components import components
    from .data import DATASETS
    from .data.datasets import DatasetParams, TorchvisionDataset

    components()
    out = []
    for name in DATASETS.names():
        cls = DATASETS.get(name)
        if not issubclass(cls, TorchvisionDataset):
            continue
        path = data_root / cls.npz_name
        if not path.is_file():
            out.append(f"{name}: not in {data_root} (`--data-root`, or torchvision downloads it once)")
            continue
        try:
            data = cls(DatasetParams(), data_root).load()
            out.append(f"{name}: {path} ({human(path.stat().st_size)}, {len(data.train):,} train / {len(data.test):,} test), "
                       f"data_sha256 {data.sha256[:12]}")  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a damaged file is reported, not raised
            out.append(f"{name}: {path} cannot be read ({str(exc).splitlines()[0][:100]})")
    return out


def report(data_root: Path, cache_dir: Path) -> list[str]:
    from . import __version__

    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    lines = [
        f"benchbd {__version__}; torch {version('torch')}; torchvision {version('torchvision')}; opacus {version('opacus')}; "
        f"ray {version('ray')}",
        "devices:",
        *(f"  {d}" for d in devices()),
        f"datasets under {data_root}:",
        *(f"  {d}" for d in datasets(data_root)),
        "  always there: cifar10-mini (shipped), synthetic; any data as npz:PATH or imagefolder:PATH",
        f"cache: {cache_dir} ({human(folder_size(cache_dir)) if cache_dir.is_dir() else 'not created yet'})",
        f"figures (matplotlib): {version('matplotlib')}",
        f"HTML report check (chromium): {chromium or 'not found (apt-get install chromium)'}",
    ]
    return lines
