"""Content-addressed artifact cache: poisoned splits and backdoored models.

An artifact is a dict of tensors saved with torch.save, keyed by a hash of everything that
determines it, with a sha256 sidecar. A corrupt or half-written entry is rebuilt with a warning.
Concurrent cells (worker processes, Ray tasks on shared storage) that need the same artifact
build it once: the builder holds a lock file, the others wait for it and then load.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from .files import atomic_write_bytes, content_key, file_sha256


class Cache:
    def __init__(self, root: Path | str, warn: Callable[[str], None] = print):
        self.root = Path(root)
        self.warn = warn

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.pt"

    def get(self, kind: str, identity: dict) -> dict[str, torch.Tensor] | None:
        """The cached artifact, or None when it is not there (or not whole)."""
        return self._load(self.path(kind, content_key(identity)))

    def get_or_build(
        self, kind: str, identity: dict, build: Callable[[], dict[str, torch.Tensor]], describe: Callable[[], dict] | None = None
    ) -> tuple[dict[str, torch.Tensor], bool]:
        """(artifact, True) from the cache, or (build(), False) after storing it; `describe()`, called
        after `build`, is stored beside it (read back with `meta`)."""
        path = self.path(kind, content_key(identity))
        artifact = self._load(path)
        if artifact is not None:
            return artifact, True
        with self._building(path):
            artifact = self._load(path)  # built by another process while we waited
            if artifact is not None:
                return artifact, True
            if path.exists():
                self.warn(f"warning: cache entry {path} is corrupt or incomplete (checksum mismatch); rebuilding it")
            artifact = build()
            if describe is not None:
                atomic_write_bytes(path.with_suffix(".meta.json"), json.dumps(describe(), sort_keys=True, default=str).encode())
            self._store(path, artifact, identity)
        return artifact, False

    def meta(self, kind: str, identity: dict) -> dict:
        """What `describe` said when the artifact was built ({} when nothing was)."""
        try:
            return json.loads(self.path(kind, content_key(identity)).with_suffix(".meta.json").read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _load(path: Path) -> dict[str, torch.Tensor] | None:
        checksum = path.with_suffix(".sha256")
        if path.exists() and checksum.exists() and checksum.read_text().strip() == file_sha256(path):
            return torch.load(path, map_location="cpu", weights_only=True)
        return None

    @staticmethod
    @contextmanager
    def _building(path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _store(path: Path, artifact: dict[str, torch.Tensor], identity: dict) -> None:
        """Checksum first, then the artifact by rename: whoever sees the file sees its checksum."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({k: v.detach().cpu() for k, v in artifact.items()}, tmp)
        atomic_write_bytes(path.with_suffix(".sha256"), file_sha256(tmp).encode())
        os.replace(tmp, path)
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(identity, indent=1, sort_keys=True, default=str).encode())
