"""The detectors' table and the retuning controls, beside the ASR / CA grids.

Detector rows (`benchbd run --detectors ...`) carry `detector`; the grids leave them out and they
come here: per (dataset, budget), one line per attack, one column per detector, each cell AUROC /
TPR at the 5% holdout-FPR threshold / the ASR left behind the detector (means over seeds). The
retuning controls come from the `none` rows of a `--retune` run: the backdoored model and a model
trained on clean data, each retuned with the attack's five poisoned samples.
"""

from __future__ import annotations

import html

import pandas as pd

from .tables import _tex

DETECTION_FIELDS = ("auroc", "tpr_at_5fpr", "filtered_asr")


def detector_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of detector cells (sound ones); empty where there are none."""
    if rows.empty or "detector" not in rows:
        return rows.iloc[0:0]
    part = rows[rows["detector"].notna()]
    return part[part["status"].fillna("ok") != "failed"] if "status" in part else part


def without_detectors(rows: pd.DataFrame) -> pd.DataFrame:
    return rows if rows.empty or "detector" not in rows else rows[rows["detector"].isna()]


def _metric(row_metrics, key: str) -> float:
    value = row_metrics.get(key) if isinstance(row_metrics, dict) else None
    return float("nan") if value is None else float(value)


def _mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def _cell(values: list[float], specs: tuple[str, ...]) -> str:
    return " / ".join("–" if v != v else format(v, spec) for v, spec in zip(values, specs))


def _frames(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) per (dataset, budget) with detector rows."""
    found = detector_rows(rows)
    out = []
    for (dataset, budget), part in found.groupby(["dataset", "budget"], sort=False):
        part = part.sort_values("finished_at", kind="stable").drop_duplicates(["attack", "detector", "seed"], keep="last")
        attacks, detectors = list(dict.fromkeys(part["attack"])), sorted(set(part["detector"]))
        table = pd.DataFrame(index=attacks, columns=detectors, dtype=object).fillna("")
        for (attack, detector), cell in part.groupby(["attack", "detector"]):
            means = [_mean([_metric(m, k) for m in cell["metrics"]]) for k in DETECTION_FIELDS]
            seeds = len(cell)
            table.at[attack, detector] = _cell(means, (".3f", ".1f", ".1f")) + (f" (n={seeds})" if seeds > 1 else "")
        out.append((f"{dataset} (budget {budget}), detectors: AUROC / TPR at 5% holdout FPR / ASR behind the detector (%)", table))
    return out


def _controls(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) per (dataset, budget) of the retuning controls held by `none` rows."""
    if rows.empty or "metrics" not in rows:
        return []
    held = without_detectors(rows)
    held = held[[isinstance(m, dict) and "clean_model_asr_after_retuning" in m for m in held["metrics"]]]
    out = []
    for (dataset, budget), part in held.groupby(["dataset", "budget"], sort=False):
        part = part.sort_values("finished_at", kind="stable").drop_duplicates(["attack", "seed"], keep="last")
        table = pd.DataFrame(columns=["backdoored: ASR -> after retuning", "clean model: ASR -> after retuning"], dtype=object)
        for attack, cell in part.groupby("attack", sort=False):
            backdoored = [_mean([_metric(m, k) for m in cell["metrics"]]) for k in ("start_asr", "asr_after_retuning")]
            clean = [
                _mean([m["clean_model_retuning_asr"][0] for m in cell["metrics"]]),
                _mean([_metric(m, "clean_model_asr_after_retuning") for m in cell["metrics"]]),
            ]
            table.loc[attack] = [
                _cell(backdoored, (".1f", ".1f")).replace(" / ", " -> "),
                _cell(clean, (".1f", ".1f")).replace(" / ", " -> "),
            ]
        out.append((f"{dataset} (budget {budget}), retuning controls (Min et al.): ASR in % before -> after 5 epochs", table))
    return out


def _markdown(title: str, table: pd.DataFrame) -> str:
    lines = [f"### {title}", "", "| attack | " + " | ".join(table.columns) + " |", "|---|" + "---:|" * len(table.columns)]
    lines += [f"| {attack} | " + " | ".join(str(v) for v in values) + " |" for attack, values in zip(table.index, table.values)]
    return "\n".join(lines) + "\n"


def _latex(title: str, table: pd.DataFrame) -> str:
    def tex(text) -> str:
        return _tex(str(text)).replace("->", r"$\to$")

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex(title)}}}",
        r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
        r"\toprule",
    ]
    lines.append("attack & " + " & ".join(tex(c) for c in table.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [tex(attack) + " & " + " & ".join(tex(v) for v in values) + r" \\" for attack, values in zip(table.index, table.values)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _html(title: str, table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        f"<tr><th>{html.escape(str(a))}</th>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in values) + "</tr>"
        for a, values in zip(table.index, table.values)
    )
    caption = f"<caption>{html.escape(title)}</caption>"
    return f"<table>\n{caption}\n<thead><tr><th>attack</th>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>\n"


def render_extras(rows: pd.DataFrame, fmt: str) -> str:
    """The detectors' tables and the retuning controls in `fmt` (markdown, latex, html); '' when
    the rows hold neither."""
    write = {"markdown": _markdown, "latex": _latex, "html": _html}[fmt]
    return "\n".join(write(title, table) for title, table in [*_frames(rows), *_controls(rows)])


def detection_csv(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Tidy lines in the grids' CSV `columns`: group 'detectors', defense 'detector:NAME', one line
    per metric with its mean and std over seeds."""
    records = []
    for (dataset, budget, attack, detector), cell in detector_rows(rows).groupby(["dataset", "budget", "attack", "detector"], sort=False):
        for key in ("auroc", "tpr_at_5fpr", "fpr", "f1", "filtered_asr", "filtered_ca", "holdout_fpr"):
            values = pd.Series([_metric(m, key) for m in cell["metrics"]], dtype=float)
            records.append({"dataset": dataset, "budget": budget, "group": "detectors", "attack": attack, "defense": f"detector:{detector}",
                            "metric": key, "mean": round(values.mean(), 4), "std": round(values.std(), 4), "seeds": len(cell)})  # fmt: skip
    return pd.DataFrame(records).reindex(columns=columns)
