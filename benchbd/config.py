"""Layered parameters: dataclass defaults < registry.yaml < its per-dataset values < a user
--config file (same layout, also per dataset) < --set KIND.NAME.PARAM=VALUE on the command line.

Every layer is a plain dict; `resolve` merges the layers for one component on one dataset and
`build_params` turns the result into the component's typed, validated dataclass.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import BenchbdError, did_you_mean

KINDS = ("attack", "defense", "dataset", "detector", "train")
ALL = "_all"  # a section entry that applies to every component of its kind
PER_DATASET = "per_dataset"


def check(condition: bool, message: str) -> None:
    """Parameter validation used in dataclasses' __post_init__ (ART style)."""
    if not condition:
        raise ValueError(message)


def package_defaults() -> dict:
    text = resources.files("benchbd").joinpath("registry.yaml").read_text()
    return load_yaml(text) or {}


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader, but `1e-3` and `5E4` are numbers (YAML 1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def load_user_config(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise BenchbdError(f"config file '{path}' is a directory; --config takes a YAML file")
    if not path.is_file():
        raise BenchbdError(f"config file '{path}' does not exist")
    try:
        data = load_yaml(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise BenchbdError(f"config file '{path}' is not text (not UTF-8); --config takes a YAML file") from None
    except yaml.YAMLError as exc:
        raise BenchbdError(f"config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise BenchbdError(f"config file '{path}' must hold a mapping with sections {', '.join(KINDS)}")
    for key, section in data.items():
        if key not in KINDS:
            raise BenchbdError(f"unknown section '{key}' in config file '{path}'{did_you_mean(key, KINDS)}; valid: {', '.join(KINDS)}")
        if section is not None and not isinstance(section, dict):
            raise BenchbdError(f"section '{key}' of config file '{path}' is {section!r}; it must map component names to parameters")
        for name, entry in (section or {}).items():
            if entry is not None and not isinstance(entry, dict):
                raise BenchbdError(f"'{key}.{name}' in config file '{path}' is {entry!r}; it must map parameter names to values")
    return data


def parse_set(items: typing.Iterable[str], origin: str = "--set") -> dict:
    """`--set attack.blend.alpha=0.1` (one component) or `attack.poison_ratio=0.05` (all of a kind)
    into a layer dict. Values are parsed as YAML scalars/lists (0.1, true, [1, 2], text)."""
    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise BenchbdError(
                f"malformed {origin} '{item}': expected KIND.NAME.PARAM=VALUE or KIND.PARAM=VALUE with KIND one of {', '.join(KINDS)}"
            )
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        pairs.append((key, value))
    return set_layer(pairs, origin)


def set_layer(pairs: typing.Iterable[tuple[str, Any]], origin: str = "--set") -> dict:
    """(KIND[.NAME].PARAM, value) pairs, values already typed, into a layer dict."""
    layer: dict = {}
    for key, value in pairs:
        parts = str(key).strip().split(".")
        if len(parts) < 2 or not all(parts) or parts[0] not in KINDS:
            raise BenchbdError(f"malformed {origin} '{key}': expected KIND.NAME.PARAM or KIND.PARAM with KIND one of {', '.join(KINDS)}")
        # KIND.PARAM applies to every component of the kind that has PARAM; KIND.NAME.PARAM[.SUB] to one.
        layer.setdefault(parts[0], {}).setdefault("_set", []).append((parts[1:], value))
    return layer


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _section_steps(section: dict, name: str, dataset: str, fields: set[str] | None) -> list[tuple[str, dict]]:
    """One layer's section for `name`, as (where, values) steps in the order they apply: general
    values, then per-dataset ones, `_all` before the component's own. `_all` values reach only
    components that have the parameter (`fields`; None = every one)."""

    def entry(entry_name: str, values: dict) -> dict:
        values = {k: v for k, v in values.items() if k != PER_DATASET}
        if entry_name == ALL and fields is not None:
            values = {k: v for k, v in values.items() if k in fields}
        return values

    steps = [(entry_name, entry(entry_name, section.get(entry_name) or {})) for entry_name in (ALL, name)]
    for entry_name in (ALL, name):
        per = ((section.get(entry_name) or {}).get(PER_DATASET) or {}).get(dataset) or {}
        steps.append((f"{entry_name}.per_dataset.{dataset}", entry(entry_name, per)))
    return steps


def _section_values(section: dict, name: str, dataset: str, fields: set[str] | None) -> dict:
    values: dict = {}
    for _, step in _section_steps(section, name, dataset, fields):
        values = deep_merge(values, step)
    return values


def _leaves(values: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


def _nest(path: list[str], value: Any) -> dict:
    out: dict = {}
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return out


@dataclass
class Layers:
    """The ordered layers of parameters for a run."""

    package: dict = field(default_factory=package_defaults)
    user: dict = field(default_factory=dict)
    cli: dict = field(default_factory=dict)

    def resolve(self, kind: str, name: str, dataset: str, fields: set[str] | None = None) -> dict:
        """Merged values for one component; `fields` limits what `_all` / KIND.PARAM reach."""
        values: dict = {}
        for layer in (self.package, self.user):
            values = deep_merge(values, _section_values(layer.get(kind) or {}, name, dataset, fields))
        for path, value in (self.cli.get(kind) or {}).get("_set", []):
            if len(path) == 1 or path[0] == ALL:
                rest = path[-1:] if len(path) == 1 else path[1:]
                if fields is None or rest[0] in fields:
                    values = deep_merge(values, _nest(rest, value))
            elif path[0] == name:
                values = deep_merge(values, _nest(path[1:], value))
        return values

    def sources(self, kind: str, name: str, dataset: str, fields: set[str] | None = None) -> dict[str, str]:
        """Where each set value of one component comes from (dotted parameter -> layer), the last
        layer that set it winning, as in `resolve`; parameters absent here keep the code's default."""
        found: dict[str, str] = {}
        for layer, label in ((self.package, "registry.yaml"), (self.user, "config file")):
            for where, step in _section_steps(layer.get(kind) or {}, name, dataset, fields):
                found.update({key: f"{label} ({kind}.{where})" for key in _leaves(step)})
        for path, value in (self.cli.get(kind) or {}).get("_set", []):
            general = len(path) == 1 or path[0] == ALL
            rest = (path[-1:] if len(path) == 1 else path[1:]) if general else path[1:]
            if (general and (fields is None or rest[0] in fields)) or (not general and path[0] == name):
                found.update({key: f"--set {kind}.{'.'.join(path)}" for key in _leaves(_nest(rest, value))})
        return found

    def params(self, kind: str, name: str, dataset: str, cls: type, **overrides):
        """The typed, validated parameters of one component on one dataset (`overrides` last)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return build_params(cls, {**self.resolve(kind, name, dataset, fields), **overrides}, f"{kind}.{name}")

    def with_sets(self, first: dict) -> "Layers":
        """These layers with a further CLI-level layer `first` (a `set_layer`) applied before this one's --set."""
        cli = {
            kind: {"_set": (first.get(kind) or {}).get("_set", []) + (self.cli.get(kind) or {}).get("_set", [])}
            for kind in set(first) | set(self.cli)
        }
        return Layers(self.package, self.user, cli)

    def check_names(self, kind: str, classes: dict[str, type], datasets: typing.Collection[str] = ()) -> None:
        """Refuse a user-config section or a --set that names a component that does not exist, and
        an `_all` / KIND.PARAM parameter that no component of the kind has.

        `classes`: name -> Params dataclass of every registered component of the kind."""
        known = set(classes) | {ALL}
        named = [(key, "config file") for key in (self.user.get(kind) or {})]
        named += [(path[0], "--set") for path, _ in (self.cli.get(kind) or {}).get("_set", []) if len(path) >= 2]
        for key, origin in named:
            if key not in known:
                valid = ", ".join(sorted(known - {ALL}))
                raise BenchbdError(f"unknown {kind} '{key}' in {origin}{did_you_mean(key, known)}; valid: {valid}")
        fields = {f.name for cls in classes.values() for f in dataclasses.fields(cls)}
        general = [(k, "config file") for k in (self.user.get(kind) or {}).get(ALL) or {} if k != PER_DATASET]
        general += [
            (path[-1] if len(path) == 1 else path[1], "--set")
            for path, _ in (self.cli.get(kind) or {}).get("_set", [])
            if len(path) == 1 or path[0] == ALL
        ]
        for key, origin in general:
            if key not in fields:
                raise BenchbdError(f"unknown parameter '{kind}.{key}' in {origin}: no {kind} has it{did_you_mean(key, fields)}")
        # a named component's own parameters, whether or not it is in the grid, and per_dataset keys
        sets = (self.cli.get(kind) or {}).get("_set", [])
        for name, cls in {**classes, ALL: None}.items():
            own = {f.name for f in dataclasses.fields(cls)} if cls is not None else fields
            entry = (self.user.get(kind) or {}).get(name) or {}
            for key in entry:
                if key == PER_DATASET:
                    for dataset in entry[key] or {}:
                        if datasets and dataset not in datasets:
                            raise BenchbdError(
                                f"unknown dataset '{dataset}' under {kind}.{name}.per_dataset in config file"
                                f"{did_you_mean(dataset, datasets)}; valid: {', '.join(sorted(datasets))}"
                            )
                        for param in (entry[key] or {}).get(dataset) or {}:
                            if param not in own:
                                raise BenchbdError(
                                    f"unknown parameter '{kind}.{name}.per_dataset.{dataset}.{param}' in config file"
                                    f"{did_you_mean(param, own)}"
                                )
                elif cls is not None and key not in own:
                    raise BenchbdError(
                        f"unknown parameter '{kind}.{name}.{key}' in config file{did_you_mean(key, own)}; valid: {', '.join(sorted(own))}"
                    )
            for path, _ in sets:
                if cls is not None and len(path) >= 2 and path[0] == name and path[1] not in own:
                    raise BenchbdError(
                        f"unknown parameter '{kind}.{name}.{path[1]}' in --set{did_you_mean(path[1], own)}; valid: {', '.join(sorted(own))}"
                    )


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise BenchbdError(f"{where} must not be empty")
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise BenchbdError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}")
        return build_params(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise BenchbdError(
                f"{where}={value!r} is invalid{did_you_mean(value, map(str, choices))}; valid: {', '.join(map(str, choices))}"
            )
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item_type, *_rest) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_type, where) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise BenchbdError(f"{where}={value!r} is invalid; valid: true, false")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and not float(value).is_integer()):
            raise BenchbdError(f"{where}={value!r} is invalid: must be {'an integer' if tp is int else 'a number'}")
        return tp(value)
    if tp is str:
        return str(value)
    return value


def build_params(cls: type, values: dict, where: str):
    """Typed, validated dataclass `cls` from a dict; unknown keys and bad values are one-line errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise BenchbdError(
                f"unknown parameter '{where}.{key}'{did_you_mean(key, fields)}; valid: {', '.join(sorted(fields)) or '(none)'}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise BenchbdError(f"{where}: {exc}") from exc


def as_dict(params: Any) -> dict:
    """A dataclass as plain JSON-able data (tuples as lists), for result rows and cache keys."""

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(params)) if dataclasses.is_dataclass(params) else plain(params)
