"""Training throughput of benchbd's trainer against a plain reference loop, in the same run.

    benchbd bench [--device cpu|cuda] [--images 4096] [--batch 256] [--epochs 2] [--concurrent K]
    python benchmarks/throughput.py ...        (the same)

Reference loop: the usual research code: torchvision transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor) on PIL images in a DataLoader, float32, contiguous memory.
benchbd: the data on the device as uint8, crop/flip on the device, channels_last, bf16 autocast
on CUDA. Both train WRN-16-1 with Adam on the same CIFAR-10-shaped random data; the first
epoch of each is a warm-up and is not timed. Prints images/s of each and their ratio; with
`--concurrent K`, also K benchbd trainings at once in K processes on the one device (the way
`benchbd run --jobs-per-gpu K` runs cells), their total images/s, its ratio to the reference loop,
and the peak GPU memory of each.
"""

from __future__ import annotations

import argparse
import gc
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

    loader = torch.utils.data.DataLoader(
        Data(),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
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
    del loader  # its persistent workers must not compete with what is measured next
    gc.collect()
    return seen / elapsed


def benchbd_images_per_s(images: np.ndarray, labels: np.ndarray, device: torch.device, batch: int, epochs: int, ready=None) -> float:
    """benchbd's trainer; `ready` (a barrier) makes concurrent processes start timing together."""
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
        torch.cuda.reset_peak_memory_stats(device)
    if ready is not None:
        ready.wait()
    start = time.perf_counter()
    trainer.fit(create_model("wrn16_1", 10), split, TrainRecipe(epochs=epochs, batch_size=batch))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs * len(images) / (time.perf_counter() - start)


def _concurrent_worker(index, images, labels, device, batch, epochs, threads, ready, out) -> None:
    torch.set_num_threads(threads)
    rate = benchbd_images_per_s(images.numpy(), labels.numpy(), torch.device(device), batch, epochs, ready)
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if torch.device(device).type == "cuda" else float("nan")
    out.put((index, rate, memory))


def concurrent_images_per_s(images, labels, device: torch.device, batch: int, epochs: int, k: int) -> tuple[float, list[float]]:
    """Total images/s of K trainings at once in K spawned processes, and each one's peak GPU MiB.
    The dataset goes to the workers through shared memory."""
    ctx = torch.multiprocessing.get_context("spawn")
    ready, out = ctx.Barrier(k), ctx.Queue()
    threads = max(1, torch.get_num_threads() // k) if device.type == "cpu" else 1
    shared_images, shared_labels = torch.from_numpy(images).share_memory_(), torch.from_numpy(labels).share_memory_()
    processes = [
        ctx.Process(target=_concurrent_worker, args=(i, shared_images, shared_labels, str(device), batch, epochs, threads, ready, out))
        for i in range(k)
    ]
    for p in processes:
        p.start()
    results = sorted(out.get() for _ in processes)
    for p in processes:
        p.join()
    return sum(rate for _, rate, _ in results), [memory for _, _, memory in results]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--concurrent", type=int, default=0, help="also measure K benchbd trainings at once")
    return p


def report(device: str, images: int, batch: int, epochs: int, workers: int, concurrent: int, echo=print) -> dict:
    device = torch.device(device)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, images).astype(np.int64)
    ref = reference_images_per_s(data, labels, device, batch, epochs, workers)
    ours = benchbd_images_per_s(data, labels, device, batch, epochs)
    out = {"reference": ref, "benchbd": ours}
    echo(f"device {device}, {images} images, batch {batch}, {epochs} timed epochs")
    echo(f"reference loop : {ref:10.0f} images/s")
    echo(f"benchbd trainer: {ours:10.0f} images/s   ratio {ours / ref:6.2f}x")
    if concurrent:
        total, memory = concurrent_images_per_s(data, labels, device, batch, epochs, concurrent)
        out["concurrent"] = total
        peak = "" if device.type != "cuda" else f"   peak GPU memory per cell {max(memory):.0f} MiB"
        echo(f"{concurrent} at once     : {total:10.0f} images/s   ratio {total / ref:6.2f}x{peak}")
    return out


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    report(args.device, args.images, args.batch, args.epochs, args.workers, args.concurrent)


if __name__ == "__main__":
    main()
