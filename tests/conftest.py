import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BENCHBD_SHARED", REPO.parent / "shared"))


def shared_datasets() -> Path:
    """The packed real datasets beside the checkout (../shared/datasets): tests need them."""
    folder = SHARED / "datasets"
    assert (folder / "unpack.py").is_file(), f"real datasets not found at {folder}; set BENCHBD_SHARED to the shared/ folder"
    return folder


@pytest.fixture(scope="session")
def cifar_slice(tmp_path_factory) -> Path:
    """A few thousand real CIFAR-10 images as a benchbd .npz."""
    sys.path.insert(0, str(shared_datasets()))
    import unpack

    data = unpack.load("cifar10", 5000, 1000)
    path = tmp_path_factory.mktemp("data") / "cifar10.npz"
    np.savez(path, **data)
    return path


def shared_tmp(tmp_path_factory) -> Path:
    """A folder all parallel test workers of this session see (each worker's own base folder otherwise)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(autouse=True)
def _quiet_threads():
    torch.manual_seed(0)
    yield


def random_images(n=8, size=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


if os.environ.get("PYTEST_XDIST_WORKER"):  # tests in parallel worker processes (-n 2): one thread each, no oversubscription
    torch.set_num_threads(1)
