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
    assert BUDGETS.get("smoke").epochs(200) == 1


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
