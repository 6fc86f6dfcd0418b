"""Each defense's mechanism on tiny data: what changed, what stayed, what was pruned or isolated."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchbd.attacks import create as create_attack
from benchbd.config import build_params
from benchbd.data import DATASETS, split_holdout
from benchbd.data.augment import SmallImages
from benchbd.defenses import DEFENSES, DefenseContext
from benchbd.defenses.fp import ChannelMask
from benchbd.defenses.ibau import implicit_hypergradient
from benchbd.defenses.nad import attention_loss
from benchbd.models import create_model
from benchbd.train import Budget, Trainer, TrainRecipe


def defense(name, **params):
    cls = DEFENSES.get(name)
    return cls(build_params(cls.Params, params, f"defense.{name}"), name)


@pytest.fixture(scope="module")
def setting():
    cls = DATASETS.get("synthetic")
    data = cls(build_params(cls.Params, {"n_train": 800, "n_test": 200}, "dataset.synthetic")).load()
    splits = split_holdout(data.train, data.test, 10, 0.2, seed=0)
    attack = create_attack("badnet_white", dataset="synthetic")
    poisoned = attack.poison(splits.train, splits.full_train_size, 0)
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=3), "cpu", seed=0)
    torch.manual_seed(0)
    backdoored = trainer.fit(create_model("wrn16_1", 10), poisoned.plus_clean(splits.holdout), TrainRecipe(lr=3e-3, epochs=3, batch_size=64))
    return splits, poisoned, trainer, backdoored


def context(setting, budget=None):
    splits, poisoned, trainer, backdoored = setting
    if budget is not None:
        trainer = Trainer(SmallImages(), budget, "cpu", seed=0)
    return DefenseContext(trainer, lambda dropout=0.0: create_model("wrn16_1", 10, dropout=dropout), 10, 0,
                          poisoned_train=poisoned, holdout=splits.holdout, backdoored_model=copy.deepcopy(backdoored))


def moved(a: nn.Module, b: nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_nad_teacher_attention_and_student(setting):
    ctx = context(setting, Budget("t", max_epochs=1, max_steps_per_epoch=3))
    nad = defense("nad")
    teacher = nad.teacher(ctx)
    assert moved(teacher, ctx.backdoored_model)
    f = torch.rand(4, 16, 8, 8)
    assert attention_loss(f, f.clone()) == 0
    assert attention_loss(f, torch.rand(4, 16, 8, 8)) > 0
    before = copy.deepcopy(ctx.backdoored_model)
    student = nad.run(ctx)
    assert moved(student, before) and not moved(ctx.backdoored_model, before)  # the cached model is left alone


def test_anp_prunes_bn_channels_and_leaves_the_rest(setting):
    ctx = context(setting, Budget("t", max_epochs=1, max_steps_per_epoch=30))
    anp = defense("anp", threshold=0.995, iterations=30, batch_size=32)
    original = copy.deepcopy(ctx.backdoored_model)
    masks = anp.learn_masks(ctx, copy.deepcopy(original).eval())
    assert all(((m >= 0) & (m <= 1)).all() for m in masks.values())
    model = anp.run(ctx)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    old = {n: m for n, m in original.named_modules() if isinstance(m, nn.BatchNorm2d)}
    zeroed = kept = 0
    for n, bn in bns.items():
        off = bn.weight == 0
        zeroed += int(off.sum())
        kept += int((~off).sum())
        assert torch.equal(bn.weight[~off], old[n].weight[~off]) and torch.equal(bn.bias, old[n].bias)
        assert torch.equal(bn.running_mean, old[n].running_mean) and torch.equal(bn.running_var, old[n].running_var)
    assert zeroed > 0 and kept > 0 and ctx.metrics["pruned_channels"] == zeroed
    for name, w in original.state_dict().items():  # nothing but BN weights changed
        if not name.endswith("weight") or name.rsplit(".", 1)[0] not in bns:
            assert torch.equal(w, model.state_dict()[name]), name


def test_abl_isolates_mostly_poisoned_samples():
    """Toy set where the poison is learnt fastest: clean images are noise with random labels,
    poisoned ones carry a white square and the target label."""
    from benchbd.data import Split

    g = torch.Generator().manual_seed(0)
    noise = Split(torch.randint(0, 256, (600, 32, 32, 3), dtype=torch.uint8, generator=g), torch.randint(0, 10, (600,), generator=g))
    poisoned = create_attack("badnet_white", dataset="synthetic").poison(noise, len(noise), 0)
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=4), "cpu", seed=0)
    ctx = DefenseContext(trainer, lambda dropout=0.0: create_model("wrn16_1", 10), 10, 0, poisoned_train=poisoned)
    fast = TrainRecipe(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="constant", epochs=4, batch_size=64)
    abl = defense("abl", isolation_ratio=0.05, isolation=fast, clean_training={"epochs": 1, "batch_size": 64},
                  unlearning={"optimizer": "sgd", "lr": 5e-4, "epochs": 1, "batch_size": 16})
    abl.run(ctx)
    assert ctx.metrics["isolated"] == 30
    assert ctx.metrics["isolation_precision"] > 0.5, ctx.metrics  # far above the 0.1 poison ratio


def test_ibau_hypergradient_matches_finite_differences():
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])

    def anchor(w):  # where the inner problem's minimum lies, a function of the weights
        return torch.tanh(w.sum(0))

    def inner(d, w):
        return 2.5 * (d - anchor(w)).pow(2).sum()

    def outer(d, w):
        return F.cross_entropy((x + d) @ w.T, y)

    def fp_map(d):
        (g,) = torch.autograd.grad(inner(d, w), d, create_graph=True)
        return d - 0.1 * g

    d_star = anchor(w).detach()
    (hyper,) = implicit_hypergradient(lambda d: outer(d, w), fp_map, d_star, [w], iterations=60)
    numeric = torch.zeros_like(w)
    eps = 1e-6
    for idx in range(w.numel()):
        for sign in (1, -1):
            w2 = w.detach().clone().flatten()
            w2[idx] += sign * eps
            w2 = w2.view_as(w)
            numeric.view(-1)[idx] += sign * outer(anchor(w2), w2).item() / (2 * eps)
    assert torch.allclose(hyper, numeric, atol=1e-6), (hyper, numeric)
    direct = torch.autograd.grad(outer(d_star, w), w)[0]
    assert not torch.allclose(direct, numeric, atol=1e-3)  # the implicit part matters


def test_ibau_repairs_in_eval_mode_and_keeps_bn_statistics(setting):
    ctx = context(setting, Budget("t", max_epochs=1, max_steps_per_epoch=2))
    before = copy.deepcopy(ctx.backdoored_model)
    model = defense("ibau", rounds=1).run(ctx)
    assert moved(model, before)
    for name, value in before.state_dict().items():
        if "running" in name:
            assert torch.equal(value, model.state_dict()[name]), name


def test_dp_clips_per_sample_and_accounts_epsilon(setting):
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant

    dp = defense("dp", noise_multiplier=0.0, max_grad_norm=0.01)
    net = GradSampleModule(nn.Linear(4, 3), loss_reduction="mean")
    before = copy.deepcopy(net._module)
    accountant = RDPAccountant()
    optimizer = dp.private(torch.optim.SGD(net.parameters(), lr=1.0), 1000, accountant)
    loss = 1000 * F.cross_entropy(net(100 * torch.randn(8, 4)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    loss.backward()
    optimizer.step()
    change = torch.cat([(a - b).flatten() for a, b in zip(net._module.parameters(), before.parameters())]).norm()
    assert 0 < change <= 0.01 * 8 / 256 + 1e-9  # sum of clipped per-sample gradients over the expected batch
    assert len(accountant.history) == 1

    def epsilon(epochs):
        ctx = context(setting, Budget("t", max_steps_per_epoch=2))
        model = defense("dp", recipe={"epochs": epochs, "batch_size": 64}).run(ctx)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        return ctx.metrics["epsilon"]

    one, two = epsilon(1), epsilon(2)
    assert 0 < one < two < float("inf")


def test_fp_prunes_the_least_active_channels(setting):
    ctx = context(setting, Budget("t", max_epochs=1, max_steps_per_epoch=2))
    original = copy.deepcopy(ctx.backdoored_model).eval()
    model = defense("fp", max_drop=0.5, prune_step=4).run(ctx)
    mask = next(m for m in model.modules() if isinstance(m, ChannelMask)).mask
    pruned = int(ctx.metrics["pruned_channels"])
    assert pruned > 0 and int((mask == 0).sum()) == pruned
    with torch.no_grad():  # activity of the last feature map (after the tail's BN + activation), recomputed here
        x = ctx.holdout.images.permute(0, 3, 1, 2).float() / 255
        features = original.tail[:2](original.stem(original.num_blocks)(x))
        activity = features.mean(dim=(0, 2, 3))
    assert set(torch.nonzero(mask == 0).flatten().tolist()) == set(activity.argsort()[:pruned].tolist())


def test_ft_trains_the_backdoored_model_on_the_holdout(setting):
    ctx = context(setting, Budget("t", max_epochs=1, max_steps_per_epoch=2))
    before = copy.deepcopy(ctx.backdoored_model)
    assert moved(defense("ft").run(ctx), before)
