"""The command line and runner the analysis tools share: one cell of a cached run, on the CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchbd.runner import Cache, Results, Runner


def cell_arguments(description: str) -> argparse.ArgumentParser:
    """--dataset, --attack, --budget, --seed, --cache-dir, --data-root (add the tool's own after)."""
    parser = argparse.ArgumentParser(description=description)
    for name, default in (("--dataset", "cifar10"), ("--attack", "blend"), ("--budget", "fast")):
        parser.add_argument(name, default=default)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def cached_runner(args: argparse.Namespace, scratch: str) -> Runner:
    """A CPU runner over the run's cache (`--cache-dir`); its result rows go to `scratch`, not a results directory."""
    data_root = Path(args.data_root) if args.data_root else None
    return Runner(Results(scratch), Cache(args.cache_dir), data_root=data_root, device="cpu")
