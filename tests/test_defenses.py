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
    backdoored = trainer.fit(
        create_model("wrn16_1", 10), poisoned.plus_clean(splits.holdout), TrainRecipe(lr=3e-3, epochs=3, batch_size=64)
    )
    return splits, poisoned, trainer, backdoored


def context(setting, budget=None):
    splits, poisoned, trainer, backdoored = setting
    if budget is not None:
        trainer = Trainer(SmallImages(), budget, "cpu", seed=0)
    return DefenseContext(
        trainer,
        lambda dropout=0.0: create_model("wrn16_1", 10, dropout=dropout),
        10,
        0,
        poisoned_train=poisoned,
        holdout=splits.holdout,
        backdoored_model=copy.deepcopy(backdoored),
    )


def moved(a: nn.Module, b: nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def attention_distance(a: nn.Module, b: nn.Module, images: torch.Tensor, stages) -> float:
    """Sum over the attention stages of the mean AT distance between two models, eval mode."""
    from benchbd.defenses.nad import stage_features

    x = images.permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        _, fa = stage_features(a.eval(), x, stages)
        _, fb = stage_features(b.eval(), x, stages)
    return sum(float(attention_loss(s, t)) for s, t in zip(fa, fb))


def test_nad_distils_the_teachers_attention(setting, monkeypatch):
    """The attention term is what pulls the student's attention maps onto the teacher's: with it the
    student ends far closer to the teacher than the same training with betas = 0. (The teacher here
    is a model trained apart, so that plain training cannot reach it by repeating its recipe.)"""
    from benchbd.defenses.nad import NeuralAttentionDistillation

    budget = Budget("t", max_epochs=20)  # 2 steps an epoch on this holdout: 40 steps
    f = torch.rand(4, 16, 8, 8)
    assert attention_loss(f, f.clone()) == 0 and attention_loss(f, torch.rand(4, 16, 8, 8)) > 0
    ctx = context(setting, budget)
    fine_tuned = defense("nad").teacher(ctx)  # the real teacher: the backdoored model fine-tuned on the holdout
    assert moved(fine_tuned, ctx.backdoored_model)
    assert not moved(fine_tuned, defense("nad").teacher(context(setting, budget)))  # seeded

    torch.manual_seed(1)
    apart = ctx.trainer.fit(create_model("wrn16_1", 10), ctx.holdout, TrainRecipe(lr=3e-3, epochs=2, batch_size=32))
    monkeypatch.setattr(NeuralAttentionDistillation, "teacher", lambda self, ctx: copy.deepcopy(apart))
    stages = ctx.backdoored_model.stage_ends[-3:]
    before = copy.deepcopy(ctx.backdoored_model)
    student = defense("nad").run(ctx)
    assert not moved(ctx.backdoored_model, before)  # the cached model is left alone
    plain = defense("nad", betas=[0, 0, 0]).run(context(setting, budget))
    images = ctx.holdout.images
    start = attention_distance(before, apart, images, stages)
    distilled, undistilled = attention_distance(student, apart, images, stages), attention_distance(plain, apart, images, stages)
    assert distilled < 0.5 * undistilled and distilled < 0.5 * start, (start, distilled, undistilled)


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


def test_anp_adversarial_noise_is_what_prunes(setting):
    """The adversarial term drives the masks of the channels the noise exploits below the threshold:
    without it (alpha = 1: the clean loss only) far fewer channels fall below 0.2."""
    budget = Budget("t", max_epochs=1, max_steps_per_epoch=100)

    def masks(**params):
        ctx = context(setting, budget)
        anp = defense("anp", iterations=100, batch_size=32, **params)
        return anp.learn_masks(ctx, copy.deepcopy(ctx.backdoored_model).train())

    adversarial = masks()
    clean_only = masks(alpha=1.0)
    below = {name: sum(int((m < 0.2).sum()) for m in ms.values()) for name, ms in (("adv", adversarial), ("clean", clean_only))}
    assert below["adv"] >= 4 and below["adv"] >= 3 * below["clean"] + 2, below


def test_anp_noise_step_is_not_clamped(setting, monkeypatch):
    """As the official code: noise ~ U(-eps, eps), then one step of eps x sign(grad), no clamp, so
    after the step the noise reaches past eps (up to 2 eps)."""
    from benchbd.defenses import anp as anp_module

    calls = []
    original = anp_module.functional_call

    def recording(model, override, args):
        bns = anp_module.batchnorms(model)
        calls.append(max(float((override[f"{n}.weight"] / m.weight - 1).abs().max()) for n, m in bns.items()))
        return original(model, override, args)

    monkeypatch.setattr(anp_module, "functional_call", recording)
    ctx = context(setting, Budget("t", max_epochs=1, max_steps_per_epoch=1))
    anp = defense("anp", iterations=1, batch_size=32)
    anp.learn_masks(ctx, copy.deepcopy(ctx.backdoored_model).train())
    before_step, clean, after_step = calls  # masks are still 1: the scale is 1 + noise
    assert before_step <= 0.4 + 1e-6 and clean < 1e-6
    assert 0.4 + 0.05 < after_step <= 0.8 + 1e-6, calls


def _noise_toy():
    """A toy set where the poison is learnt fastest: clean images are noise with random labels,
    poisoned ones carry a white square and the target label."""
    from benchbd.data import Split

    g = torch.Generator().manual_seed(0)
    noise = Split(torch.randint(0, 256, (600, 32, 32, 3), dtype=torch.uint8, generator=g), torch.randint(0, 10, (600,), generator=g))
    return create_attack("badnet_white", dataset="synthetic").poison(noise, len(noise), 0)


def _abl(poisoned, **params):
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=4), "cpu", seed=0)
    ctx = DefenseContext(trainer, lambda dropout=0.0: create_model("wrn16_1", 10), 10, 0, poisoned_train=poisoned)
    fast = {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-4,
        "schedule": "constant",
        "epochs": 4,
        "batch_size": 64,
    }
    abl = defense(
        "abl",
        isolation_ratio=0.05,
        isolation=fast,
        clean_training={"epochs": 1, "batch_size": 64},
        unlearning={"optimizer": "sgd", "lr": 5e-3, "epochs": 4, "batch_size": 10},
        **params,
    )
    return ctx, abl.run(ctx)


def test_abl_isolates_mostly_poisoned_samples():
    ctx, _ = _abl(_noise_toy())
    assert ctx.metrics["isolated"] == 30
    assert ctx.metrics["isolation_precision"] > 0.5, ctx.metrics  # far above the 0.1 poison ratio
    assert ctx.metrics["isolation_auroc"] > 0.8 and 0 < ctx.metrics["isolation_f1"] <= 1, ctx.metrics


def test_abl_isolation_trains_with_the_lga_loss(monkeypatch):
    """LGA ascends whenever the batch loss falls below gamma, so on data a model fits quickly the
    isolation model's loss stays near gamma = 0.5, where plain training (gamma = 0) drives it to zero."""
    from benchbd.defenses.abl import AntiBackdoorLearning

    cls = DATASETS.get("synthetic")
    data = cls(build_params(cls.Params, {"n_train": 640, "n_test": 20}, "dataset.synthetic")).load()
    poisoned = create_attack("blend", dataset="synthetic").poison(data.train, len(data.train), 0)
    after_isolation = {}
    original = AntiBackdoorLearning.isolate

    def recording(self, losses):  # the isolation model's per-sample losses
        after_isolation[self.params.gamma] = float(losses.mean())
        return original(self, losses)

    monkeypatch.setattr(AntiBackdoorLearning, "isolate", recording)
    _abl(poisoned)
    _abl(poisoned, gamma=0.0)
    assert after_isolation[0.0] < 0.15 and 0.25 < after_isolation[0.5] < 1.5, after_isolation


def test_abl_unlearning_raises_the_loss_of_the_isolated_set(monkeypatch):
    """The last phase ascends: the loss on the isolated samples rises (it falls if it descended).
    Measured as the training step sees it (BatchNorm on the batch, on a copy), so that the drift of
    the running statistics, which raises the eval-mode loss either way, does not decide."""
    losses, isolated = {}, []
    original = Trainer.fit

    def training_loss(model, data):
        probe = copy.deepcopy(model).train()
        with torch.no_grad():
            return float(F.cross_entropy(probe(data.images.permute(0, 3, 1, 2).float() / 255), data.labels))

    def spying_fit(self, model, data, recipe, **kwargs):
        if kwargs.get("desc") == "ABL unlearning":
            isolated.append(data)
            losses["before"] = training_loss(model, data)
            model = original(self, model, data, recipe, **kwargs)
            losses["after"] = training_loss(model, data)
            return model
        return original(self, model, data, recipe, **kwargs)

    monkeypatch.setattr(Trainer, "fit", spying_fit)
    ctx, unlearned = _abl(_noise_toy())
    assert losses["after"] > losses["before"] + 0.5, losses
    # the model as it was before the unlearning is kept for the row (before_unlearning_asr / _ca)
    probe = ctx.probes["before_unlearning"]
    assert probe is not unlearned and losses["before"] == pytest.approx(training_loss(probe, isolated[0]))


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


def test_ibau_steps_on_the_implicit_hypergradient_of_perturbed_inputs(setting, monkeypatch):
    """Every outer step uses the implicit hypergradient (not the direct gradient) of a loss that
    reads the universal perturbation (not the clean loss), and applies it to the model."""
    from benchbd.defenses import ibau as ibau_module

    steps = []
    original = ibau_module.implicit_hypergradient

    def recording(outer, fp_map, d, params, iterations):
        grads = original(outer, fp_map, d, params, iterations)
        direct = torch.autograd.grad(outer(d.detach()), params, allow_unused=True)
        steps.append(
            {
                "norm": float(d.norm()),
                "reads_perturbation": float((outer(d.detach()) - outer(torch.zeros_like(d))).abs()),
                "implicit_part": max(float((g - (0 if dg is None else dg)).abs().max()) for g, dg in zip(grads, direct)),
            }
        )
        return grads

    monkeypatch.setattr(ibau_module, "implicit_hypergradient", recording)
    ctx = context(setting, Budget("t", max_epochs=1, max_steps_per_epoch=2))
    before = copy.deepcopy(ctx.backdoored_model)
    model = defense("ibau", rounds=2, perturbed_share=1.0).run(ctx)
    assert len(steps) == 2  # 2 rounds x 1 full batch of 100 of the 160 holdout images
    for step in steps:
        assert 0 < step["norm"] <= 10 + 1e-4  # a non-zero perturbation inside the L2 ball
        assert step["reads_perturbation"] > 1e-6  # the outer loss is taken on perturbed inputs
        assert step["implicit_part"] > 1e-8  # the update is not the direct gradient
    assert moved(model, before)


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


def test_dp_adds_noise(setting):
    """The same seed gives the same model; noise_multiplier 1 gives another one than 0."""
    budget = Budget("t", max_epochs=1, max_steps_per_epoch=2)

    def trained(noise):
        torch.manual_seed(0)
        return defense("dp", noise_multiplier=noise, recipe={"epochs": 1, "batch_size": 64}).run(context(setting, budget))

    assert not moved(trained(1.0), trained(1.0))
    assert moved(trained(1.0), trained(0.0))


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


def test_fp_stops_pruning_at_the_accuracy_limit(setting, monkeypatch):
    """Pruning stops at the last step within max_drop of the starting holdout accuracy: one more
    step would have crossed it (so the rule, not the channel count, ended it)."""
    ctx = context(setting, Budget("t", max_epochs=1, max_steps_per_epoch=1))
    captured = {}
    original = Trainer.fit

    def before_fine_tuning(self, model, data, recipe, **kwargs):
        captured["mask"] = next(m for m in model.modules() if isinstance(m, ChannelMask)).mask.clone()
        captured["accuracy"] = self.accuracy(model, data)
        captured["model"] = copy.deepcopy(model)
        return original(self, model, data, recipe, **kwargs)

    monkeypatch.setattr(Trainer, "fit", before_fine_tuning)
    max_drop = 0.05
    defense("fp", max_drop=max_drop).run(ctx)
    trainer = ctx.trainer
    start = trainer.accuracy(ctx.backdoored_model, ctx.holdout)
    pruned = int(ctx.metrics["pruned_channels"])
    channels = captured["mask"].numel()
    assert 0 < pruned < channels - 1
    assert captured["accuracy"] >= start - max_drop
    model = captured["model"]
    mask = next(m for m in model.modules() if isinstance(m, ChannelMask))
    activity = defense("fp").channel_activity(trainer, model, mask, ctx.holdout)
    mask.mask[activity.argsort()[: pruned + 1]] = 0  # the step the rule refused
    assert trainer.accuracy(model, ctx.holdout) < start - max_drop


def test_ft_trains_the_backdoored_model_on_the_holdout(setting):
    ctx = context(setting, Budget("t", max_epochs=1, max_steps_per_epoch=2))
    before = copy.deepcopy(ctx.backdoored_model)
    assert moved(defense("ft").run(ctx), before)


def test_attacker_training_control_reaches_the_victims_training_and_tnr_stage1_only(tmp_path, monkeypatch):
    """lba_k's latent loss acts in normal training and T&R's stage 1 (the victim's objective with
    T&R's terms added), not in ABL's or DP-SGD's own trainings."""
    from benchbd.config import Layers, parse_set
    from benchbd.runner import Cache, Results, Runner

    seen = []
    original = Trainer.fit

    def recording_fit(self, model, data, recipe, **kwargs):
        seen.append((kwargs.get("desc"), getattr(data, "training_control", None) is not None))
        return original(self, model, data, recipe, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    layers = Layers(cli=parse_set(["dataset.synthetic.n_train=300", "dataset.synthetic.n_test=50"]))
    runner = Runner(Results(tmp_path), Cache(tmp_path / "cache"), layers, device="cpu")
    runner.run(runner.plan(["synthetic"], "lba_12", "none,tnr,abl,dp", [0], "smoke"))
    assert [row["status"] for row in Results(tmp_path).rows()] == ["ok"] * 4
    controlled = dict(seen)
    assert controlled["backdoored"] and controlled["T&R stage 1"]
    assert not controlled["ABL isolation"] and not controlled["ABL training on the rest"] and not controlled["DP-SGD"]
    assert not controlled["T&R stage 2"]  # the holdout is clean: no attacker there
