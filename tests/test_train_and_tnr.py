import copy

import torch
from torch import nn

from benchbd.attacks import create as create_attack
from benchbd.config import build_params
from benchbd.data import DATASETS, split_holdout
from benchbd.data.augment import SmallImages
from benchbd.defenses import DefenseContext, Frozen
from benchbd.defenses.tnr import TnRParams, TrapAndReplace, total_variation
from benchbd.models import create_model
from benchbd.train import BUDGETS, Budget, Trainer, TrainRecipe


def synthetic(n_train=600, n_test=200):
    cls = DATASETS.get("synthetic")
    return cls(build_params(cls.Params, {"n_train": n_train, "n_test": n_test}, "dataset.synthetic")).load()


def test_trainer_learns_synthetic_data():
    data = synthetic()
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=4), "cpu", seed=0)
    model = create_model("wrn16_1", 10)
    assert trainer.accuracy(model, data.test) < 0.3
    trainer.fit(model, data.train, TrainRecipe(lr=3e-3, epochs=4, batch_size=64))
    assert trainer.accuracy(model, data.test) > 0.6


def test_budgets_change_only_epochs():
    assert BUDGETS.get("paper").epochs(200) == 200
    assert BUDGETS.get("fast").epochs(200) == 30 and BUDGETS.get("fast").epochs(100) == 30 and BUDGETS.get("fast").epochs(20) == 20
    assert BUDGETS.get("fast").epochs(60) == 30  # ABL's retraining over the split
    assert BUDGETS.get("fast").epochs(100, whole_split=False) == 100  # a run on the holdout keeps its recipe
    assert BUDGETS.get("smoke").epochs(200) == 1 and BUDGETS.get("smoke").epochs(100, whole_split=False) == 1


def test_a_run_over_the_split_is_told_from_one_over_the_holdout():
    trainer = Trainer(SmallImages(), BUDGETS.get("fast"), "cpu", train_size=1000)
    assert trainer.whole_split(950) and trainer.whole_split(500) and not trainer.whole_split(50)
    assert trainer.run_epochs("a", 200, 950) == 30 and trainer.run_epochs("b", 100, 50) == 100
    assert [t["name"] for t in trainer.trainings] == ["a", "b"]


def test_total_variation_formula():
    r = torch.zeros(1, 1, 2, 2)
    r[0, 0, 0, 0] = 1.0  # two differing neighbour pairs, each squared difference 1
    assert total_variation(r).item() == 2 / 4


def _bn_state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_tnr_stage2_freezes_stem_and_replaces_head(monkeypatch):
    data = synthetic(400, 100)
    splits = split_holdout(data.train, data.test, 10, 0.25, seed=0)
    attack = create_attack("badnet_grid", dataset="synthetic", num_classes=10, image_size=32)
    poisoned = attack.poison(splits.train, splits.full_train_size, 0)
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=1, max_steps_per_epoch=3), "cpu", seed=0)
    ctx = DefenseContext(
        trainer, lambda dropout=0.0: create_model("wrn16_1", 10, dropout=dropout), 10, 0, poisoned_train=poisoned, holdout=splits.holdout
    )
    tnr = TrapAndReplace(build_params(TnRParams, {}, "defense.tnr"), "tnr")

    fresh = ctx.new_model()
    trapped = tnr.stage1(ctx)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trapped.net.state_dict().values()))
    stem_before = copy.deepcopy(trapped.stem.state_dict())

    fresh_heads = []
    original = Trainer.fit

    def record_fresh_head(self, model, data, recipe, **kwargs):
        if kwargs.get("desc") == "T&R stage 2":
            fresh_heads.append(copy.deepcopy(model[1].state_dict()))  # the new head, before it trains
        return original(self, model, data, recipe, **kwargs)

    monkeypatch.setattr(Trainer, "fit", record_fresh_head)
    model = tnr.stage2(ctx, trapped)
    stem, head = model[0], model[1]
    assert isinstance(stem, Frozen)
    stem_after = stem.module.state_dict()
    assert stem_before.keys() == stem_after.keys()
    for key in stem_before:  # weights and BatchNorm running statistics, bit for bit
        assert torch.equal(stem_before[key], stem_after[key]), key
    assert any("running_mean" in k for k in stem_before)
    assert all(not p.requires_grad for p in stem.parameters())
    # the new head is a fresh module (not the trapped one), and it trained: it differs from itself before stage 2
    assert all(h is not t for h, t in zip(head.parameters(), trapped.head.parameters()))
    (fresh,) = fresh_heads
    assert any(not torch.equal(fresh[k], v) for k, v in head.state_dict().items() if v.is_floating_point())
    assert any(isinstance(m, nn.Dropout) for m in head.modules())
    # the decoder is gone
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())


def test_frozen_keeps_batchnorm_in_eval():
    bn = nn.BatchNorm2d(3)
    frozen = Frozen(nn.Sequential(bn))
    frozen.train()
    assert not bn.training
    before = bn.running_mean.clone()
    frozen(torch.randn(4, 3, 2, 2) + 5)
    assert torch.equal(before, bn.running_mean)


def test_stage1_traps_the_input_in_the_stem_through_its_reconstruction_loss():
    """The trap itself: stage 1's decoder learns to rebuild the input from the stem's features, so the
    stem must keep it; a stage 1 whose reconstruction loss were multiplied by 0 leaves the decoder
    where it started and fails here."""
    from benchbd.defenses.tnr import TrapNet, reconstruction_mse

    data = synthetic(300, 50)
    splits = split_holdout(data.train, data.test, 10, 0.2, seed=0)
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=4), "cpu", seed=0)
    new_model = lambda dropout=0.0: create_model("wrn16_1", 10, dropout=dropout)  # noqa: E731
    ctx = DefenseContext(trainer, new_model, 10, 0, poisoned_train=splits.train, holdout=splits.holdout)
    params = build_params(TnRParams, {"rec_weight": 10.0, "stage1": {"epochs": 4, "batch_size": 32}}, "defense.tnr")
    torch.manual_seed(0)
    TrapAndReplace(params, "tnr").stage1(ctx)
    torch.manual_seed(0)
    untrained = TrapNet(new_model(), new_model().default_split)
    before = reconstruction_mse(trainer, untrained, splits.holdout)
    assert ctx.metrics["recon_mse"] < 0.3 * before, (ctx.metrics["recon_mse"], before)


def test_drop_last_false_trains_on_every_image_and_true_on_full_batches_only():
    train = synthetic(n_train=20, n_test=10).train.subset(torch.arange(10))
    budget = Budget("t", max_epochs=1)
    for drop_last, steps, images in ((True, 2, 8), (False, 3, 10)):
        trainer = Trainer(SmallImages(), budget, "cpu", seed=0)
        trainer.fit(create_model("wrn16_1", 10), train, TrainRecipe(epochs=1, batch_size=4), drop_last=drop_last)
        assert (trainer.trainings[-1]["steps"], trainer.trainings[-1]["images"]) == (steps, images)
        seen = torch.cat([y for _, y in trainer.batches(train, 4, "pass", drop_last=drop_last)])
        assert len(seen) == images
    assert sorted(seen.tolist()) == sorted(train.labels.tolist())  # each image once


def test_a_cpu_trainer_flushes_subnormal_floats_to_zero():
    """Subnormals take x86's slow path (T&R's stage 2 ran 3 to 40 times slower once its optimizer
    state reached them). A fresh process, so that no earlier trainer has set the flag already."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from benchbd.data.augment import SmallImages\n"
        "from benchbd.train import BUDGETS, Trainer\n"
        "tiny = torch.tensor([1e-39])\n"
        "before = (tiny * 1.0).item()\n"
        "Trainer(SmallImages(), BUDGETS.get('smoke'), 'cpu', 0)\n"
        "print(before > 0, (tiny * 1.0).item() == 0.0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]
