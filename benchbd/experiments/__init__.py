"""Named experiments: a grid written as data. One YAML file per paper table ships in this folder;
a user's own file runs the same way (`benchbd run --experiment path.yaml`).

A file names the datasets, the attacks (rows) and the columns; each column is a defense with the
parameter overrides that define it, in `--set` syntax (`defense.tnr.rec_weight: 0`). The paper's
numbers for a column are the rows of the shipped paper tables matching `paper` (file level,
then column level).
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import set_layer
from ..errors import BenchbdError, did_you_mean, unknown

FILE_KEYS = ("title", "reproduces", "datasets", "attacks", "seeds", "columns", "extra", "paper", "notes")
COLUMN_KEYS = ("name", "defense", "set", "paper")


@dataclass(frozen=True)
class Column:
    """One column of an experiment's table: a defense with the overrides that define the setting."""

    name: str
    defense: str
    sets: tuple[tuple[str, Any], ...] = ()
    paper: dict = field(default_factory=dict)  # filter on the paper's rows for this column

    def layer(self) -> dict:
        return set_layer(self.sets, f"'set' of column '{self.name}', key")

    @classmethod
    def parse(cls, text: str) -> "Column":
        """'tnr' or 'tnr[rec_weight=0, tv_weight=0]' (the labels `benchbd table` prints)."""
        text = text.strip()
        name, bracket, rest = text.partition("[")
        pairs = []
        if bracket:
            if not rest.endswith("]"):
                raise BenchbdError(f"malformed defense '{text}': expected NAME or NAME[PARAM=VALUE, ...]")
            for item in filter(None, (part.strip() for part in rest[:-1].split(","))):
                key, eq, raw = item.partition("=")
                if not eq or not key.strip():
                    raise BenchbdError(f"malformed defense '{text}': '{item}' is not PARAM=VALUE")
                pairs.append((f"defense.{name.strip()}.{key.strip()}", yaml.safe_load(raw) if raw.strip() else ""))
        return cls(text, name.strip(), tuple(pairs))


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    reproduces: str
    datasets: tuple[str, ...]
    attacks: tuple[str, ...]
    columns: tuple[Column, ...]
    seeds: tuple[int, ...] = (0,)
    extra: tuple[str, ...] = ()  # per-cell metrics the table shows (Table 8: recon_mse)
    paper: dict = field(default_factory=dict)
    notes: str = ""

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise unknown(f"column of experiment {self.name}", name, [c.name for c in self.columns])


def _shipped() -> dict[str, Any]:
    folder = resources.files("benchbd.experiments")
    return {entry.name[:-5]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def names() -> list[str]:
    """Shipped experiments, in the paper's order (table1 ... table12)."""

    def order(name: str):
        digits = "".join(c for c in name if c.isdigit())
        return (int(digits) if digits else 1_000, name)

    return sorted(_shipped(), key=order)


def load(spec: str) -> Experiment:
    """A shipped experiment by name, or a YAML file by path."""
    shipped = _shipped()
    if spec in shipped:
        return parse(spec, shipped[spec].read_text(), f"experiment {spec}")
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise BenchbdError(f"experiment file '{spec}' does not exist")
        return parse(path.stem, path.read_text(), f"experiment file '{spec}'")
    raise unknown("experiment", spec, shipped)


def _list(value, where: str, item=str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise BenchbdError(f"{where} must be a list, got {value!r}")
    try:
        return tuple(item(v) for v in value)
    except (TypeError, ValueError):
        raise BenchbdError(f"{where} must be a list of {item.__name__}, got {value!r}") from None


def _check_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise BenchbdError(f"unknown key '{key}' in {where}{did_you_mean(key, allowed)}; valid: {', '.join(allowed)}")


def parse(name: str, text: str, where: str) -> Experiment:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BenchbdError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BenchbdError(f"{where} must hold a mapping with keys {', '.join(FILE_KEYS)}")
    _check_keys(data, FILE_KEYS, where)
    for required in ("datasets", "attacks", "columns"):
        if not data.get(required):
            raise BenchbdError(f"{where} needs '{required}'")
    columns = []
    for i, raw in enumerate(data["columns"]):
        if isinstance(raw, str):
            raw = {"name": raw, "defense": raw}
        if not isinstance(raw, dict) or "defense" not in raw:
            raise BenchbdError(f"{where}: column {i + 1} must be a defense name or a mapping with 'defense' (and 'name', 'set', 'paper')")
        _check_keys(raw, COLUMN_KEYS, f"{where}, column {i + 1}")
        sets = raw.get("set") or {}
        if not isinstance(sets, dict):
            raise BenchbdError(f"{where}: 'set' of column {i + 1} must map KIND.NAME.PARAM to a value")
        column = Column(str(raw.get("name", raw["defense"])), str(raw["defense"]), tuple(sets.items()), dict(raw.get("paper") or {}))
        column.layer()  # malformed keys fail now, naming the column
        columns.append(column)
    labels = [c.name for c in columns]
    if len(set(labels)) != len(labels):
        raise BenchbdError(f"{where}: column names must differ, got {', '.join(labels)}")
    return Experiment(
        name=name,
        title=str(data.get("title", name)),
        reproduces=str(data.get("reproduces", "")),
        datasets=_list(data["datasets"], f"{where}: datasets"),
        attacks=_list(data["attacks"], f"{where}: attacks"),
        columns=tuple(columns),
        seeds=_list(data.get("seeds", [0]), f"{where}: seeds", int) or (0,),
        extra=_list(data.get("extra"), f"{where}: extra"),
        paper=dict(data.get("paper") or {}),
        notes=str(data.get("notes", "")).strip(),
    )


class Membership:
    """Which result rows belong to which column of an experiment: `results/experiments/NAME.json`.

    Written when the experiment runs, including cells that were already done (a cell shared with
    the main grid or another experiment is one row), so `table --experiment` can select them."""

    def __init__(self, results_root: Path | str, experiment: str):
        self.path = Path(results_root) / "experiments" / f"{experiment}.json"

    def read(self) -> dict[str, list[str]]:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError:
            raise BenchbdError(f"'{self.path}' is not valid JSON; delete it and run the experiment again") from None

    def add(self, column_keys: dict[str, typing.Iterable[str]]) -> None:
        from ..runner.files import atomic_write_bytes

        merged = self.read()
        for column, keys in column_keys.items():
            merged[column] = list(dict.fromkeys([*merged.get(column, []), *keys]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(merged, indent=1).encode())


def plan(
    experiment: Experiment,
    runner,
    budget: str,
    seeds: list[int] | None = None,
    datasets: list[str] | None = None,
    attacks: str | None = None,
) -> tuple[list, dict[str, list[str]]]:
    """The experiment's cells (each shared cell once) and, per column, the keys of its cells.

    `seeds`, `datasets` and `attacks` replace the file's when given; every column's overrides
    apply before the user's --set, so a user can still change anything on the command line."""
    cells, members = {}, {}
    for column in experiment.columns:
        try:
            planned = runner.plan(
                list(datasets or experiment.datasets),
                attacks or ",".join(experiment.attacks),
                column.defense,
                list(seeds or experiment.seeds),
                budget,
                layers=runner.layers.with_sets(column.layer()),
            )
        except BenchbdError as exc:
            raise BenchbdError(f"experiment {experiment.name}, column '{column.name}': {exc}") from None
        members[column.name] = [cell.key for cell in planned]
        for cell in planned:
            cells.setdefault(cell.key, cell)
    return list(cells.values()), members
