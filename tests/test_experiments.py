"""Named experiments (the paper's Tables 1-12 as YAML), their tables beside the paper's values,
the clean pseudo-attack, the defender's holdout size, T&R's reconstruction MSE, and the figures."""

import io
import json
import math
import re

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from benchbd import experiments
from benchbd.attacks import create
from benchbd.cli import main
from benchbd.config import Layers, parse_set
from benchbd.errors import BenchbdError
from benchbd.report import plots
from benchbd.report.tables import paper_rows
from benchbd.runner import Cache, Results, Runner

from .test_cli import SYN, invoke

# Synthetic data with a holdout large enough for Table 9's 1,250 images.
BIG = [
    "--dataset",
    "synthetic",
    "--set",
    "dataset.synthetic.n_train=2600",
    "--set",
    "dataset.synthetic.n_test=100",
    "--set",
    "dataset.holdout_fraction=0.5",
    "--budget",
    "smoke",
    "--quiet",
]
PAPER_TABLES = {
    "table1": 1,
    "table2": 2,
    "table3": 3,
    "table4": 4,
    "table5": 5,
    "table7": 7,
    "table8": 8,
    "table9": 9,
    "table10": 10,
    "table11": 11,
    "table12": 12,
}


def test_every_paper_table_has_an_experiment():
    assert experiments.names() == list(PAPER_TABLES)
    for name, number in PAPER_TABLES.items():
        assert experiments.load(name).reproduces == f"Table {number}"


def _plan(name: str, tmp_path, sets=()):
    runner = Runner(
        Results(tmp_path),
        Cache(tmp_path / "cache"),
        Layers(cli=parse_set(["dataset.synthetic.n_train=2600", "dataset.synthetic.n_test=100", "dataset.holdout_fraction=0.5", *sets])),
        device="cpu",
    )
    return experiments.plan(experiments.load(name), runner, "smoke", datasets=["synthetic"])


def invoke_error(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _paper_cells(number: int) -> set[tuple[str, str, str]]:
    """(experiment, setting or defense, attack) of every cell of the paper's table, averages left out."""
    rows = paper_rows()
    rows = rows[(rows["table"] == number) & (rows["attack"] != "average")]
    label = rows["setting"].where(rows["setting"].notna(), rows["defense"])
    return set(zip(rows["experiment"].fillna(""), label.astype(str), rows["attack"]))


@pytest.mark.parametrize("name", list(PAPER_TABLES))
def test_experiment_expands_to_the_paper_grid(name, tmp_path):
    experiment = experiments.load(name)
    cells, members = _plan(name, tmp_path)
    assert list(members) == [c.name for c in experiment.columns]
    for column in experiment.columns:
        assert len(members[column.name]) == len(experiment.attacks)
    # every (setting, attack) the paper reports is one (column, attack) here, and nothing more
    renamed = experiment.paper.get("attacks", {})
    ours = set()
    for column in experiment.columns:
        where = {**experiment.paper, **column.paper}
        setting = where.get("setting", column.name if "experiment" in where else column.defense)
        ours |= {(where.get("experiment", ""), setting, renamed.get(a, a)) for a in experiment.attacks}
    assert ours == _paper_cells(PAPER_TABLES[name])
    assert len(cells) == len({k for keys in members.values() for k in keys})


def _column_params(name, tmp_path):
    cells, members = _plan(name, tmp_path)
    by_key = {c.key: c for c in cells}
    return {column: [by_key[k] for k in keys] for column, keys in members.items()}


def test_table4_columns_are_the_three_ablations(tmp_path):
    cols = _column_params("table4", tmp_path)
    nr = cols["replace_only(no_recon)"][0].defense.params
    assert (nr.rec_weight, nr.tv_weight, nr.replace_head) == (0, 0, True)
    assert cols["recon_only(no_replace)"][0].defense.params.replace_head is False
    full = cols["full_tnr"][0].defense.params
    assert (full.rec_weight, full.tv_weight, full.replace_head) == (10, 1, True)
    assert [c.attack.name for c in cols["full_tnr"]] == ["l2_invisible", "trojan_wm", "sig", "lcba"]


def test_table5_splits_and_table7_attacks(tmp_path):
    cols = _column_params("table5", tmp_path)
    assert [cols[c][0].defense.params.split for c in ("stem13_head1", "stem11_head3", "stem9_head5")] == [6, None, 4]
    cols = _column_params("table7", tmp_path)
    assert [c.attack.name for c in cols["full_tnr"]] == ["lba_14", "lba_12", "lba_10"]


def test_table8_weights_and_shared_default_cell(tmp_path):
    cells, members = _plan("table8", tmp_path)
    by_key = {c.key: c for c in cells}
    weights = {col: (by_key[keys[0]].defense.params.rec_weight, by_key[keys[0]].defense.params.tv_weight) for col, keys in members.items()}
    assert weights == {
        "l1=0": (0, 0),
        "l1=1": (1, 0.1),
        "l1=10 (default)": (10, 1),
        "l1=20": (20, 2),
        "l2=0": (10, 0),
        "l2=0.1 (default)": (10, 1),
        "l2=1": (10, 10),
    }
    assert members["l1=10 (default)"] == members["l2=0.1 (default)"] and len(cells) == 6


def test_table9_holdout_sizes_and_table10_clean(tmp_path):
    cols = _column_params("table9", tmp_path)
    assert [cols[c][0].dataset.params.holdout_size for c in ("250", "500", "1250", "2500")] == [250, 500, 1250, None]
    # only the defender's share changes: the poisoned split (and so stage 1's data) is one cache entry
    assert len({json.dumps(cols[c][0].poison_identity(), sort_keys=True) for c in cols}) == 1
    cols = _column_params("table10", tmp_path)
    assert {cells[0].attack.name for cells in cols.values()} == {"clean"}
    assert list(cols) == ["none", "abl", "ibau", "tnr"]


# I-BAU's hypergradient dominates a smoke cell on CPU: one round, one fixed-point step is enough here
FAST_IBAU = ["--set", "defense.ibau.rounds=1", "--set", "defense.ibau.fixed_point_iterations=1"]


@pytest.fixture(scope="module")
def all_run(tmp_path_factory):
    """Every shipped experiment run under `smoke` on synthetic data, into one results directory
    (Table 9 on a larger holdout, which its 1,250-image column needs)."""
    results = tmp_path_factory.mktemp("experiments")
    outputs = {}
    for name in experiments.names():
        res = invoke("run", "--experiment", name, *(BIG if name == "table9" else SYN), *FAST_IBAU, "--results", results)
        assert res.exit_code == 0, (name, res.output)
        outputs[name] = res.output
    return results, outputs


def test_every_experiment_runs_under_smoke(all_run):
    results, _ = all_run
    rows = Results(results).load()
    for name in experiments.names():
        members = experiments.Membership(results, name).read()
        keys = {k for ks in members.values() for k in ks}
        assert keys and keys <= set(rows["cell_key"]), name


def test_shared_cells_run_once(all_run):
    _, outputs = all_run
    # on one (synthetic) dataset, Tables 2 and 3 are subsets of Table 1, and Table 11 reuses its tnr cells
    assert outputs["table2"].startswith("0 cell(s) run, 54 already done")
    assert outputs["table3"].startswith("0 cell(s) run, 16 already done")
    assert outputs["table11"].startswith("10 cell(s) run, 10 already done")


def test_experiment_table_labels_columns_and_shows_recon_mse(all_run):
    results, _ = all_run
    res = invoke("table", "--results", results, "--experiment", "table8", "--format", "csv")
    assert res.exit_code == 0, res.output
    tidy = pd.read_csv(io.StringIO(res.output))
    table = tidy.pivot_table(index="defense", columns="metric", values="mean", sort=False, dropna=False)
    assert list(table.index) == ["l1=0", "l1=1", "l1=10 (default)", "l1=20", "l2=0", "l2=0.1 (default)", "l2=1"]
    assert math.isnan(table.iloc[0]["recon_mse"]) and (table.iloc[1:]["recon_mse"] > 0).all()
    assert "Average" not in set(tidy["attack"])  # one attack: no average row


def test_table10_clean_attack_has_no_asr(all_run):
    results, _ = all_run
    res = invoke("table", "--results", results, "--experiment", "table10")
    assert res.exit_code == 0, res.output
    line = next(row for row in res.output.splitlines() if row.startswith("| clean"))
    cells = [c.strip() for c in line.strip("|").split("|")][1:]  # one per column of Table 10
    assert len(cells) >= 2 and [c.split(" / ")[0] for c in cells] == ["–"] * len(cells)  # ASR undefined without a trigger
    assert all(float(c.split(" / ")[1]) >= 0 for c in cells)


def test_experiment_compare_paper_on_a_cifar_slice(tmp_path):
    res = invoke(
        "run",
        "--experiment",
        "table9",
        "--dataset",
        "cifar10-mini",
        "--set",
        "dataset.cifar10-mini.limit_train=2600",
        "--set",
        "dataset.cifar10-mini.limit_test=100",
        "--set",
        "dataset.holdout_fraction=0.5",
        "--budget",
        "smoke",
        "--quiet",
        "--results",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    res = invoke("table", "--results", tmp_path, "--experiment", "table9", "--compare", "paper", "--format", "csv")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(io.StringIO(res.output), dtype={"defense": str}).set_index(["defense", "metric"])
    assert table.loc[("250", "ca"), "paper"] == 72.00 and table.loc[("2500", "asr"), "paper"] == 0.74
    assert table.loc[("500", "ca"), "diff"] == pytest.approx(table.loc[("500", "ca"), "mean"] - 76.99, abs=1e-3)


def test_main_grid_and_experiment_share_cells_and_cache(tmp_path):
    res = invoke("run", *SYN, "--attacks", "sig", "--defenses", "tnr", "--results", tmp_path)
    assert res.exit_code == 0
    res = invoke("run", "--experiment", "table4", *SYN, "--attacks", "sig", "--results", tmp_path)
    assert res.exit_code == 0 and "2 cell(s) run, 1 already done" in res.output
    cached = {
        (r["params"]["defense"]["rec_weight"], r["params"]["defense"]["replace_head"]): r["cached"]["poisoned_split"]
        for r in Results(tmp_path).rows()
    }
    assert cached == {(10, True): False, (0, True): True, (10, False): True}  # one poisoned split for all three


def test_seeds_give_mean_and_std(tmp_path):
    res = invoke("run", "--experiment", "table7", *SYN, "--attacks", "lba_10", "--seeds", "0,1", "--results", tmp_path)
    assert res.exit_code == 0
    out = invoke("table", "--results", tmp_path, "--experiment", "table7").output
    assert out.count("±") >= 4  # ASR and CA of both columns


def test_user_experiment_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "title: Fine-pruning against fine-tuning\ndatasets: [synthetic]\nattacks: [blend]\n"
        "columns:\n  - ft\n  - {name: fp-gentle, defense: fp, set: {defense.fp.max_drop: 0.02}}\n"
    )
    res = invoke("run", "--experiment", path, *SYN[2:], "--results", tmp_path / "r")
    assert res.exit_code == 0, res.output
    out = invoke("table", "--results", tmp_path / "r", "--experiment", path).output
    assert "| attack | ft | fp-gentle |" in out and "Fine-pruning against fine-tuning" in out


@pytest.mark.parametrize(
    "text, message",
    [
        ("datasets: [synthetic]\nattacks: [blend]\ncolums: [ft]\n", "unknown key 'colums'.*did you mean 'columns'"),
        (
            "datasets: [synthetic]\nattacks: [blend]\ncolumns:\n  - {defense: tnr, set: {tnr.split: 4}}\n",
            "malformed 'set' of column 'tnr', key 'tnr.split'",
        ),
        (
            "datasets: [synthetic]\nattacks: [blend]\ncolumns:\n  - {defense: tnr, set: {defense.tnr.splt: 4}}\n",
            "column 'tnr'.*did you mean 'split'",
        ),
        ("datasets: [synthetic]\nattacks: [blnd]\ncolumns: [tnr]\n", "unknown attack 'blnd'"),
        ("datasets: [synthetic]\nattacks: [blend]\ncolumns: [tnr, tnr]\n", "column names must differ"),
    ],
)
def test_bad_experiment_file_is_one_line(text, message, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    res = invoke_error("run", "--experiment", path, *SYN, "--results", tmp_path / "r")
    assert res.exit_code == 2 and res.output.count("\n") == 1 and re.search(message, res.output), res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--experiment", "tabel4"], "unknown experiment 'tabel4' (did you mean 'table4'?)"),
        (["run", "--experiment", "table4", "--defenses", "tnr"], "--defenses cannot be combined with --experiment"),
        (["run", "--experiment", "table9", *SYN], "holdout_size=250 is more than the holdout of synthetic (15 images"),
        (
            ["run", *SYN, "--set", "attack.poison_rato=0.1"],
            "unknown parameter 'attack.poison_rato' in --set: no attack has it (did you mean 'poison_ratio'?)",
        ),
        (["table", "--experiment", "table4"], "no results of experiment table4"),
    ],
)
def test_bad_experiment_use_is_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    res = invoke_error(*args)
    assert res.exit_code == 2 and res.output.count("\n") == 1 and message in res.output, res.output


def test_dry_run_lists_cells_and_trains_nothing(tmp_path):
    res = invoke("run", "--experiment", "table8", *SYN, "--results", tmp_path, "--dry-run")
    assert res.exit_code == 0 and "6 of 6 cell(s) to run" in res.output and "l1=20" in res.output
    assert not (tmp_path / "rows").exists()


def test_poison_ratio_for_all_attacks_skips_the_clean_one(tmp_path):
    res = invoke("run", *SYN, "--attacks", "clean,blend", "--defenses", "none", "--set", "attack.poison_ratio=0.05", "--results", tmp_path)
    assert res.exit_code == 0, res.output
    rows = Results(tmp_path).load().set_index("attack")
    assert rows.at["blend", "params"]["attack"]["poison_ratio"] == 0.05 and "poison_ratio" not in rows.at["clean", "params"]["attack"]
    assert math.isnan(rows.at["clean", "asr"]) and rows.at["clean", "n_asr"] == 0


def test_clean_attack_poisons_nothing():
    from benchbd.data import Split

    attack = create("clean")
    images = torch.randint(0, 256, (20, 32, 32, 3), dtype=torch.uint8)
    split = Split(images, torch.arange(20) % 10)
    poisoned = attack.poison(split, 20, seed=0)
    assert len(poisoned.poisoned) == 0 and torch.equal(poisoned.images, images) and torch.equal(poisoned.labels, split.labels)
    assert len(attack.backdoor_test(split)) == 0


def test_holdout_size_limits_what_the_defense_sees(tmp_path):
    base = ["run", *BIG, "--attacks", "badnet_grid", "--defenses", "ft", "--results", tmp_path]
    assert invoke(*base).exit_code == 0
    assert invoke(*base, "--set", "dataset.holdout_size=200").exit_code == 0
    cached = {r["n_holdout"]: r["cached"]["backdoored_model"] for r in Results(tmp_path).rows()}
    assert cached == {1300: False, 200: True}  # one backdoored model serves both


def test_recon_mse_is_measured_on_the_holdout(tmp_path):
    assert invoke("run", *SYN, "--attacks", "blend", "--defenses", "tnr", "--results", tmp_path).exit_code == 0
    assert (
        invoke(
            "run",
            *SYN,
            "--attacks",
            "blend",
            "--defenses",
            "tnr",
            "--set",
            "defense.tnr.rec_weight=0",
            "--set",
            "defense.tnr.tv_weight=0",
            "--results",
            tmp_path,
        ).exit_code
        == 0
    )
    metrics = {r["params"]["defense"]["rec_weight"]: r["metrics"] for r in Results(tmp_path).rows()}
    assert 0 < metrics[10]["recon_mse"] < 0.5 and "recon_mse" not in metrics[0]


def test_variant_syntax():
    column = experiments.Column.parse("tnr[rec_weight=0, tv_weight=0.5, replace_head=false]")
    assert column.defense == "tnr" and column.sets == (
        ("defense.tnr.rec_weight", 0),
        ("defense.tnr.tv_weight", 0.5),
        ("defense.tnr.replace_head", False),
    )
    assert experiments.Column.parse("none").sets == ()
    with pytest.raises(BenchbdError, match="malformed defense"):
        experiments.Column.parse("tnr[rec_weight]")


def test_pca_projection_recovers_known_directions():
    g = torch.Generator().manual_seed(0)
    u, v = torch.zeros(40), torch.zeros(40)
    u[3], v[7] = 1.0, 1.0
    a, b = torch.randn(500, 1, generator=g) * 10, torch.randn(500, 1, generator=g) * 3
    a, b = a - a.mean(), b - b.mean()
    b = b - (a * b).sum() / (a * a).sum() * a  # uncorrelated in the sample, so the components are exactly u and v
    features = a * u + b * v + 0.01 * torch.randn(500, 40, generator=g) + 5.0  # offset: the projection must centre
    coords, explained = plots.pca_projection(features.reshape(500, 10, 2, 2))
    assert coords.shape == (500, 2)
    assert torch.allclose(coords[:, 0], (a - a.mean()).flatten(), atol=0.05)  # PC1 = u, sign fixed positive
    assert torch.allclose(coords[:, 1], (b - b.mean()).flatten(), atol=0.05)
    expected = torch.tensor([a.var(), b.var()]) / (a.var() + b.var())
    assert torch.allclose(explained, expected, atol=0.01)


def test_plot_pca_writes_two_panels(tmp_path, monkeypatch):
    panels = []
    real_save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, out, title="": (panels.append(len(fig.axes)), real_save(fig, out, title))[1])
    out = tmp_path / "fig.png"
    res = invoke("plot", "pca", *SYN[:-1], "--attack", "blend", "--defense", "tnr", "--results", tmp_path / "r", "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert panels == [2] and Image.open(out).size[0] > Image.open(out).size[1]
    assert len(Results(tmp_path / "r").rows()) == 2  # both models' cells are recorded like a grid's


def test_plot_pca_versus_a_variant_and_bad_source(tmp_path):
    res = invoke(
        "plot",
        "pca",
        *SYN[:-1],
        "--versus",
        "tnr[rec_weight=0, tv_weight=0]",
        "--results",
        tmp_path / "r",
        "--out",
        tmp_path / "f.png",
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    res = invoke_error("plot", "pca", *SYN, "--source", "0", "--results", tmp_path / "r", "--out", tmp_path / "g.png")
    assert res.exit_code == 2 and "--source 0 is invalid" in res.output
    # checked before anything trains: a fresh results directory stays without rows or cache
    res = invoke_error("plot", "pca", *SYN, "--source", "99", "--results", tmp_path / "fresh", "--out", tmp_path / "g.png")
    assert res.exit_code == 2 and "--source 99 is invalid" in res.output and not (tmp_path / "fresh" / "cache").exists()


def test_plot_recon_and_scatter(tmp_path):
    out = tmp_path / "recon.png"
    res = invoke("plot", "recon", *SYN[:-1], "--count", 4, "--results", tmp_path / "r", "--out", out, "--quiet")
    assert res.exit_code == 0 and out.is_file(), res.output
    res = invoke_error("plot", "recon", *SYN, "--defense", "ft", "--results", tmp_path / "r", "--out", out)
    assert res.exit_code == 2 and "exposes no reconstruction network" in res.output
    res = invoke("plot", "scatter", "--results", tmp_path / "r", "--out", tmp_path / "s.png")
    assert res.exit_code == 0 and (tmp_path / "s.png").is_file(), res.output


def test_tnr_stage1_is_shared_by_cells_that_differ_only_after_it(tmp_path):
    base = ["run", *BIG, "--attacks", "blend", "--defenses", "tnr", "--results", tmp_path]
    assert invoke(*base).exit_code == 0
    assert invoke(*base, "--set", "dataset.holdout_size=100").exit_code == 0  # Table 9: only the defender's data differs
    assert invoke(*base, "--set", "defense.tnr.replace_head=false").exit_code == 0  # Table 4: stage 1 alone
    assert invoke(*base, "--set", "defense.tnr.stage2.lr=0.01").exit_code == 0  # stage 2 settings
    assert invoke(*base, "--set", "defense.tnr.rec_weight=1").exit_code == 0  # a stage-1 setting: trains anew
    hits = sorted((r["params"]["defense"]["rec_weight"], r["cached"]["stage1"]) for r in Results(tmp_path).rows())
    assert hits == [(1, False), (10, False), (10, True), (10, True), (10, True)]
    assert len(list((tmp_path / "cache" / "tnr_stage1").glob("*.pt"))) == 2


def test_cached_stage1_gives_the_same_defended_model(tmp_path):
    runner = Runner(
        Results(tmp_path),
        Cache(tmp_path / "cache"),
        Layers(cli=parse_set(["dataset.synthetic.n_train=300", "dataset.synthetic.n_test=100"])),
        device="cpu",
    )
    (cell,) = runner.plan(["synthetic"], "blend", "tnr", [0], "smoke")
    trained, loaded = runner.defend(cell), runner.defend(cell)
    assert trained.cached["stage1"] is False and loaded.cached["stage1"] is True
    images = trained.splits.test.images
    outputs = [torch.cat([z for _, z in d.trainer.logits(d.model, images)]) for d in (trained, loaded)]
    assert torch.equal(outputs[0], outputs[1])  # stage 2 does not depend on whether stage 1 trained here
