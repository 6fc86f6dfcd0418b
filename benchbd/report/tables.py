"""ASR / CA grids from result rows: one row per attack plus Average, a column pair per defense,
mean (and std over seeds) per cell; optionally the paper's numbers beside ours."""

from __future__ import annotations

import functools
import html
import json
import math
from dataclasses import dataclass, field
from importlib import resources

import pandas as pd

from ..errors import BenchbdError, unknown

FORMATS = ("markdown", "latex", "csv", "html")
METRICS = ("asr", "ca")
ROW_METRICS = ("ra", "der")  # further columns `--metrics` may add: RA from the rows, DER computed from them
AVERAGE = "Average"
BOLD_CA_SLACK = 5.0  # a defense competes for bold only within this many CA points of the row's best CA
GAP = 5.0  # differences from the paper above this many points are listed under the table
PLANTED = 50.0  # least ASR of the backdoored model for an attack to count as planted
NOT_PLANTED_MARK = "†"


def with_der(rows: pd.DataFrame) -> pd.DataFrame:
    """`der` per row, BackdoorBench's defense effectiveness rating in %:
    [max(0, ASR_bd - ASR_def) - max(0, CA_bd - CA_def) + 100] / 2, against the same seed's backdoored
    model: its `none` row (same dataset, budget, attack setting, seed), else the `start_asr` /
    `start_ca` a repair defense recorded; NaN for `none` itself and where neither is known."""
    rows = rows.copy()
    none = rows[rows["defense_name"] == "none"] if "defense_name" in rows else rows[rows["defense"] == "none"]
    reference = {(r.dataset, r.budget, r.attack, r.seed): (r.asr, r.ca) for r in none.itertuples()}
    ders = []
    for r in rows.itertuples():
        start = (r.metrics or {}) if isinstance(getattr(r, "metrics", None), dict) else {}
        base = reference.get((r.dataset, r.budget, r.attack, r.seed))
        if base is None and "start_asr" in start:
            base = (start["start_asr"], start["start_ca"])
        if base is None or (getattr(r, "defense_name", r.defense) == "none"):
            ders.append(float("nan"))
            continue
        asr_bd, ca_bd = base
        ders.append((max(0.0, asr_bd - r.asr) - max(0.0, ca_bd - r.ca) + 100) / 2)
    rows["der"] = ders
    return rows


# Documented deviations that touch a column (defense) or a row (attack): a footnote under every table
# that shows it (docs/deviations.md has each in full)
DEVIATION_NOTES = {
    ("defense", "anp"): "ANP prunes at the spec's fixed mask threshold 0.2; the official code and the paper pick the "
    "pruning point from a sweep with the test ASR in view, which benchbd never does.",
    ("defense", "nad"): "NAD's teacher and student train at lr 0.01: the official 0.1 collapses the clean accuracy of "
    "this protocol's Adam-trained models (16.7% measured).",
    ("attack", "blend"): "blend uses benchbd's own Hello-Kitty-style picture (the paper's is not redistributable): the "
    "same kind of trigger and ratio, not the same pixels.",
    ("attack", "adap_blend"): "adap_blend uses the same picture as blend (correlation 0.905 with the official one).",
}
GROUP_TITLES = {"paper": "the paper's defenses", "baseline": "baselines", "modern": "defenses since 2021"}


def defense_group(name: str) -> str:
    """A registered defense's group; 'other' for a name this process does not know (a plugin not loaded).
    Imports the registry (and torch): tables read the group their rows record instead."""
    from ..components import components

    registry = components()["defenses"]
    return registry.get(name).group if name in registry.names() else "other"


def recorded_groups(rows: pd.DataFrame) -> dict[str, str]:
    """Defense name -> group as the rows record it (`defense_group`), the registry's for older rows."""
    recorded = rows.get("defense_group", pd.Series(index=rows.index, dtype=object))
    groups = {}
    for name, group in zip(rows["defense_name"], recorded):
        if isinstance(group, str):
            groups.setdefault(name, group)
    return {name: groups.get(name) or defense_group(name) for name in _ordered(rows["defense_name"])}


def _group_parts(rows: pd.DataFrame, experiment: bool):
    """(group, rows) per group of defenses, each with the `none` rows as the reference column, in the
    order paper, baseline, modern, others; an experiment's columns stay one table."""
    groups = {name: group for name, group in recorded_groups(rows).items() if name != "none"}
    if experiment or not groups:
        yield "", rows
        return
    order = [g for g in ("paper", "baseline", "modern") if g in groups.values()]
    order += [g for g in dict.fromkeys(groups.values()) if g not in order]
    for group in order:
        members = {name for name, g in groups.items() if g == group} | {"none"}
        yield group, rows[rows["defense_name"].isin(members)]


def provenance_of(rows: pd.DataFrame, budget: str) -> dict:
    """Budget (with its rule), data hash, device, precision, seeds and commits of a table's rows."""

    def values(column: str, length: int | None = None) -> list[str]:
        return sorted({str(v)[:length] for v in rows[column].dropna()}) if column in rows else []

    from ..budgets import BUDGETS

    rule = next((e.description for e in BUDGETS.entries() if e.name == budget), "")
    return {
        "budget": budget,
        "rule": rule,
        "data_sha256": values("data_sha256", 12),
        "device": values("device"),
        "precision": values("precision") or ["fp32"],
        "seeds": int(rows["seed"].nunique()) if "seed" in rows else 0,
        "commits": values("git_commit", 7),
    }


def caption_line(grid: Grid) -> str:
    p = grid.provenance
    if not p:
        return ""
    budget = f"budget {p['budget']}" + (f" ({p['rule']})" if p.get("rule") else "")
    data = f"{grid.dataset}" + (f" (data_sha256 {', '.join(p['data_sha256'])})" if p["data_sha256"] else "")
    return (
        f"{budget}; {data}; {', '.join(p['device']) or 'device not recorded'}, {', '.join(p['precision'])}; "
        f"{p['seeds']} seed(s); commit(s) {', '.join(p['commits']) or '–'}. "
        f"Bold: per attack, the lowest ASR among the defenses whose CA is within {BOLD_CA_SLACK:.0f} points of the "
        "best CA of the row (`none` included); `none` is never bold."
    )


def backdoored_asr(part: pd.DataFrame) -> dict[str, float]:
    """Per attack label, the mean ASR of its backdoored models: the `none` cells (same dataset,
    budget, model), else the `start_asr` repair defenses record of the model they start from."""
    out = {}
    for attack, rows in part.groupby("attack", sort=False):
        none = rows[rows["defense_name"] == "none"]["asr"].dropna()
        if len(none):
            out[attack] = float(none.mean())
            continue
        if "metrics" not in rows:
            continue
        start = pd.to_numeric(rows["metrics"].map(lambda d: d.get("start_asr") if isinstance(d, dict) else None), errors="coerce")
        if start.notna().any():
            out[attack] = float(start.mean())
    return out


@functools.lru_cache(maxsize=None)
def paper_table(name: str = "main") -> pd.DataFrame:
    """The paper's numbers shipped with the package: 'main' (Tables 1, 2, 3, 11, 12) or
    'ablations' (Tables 4, 5, 7, 8, 9, 10). Read once; callers only select from it."""
    filename = {"main": "paper_main_tables.csv", "ablations": "paper_ablations.csv"}[name]
    with resources.files("benchbd.report").joinpath(filename).open() as f:
        return pd.read_csv(f, dtype={"setting": str, "experiment": str})


@functools.lru_cache(maxsize=None)
def paper_rows() -> pd.DataFrame:
    """Every shipped paper table in one frame (ablation rows carry `experiment` and `setting`)."""
    return pd.concat([paper_table("main"), paper_table("ablations")], ignore_index=True)


@dataclass
class Grid:
    """One (dataset, budget) grid: numeric means/stds and seed counts, indexed by attack, by defense."""

    dataset: str
    budget: str
    mean: dict[str, pd.DataFrame]  # metric -> attack x defense
    std: dict[str, pd.DataFrame]
    seeds: pd.DataFrame
    paper: dict[str, pd.DataFrame] | None = None
    extra: tuple[str, ...] = ()  # further metrics from the rows' `metrics` (e.g. epsilon of dp)
    caption: str = ""  # what the grid shows, for an experiment
    failed: frozenset = frozenset()  # (attack, defense) cells whose every row failed
    failures: tuple[str, ...] = ()  # one line per failed row: where, and why
    data_warnings: tuple[str, ...] = ()  # what the rows say about their data (a dataset of the wrong size)
    notes: tuple[str, ...] = ()  # how to read the grid (an Average over fewer attacks, no paper numbers)
    averaged_over: tuple[str, ...] = ()  # the attacks the Average row covers (those every column has)
    # attack -> the backdoored model's ASR where it is below PLANTED: the attack was not planted, so
    # a low ASR after a defense shows nothing; its cells are marked and left out of the Average
    not_planted: dict[str, float] = field(default_factory=dict)
    group: str = ""  # the defenses' group the table shows (paper, baseline, modern, a plugin's)
    provenance: dict = field(default_factory=dict)  # what produced the rows, for the caption and the CSV
    # metric -> attack x defense: how many of the cell's rows have it (the retuning check's numbers
    # may come from fewer seeds than the cell's ASR and CA)
    counts: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def metrics(self) -> tuple[str, ...]:
        return (*METRICS, *self.extra)

    @property
    def attacks(self) -> list[str]:
        return list(self.mean["asr"].index)

    @property
    def defenses(self) -> list[str]:
        return list(self.mean["asr"].columns)


def _ordered(values: pd.Series) -> list[str]:
    return list(dict.fromkeys(values))


def _paper_order(labels: list[str], base: dict[str, str], column: str) -> list[str]:
    """The paper's row/column order for its methods; others (plugins) after, as they first ran."""
    rank = {name: i for i, name in enumerate(_ordered(paper_table()[column]))}
    return sorted(labels, key=lambda label: rank.get(base[label], len(rank)))


def _flatten(params: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in (params or {}).items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def variant_labels(rows: pd.DataFrame, column: str, sections: tuple[str, ...]) -> pd.Series:
    """A component's name, plus the parameters that differ where one name ran with several settings:
    'tnr' alone, or 'tnr[rec_weight=1]' beside 'tnr[rec_weight=10]'. Seeds of one setting average."""
    labels = rows[column].copy()
    if "params" not in rows:
        return labels
    for name, group in rows.groupby(column):
        flat = {
            i: {k: v for s in sections for k, v in _flatten((group.at[i, "params"] or {}).get(s), f"{s}.").items()} for i in group.index
        }
        keys = sorted({k for f in flat.values() for k in f})
        differing = [k for k in keys if len({f.get(k) for f in flat.values()}) > 1]
        for i in group.index:
            if differing:
                labels[i] = f"{name}[" + ", ".join(f"{k.split('.', 1)[1]}={flat[i].get(k, 'null')}" for k in differing) + "]"
    return labels


def _select(rows: pd.DataFrame, column: str, chosen: list[str] | None) -> pd.DataFrame:
    if not chosen:
        return rows
    present = _ordered(rows[column])
    for value in chosen:
        if value not in present:
            raise unknown(column + " in results", value, present)
    return rows[rows[column].isin(chosen)]


def _experiment_rows(rows: pd.DataFrame, experiment, members: dict[str, list[str]]) -> pd.DataFrame:
    """The experiment's rows, one copy per column they belong to, labelled with the column's name.
    A column rerun with other settings keeps only its newest row per (attack, seed)."""
    parts = []
    for column in experiment.columns:
        part = rows[rows["cell_key"].isin(members.get(column.name, []))]
        parts.append(part.assign(defense=column.name, defense_name=column.defense))
    out = pd.concat(parts, ignore_index=True).drop_duplicates(["dataset", "budget", "defense", "attack", "seed"], keep="last")
    if out.empty:
        raise BenchbdError(f"no finished cells of experiment {experiment.name} yet: run `benchbd run --experiment {experiment.name}`")
    return out.assign(attack_name=out["attack"])


def _experiment_paper(experiment, attacks: list[str], paper_dataset: str, metric: str) -> pd.DataFrame:
    """The paper's values for each (attack, column) of an experiment."""
    paper = paper_rows()
    general = {k: v for k, v in experiment.paper.items() if k != "attacks"}
    renamed = experiment.paper.get("attacks") or {}
    table = pd.DataFrame(index=attacks, columns=[c.name for c in experiment.columns], dtype=float)
    for column in experiment.columns:
        wanted = {**general, **column.paper}
        if "setting" not in wanted and "defense" not in wanted:  # ablation rows by setting name, main rows by defense
            if "experiment" in wanted:
                wanted["setting"] = column.name
            else:
                wanted["defense"] = column.defense
        match = paper[paper["dataset"] == paper_dataset]
        for key, value in wanted.items():
            match = match[match[key].astype(str) == str(value)]
        values = dict(zip(match["attack"], match[metric]))
        for attack in attacks:
            table.at[attack, column.name] = values.get(renamed.get(attack, attack), float("nan"))
    return table


def build_grids(
    rows: pd.DataFrame,
    compare: str | None = None,
    datasets: list[str] | None = None,
    budgets: list[str] | None = None,
    extra: tuple[str, ...] = (),
    experiment=None,
    members: dict[str, list[str]] | None = None,
) -> list[Grid]:
    """One Grid per (dataset, budget). With `experiment`, only its cells, one column per setting."""
    if experiment is not None and not members:
        raise BenchbdError(
            f"no results of experiment {experiment.name} in this results directory: run `benchbd run --experiment {experiment.name}` first"
        )
    from .detection import without_detectors

    rows = without_detectors(rows)  # detector cells have a table of their own (report/detection.py)
    if rows.empty:
        raise BenchbdError("no results yet: run `benchbd run ...` first (or pass --results DIR)")
    if "metrics" in rows and any(isinstance(m, dict) and "asr_after_retuning" in m for m in rows["metrics"]):
        extra = tuple(dict.fromkeys([*extra, "asr_after_retuning", "ca_after_retuning"]))  # --retune rows: beside ASR and CA, always
    known = sorted({k for d in (rows["metrics"] if "metrics" in rows else []) if isinstance(d, dict) for k in d})
    for m in extra:
        if m not in known and m not in ROW_METRICS:
            raise unknown("--extra metric", m, known or ["(the rows hold no extra metrics)"])
    rows = rows.sort_values("finished_at", kind="stable")
    rows = _select(_select(rows, "dataset", datasets), "budget", budgets)
    if experiment is not None:
        rows = _experiment_rows(rows, experiment, members or {})
        extra = tuple(dict.fromkeys([*experiment.extra, *extra]))
    paper = paper_table() if compare == "paper" else None
    grids = []
    paper_names = {
        key: (group["paper_dataset"].dropna().iloc[0] if "paper_dataset" in group and group["paper_dataset"].notna().any() else key[0])
        for key, group in rows.groupby(["dataset", "budget"], sort=False)
    }
    for (dataset, budget), whole in rows.groupby(["dataset", "budget"], sort=False):
        if experiment is None:
            whole = whole.assign(
                attack_name=whole["attack"],
                defense_name=whole["defense"],
                attack=variant_labels(whole, "attack", ("attack",)),
                defense=variant_labels(whole, "defense", ("defense", "train", "dataset")),
            )
            # one setting and seed run again (e.g. by a newer benchbd version): the newest row counts
            whole = whole.drop_duplicates(["attack", "defense", "seed"], keep="last")
        for group, part in _group_parts(whole, experiment is not None):
            base_attack = dict(zip(part["attack"], part["attack_name"]))
            base_defense = dict(zip(part["defense"], part["defense_name"]))
            if experiment is None:
                attacks = _paper_order(_ordered(part["attack"]), base_attack, "attack")
                defenses = _paper_order(_ordered(part["defense"]), base_defense, "defense")
            else:
                attacks = [a for a in experiment.attacks if a in base_attack] + [
                    a for a in _ordered(part["attack"]) if a not in experiment.attacks
                ]
                defenses = [c.name for c in experiment.columns if c.name in base_defense]
            status = part["status"].fillna("ok") if "status" in part else pd.Series("ok", index=part.index)
            ok_cells = set(zip(part.loc[status != "failed", "attack"], part.loc[status != "failed", "defense"]))
            failed = frozenset(set(zip(part.loc[status == "failed", "attack"], part.loc[status == "failed", "defense"])) - ok_cells)
            bad = part[status == "failed"]
            failures = tuple(
                f"{a} / {d} / seed {seed}: {error}"
                for a, d, seed, error in zip(bad["attack"], bad["defense"], bad["seed"], bad.get("error", pd.Series("", index=bad.index)))
            )
            part = part[status != "failed"].copy()
            if "der" in extra:
                part = with_der(part)
            for m in extra:
                if m in ROW_METRICS:
                    part[m] = pd.to_numeric(part[m], errors="coerce") if m in part else float("nan")
                    continue
                values = part["metrics"].map(lambda d, m=m: (d or {}).get(m)) if "metrics" in part else float("nan")
                part[m] = pd.to_numeric(values, errors="coerce")
            grouped = part.groupby(["attack", "defense"])
            metrics = (*METRICS, *extra)
            mean = {m: grouped[m].mean().unstack().reindex(index=attacks, columns=defenses) for m in metrics}
            std = {m: grouped[m].std(ddof=1).unstack().reindex(index=attacks, columns=defenses) for m in metrics}
            seeds = grouped["seed"].nunique().unstack().reindex(index=attacks, columns=defenses)
            counts = {m: grouped[m].count().unstack().reindex(index=attacks, columns=defenses) for m in metrics}
            averaged = len(attacks) > 1  # an Average row over one attack would only repeat it
            not_planted = {a: v for a, v in backdoored_asr(part).items() if v < PLANTED}
            # Averages over the planted attacks every column has, so no column's mean silently covers fewer attacks
            complete = [a for a in attacks if a not in not_planted and all(mean[m].loc[a].notna().all() for m in METRICS)]
            left_out = [a for a in attacks if a not in complete and a not in not_planted]
            if averaged:
                for m in metrics:
                    mean[m].loc[AVERAGE] = mean[m].loc[complete].mean(axis=0) if complete else float("nan")
                    std[m].loc[AVERAGE] = float("nan")
            caption = f"{experiment.reproduces or experiment.name}: {experiment.title}" if experiment is not None else ""
            warned = part["data_warnings"].dropna() if "data_warnings" in part else pd.Series(dtype=object)
            data_warnings = tuple(dict.fromkeys(w for ws in warned if isinstance(ws, list) for w in ws))
            notes = []
            if not_planted:
                notes.append(
                    f"{NOT_PLANTED_MARK} not planted: without a defense the backdoored model's ASR is below {PLANTED:.0f} ("
                    + ", ".join(f"{a} {v:.2f}" for a, v in not_planted.items())
                    + "), so a low ASR after a defense shows nothing; "
                    + ("left out of the Average." if averaged else "read these cells with care.")
                )
            shown = [("attack", a) for a in dict.fromkeys(base_attack[x] for x in attacks if x in base_attack)]
            shown += [("defense", d) for d in dict.fromkeys(base_defense[x] for x in defenses)]
            notes += [f"Note: {DEVIATION_NOTES[key]}" for key in shown if key in DEVIATION_NOTES]
            if averaged and left_out:
                notes.append(
                    f"Average: over the {len(complete)} attack(s) every column has; left out (a cell failed or is missing): "
                    f"{', '.join(left_out)}"
                    if complete
                    else "Average: n/a, no attack has a result in every column"
                )
            grid = Grid(
                dataset,
                budget,
                mean,
                std,
                seeds,
                counts=counts,
                extra=tuple(extra),
                caption=caption,
                failed=failed,
                failures=failures,
                data_warnings=data_warnings,
                notes=tuple(notes),
                averaged_over=tuple(complete) if averaged else (),
                not_planted=not_planted,
            )
            if compare == "paper":
                paper_name = paper_names.get((dataset, budget), dataset)
                if experiment is None and not (paper["table"].isin([1, 2, 3]) & (paper["dataset"] == paper_name)).any():
                    grid.notes += (f"The paper has no numbers for dataset '{paper_name}': nothing to compare with.",)
                grid.paper = {}
                paper_metrics = METRICS if experiment is None else [m for m in metrics if m in paper_rows()]
                for m in paper_metrics:
                    if experiment is not None:
                        table = _experiment_paper(experiment, attacks, paper_name, m)
                    else:
                        main = paper[paper["table"].isin([1, 2, 3]) & (paper["dataset"] == paper_name)]
                        table = main[main["attack"] != "average"].pivot_table(index="attack", columns="defense", values=m)
                        table = table.reindex(index=[base_attack[a] for a in attacks], columns=[base_defense[d] for d in defenses])
                        table.index, table.columns = attacks, defenses
                    if averaged:  # the paper's average over the same attacks as ours, so the Average rows compare like with like
                        table.loc[AVERAGE] = table.loc[complete].mean(axis=0) if complete else float("nan")
                    grid.paper[m] = table
            grid.group, grid.provenance = group, provenance_of(part, budget)
            grids.append(grid)
    return grids


def _fmt(mean: float, std: float, n: float, spec: str = ".2f") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:{spec}} ± {std:{spec}}" if n and n > 1 and not math.isnan(std) else f"{mean:{spec}}"


def _spec(metric: str) -> str:
    return ".2f" if metric in METRICS + ROW_METRICS else ".4g"  # percentages; other metrics (epsilon, recon MSE) by significant digits


def bold_defenses(grid: Grid, attack: str) -> set[str]:
    """The bold rule: among the defenses (not `none`) whose CA is within BOLD_CA_SLACK of the best CA
    of the row (`none` included), those with the lowest ASR (ties at 2 decimals included)."""
    ca, asr = grid.mean["ca"].loc[attack], grid.mean["asr"].loc[attack]
    if ca.dropna().empty:
        return set()
    close = [d for d in grid.defenses if d != "none" and pd.notna(ca[d]) and pd.notna(asr[d]) and ca[d] >= ca.max() - BOLD_CA_SLACK]
    if not close:
        return set()
    lowest = min(round(asr[d], 2) for d in close)
    return {d for d in close if round(asr[d], 2) == lowest}


def _n(grid: Grid, attack: str, defense: str) -> int:
    n = grid.seeds.at[attack, defense] if attack in grid.seeds.index else 1
    return 0 if pd.isna(n) else int(n)


def _metric_n(grid: Grid, attack: str, defense: str, metric: str) -> int:
    """How many rows of the cell have `metric` (the cell's seed count where not counted)."""
    n = _n(grid, attack, defense)
    table = grid.counts.get(metric)
    if table is None or attack not in table.index:
        return n
    k = table.at[attack, defense]
    return n if pd.isna(k) else min(int(k), n)


def cell_values(grid: Grid, attack: str, defense: str) -> list[str]:
    """Our numbers of one cell, one text per shown metric ('failed' for a cell whose rows all failed);
    a metric that fewer of the cell's seeds have says how many ('8.70 [n=1]' in an n=2 cell)."""
    if (attack, defense) in grid.failed:
        return ["failed"]
    n = _n(grid, attack, defense)
    values = []
    for m in grid.metrics:
        k = _metric_n(grid, attack, defense, m)
        text = _fmt(grid.mean[m].at[attack, defense], grid.std[m].at[attack, defense], k, _spec(m))
        values.append(text + (f" [n={k}]" if 0 < k < n else ""))
    return values


def paper_values(grid: Grid, attack: str, defense: str) -> list[str] | None:
    """The paper's numbers of one cell (ASR, CA), or None where it has none."""
    if grid.paper is None:
        return None
    values = [grid.paper[m].at[attack, defense] if m in grid.paper else float("nan") for m in METRICS]
    return None if all(pd.isna(v) for v in values) else [("–" if pd.isna(v) else f"{v:.2f}") for v in values]


def cell_text(grid: Grid, attack: str, defense: str, bold: set[str], strong=lambda t: f"**{t}**") -> str:
    """'ASR / CA' (and further metrics), ± std and n with several seeds, the paper's in parentheses."""
    values = cell_values(grid, attack, defense)
    if defense in bold and values[0] not in ("–", "failed"):
        values[0] = strong(values[0])
    text = " / ".join(values)
    n = _n(grid, attack, defense)
    if n > 1:
        text += f" (n={n})"
    paper = paper_values(grid, attack, defense)
    return text + (f" ({' / '.join(paper)})" if paper else "")


def gap_anchor(grid: Grid, attack: str, defense: str) -> str:
    return f"gap-{grid.dataset}-{attack}-{defense}".replace("_", "-").replace("[", "").replace("]", "").replace("=", "-").lower()


def gaps(grid: Grid) -> list[tuple[str, str, str]]:
    """(attack, defense, text) for every cell whose ASR or CA differs from the paper's by more than GAP."""
    if grid.paper is None:
        return []
    out = []
    for attack in grid.attacks:
        if attack == AVERAGE or attack in grid.not_planted:
            continue
        for defense in grid.defenses:
            if defense == "none" and grid.group not in ("", "paper"):
                continue  # listed once, under the paper's defenses
            parts = []
            for m in METRICS:
                ours, theirs = grid.mean[m].at[attack, defense], grid.paper[m].at[attack, defense]
                if pd.notna(ours) and pd.notna(theirs) and abs(ours - theirs) > GAP:
                    parts.append(f"{m.upper()} {ours:.2f} vs {theirs:.2f} ({ours - theirs:+.2f})")
            if parts:
                out.append((attack, defense, ", ".join(parts)))
    return out


def title(grid: Grid) -> str:
    what = GROUP_TITLES.get(grid.group, f"group {grid.group}" if grid.group else "")
    shown = " / ".join(m.upper() if m in METRICS + ROW_METRICS else m for m in grid.metrics)
    title = f"{grid.dataset} (budget {grid.budget})" + (f", {what}" if what else "") + f": {shown}" + (" in %")
    if grid.paper is not None:
        title += " (the paper's ASR / CA in parentheses)"
    return f"{grid.caption}. {title}" if grid.caption else title


def _row_label(grid: Grid, attack: str) -> str:
    return f"{attack} {NOT_PLANTED_MARK}" if attack in grid.not_planted else attack


def _notes(grid: Grid, warning: str = "Warning") -> list[str]:
    return [*grid.notes, *(f"{warning}: {w}" for w in grid.data_warnings)]


def to_markdown(grid: Grid, link: str = "docs/reproducing.md") -> str:
    lines = [f"### {title(grid)}", ""]
    if grid.provenance:
        lines += [caption_line(grid), ""]
    lines += ["| attack | " + " | ".join(grid.defenses) + " |", "|---|" + "---:|" * len(grid.defenses)]
    for attack in grid.attacks:
        bold = bold_defenses(grid, attack)
        lines.append(f"| {_row_label(grid, attack)} | " + " | ".join(cell_text(grid, attack, d, bold) for d in grid.defenses) + " |")
    found = gaps(grid)
    if found:
        lines += ["", f"Gaps over {GAP:.0f} points from the paper (each read in {link}):"]
        lines += [f"- [{a} x {d}]({link}#{gap_anchor(grid, a, d)}): {text}" for a, d, text in found]
    if grid.failures:
        lines += ["", "Failed cells (the next `benchbd run` retries them):", *(f"- {line}" for line in grid.failures)]
    lines += [f"\n{note}" for note in _notes(grid, "**Warning**")]
    return "\n".join(lines) + "\n"


TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    """Every LaTeX special character escaped."""
    return "".join(TEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(grid: Grid) -> str:
    """Two (or more) sub-columns per defense under a multicolumn header: ASR, CA, further metrics."""
    k = len(grid.metrics)
    out = [
        f"% {title(grid)}",
        *([f"% {caption_line(grid)}"] if grid.provenance else []),
        r"\begin{tabular}{l" + "r" * (k * len(grid.defenses)) + "}",
        r"\toprule",
        "Attack & " + " & ".join(rf"\multicolumn{{{k}}}{{c}}{{{_tex(d)}}}" for d in grid.defenses) + r" \\",
        " & " + " & ".join(_tex(m.upper() if m in METRICS + ROW_METRICS else m) for _ in grid.defenses for m in grid.metrics) + r" \\",
        r"\midrule",
    ]
    for attack in grid.attacks:
        if attack == AVERAGE:
            out.append(r"\midrule")
        bold = bold_defenses(grid, attack)
        cells = []
        for d in grid.defenses:
            values = cell_values(grid, attack, d) if (attack, d) not in grid.failed else ["failed"] + ["--"] * (k - 1)
            paper = paper_values(grid, attack, d) or []
            for i, text in enumerate(values):
                text = text.replace("±", r"$\pm$").replace("–", "--")
                if i == 0 and d in bold and text not in ("--", "failed"):
                    text = rf"\textbf{{{text}}}"
                if i < len(paper) and paper[i] != "–":
                    text += f" ({paper[i]})"
                cells.append(text)
        label = _tex(_row_label(grid, attack)).replace(NOT_PLANTED_MARK, r"$^\dagger$")
        out.append(f"{label} & " + " & ".join(cells) + r" \\")
    out += [
        r"\bottomrule",
        r"\end{tabular}",
        *(f"% gap over {GAP:.0f} points: {a} x {d}: {text}" for a, d, text in gaps(grid)),
        *(f"% failed: {line}" for line in grid.failures),
        *(f"% {note}".replace(NOT_PLANTED_MARK, "dagger") for note in _notes(grid, "warning")),
    ]
    return "\n".join(out) + "\n"


def grid_id(grid: Grid) -> str:
    """An HTML id for the grid (the report's table of contents links to it)."""
    return "grid-" + "-".join(x for x in (grid.dataset, grid.budget, grid.group) if x).replace(":", "-").replace("/", "-").replace(" ", "-")


def asr_colour(asr: float) -> str:
    """The heat map's background for an ASR in %: green at 0, through yellow, red at 100."""
    if pd.isna(asr):
        return "#f4f4f4"
    return f"hsl({120 - 1.2 * min(max(asr, 0.0), 100.0):.0f}, 70%, 82%)"


def to_html(grid: Grid) -> str:
    """The grid as a heat map: each cell coloured by its ASR, its numbers as text."""
    head = "".join(f"<th>{html.escape(d)}</th>" for d in grid.defenses)
    body = []
    for attack in grid.attacks:
        bold = bold_defenses(grid, attack)
        cells = []
        for d in grid.defenses:
            text = html.escape(cell_text(grid, attack, d, bold, strong=lambda t: f"\x00{t}\x01"))
            text = text.replace("\x00", "<b>").replace("\x01", "</b>")
            cells.append(f'<td style="background:{asr_colour(grid.mean["asr"].at[attack, d])}">{text}</td>')
        body.append(f"<tr><th>{html.escape(_row_label(grid, attack))}</th>{''.join(cells)}</tr>")
    notes = "".join(f"<p>{html.escape(n)}</p>\n" for n in grid.notes)
    notes += "".join(f"<p><b>Warning</b>: {html.escape(w)}</p>\n" for w in grid.data_warnings)
    gap_list = "".join(f"<li>{html.escape(f'{a} x {d}: {t}')}</li>" for a, d, t in gaps(grid))
    if gap_list:
        notes = f"<p>Gaps over {GAP:.0f} points from the paper:</p><ul>{gap_list}</ul>\n" + notes
    caption = html.escape(title(grid)) + (f'<br><span class="prov">{html.escape(caption_line(grid))}</span>' if grid.provenance else "")
    return (
        f'<table id="{grid_id(grid)}">\n<caption>{caption}</caption>\n<thead><tr><th>attack</th>{head}</tr></thead>\n'
        f"<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n" + notes
    )


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval95(mean: float, std: float, n: int) -> tuple[float, float]:
    """Student's t interval of the mean (NaN with fewer than two seeds)."""
    if not n or n < 2 or pd.isna(std):
        return float("nan"), float("nan")
    half = T_975.get(n - 1, 1.96) * std / math.sqrt(n)
    return mean - half, mean + half


CSV_COLUMNS = ["dataset", "budget", "group", "attack", "defense", "metric", "mean", "std", "seeds", "ci95_low", "ci95_high", "paper",
               "diff", "failed", "not_planted", "averaged_over", "data_sha256", "device", "precision", "commits"]  # fmt: skip


def to_csv(grids: list[Grid]) -> str:
    """Tidy: one line per (dataset, budget, group, attack, defense, metric), with mean, std, seed count,
    95% interval, the paper's value and the difference, and the rows' provenance."""
    records = []
    for grid in grids:
        p = grid.provenance
        for attack in grid.attacks:
            for defense in grid.defenses:
                for m in grid.metrics:
                    n = _metric_n(grid, attack, defense, m)
                    mean, std = grid.mean[m].at[attack, defense], grid.std[m].at[attack, defense]
                    low, high = interval95(mean, std, n)
                    paper = grid.paper[m].at[attack, defense] if grid.paper is not None and m in grid.paper else float("nan")
                    records.append(
                        {
                            "dataset": grid.dataset,
                            "budget": grid.budget,
                            "group": grid.group,
                            "attack": attack,
                            "defense": defense,
                            "metric": m,
                            "mean": mean,
                            "std": std,
                            "seeds": n if attack != AVERAGE else None,
                            "ci95_low": low,
                            "ci95_high": high,
                            "paper": paper,
                            "diff": mean - paper,
                            "failed": (attack, defense) in grid.failed,
                            "not_planted": attack in grid.not_planted,
                            "averaged_over": ";".join(grid.averaged_over) if attack == AVERAGE else "",
                            "data_sha256": ";".join(p.get("data_sha256", [])),
                            "device": ";".join(p.get("device", [])),
                            "precision": ";".join(p.get("precision", [])),
                            "commits": ";".join(p.get("commits", [])),
                        }
                    )
    frame = pd.DataFrame(records)
    numeric = ["mean", "std", "ci95_low", "ci95_high", "paper", "diff"]
    frame[numeric] = frame[numeric].astype(float).round(4)
    frame["seeds"] = frame["seeds"].astype("Int64")  # a count: 1, not 1.0 (empty where no seed ran)
    return frame.to_csv(index=False)


def render(
    rows: pd.DataFrame,
    fmt: str = "markdown",
    compare: str | None = None,
    datasets=None,
    budgets=None,
    extra=(),
    experiment=None,
    members=None,
    link: str = "docs/reproducing.md",
) -> str:
    """`link`: where the gaps' paragraphs are, relative to where the markdown goes."""
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    if compare not in (None, "paper"):
        raise unknown("--compare source", compare, ["paper"])
    from .detection import detection_csv, detector_rows, render_extras, without_detectors

    chosen = _select(_select(rows, "dataset", datasets), "budget", budgets) if not rows.empty else rows
    detected = detector_rows(chosen) if experiment is None else chosen.iloc[0:0]
    only_detectors = not detected.empty and without_detectors(rows).empty
    grids = [] if only_detectors else build_grids(rows, compare, datasets, budgets, tuple(extra), experiment, members)
    if fmt == "csv":
        lines = [to_csv(grids)] if grids else []
        if not detected.empty:
            lines.append(detection_csv(detected, CSV_COLUMNS).to_csv(index=False, header=not grids))
        return "".join(lines)
    render_one = {"markdown": lambda g: to_markdown(g, link), "latex": to_latex, "html": to_html}[fmt]
    text = "\n".join([*(render_one(g) for g in grids), *([render_extras(chosen, fmt)] if experiment is None else [])]).rstrip("\n") + "\n"
    return html_page("benchbd results", text) if fmt == "html" else text


HTML_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
caption { font-weight: 600; text-align: left; padding: 0.4em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; font-variant-numeric: tabular-nums; }
th:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; }
tbody tr:last-child th, tbody tr:last-child td { border-bottom: 2px solid #444; }
p { max-width: 60em; }
"""


def html_page(title: str, body: str, style: str = "") -> str:
    """A standalone, styled HTML document (no network needed to show it); `style` adds CSS rules."""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{HTML_STYLE}{style}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
