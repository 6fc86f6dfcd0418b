"""Build the `cifar10-mini` sample shipped in benchbd/data/mini from the packed CIFAR-10 copy.

    python tools/make_cifar10_mini.py ../shared/datasets benchbd/data/mini

Takes the first 5,000 training and 1,000 test images (the packed copy is in a fixed random
order, so these are a fair sample) and stores them as lossless WebP mosaics, 100 tiles a row,
plus int64 labels: the pixels are exactly those of the packed copy.
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

N_TRAIN, N_TEST, COLS = 5000, 1000, 100


def mosaic(images: np.ndarray) -> np.ndarray:
    rows = -(-len(images) // COLS)
    tiles = np.zeros((rows * COLS, 32, 32, 3), np.uint8)
    tiles[: len(images)] = images
    return tiles.reshape(rows, COLS, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 32, COLS * 32, 3)


def main(shared_datasets: str, out_dir: str) -> None:
    sys.path.insert(0, shared_datasets)
    import unpack  # noqa: E402  (the packed copy's own decoder)

    data = unpack.load("cifar10", N_TRAIN, N_TEST)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        Image.fromarray(mosaic(data[f"x_{split}"])).save(out / f"{split}.webp", lossless=True, quality=100, method=6)
        np.save(out / f"{split}-labels.npy", data[f"y_{split}"].astype(np.int64))
    meta = {"classes": [str(c) for c in data["classes"]], "counts": {"train": N_TRAIN, "test": N_TEST}, "tiles_per_row": COLS}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
