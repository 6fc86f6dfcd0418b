"""`benchbd reproduce ROW`: rerun one published cell from what its row records and compare.

The cell is planned from the row alone (dataset, attack, defense, seed, budget and every resolved
parameter as a config layer), its data is checked against `data_sha256` and its code against
`code_sha256`, and it runs in a scratch results and cache directory, so nothing published moves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Layers
from ..data import parse_dataset_spec
from ..errors import BenchbdError
from .grid import Runner, code_sha256

# Where the rerun runs on the row's device and precision, runs are deterministic: equal to the stored
# digits. Elsewhere (another CPU model, a GPU, bf16) floating-point sums differ: this many points of
# ASR or CA are allowed.
OTHER_DEVICE_TOLERANCE = 2.0


@dataclass
class Comparison:
    recorded: dict[str, float]
    new: dict[str, float]
    tolerance: float  # 0: must be equal to the stored digits
    warnings: list[str] = field(default_factory=list)

    def differs(self, name: str) -> bool:
        a, b = self.recorded[name], self.new.get(name, float("nan"))
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return False
        return not abs(a - b) <= self.tolerance

    @property
    def verdict(self) -> str:
        bad = [name for name in self.recorded if self.differs(name)]
        if not bad:
            return "reproduced: " + ("equal to the last digit" if self.tolerance == 0 else f"within {self.tolerance} points")
        return "NOT reproduced: " + ", ".join(bad) + " differ" + ("" if self.tolerance == 0 else f" by more than {self.tolerance} points")


def read_published_row(path: Path) -> dict:
    try:
        row = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BenchbdError(f"cannot read result row '{path}': {exc}") from exc
    if not isinstance(row, dict) or not {"dataset", "attack", "defense", "seed", "budget", "params"} <= set(row):
        raise BenchbdError(f"'{path}' is not a benchbd result row (needs dataset, attack, defense, seed, budget, params)")
    if row.get("status", "ok") != "ok":
        raise BenchbdError(f"'{path}' records a failed cell ({row.get('error', 'no reason')}): there is no number to reproduce")
    return row


def row_layers(row: dict) -> Layers:
    """The row's resolved parameters as a config layer over the package defaults."""
    name, _ = parse_dataset_spec(row["dataset"])
    params = row["params"]
    user = {
        "dataset": {name: params.get("dataset", {})},
        "attack": {row["attack"]: params.get("attack", {})},
        "defense": {row["defense"]: params.get("defense", {})},
    }
    if "train" in params:
        user["train"] = {"normal": params["train"]}
    if "retune" in params:
        user.setdefault("train", {})["retune"] = params["retune"]
    if row.get("detector"):
        user["detector"] = {row["detector"]: params.get("detector", {})}
    return Layers(user=user)


def plan_row(runner: Runner, row: dict):
    """The one cell a row records, planned from the row alone; a one-line error where it cannot be."""
    detector = row.get("detector")
    cells = runner.plan(
        [row["dataset"]], row["attack"], "" if detector else row["defense"], [int(row["seed"])], row["budget"], row_layers(row),
        detectors=detector, retune="retune" in row["params"],
    )  # fmt: skip
    return next(c for c in cells if (c.detector.name if c.detector else None) == detector and c.defense.name == row["defense"])


def numbers(row: dict) -> dict[str, float]:
    """ASR, CA and every numeric metric of a row, by name."""
    out = {"asr": float(row["asr"]), "ca": float(row["ca"])}
    for name, value in sorted((row.get("metrics") or {}).items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"metrics.{name}"] = float(value)
    return out


def reproduce(runner: Runner, row: dict, warn=print) -> Comparison:
    """Rerun the row's cell with `runner` (whose results and cache are scratch) and compare."""
    cell = plan_row(runner, row)
    recorded_data = row.get("data_sha256")
    if not recorded_data:
        raise BenchbdError("the row records no data_sha256 (it predates content hashes): its data cannot be checked")
    if cell.data.sha256 != recorded_data:
        raise BenchbdError(
            f"the data differs from the row's: {row['dataset']} here hashes to {cell.data.sha256[:12]}, the row was made with "
            f"{recorded_data[:12]} (see --data-root): refusing to compare numbers of different data"
        )
    warnings = []
    if cell.params() != row["params"]:
        warnings.append("the parameters this code resolves differ from the row's (a field added or removed since)")
    if row.get("code_sha256") and row["code_sha256"] != code_sha256():
        warnings.append(f"the code differs from the row's (code_sha256 {code_sha256()[:12]} here, {row['code_sha256'][:12]} in the row)")
    for warning in warnings:
        warn(f"warning: {warning}")
    (new,) = runner.run([cell], force=True)
    if new.get("status") == "failed":
        raise BenchbdError(f"the rerun failed: {new.get('error')}")
    same_place = new.get("device") == row.get("device") and new.get("precision") == row.get("precision", "fp32")
    return Comparison(numbers(row), numbers(new), 0.0 if same_place else OTHER_DEVICE_TOLERANCE, warnings)
