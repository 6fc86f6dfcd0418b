import re

import pandas as pd
import pytest
import torch

from benchbd.errors import BenchbdError
from benchbd.report.tables import build_grids, render
from benchbd.runner import Cache


def test_cache_hit_and_corrupt_entry_is_rebuilt(tmp_path):
    warnings = []
    cache = Cache(tmp_path, warnings.append)
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(5.0)}

    identity = {"attack": "x", "seed": 0}
    art, hit = cache.get_or_build("poisoned", identity, build)
    assert not hit and len(calls) == 1
    art, hit = cache.get_or_build("poisoned", identity, build)
    assert hit and torch.equal(art["w"], torch.arange(5.0)) and len(calls) == 1 and not warnings
    (path,) = (tmp_path / "poisoned").glob("*.pt")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    art, hit = cache.get_or_build("poisoned", identity, build)
    assert not hit and len(calls) == 2 and "corrupt" in warnings[0] and str(path) in warnings[0]
    assert cache.get_or_build("poisoned", identity, build)[1]
    assert not cache.get_or_build("poisoned", {"attack": "x", "seed": 1}, build)[1]


def rows(values):
    return pd.DataFrame(
        [
            {
                "dataset": "cifar10",
                "paper_dataset": "cifar10",
                "budget": "fast",
                "attack": a,
                "defense": d,
                "seed": s,
                "asr": asr,
                "ca": ca,
                "finished_at": f"2026-01-01T00:00:{i:02d}",
            }
            for i, (a, d, s, asr, ca) in enumerate(values)
        ]
    )


DATA = rows(
    [
        ("badnet_grid", "none", 0, 100.0, 88.0),
        ("badnet_grid", "none", 1, 98.0, 90.0),
        ("badnet_grid", "tnr", 0, 2.0, 80.0),
        ("badnet_grid", "tnr", 1, 4.0, 82.0),
        ("blend", "none", 0, 99.0, 87.0),
        ("blend", "tnr", 0, 10.0, 85.0),
    ]
)


def test_grid_means_stds_and_average():
    (grid,) = build_grids(DATA)
    assert grid.attacks == ["badnet_grid", "blend", "Average"] and grid.defenses == ["none", "tnr"]
    assert grid.mean["asr"].at["badnet_grid", "none"] == 99.0
    assert grid.std["asr"].at["badnet_grid", "none"] == pytest.approx(2**0.5)
    assert grid.mean["ca"].at["Average", "tnr"] == pytest.approx((81.0 + 85.0) / 2)
    md = render(DATA, "markdown")
    assert "| attack | none | tnr |" in md  # one column per defense, ASR / CA in each cell
    # badnet_grid's tnr is 8 CA points below none: not bold; blend's is within 5: bold
    assert "| badnet_grid | 99.00 ± 1.41 / 89.00 ± 1.41 (n=2) | 3.00 ± 1.41 / 81.00 ± 1.41 (n=2) |" in md
    assert "| blend | 99.00 / 87.00 | **10.00** / 85.00 |" in md


def bold_rows(tnr_ca: float) -> pd.DataFrame:
    """none at CA 90; ft removes the backdoor at CA 86; tnr removes it better at `tnr_ca`."""
    return rows([("blend", "none", 0, 99.0, 90.0), ("blend", "ft", 0, 8.0, 86.0), ("blend", "tnr", 0, 1.0, tnr_ca)])


def test_bold_is_the_lowest_asr_within_five_ca_points_of_the_best_and_never_none():
    from benchbd.report.tables import bold_defenses

    (paper, baseline) = build_grids(bold_rows(85.5))  # tnr within 5 points of none's 90: the lowest ASR wins
    assert bold_defenses(paper, "blend") == {"tnr"} and bold_defenses(baseline, "blend") == {"ft"}
    (paper, _) = build_grids(bold_rows(80.0))  # tnr 10 points below: no defense of its table is bold
    assert bold_defenses(paper, "blend") == set()
    assert "**" not in render(bold_rows(80.0), "markdown").split("baselines")[0]
    md = render(bold_rows(85.5), "markdown")
    assert "| blend | 99.00 / 90.00 | **1.00** / 85.50 |" in md and "within 5 points of the best CA" in md


def test_one_table_per_group_with_none_as_reference():
    (paper, baseline) = build_grids(bold_rows(85.5))
    assert (paper.group, paper.defenses) == ("paper", ["none", "tnr"]) and (baseline.group, baseline.defenses) == (
        "baseline",
        ["none", "ft"],
    )
    md = render(bold_rows(85.5), "markdown")
    assert "the paper's defenses: ASR / CA in %" in md and "baselines: ASR / CA in %" in md


def test_gaps_over_five_points_are_listed_and_linked():
    md = render(DATA, "markdown", "paper")
    # blend x tnr: CA 85.00 against the paper's 83.82 (no gap); ASR 10.00 against 10.59 (none)
    assert "| blend | 99.00 / 87.00 (99.11 / 88.95) | **10.00** / 85.00 (10.59 / 83.82) |" in md
    assert "- [badnet_grid x none](docs/reproducing.md#gap-cifar10-badnet-grid-none)" not in md  # 89 vs 88.36: no gap
    gapped = render(DATA.assign(ca=DATA["ca"] - 10), "markdown", "paper")
    assert "- [blend x tnr](docs/reproducing.md#gap-cifar10-blend-tnr): CA 75.00 vs 83.82 (-8.82)" in gapped


def test_seeds_give_mean_std_n_everywhere_and_a_95_interval_in_the_tidy_csv():
    import io

    frame = pd.read_csv(io.StringIO(render(DATA, "csv")))
    assert set(frame["metric"]) == {"asr", "ca"} and {"ci95_low", "ci95_high", "seeds", "group", "data_sha256"} <= set(frame.columns)
    line = frame[(frame["attack"] == "badnet_grid") & (frame["defense"] == "tnr") & (frame["metric"] == "asr")].iloc[0]
    half = 12.706 * 2**0.5 / 2**0.5  # t(0.975, 1) x std / sqrt(2), std = sqrt(2)
    assert (line["mean"], line["seeds"]) == (3.0, 2) and line["ci95_low"] == pytest.approx(3.0 - half, abs=1e-3)
    tex = render(DATA, "latex")
    assert r"3.00 $\pm$ 1.41" in tex and "(n=2)" in render(DATA, "markdown") and "(n=2)" in render(DATA, "html")


def test_a_metric_fewer_seeds_have_says_how_many():
    """The retuning check ran on seed 0 only of a two-seed cell: its numbers carry [n=1], the
    cell's ASR and CA their mean and std over both, and the tidy CSV counts each metric's own seeds."""
    import io

    data = DATA.assign(metrics=[{}] * len(DATA))
    data.at[2, "metrics"] = {"asr_after_retuning": 60.0, "ca_after_retuning": 70.0}  # badnet_grid x tnr, seed 0
    md = render(data, "markdown")
    assert "| 3.00 ± 1.41 / 81.00 ± 1.41 / 60 [n=1] / 70 [n=1] (n=2) |" in md
    frame = pd.read_csv(io.StringIO(render(data, "csv")))
    cell = frame[(frame["attack"] == "badnet_grid") & (frame["defense"] == "tnr")].set_index("metric")["seeds"]
    assert cell.to_dict() == {"asr": 2, "ca": 2, "asr_after_retuning": 1, "ca_after_retuning": 1}


def test_latex_is_a_well_formed_tabular_with_sub_columns_and_bold():
    tex = render(DATA, "latex")
    spec = re.search(r"\\begin\{tabular\}\{(lr*)\}", tex).group(1)
    body = [line for line in tex.splitlines() if line.endswith(r"\\")]
    for line in body:
        width = (
            sum(int(m) for m in re.findall(r"\\multicolumn\{(\d+)\}", line)) + line.count("&") + 1 - len(re.findall(r"\\multicolumn", line))
        )
        assert width == len(spec), line
    assert spec == "lrrrr" and r"\multicolumn{2}{c}{none} & \multicolumn{2}{c}{tnr}" in tex and " & ASR & CA & ASR & CA" in tex
    assert r"\textbf{10.00}" in tex and r"\textbf{3.00" not in tex and r"\textbf{89.00" not in tex
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert "badnet\\_grid" in tex


def test_compare_paper_sets_numbers_and_differences():
    (grid,) = build_grids(DATA, compare="paper")
    assert grid.paper["asr"].at["badnet_grid", "none"] == 99.98 and grid.paper["ca"].at["blend", "tnr"] == 83.82
    # the paper's Average is taken over the attacks of this grid, so the rows compare like with like
    assert grid.paper["asr"].at["Average", "tnr"] == pytest.approx((1.21 + 10.59) / 2)
    csv = render(DATA, "csv", compare="paper")
    line = next(row for row in csv.splitlines() if row.startswith("cifar10,fast,paper,blend,tnr,ca,"))
    assert "83.82" in line and "1.18" in line  # ca 85.00 vs paper 83.82


def test_no_results_and_unknown_filters():
    with pytest.raises(BenchbdError, match="no results yet"):
        build_grids(pd.DataFrame())
    with pytest.raises(BenchbdError, match=r"unknown dataset in results 'cifar' \(did you mean 'cifar10'\?\)"):
        build_grids(DATA, datasets=["cifar"])


def test_settings_of_one_defense_become_separate_columns():
    data = DATA.copy()
    data["params"] = [{"defense": {"rec_weight": 10}}] * len(data)
    extra = rows([("badnet_grid", "tnr", 0, 30.0, 84.0), ("blend", "tnr", 0, 40.0, 86.0)])
    extra["params"] = [{"defense": {"rec_weight": 0}}] * 2
    extra["finished_at"] = ["2026-01-02T00:00:00", "2026-01-02T00:00:01"]
    (grid,) = build_grids(pd.concat([data, extra], ignore_index=True), compare="paper")
    assert grid.defenses == ["none", "tnr[rec_weight=10]", "tnr[rec_weight=0]"]
    assert grid.mean["asr"].at["badnet_grid", "tnr[rec_weight=0]"] == 30.0
    assert grid.mean["asr"].at["badnet_grid", "tnr[rec_weight=10]"] == 3.0
    assert grid.paper["asr"].at["badnet_grid", "tnr[rec_weight=0]"] == 1.21


def test_a_setting_run_again_counts_once_newest_first():
    rows = pd.DataFrame(
        [
            {
                "dataset": "d",
                "budget": "b",
                "attack": "blend",
                "defense": "tnr",
                "seed": 0,
                "asr": 50.0,
                "ca": 70.0,
                "finished_at": "2026-01-01T00:00:00+00:00",
                "params": {"defense": {"rec_weight": 10}},
            },
            {
                "dataset": "d",
                "budget": "b",
                "attack": "blend",
                "defense": "tnr",
                "seed": 0,
                "asr": 2.0,
                "ca": 80.0,
                "finished_at": "2026-02-01T00:00:00+00:00",
                "params": {"defense": {"rec_weight": 10}},
            },
        ]
    )
    (grid,) = build_grids(rows)
    assert grid.mean["asr"].at["blend", "tnr"] == 2.0 and grid.seeds.at["blend", "tnr"] == 1


def test_latex_escapes_every_special_character():
    from benchbd.report.tables import _tex

    assert _tex("a_b & 5% $x$ #1 {y} ~z^2 \\") == (
        r"a\_b \& 5\% \$x\$ \#1 \{y\} \textasciitilde{}z\textasciicircum{}2 "
        r"\textbackslash{}"
    )


def test_average_covers_only_attacks_every_column_has():
    """A column missing a cell (or whose cell failed) must not get a mean over fewer attacks beside full ones."""
    data = pd.concat(
        [
            DATA,
            rows([("sig", "none", 0, 90.0, 80.0)]),
            rows([("sig", "tnr", 0, float("nan"), float("nan"))]).assign(status="failed", error="boom"),
        ],
        ignore_index=True,
    )
    (grid,) = build_grids(data, compare="paper")
    assert grid.mean["asr"].at["Average", "none"] == pytest.approx((99.0 + 99.0) / 2)  # sig left out for every column
    assert grid.mean["asr"].at["Average", "tnr"] == pytest.approx((3.0 + 10.0) / 2)
    assert grid.paper["asr"].at["Average", "none"] == pytest.approx(grid.paper["asr"].loc[["badnet_grid", "blend"], "none"].mean())
    average = next(line for line in render(data, "csv").splitlines() if ",Average,none,asr," in line)
    assert ",badnet_grid;blend," in average  # the CSV says which attacks its Average covers
    for fmt, marker in (
        ("markdown", "Average: over the 2 attack(s) every column has; left out (a cell failed or is missing): sig"),
        ("latex", "% Average: over the 2 attack(s)"),
        ("html", "<p>Average: over the 2 attack(s)"),
    ):
        assert marker in render(data, fmt)


def test_compare_paper_without_paper_numbers_or_with_every_cell_failed():
    synthetic = DATA.assign(dataset="synthetic", paper_dataset="synthetic")
    md = render(synthetic, "markdown", "paper")
    assert "The paper has no numbers for dataset 'synthetic': nothing to compare with." in md and "| badnet_grid " in md
    failed = DATA.assign(status="failed", error="boom", asr=float("nan"), ca=float("nan"))
    md = render(failed, "markdown", "paper")
    assert "Average: n/a, no attack has a result in every column" in md and "Failed cells" in md


def test_unknown_extra_metric_is_refused():
    data = DATA.assign(metrics=[{"epsilon": 1.0}] * len(DATA))
    with pytest.raises(BenchbdError, match=r"unknown --extra metric 'bogus'; valid: epsilon"):
        render(data, "markdown", extra=("bogus",))
    assert "epsilon" in render(data, "markdown", extra=("epsilon",))


def test_documented_deviations_are_footnotes_of_the_tables_that_show_them():
    data = rows([("blend", "none", 0, 99.0, 80.0), ("blend", "anp", 0, 3.0, 80.0), ("sig", "none", 0, 99.0, 80.0)])
    md, tex = render(data, "markdown"), render(data, "latex")
    assert "Note: ANP prunes at the spec's fixed mask threshold 0.2" in md and "Hello-Kitty" in md and "% Note: ANP" in tex
    assert "NAD's teacher" not in md  # no nad column here
