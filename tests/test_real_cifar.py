"""On real CIFAR-10 (a 5,000-image slice of ../shared/datasets), poisoning really plants a backdoor:
one short CPU training per attack family, against a clean model's rate of predicting the target."""

import pytest

from benchbd.config import Layers, parse_set
from benchbd.data import split_holdout
from benchbd.data.augment import SmallImages
from benchbd.models import create_model
from benchbd.runner import Cache, Results, Runner
from benchbd.train import BUDGETS, Trainer, TrainRecipe

# (attack, epochs of normal training, least ASR, --set overrides): the small patch needs more epochs on 4,750
# images and is still partly learned after 20 (30% here; about 100% on full CIFAR-10 at `fast`)
FAMILIES = [
    ("badnet_grid", 20, 20, ()),
    ("blend", 8, 60, ()),
    ("l2_invisible", 8, 60, ()),
    ("sig", 8, 60, ()),
    # WaNet's default warp (s = 0.5, under a pixel) is learned over hundreds of epochs (the official
    # code trains 1,000); a four times stronger warp of the same field shows the mechanism here
    ("wanet", 15, 20, ("attack.wanet.warp_strength=2",)),
    ("bpp", 8, 60, ()),
    # the official 0.3% is 15 images of this slice: the rates are raised to show that the weak,
    # partly masked training triggers plant the full test trigger
    ("adap_blend", 15, 30, ("attack.adap_blend.poison_ratio=0.1", "attack.adap_blend.cover_ratio=0.1")),
    ("adap_patch", 15, 30, ("attack.adap_patch.poison_ratio=0.1", "attack.adap_patch.cover_ratio=0.1")),
    ("input_aware", 8, 30, ("attack.input_aware.mask_epochs=5",)),  # its generator trains with the 8 epochs
]


@pytest.fixture(scope="module")
def clean(cifar_slice, tmp_path_factory):
    """A model normally trained on the same split without any poison, and its trainer."""
    runner = Runner(Results(tmp_path_factory.mktemp("clean")), Cache(tmp_path_factory.mktemp("cache")), device="cpu")
    _, _, dataset, data = runner.dataset(f"npz:{cifar_slice}")
    splits = split_holdout(data.train, data.test, 10, 0.05, 0)
    trainer = Trainer(SmallImages(), BUDGETS.get("paper"), "cpu", 0)
    model = trainer.fit(create_model("wrn16_1", 10), splits.train, TrainRecipe(epochs=8))
    return trainer, model, splits


@pytest.mark.parametrize("attack,epochs,least,sets", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_backdoor_is_planted(attack, epochs, least, sets, clean, cifar_slice, tmp_path):
    trainer, clean_model, splits = clean
    layers = Layers(cli=parse_set([f"train.normal.epochs={epochs}", *sets]))
    runner = Runner(Results(tmp_path), Cache(tmp_path / "cache"), layers, device="cpu")
    (cell,) = runner.plan([f"npz:{cifar_slice}"], attack, "none", [0], "paper")
    (row,) = runner.run([cell])
    assert (row["n_train"], row["n_holdout"]) == (4750, 250)
    assert row["n_asr"] == int((splits.test.labels != 0).sum())
    triggered = cell.attack.backdoor_test(splits.test)
    baseline = 100 * (trainer.predict(clean_model, triggered.images) == 0).double().mean().item()
    assert row["ca"] > 35, row
    assert row["asr"] > least and row["asr"] > 3 * baseline, (row["asr"], baseline)


def test_tnr_removes_a_planted_backdoor_on_real_images(cifar_slice, tmp_path):
    """Blend planted by 8 epochs of normal training on the 4,750-image slice; T&R with stage 1 at
    the same length and stage 2 on the 250-image holdout: its ASR is far lower, its CA above chance."""
    sets = ["train.normal.epochs=8", "defense.tnr.stage1.epochs=8", "defense.tnr.stage2.epochs=30"]
    runner = Runner(Results(tmp_path), Cache(tmp_path / "cache"), Layers(cli=parse_set(sets)), device="cpu")
    cells = runner.plan([f"npz:{cifar_slice}"], "blend", "none,tnr", [0], "paper")
    rows = {row["defense"]: row for row in runner.run(cells)}
    assert rows["none"]["asr"] > 60, rows["none"]
    assert rows["tnr"]["asr"] < rows["none"]["asr"] / 3, (rows["tnr"]["asr"], rows["none"]["asr"])
    assert rows["tnr"]["ca"] > 25, rows["tnr"]  # chance is 10
