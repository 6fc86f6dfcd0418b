"""Result rows: one JSON file per finished cell, written atomically, under an exclusive lock.

A kill at any moment loses at most the cell in flight; a second run on the same directory
while one holds the lock is refused, so rows never interleave.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import BenchbdError
from .files import atomic_write_bytes


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def read_row(path: Path) -> tuple[dict | None, str]:
    """(the row, '') or (None, what is wrong with the file)."""
    try:
        row = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError:
        return None, "not valid JSON, perhaps cut off"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror}"
    if not isinstance(row, dict):
        return None, f"a JSON {type(row).__name__}, not a row"
    for field in ("cell_key", "dataset", "attack", "defense"):
        if not isinstance(row.get(field), str):
            return None, f"'{field}' is missing or not text"
    for field in ("ca", "asr"):
        value = row.get(field)
        if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
            return None, f"'{field}' is {value!r}, not a number"
    return row, ""


class Results:
    def __init__(self, root: Path | str, warn: Callable[[str], None] = _stderr):
        self.root = Path(root)
        self.rows_dir = self.root / "rows"
        self.warn = warn

    def row_path(self, key: str) -> Path:
        return self.rows_dir / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.row_path(key).exists()

    def done(self, key: str) -> bool:
        """A sound row exists and the cell did not fail (failed cells and damaged rows are redone by the next run)."""
        if not self.has(key):
            return False
        row, _ = read_row(self.row_path(key))
        return row is not None and row.get("status", "ok") != "failed"

    def write(self, row: dict) -> None:
        self.rows_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.row_path(row["cell_key"]), json.dumps(row, indent=1, sort_keys=True).encode())

    def rows(self) -> list[dict]:
        """Every sound row; a damaged one (cut off, not UTF-8, not a row, a number that is not one) is
        skipped with a one-line warning naming it, and the next run redoes its cell."""
        out = []
        for path in sorted(self.rows_dir.glob("*.json")):
            row, problem = read_row(path)
            if row is None:
                self.warn(f"warning: ignoring damaged result row '{path}' ({problem}); the next `benchbd run` redoes that cell")
            else:
                out.append(row)
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
                raise BenchbdError(
                    f"results directory '{self.root}' is in use by another benchbd run ({holder}); "
                    "wait for it to finish or use another --results directory"
                ) from None
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
