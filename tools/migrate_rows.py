"""Re-key committed result rows made before content-hashed keys, without touching a measured number.

    python tools/migrate_rows.py results/cifar10-fast results/cifar10-fast-modern --data-root DIR \
        --drop tnr,ftsam

Each row's cell is planned from the row alone (as `benchbd reproduce` does) on the data in
`--data-root` (for the committed CIFAR-10 rows: ../shared/datasets' CIFAR-10 decoded by its
unpack.py into DIR/cifar10.npz), which must resolve to the same parameters the row records. The row
then gets the new `cell_key` (its file is renamed), `data_sha256`, `precision` and a `migrated` note
naming the old key; `asr`, `ca`, `metrics` and every other recorded field stay as they are.
`trainings` and `code_sha256` are not invented: migrated rows have neither. Rows of the defenses
in `--drop` (whose computation has changed since) are removed from rows/ (git history keeps them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchbd.config import Layers
from benchbd.runner import Cache, Results, Runner
from benchbd.runner.reproduce import plan_row


def migrate_row(runner: Runner, row: dict) -> dict:
    """The row re-keyed; a ValueError where the current code would compute another cell."""
    cell = plan_row(runner, row)
    if cell.params() != row["params"]:
        raise ValueError(f"{row['attack']} x {row['defense']}: the parameters resolve differently now")
    if row.get("data_sha256") not in (None, cell.data.sha256):
        raise ValueError(f"{row['attack']} x {row['defense']}: recorded with other data ({row['data_sha256'][:12]})")
    migrated = dict(row)
    migrated.update(
        cell_key=cell.key,
        data_sha256=cell.data.sha256,
        precision=row.get("precision", "fp32" if str(row.get("device", "")).startswith("cpu") else "bf16"),
        migrated={"from_key": row["cell_key"], "by": "tools/migrate_rows.py"},
    )
    return migrated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results directories whose rows/ to migrate")
    parser.add_argument("--data-root", type=Path, required=True, help="where the rows' datasets are (cifar10.npz, ...)")
    parser.add_argument("--drop", default="", help="comma-separated defenses whose rows are removed (computation changed)")
    args = parser.parse_args(argv)
    drop = {name for name in args.drop.split(",") if name}
    scratch = Path("/tmp/benchbd-migrate")
    runner = Runner(Results(scratch / "results"), Cache(scratch / "cache"), Layers(), args.data_root, "cpu")
    for root in args.results:
        for path in sorted((root / "rows").glob("*.json")):
            row = json.loads(path.read_text())
            if row["defense"] in drop:
                path.unlink()
                print(f"dropped  {path.name}  {row['attack']} x {row['defense']} (recomputed under the new rule)")
                continue
            new = migrate_row(runner, row)
            target = path.with_name(f"{new['cell_key']}.json")
            target.write_text(json.dumps(new, indent=1, sort_keys=True))
            if target != path:
                path.unlink()
            print(f"migrated {path.name} -> {target.name}  {row['attack']} x {row['defense']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
