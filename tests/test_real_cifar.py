"""On real CIFAR-10 (a 5,000-image slice of ../shared/datasets), poisoning really plants a backdoor:
one short CPU training per attack family, against a clean model's rate of predicting the target."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from benchbd.cli import main
from benchbd.config import Layers, parse_set
from benchbd.data import split_holdout
from benchbd.data.augment import SmallImages
from benchbd.models import create_model
from benchbd.runner import Cache, Results, Runner
from benchbd.runner.grid import code_sha256
from benchbd.train import BUDGETS, Trainer, TrainRecipe

from .conftest import shared_tmp

# (attack, epochs of normal training, least ASR, --set overrides, least CA), each at the fewest epochs
# measured to plant with a margin on this slice (blend is planted by the quick-start test below). Rates
# are raised where the official one plants too slowly for a CPU test: the test shows the mechanism
# (that the trigger is learned), the committed rows measure the official rates
FAMILIES = [
    # the 3x3 grid at 10% is still partly learned after 20 epochs here (30%); at 20%, 80 after 10 (CA 38)
    ("badnet_grid", 10, 60, ("attack.badnet_grid.poison_ratio=0.2",), 35),
    ("l2_invisible", 8, 60, (), 35),
    ("sig", 5, 60, (), 35),  # 95.7 at 5 epochs
    # WaNet's default warp (s = 0.5, under a pixel) is learned over hundreds of epochs (the official
    # code trains 1,000); a four times stronger warp of the same field at 15% shows the mechanism (57 at 10)
    ("wanet", 10, 40, ("attack.wanet.warp_strength=2", "attack.wanet.poison_ratio=0.15"), 35),
    ("bpp", 8, 60, ("attack.bpp.poison_ratio=0.2",), 35),  # the official injection rate
    # the official 0.3% is 15 images of this slice: the rates are raised to show that the weak,
    # partly masked training triggers plant the full test trigger (50 at 10 epochs)
    ("adap_blend", 10, 30, ("attack.adap_blend.poison_ratio=0.1", "attack.adap_blend.cover_ratio=0.1"), 35),
    # the official layout (version 2) plants 17 at 10% + 10% cover in 10 epochs, 51 at 20% + 10%
    ("adap_patch", 10, 30, ("attack.adap_patch.poison_ratio=0.2", "attack.adap_patch.cover_ratio=0.1"), 35),
    # 5 epochs (its generator trains with them) and 2 of the mask network: 60 at 20% (the official 10%
    # plants 30-35 even at 8 epochs, too close to 3x a clean model's 10-15). A third of every batch
    # carries generated triggers, so its CA after 5 epochs is lower (31): 25 still shows the task learned
    ("input_aware", 5, 30, ("attack.input_aware.mask_epochs=2", "attack.input_aware.poison_ratio=0.2"), 25),
]


@pytest.fixture(scope="module")
def clean(cifar_slice, tmp_path_factory):
    """A model normally trained on the same split without any poison, and its trainer. Built once per
    test session: parallel workers share it through benchbd's cache (one builds, the others wait and load)."""
    runner = Runner(Results(tmp_path_factory.mktemp("clean")), Cache(tmp_path_factory.mktemp("cache")), device="cpu")
    _, _, dataset, data = runner.dataset(f"npz:{cifar_slice}")
    splits = split_holdout(data.train, data.test, 10, 0.05, 0)
    trainer = Trainer(SmallImages(), BUDGETS.get("paper"), "cpu", 0)
    model = create_model("wrn16_1", 10)
    identity = {"test": "clean wrn16_1, 8 epochs", "data": data.identity, "code": code_sha256()}
    state, _ = Cache(shared_tmp(tmp_path_factory) / "cache").get_or_build(
        "clean_model", identity, lambda: trainer.fit(model, splits.train, TrainRecipe(epochs=8)).state_dict()
    )
    model.load_state_dict(state)
    return trainer, model, splits


@pytest.mark.parametrize("attack,epochs,least,sets,least_ca", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_backdoor_is_planted(attack, epochs, least, sets, least_ca, clean, cifar_slice, tmp_path):
    trainer, clean_model, splits = clean
    layers = Layers(cli=parse_set([f"train.normal.epochs={epochs}", *sets]))
    runner = Runner(Results(tmp_path), Cache(tmp_path / "cache"), layers, device="cpu")
    (cell,) = runner.plan([f"npz:{cifar_slice}"], attack, "none", [0], "paper")
    (row,) = runner.run([cell])
    assert (row["n_train"], row["n_holdout"]) == (4750, 250)
    assert row["n_asr"] == int((splits.test.labels != 0).sum())
    triggered = cell.attack.backdoor_test(splits.test)
    baseline = 100 * (trainer.predict(clean_model, triggered.images) == 0).double().mean().item()
    assert row["ca"] > least_ca, row
    assert row["asr"] > least and row["asr"] > 3 * baseline, (row["asr"], baseline)


def test_the_readme_quick_start_plants_a_backdoor_and_tnr_removes_it(tmp_path):
    """The README's first command, at its own settings on the shipped 5,000-image sample: blend is
    planted (ASR above 80 without a defense) and T&R removes it, CA well above chance (10). It shares
    the command's own cache (results/cache of the checkout): after the README's first command (as in
    CI) its backdoored model and T&R's stage 1 are loaded, not retrained; the cache is keyed by
    content, so the numbers are the ones a fresh run gives."""
    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("pip install -e"))
    run = next(part for part in command.split("&&") if part.strip().startswith("benchbd run")).split()[1:]
    res = CliRunner().invoke(main, [*run, "--results", str(tmp_path), "--cache-dir", str(repo / "results" / "cache"), "--quiet"])
    assert res.exit_code == 0, res.output
    rows = {row["defense"]: row for row in Results(tmp_path).rows()}
    assert set(rows) == {"none", "tnr"} and rows["none"]["dataset"] == "cifar10-mini"
    assert rows["none"]["asr"] > 80 and rows["tnr"]["asr"] < 10, (rows["none"]["asr"], rows["tnr"]["asr"])
    assert rows["none"]["ca"] > 25 and rows["tnr"]["ca"] > 25, (rows["none"]["ca"], rows["tnr"]["ca"])
    table = CliRunner().invoke(main, ["table", "--results", str(tmp_path)]).output
    assert "| blend |" in table and "not planted" not in table
