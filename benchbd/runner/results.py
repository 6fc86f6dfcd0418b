"""Result rows: one JSON file per finished cell, written atomically, under an exclusive lock.

A kill at any moment loses at most the cell in flight; a second run on the same directory
while one holds the lock is refused, so rows never interleave.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ..errors import BenchbdError
from .cache import atomic_write_bytes


class Results:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.rows_dir = self.root / "rows"

    def row_path(self, key: str) -> Path:
        return self.rows_dir / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.row_path(key).exists()

    def done(self, key: str) -> bool:
        """A row exists and the cell did not fail (failed cells are retried by the next run)."""
        if not self.has(key):
            return False
        try:
            return json.loads(self.row_path(key).read_text()).get("status", "ok") != "failed"
        except json.JSONDecodeError:
            return False

    def write(self, row: dict) -> None:
        self.rows_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.row_path(row["cell_key"]), json.dumps(row, indent=1, sort_keys=True).encode())

    def rows(self) -> list[dict]:
        out = []
        for path in sorted(self.rows_dir.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except json.JSONDecodeError:
                raise BenchbdError(f"result row '{path}' is not valid JSON; delete it and rerun the grid to redo that cell")
        return out

    def load(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows())

    @contextmanager
    def lock(self):
        """Exclusive lock on the results directory for the whole run; refuse if another run holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise BenchbdError(f"results directory '{self.root}' is in use by another benchbd run ({holder}); "
                                   "wait for it to finish or use another --results directory") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)
