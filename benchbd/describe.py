"""`benchbd show defense nad`: a component's parameters as a run would resolve them, each beside
its default in the code and the layer its value comes from (TrojanZoo-style layered config made
visible)."""

from __future__ import annotations

import dataclasses

from rich.table import Table

from .config import Layers, as_dict

KIND_OF = {"attack": "attacks", "defense": "defenses", "dataset": "datasets", "detector": "detectors", "train": "train"}


def _flat(values: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _params_class(kind: str, name: str) -> tuple[str, type]:
    """(canonical name, Params dataclass) of a registered component (`train normal`: the normal
    recipe; `train retune`: the retuning check)."""
    from .components import components
    from .retune import RetuneParams
    from .train import TrainRecipe

    if kind == "train":
        from .errors import unknown

        recipes = {"normal": TrainRecipe, "retune": RetuneParams}
        if name not in recipes:
            raise unknown("training recipe", name, list(recipes))
        return name, recipes[name]
    registry = components()[KIND_OF[kind]]
    canonical = registry.resolve(name)
    return canonical, registry.get(canonical).Params


def parameter_table(kind: str, name: str, dataset: str, layers: Layers) -> Table:
    """Rows: parameter, resolved value, code default, where the value comes from."""
    canonical, cls = _params_class(kind, name)
    fields = {f.name for f in dataclasses.fields(cls)}
    resolved = _flat(as_dict(layers.params(kind, canonical, dataset, cls)))
    defaults = _flat(as_dict(cls()))
    sources = layers.sources(kind, canonical, dataset, fields)
    table = Table(title=f"{kind} {canonical} on {dataset}")
    for column in ("parameter", "value", "default", "from"):
        table.add_column(column)
    for key, value in resolved.items():
        table.add_row(key, repr(value), repr(defaults.get(key)), sources.get(key, "code default"))
    return table


def component_details(kind: str, name: str) -> list[str]:
    """The lines `benchbd list` leaves out (aliases, needs, source); nothing for `train`."""
    from .components import components, details

    if kind == "train":
        return []
    registry = components()[KIND_OF[kind]]
    canonical = registry.resolve(name)
    return details(KIND_OF[kind], next(e for e in registry.entries() if e.name == canonical))
