"""Every number traceable: keys that hold the data's content, the budget's rule and the precision;
rows that say what ran; `reproduce`; the migration of rows made before content hashes."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from benchbd.attacks import ATTACKS
from benchbd.cli import main
from benchbd.config import Layers, parse_set
from benchbd.defenses import DEFENSES
from benchbd.report.tables import build_grids, to_csv, to_latex, to_markdown
from benchbd.runner import Cache, Results, Runner
from benchbd.runner.grid import package_sha256
from benchbd.train import TRAINER_VERSION

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import migrate_rows  # noqa: E402


@pytest.fixture(autouse=True)
def _own_hash_memo(tmp_path, monkeypatch):
    """The content-hash memo of each test in its own folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def tiny_npz(path: Path, fill: int) -> None:
    """64 training and 20 test images of one grey level: same shapes, dtypes and file size for any `fill`."""
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=np.full((64, 32, 32, 3), fill, np.uint8),
        y_train=rng.integers(0, 4, 64),
        x_test=np.full((20, 32, 32, 3), fill, np.uint8),
        y_test=rng.integers(0, 4, 20),
    )


def rows_of(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "rows").glob("*.json"))]


def test_same_size_different_pixels_at_the_same_path_is_a_new_cell(tmp_path):
    data = tmp_path / "data.npz"
    tiny_npz(data, 10)
    args = ("run", "--dataset", f"npz:{data}", "--attacks", "blend", "--defenses", "none", "--budget", "smoke", "--quiet")
    assert invoke(*args, "--results", tmp_path / "r").exit_code == 0
    size = data.stat().st_size
    tiny_npz(data, 200)
    assert data.stat().st_size == size
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a later write, whatever the clock's resolution
    res = invoke(*args, "--results", tmp_path / "r")
    assert res.exit_code == 0 and "1 cell(s) run, 0 already done" in res.output, res.output
    first, second = sorted(rows_of(tmp_path / "r"), key=lambda r: r["finished_at"])
    assert first["data_sha256"] != second["data_sha256"] and first["cell_key"] != second["cell_key"]


def test_the_same_content_elsewhere_keeps_its_cells(tmp_path):
    """Copied to another path (another machine), the data hashes the same: the cell is done."""
    tiny_npz(tmp_path / "a.npz", 10)
    shutil.copy(tmp_path / "a.npz", tmp_path / "b.npz")
    base = ("run", "--attacks", "blend", "--defenses", "none", "--budget", "smoke", "--quiet", "--results", tmp_path / "r")
    assert invoke(*base, "--dataset", f"npz:{tmp_path / 'a.npz'}").exit_code == 0
    res = invoke(*base, "--dataset", f"npz:{tmp_path / 'b.npz'}")
    assert "0 cell(s) run, 1 already done" in res.output, res.output


def test_the_hash_is_remembered_by_path_size_and_mtime(tmp_path, monkeypatch):
    from benchbd.data import datasets

    tiny_npz(tmp_path / "a.npz", 10)
    calls = []
    original = datasets.content_sha256
    monkeypatch.setattr(datasets, "content_sha256", lambda *a: calls.append(1) or original(*a))
    source = datasets.NpzDataset(datasets.DatasetParams(), path=str(tmp_path / "a.npz"))
    assert source.load().sha256 == source.load().sha256
    assert len(calls) == 1


def test_fast_shortens_only_passes_over_the_training_split(tmp_path):
    """T&R's stage 1 (training split) at 30 of 200 epochs; its stage 2 and FT-SAM (holdout) whole."""
    layers = Layers(cli=parse_set(["dataset.synthetic.n_train=60", "dataset.synthetic.n_test=20"]))
    runner = Runner(Results(tmp_path / "r"), Cache(tmp_path / "c"), layers, device="cpu")
    rows = runner.run(runner.plan(["synthetic"], "blend", "tnr,ftsam", [0], "fast"))
    runs = {(r["defense"], t["name"]): t for r in rows for t in r["trainings"]}
    assert (runs["tnr", "T&R stage 1"]["planned_epochs"], runs["tnr", "T&R stage 1"]["epochs"]) == (200, 30)
    assert (runs["tnr", "T&R stage 2"]["planned_epochs"], runs["tnr", "T&R stage 2"]["epochs"]) == (100, 100)
    assert (runs["ftsam", "ft-sam"]["planned_epochs"], runs["ftsam", "ft-sam"]["epochs"]) == (100, 100)
    assert (runs["ftsam", "backdoored"]["planned_epochs"], runs["ftsam", "backdoored"]["epochs"]) == (200, 30)
    assert runs["ftsam", "backdoored"]["cached"] is False
    stage2 = runs["tnr", "T&R stage 2"]  # 3 holdout images, one batch of all of them per epoch
    assert (stage2["steps"], stage2["images"]) == (100, 300)
    tnr = next(r for r in rows if r["defense"] == "tnr")
    assert {"stage1_asr", "stage1_ca"} <= set(tnr["metrics"])
    ftsam = next(r for r in rows if r["defense"] == "ftsam")
    assert {"start_asr", "start_ca"} <= set(ftsam["metrics"])


def test_smoke_rows_record_one_epoch_and_a_cached_model_says_so(tmp_path):
    runner = Runner(Results(tmp_path / "r"), Cache(tmp_path / "c"), device="cpu")
    rows = runner.run(runner.plan(["synthetic"], "blend", "none,ft", [0], "smoke"))
    none, ft = sorted(rows, key=lambda r: r["defense"] != "none")
    assert [(t["name"], t["epochs"], t["steps"], t["cached"]) for t in none["trainings"]] == [("backdoored", 1, 2, False)]
    assert [(t["name"], t["epochs"], t["cached"]) for t in ft["trainings"]] == [("backdoored", 1, True), ("fine-tuning", 1, False)]
    assert none["precision"] == "fp32" and len(none["data_sha256"]) == 64 and len(none["code_sha256"]) == 64
    blend, fine_tuning = ATTACKS.get("blend").version, DEFENSES.get("ft").version
    assert ft["versions"] == {"attack": blend, "defense": fine_tuning, "trainer": TRAINER_VERSION}


def test_precision_and_budget_rule_are_in_the_key(tmp_path):
    runner = Runner(Results(tmp_path / "r"), Cache(tmp_path / "c"), device="cpu")
    (cell,) = runner.plan(["synthetic"], "blend", "none", [0], "fast")
    assert dataclasses.replace(cell, precision="bf16").key != cell.key
    assert cell.budget_identity()["budget_rule"]["rules"] >= 2


def test_code_hash_follows_the_files_not_the_commit(tmp_path):
    package = tmp_path / "repo" / "benchbd"
    shutil.copytree(REPO / "benchbd", package, ignore=shutil.ignore_patterns("__pycache__", "mini"))
    git = lambda *a: subprocess.run(["git", *a], cwd=package.parent, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "one", "--allow-empty")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "two")
    before = package_sha256(package)
    (package.parent / "notes.txt").write_text("a commit that touches no package file")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "three")
    assert package_sha256(package) == before
    with open(package / "train.py", "a") as f:
        f.write("\n# an uncommitted edit\n")
    assert package_sha256(package) != before


def grid_rows(none_asr: dict[str, float]) -> pd.DataFrame:
    rows = []
    for attack, asr in none_asr.items():
        for defense, (a, c) in {"none": (asr, 80.0), "tnr": (2.0, 75.0)}.items():
            rows.append(
                dict(
                    cell_key=f"{attack}-{defense}",
                    dataset="cifar10",
                    budget="fast",
                    attack=attack,
                    defense=defense,
                    seed=0,
                    asr=a,
                    ca=c,
                    status="ok",
                    finished_at="2026-12-01T00:00:00",
                    metrics={},
                )  # fmt: skip
            )
    return pd.DataFrame(rows)


def test_an_attack_that_was_not_planted_is_marked_and_left_out_of_the_average():
    (grid,) = build_grids(grid_rows({"blend": 99.0, "badnet_grid": 30.0, "sig": 95.0}))
    assert set(grid.not_planted) == {"badnet_grid"}
    assert grid.mean["asr"].at["Average", "none"] == pytest.approx((99.0 + 95.0) / 2)
    markdown, latex, csv = to_markdown(grid), to_latex(grid), to_csv([grid])
    assert "| badnet_grid † |" in markdown and "not planted" in markdown
    assert r"badnet\_grid $^\dagger$" in latex and "not planted" in latex
    frame = pd.read_csv(pd.io.common.StringIO(csv))
    assert frame[frame["attack"] == "badnet_grid"]["not_planted"].all() and not frame[frame["attack"] == "blend"]["not_planted"].any()
    (planted,) = build_grids(grid_rows({"blend": 99.0, "sig": 95.0}))
    assert not planted.not_planted and "not planted" not in to_markdown(planted)


def test_reproduce_gives_the_same_numbers_and_refuses_other_data(tmp_path):
    assert invoke("run", "--dataset", "synthetic", "--attacks", "blend", "--defenses", "tnr", "--budget", "smoke", "--quiet",
                  "--results", tmp_path / "r").exit_code == 0  # fmt: skip
    (path,) = (tmp_path / "r" / "rows").glob("*.json")
    res = invoke("reproduce", path, "--quiet", "--scratch", tmp_path / "s")
    assert res.exit_code == 0 and "reproduced: equal to the last digit" in res.output, res.output
    assert "stage1_ca" in res.output
    row = json.loads(path.read_text())
    row["data_sha256"] = "0" * 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(row))
    res = invoke("reproduce", other, "--quiet", "--scratch", tmp_path / "s2")
    assert res.exit_code == 2 and "the data differs from the row's" in res.output and "Traceback" not in res.output


def test_migration_rekeys_and_keeps_every_measured_number(tmp_path):
    runner = Runner(Results(tmp_path / "r"), Cache(tmp_path / "c"), device="cpu")
    (row,) = runner.run(runner.plan(["synthetic"], "blend", "ft", [0], "smoke"))
    old = {k: v for k, v in row.items() if k not in ("data_sha256", "precision", "trainings", "code_sha256")}
    old["cell_key"] = "0123456789abcdef01234567"  # a key of the size-only era
    new = migrate_rows.migrate_row(runner, old)
    assert new["cell_key"] == row["cell_key"] and new["data_sha256"] == row["data_sha256"] and new["precision"] == "fp32"
    assert new["migrated"]["from_key"] == old["cell_key"]
    assert {k: v for k, v in new.items() if k not in ("cell_key", "data_sha256", "precision", "migrated")} == {
        k: v for k, v in old.items() if k != "cell_key"
    }
    assert "trainings" not in new and "code_sha256" not in new


def test_committed_rows_carry_their_data_hash_and_their_keys_name_their_files():
    for path in sorted(REPO.glob("results/*/rows/*.json")):
        row = json.loads(path.read_text())
        assert len(row.get("data_sha256", "")) == 64, path
        assert path.stem == row["cell_key"], path


def test_robust_accuracy_by_hand_on_a_model_that_reads_one_pixel():
    """A 'model' that predicts the class written into pixel (0, 0) (which BadNet's corner trigger
    leaves alone): ASR and RA are the shares of non-target images coded as the target and as their label."""
    import torch

    from benchbd.attacks import ATTACKS
    from benchbd.data import Split
    from benchbd.data.augment import SmallImages
    from benchbd.train import BUDGETS, Trainer

    class PixelReader(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot((x[:, 0, 0, 0] * 255).round().long() % 10, 10).float()

    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])  # target 0: seven non-target images
    codes = torch.tensor([0, 1, 2, 0, 0, 9, 9, 7])  # labels 1, 2, 7 kept (RA 3/7); 3, 4 -> target (ASR 2/7)
    images = torch.zeros(8, 32, 32, 3, dtype=torch.uint8)
    images[:, 0, 0, 0] = codes.to(torch.uint8)
    attack = ATTACKS.get("badnet_grid")(ATTACKS.get("badnet_grid").Params(target=0), 10, 32, "badnet_grid")
    scores = Runner.evaluate(Trainer(SmallImages(), BUDGETS.get("smoke")), PixelReader(), attack, Split(images, labels))
    assert scores.n_asr == 7
    assert scores.asr == pytest.approx(round(100 * 2 / 7, 4)) and scores.ra == pytest.approx(round(100 * 3 / 7, 4))
    assert scores.ca == pytest.approx(100 * 4 / 8)  # clean: images 0, 1, 2 and 7 are coded as their label


def test_der_by_hand_from_two_rows_and_from_start_numbers():
    from benchbd.report.tables import with_der

    rows = grid_rows({"blend": 99.0})  # none: ASR 99, CA 80; tnr: ASR 2, CA 75
    der = with_der(rows.assign(defense_name=rows["defense"])).set_index("defense")["der"]
    assert np.isnan(der["none"]) and der["tnr"] == pytest.approx(((99 - 2) - (80 - 75) + 100) / 2)
    alone = rows[rows["defense"] == "tnr"].assign(defense_name="tnr", metrics=[{"start_asr": 90.0, "start_ca": 70.0}])
    assert with_der(alone)["der"].iloc[0] == pytest.approx(((90 - 2) - 0 + 100) / 2)  # a CA gain counts as 0
    (grid,) = build_grids(rows, extra=("der", "ra"))
    assert grid.mean["der"].at["blend", "tnr"] == pytest.approx(96.0) and "DER" in to_markdown(grid)
