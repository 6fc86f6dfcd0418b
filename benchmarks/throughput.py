"""Training throughput of benchbd's trainer against a plain reference loop, in the same run.

    python benchmarks/throughput.py [--device cpu|cuda] [--images 4096] [--batch 256] [--epochs 2]

Reference loop: the usual research code: torchvision transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor) on PIL images in a DataLoader, float32, contiguous memory.
benchbd: the data on the device as uint8, crop/flip on the device, channels_last, bf16 autocast
on CUDA. Both train WRN-16-1 with Adam on the same CIFAR-10-shaped random data; the first
epoch of each is a warm-up and is not timed. Prints images/s of each and their ratio.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def reference_images_per_s(images: np.ndarray, labels: np.ndarray, device: torch.device, batch: int, epochs: int, workers: int) -> float:
    from torchvision import transforms

    from benchbd.models import create_model

    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()])

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.fromarray(images[i])), int(labels[i])

    loader = torch.utils.data.DataLoader(Data(), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    model = create_model("wrn16_1", 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    seen, elapsed = 0, 0.0
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        count = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            count += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if epoch > 0:  # epoch 0 warms up
            seen += count
            elapsed += time.perf_counter() - start
    return seen / elapsed


def benchbd_images_per_s(images: np.ndarray, labels: np.ndarray, device: torch.device, batch: int, epochs: int) -> float:
    from benchbd.data import Split
    from benchbd.data.augment import SmallImages
    from benchbd.models import create_model
    from benchbd.train import Budget, Trainer, TrainRecipe

    split = Split(torch.from_numpy(images), torch.from_numpy(labels))
    trainer = Trainer(SmallImages(), Budget("bench"), device, seed=0)
    recipe = TrainRecipe(epochs=1, batch_size=batch)
    trainer.fit(create_model("wrn16_1", 10), split, recipe)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.fit(create_model("wrn16_1", 10), split, TrainRecipe(epochs=epochs, batch_size=batch))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images).astype(np.int64)
    ref = reference_images_per_s(images, labels, device, args.batch, args.epochs, args.workers)
    ours = benchbd_images_per_s(images, labels, device, args.batch, args.epochs)
    print(f"device {device}, {args.images} images, batch {args.batch}, {args.epochs} timed epochs")
    print(f"reference loop : {ref:10.0f} images/s")
    print(f"benchbd trainer: {ours:10.0f} images/s")
    print(f"ratio          : {ours / ref:10.2f}x")


if __name__ == "__main__":
    main()
