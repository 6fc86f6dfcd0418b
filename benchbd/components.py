"""The built-in registries in one place, imported lazily (so `benchbd --help` stays fast), and the
one-line summaries `benchbd list` prints and the details `benchbd show KIND NAME` adds.

The summaries of the built-in components are also kept in `listing.json` beside this file, so
`benchbd list` answers without importing them (and torch); a test holds the file to the registry,
and `python -m benchbd.components` rewrites it. With plugins (`--plugin`, or installed entry
points) `list` imports everything and lists from the registries."""

from __future__ import annotations

import json
from importlib import resources

LIST_KINDS = ("attacks", "defenses", "detectors", "datasets", "models", "budgets")
NEED_WORDS = {"POISONED_TRAIN": "poisoned", "HOLDOUT": "holdout", "BACKDOORED_MODEL": "model"}


def components() -> dict:
    """kind -> registry, after importing the built-in components (their registration)."""
    from . import attacks, defenses, detectors, models  # noqa: F401
    from .budgets import BUDGETS
    from .data import DATASETS

    return {
        "attacks": attacks.ATTACKS,
        "defenses": defenses.DEFENSES,
        "detectors": detectors.DETECTORS,
        "datasets": DATASETS,
        "models": models.MODELS,
        "budgets": BUDGETS,
    }


def needs_text(needs) -> str:
    """A defense's needs in words; 'no data' where it needs no training or clean data (CLP)."""
    from .defenses import Need

    text = ", ".join(sorted(n.value for n in needs))
    if not needs & {Need.HOLDOUT, Need.POISONED_TRAIN}:
        text = f"{text} (no data)" if text else "no data"
    return text


def needs_short(needs) -> str:
    """A defense's needs in a word each ('model+holdout'); 'model, no data' where it needs no training or clean data (CLP)."""
    words = sorted(NEED_WORDS[n.name] for n in needs)
    text = "+".join(words) or "nothing"
    return text + (", no data" if words == ["model"] else "")


def summary_fields(kind: str, entry) -> list[str]:
    """The short columns of one registered item, before its description."""
    name = entry.name + (":PATH" if kind == "datasets" and getattr(entry.obj, "takes_path", False) else "")
    if kind == "attacks":
        opt_in = entry.obj.group == "paper" and not entry.obj.in_all  # lba_k, clean: named, not in 'all'
        return [name, entry.obj.group + (" (opt-in)" if opt_in else ""), entry.obj.label_kind().split()[0]]
    if kind == "defenses":
        return [name, entry.obj.group, needs_short(entry.obj.needs)]
    if kind == "detectors":
        return [name, f"{entry.obj(entry.obj.Params()).forward_passes()} passes"]
    return [name]


def summaries(kind: str, registry, built_in_only: bool = False) -> list[tuple[list[str], str]]:
    """(short columns, first line of the description) per registered item, in registry order;
    `built_in_only`: leave out what plugins registered in this process."""
    entries = [e for e in registry.entries() if not built_in_only or e.module.startswith("benchbd.")]
    return [(summary_fields(kind, e), e.description.split("\n")[0]) for e in entries]


def summary_index() -> dict[str, list]:
    """Every kind's summaries of the built-in components: what `listing.json` holds."""
    registries = components()
    return {kind: [[f, d] for f, d in summaries(kind, registries[kind], built_in_only=True)] for kind in LIST_KINDS}


def index_text(index: dict[str, list]) -> str:
    """`listing.json`'s text: one item per line, so a change to one component is a one-line diff."""
    kinds = [
        f"{json.dumps(kind)}: [\n" + ",\n".join(f"  {json.dumps(row, ensure_ascii=False)}" for row in rows) + "\n ]"
        for kind, rows in index.items()
    ]
    return "{\n " + ",\n ".join(kinds) + "\n}\n"


def stored_summaries(kind: str) -> list[tuple[list[str], str]] | None:
    """The built-in components' summaries from `listing.json`; None when it cannot be read."""
    try:
        index = json.loads(resources.files("benchbd").joinpath("listing.json").read_text())
        return [(list(fields), description) for fields, description in index[kind]]
    except (OSError, ValueError, KeyError):
        return None


def listing(kind: str, rows: list[tuple[list[str], str]], width: int) -> list[str]:
    """One line per item, columns aligned, the description cut to `width` with an ellipsis."""
    widths = [max(len(fields[i]) for fields, _ in rows) for i in range(len(rows[0][0]))] if rows else []
    lines = []
    for fields, description in rows:
        line = "  ".join(f.ljust(w) for f, w in zip(fields, widths)) + "  " + description
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return lines


def details(kind: str, entry) -> list[str]:
    """What `list` leaves out, for `benchbd show KIND NAME`: aliases, needs, when it acts, source."""
    out = [f"{entry.name}: {entry.description}"]
    if entry.aliases:
        out.append(f"aliases: {', '.join(entry.aliases)}")
    if kind == "defenses":
        out += [
            f"group: {entry.obj.group}" + ("" if entry.obj.group == "paper" else " (not in 'all')"),
            f"needs: {needs_text(entry.obj.needs)}",
            f"acts: {entry.obj.scenario()}",
            f"source: {entry.obj.source}",
        ]
    if kind == "detectors":
        out += [
            f"extra forward passes per input: {entry.obj(entry.obj.Params()).forward_passes()} (at the defaults)",
            f"source: {entry.obj.source}",
        ]
    if kind == "attacks":
        out += [
            f"group: {entry.obj.group}" + ("" if entry.obj.in_all else " (not in 'all')"),
            f"labels: {entry.obj.label_kind()}-label",
            f"source: {entry.obj.source}",
        ]
    return out


if __name__ == "__main__":  # python -m benchbd.components: rewrite listing.json from the registry
    path = resources.files("benchbd").joinpath("listing.json")
    path.write_text(index_text(summary_index()))
    print(f"wrote {path}")
