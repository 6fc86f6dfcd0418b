"""The defenses compared with since the paper (`--defenses modern`): each mechanism on tiny data."""

import copy
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchbd.attacks import ATTACKS
from benchbd.cli import main
from benchbd.config import Layers, parse_set
from benchbd.defenses import DEFENSES, DefenseContext, defense_groups
from benchbd.defenses.clp import conv_bn_pairs
from benchbd.models import create_model
from benchbd.runner import Cache, Results, Runner

from .conftest import REPO
from .test_cli import SYN


def trained_looking(name="wrn16_1"):
    """A model with non-trivial BatchNorm statistics, as after training."""
    torch.manual_seed(0)
    net = create_model(name, 10)
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def uclc_by_hand(conv, bn):
    """Largest singular value of each output channel's [C_in, kh*kw] kernel times |gamma| / sigma (numpy SVD)."""
    w = conv.weight.detach().double().numpy()
    scale = np.abs(bn.weight.detach().double().numpy()) / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    return np.array([np.linalg.svd(w[k].reshape(w.shape[1], -1) * scale[k], compute_uv=False)[0] for k in range(w.shape[0])])


def test_clp_pairs_each_bn_with_the_conv_it_normalises():
    net = trained_looking()
    pairs = conv_bn_pairs(net, 32)
    blocks = [u for u in net.units if hasattr(u, "conv1")]
    assert [(c, b) for c, b in pairs if any(c is u.conv1 for u in blocks)] == [(u.conv1, u.bn2) for u in blocks]
    assert (net.units[0], blocks[0].bn1) in pairs  # the stem conv feeds the first block's BN directly
    assert len(pairs) == len(blocks) + 1  # the other BNs normalise residual sums: no conv of their own
    post_activation = conv_bn_pairs(create_model("resnet34", 10, input_size=32).eval(), 32)
    bns = [m for m in create_model("resnet34", 10, input_size=32).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(post_activation) == len(bns)  # conv -> BN everywhere: every BN is paired, as the official code


def test_clp_prunes_the_channel_with_a_planted_high_lipschitz_bound():
    net = trained_looking()
    block = net.units[3]
    with torch.no_grad():
        block.conv1.weight[5] *= 25  # channel 5 of this layer: a planted outlier of its UCLC
    before = copy.deepcopy(net)
    ctx = DefenseContext(None, None, 10, 0, backdoored_model=net)
    out = DEFENSES.get("clp")(DEFENSES.get("clp").Params(u=3.0), "clp").run(ctx)
    uclc = uclc_by_hand(block.conv1, block.bn2)
    assert uclc[5] > uclc.mean() + 3 * uclc.std(ddof=1)
    pruned = out.units[3].bn2
    assert pruned.weight[5] == 0 and pruned.bias[5] == 0
    assert torch.count_nonzero(pruned.weight) == pruned.num_features - 1  # the rest of the layer stays
    assert ctx.metrics["pruned_channels"] >= 1 and ctx.metrics["clp_layers"] == 7
    assert torch.equal(net.units[3].bn2.weight, before.units[3].bn2.weight)  # the backdoored model itself is untouched
    for name, value in out.state_dict().items():  # nothing but BN affine parameters changes: no data, no training
        if not torch.equal(value, before.state_dict()[name]):
            assert name.endswith((".weight", ".bias")) and "bn" in name, name
    # u = 0 prunes every channel above its layer's mean: many more
    ctx0 = DefenseContext(None, None, 10, 0, backdoored_model=copy.deepcopy(before))
    DEFENSES.get("clp")(DEFENSES.get("clp").Params(u=0.0), "clp").run(ctx0)
    assert ctx0.metrics["pruned_channels"] > 5 * ctx.metrics["pruned_channels"]


def test_defense_groups_and_every_modern_defense_against_every_attack_through_the_cli(tmp_path):
    groups = defense_groups()
    modern = ["ac", "bti_dbf", "clp", "fst", "ftsam", "nc", "rnp", "sau", "spectral"]
    assert groups["modern"] == modern and not set(groups["modern"]) & set(groups["all"])
    assert {"tnr", "ft", "fp", "dp"} <= set(groups["all"])
    # 135 cells: a smaller synthetic set than SYN's keeps their evaluations and feature passes short
    small = ["--set", "dataset.synthetic.n_train=200", "--set", "dataset.synthetic.n_test=40"]
    res = CliRunner().invoke(main, ["run", *SYN, *small, "--attacks", "all,modern", "--defenses", "modern", "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = Results(tmp_path).rows()
    attacks = [n for n in ATTACKS.names() if ATTACKS.get(n).in_all or ATTACKS.get(n).group == "modern"]
    assert len(attacks) == 15 and {(r["attack"], r["defense"]) for r in rows} == {(a, d) for a in attacks for d in modern}
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    assert all("pruned_channels" in r["metrics"] for r in rows if r["defense"] in ("clp", "rnp"))
    assert all({"rnp_unlearned_asr", "rnp_unlearned_ca"} <= set(r["metrics"]) for r in rows if r["defense"] == "rnp")
    assert all(r["metrics"]["n_clean"] == int(0.4 * r["n_holdout"]) for r in rows if r["defense"] == "fst")
    assert all(r["metrics"]["n_clean"] == int(0.2 * r["n_holdout"]) for r in rows if r["defense"] == "rnp")
    assert all({"nc_anomaly_index", "nc_flagged", "nc_found_target"} <= set(r["metrics"]) for r in rows if r["defense"] == "nc")
    assert all(
        {"detection_precision", "detection_recall", "removed"} <= set(r["metrics"]) for r in rows if r["defense"] in ("spectral", "ac")
    )
    res = CliRunner().invoke(
        main,
        [
            "table",
            "--results",
            str(tmp_path),
            *("--extra", "pruned_channels", "--extra", "nc_anomaly_index", "--extra", "detection_recall"),
        ],
    )
    assert res.exit_code == 0 and "pruned_channels" in res.output and "nc_anomaly_index" in res.output and "detection_recall" in res.output
    res = CliRunner().invoke(main, ["list", "defenses"], env={"COLUMNS": "250"})
    assert re.search(r"^clp +modern +model, no data +CLP", res.output, re.M), res.output
    res = CliRunner().invoke(main, ["show", "defense", "clp"])
    assert "Zheng" in res.output and "group: modern (not in 'all')" in res.output and "(no data)" in res.output


def fst_setting():
    from benchbd.data import Split
    from benchbd.data.augment import SmallImages
    from benchbd.train import Budget, Trainer

    from .conftest import random_images

    holdout = Split(random_images(200), torch.arange(200) % 10)
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=2, max_steps_per_epoch=3), "cpu", seed=0)
    return trainer, holdout, trained_looking()


def test_fst_reinitialises_the_head_and_its_loss_pushes_away_from_the_old_head(monkeypatch):
    trainer, holdout, backdoored = fst_setting()
    old = backdoored.tail[-1].weight.detach().clone()
    seen = {}
    real_fit = trainer.fit

    def spy(model, data, recipe, **kwargs):
        head = model.tail[-1]
        seen.update(start=head.weight.detach().clone(), bias=head.bias.detach().clone(), n=len(data), recipe=recipe)
        x, y = holdout.images[:8].permute(0, 3, 1, 2).float() / 255, holdout.labels[:8]
        with torch.no_grad():
            seen["loss"] = float(kwargs["loss"](model.eval(), x, y, None))
            seen["by_hand"] = float(torch.nn.functional.cross_entropy(model(x), y) + 0.1 * (head.weight * old).sum())
        return real_fit(model.train(), data, recipe, **kwargs)

    monkeypatch.setattr(trainer, "fit", spy)
    ctx = DefenseContext(trainer, None, 10, 0, holdout=holdout, backdoored_model=copy.deepcopy(backdoored))
    out = DEFENSES.get("fst")(DEFENSES.get("fst").Params(), "fst").run(ctx)
    bound = 1 / np.sqrt(old.shape[1])
    assert not torch.equal(seen["start"], old) and seen["start"].abs().max() <= bound and seen["bias"].abs().max() <= bound
    assert abs(float((seen["start"] * old).sum())) < 0.2 * float(old.norm() ** 2)  # a fresh direction, not a copy
    assert abs(seen["loss"] - seen["by_hand"]) < 1e-5
    assert seen["n"] == 80 == ctx.metrics["n_clean"]  # 40% of the 200-image holdout (2% of a training set)
    assert seen["recipe"].weight_decay == 0 and seen["recipe"].optimizer == "sgd"
    trained = out.tail[-1].weight.detach()
    assert torch.allclose(trained.norm(), old.norm(), rtol=1e-5)  # projected back to the old head's norm after every step
    assert any(not torch.equal(a, b) for a, b in zip(out.units.parameters(), backdoored.units.parameters()))  # the whole net tunes


def test_fst_feature_shift_term_lowers_the_alignment_with_the_old_head():
    """With alpha, the new head ends less aligned with the backdoored head than without it."""
    alignments = {}
    for alpha in (0.0, 5.0):
        trainer, holdout, backdoored = fst_setting()
        old = backdoored.tail[-1].weight.detach().clone()
        ctx = DefenseContext(trainer, None, 10, 0, holdout=holdout, backdoored_model=copy.deepcopy(backdoored))
        torch.manual_seed(0)
        out = DEFENSES.get("fst")(DEFENSES.get("fst").Params(alpha=alpha), "fst").run(ctx)
        alignments[alpha] = float((out.tail[-1].weight.detach() * old).sum())
    assert alignments[5.0] < alignments[0.0] - 0.1


def one_step(rho, adaptive=True):
    """The backdoored model after one FT-SAM step on the same batch; and what the step saw."""
    from benchbd.data.augment import SmallImages
    from benchbd.train import Budget, Trainer, TrainRecipe

    trainer, holdout, backdoored = fst_setting()
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=1, max_steps_per_epoch=1), "cpu", seed=0)
    recipe = TrainRecipe(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant", epochs=1, batch_size=64)
    params = DEFENSES.get("ftsam").Params(rho=rho, adaptive=adaptive, recipe=recipe)
    ctx = DefenseContext(trainer, None, 10, 0, holdout=holdout, backdoored_model=copy.deepcopy(backdoored))
    return DEFENSES.get("ftsam")(params, "ftsam").run(ctx), backdoored


def test_ftsam_step_differs_from_plain_sgd_and_follows_the_asam_rule():
    from benchbd.defenses.ftsam import ascent

    plain, start = one_step(rho=0.0)  # e = 0: plain SGD on label-smoothed CE at w
    sam, _ = one_step(rho=2.0)
    moved = lambda a: sum(float((p - q).detach().abs().sum()) for p, q in zip(a.parameters(), start.parameters()))  # noqa: E731
    assert moved(plain) > 0 and moved(sam) > 0
    assert any(not torch.allclose(p, q) for p, q in zip(sam.parameters(), plain.parameters()))  # the SAM update is another step
    # the ascent, by hand: rho |w|^2 g / || |w| g ||
    w = [torch.tensor([3.0, -1.0]), torch.tensor([2.0])]
    g = [torch.tensor([1.0, 2.0]), torch.tensor([-1.0])]
    norm = np.sqrt((3 * 1) ** 2 + (1 * 2) ** 2 + (2 * 1) ** 2)
    e = ascent(w, g, 2.0, adaptive=True)
    assert torch.allclose(e[0], torch.tensor([9 * 1, 1 * 2]) * 2 / norm) and torch.allclose(e[1], torch.tensor([4 * -1.0]) * 2 / norm)
    e = ascent(w, g, 2.0, adaptive=False)
    assert torch.allclose(e[0], torch.tensor([1.0, 2.0]) * 2 / 6**0.5)


def test_ftsam_restores_the_weights_before_the_step_and_keeps_bn_statistics_of_the_first_pass():
    from benchbd.defenses.ftsam import SharpnessAware

    net = trained_looking().train()
    sam = SharpnessAware(DEFENSES.get("ftsam").Params())
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 10
    before = copy.deepcopy(net.state_dict())
    loss = sam.loss(net, x, y, None)
    assert any(not torch.equal(p, before[n]) for n, p in net.named_parameters())  # perturbed for the second pass
    reference = copy.deepcopy(trained_looking().train())
    reference.load_state_dict(before)
    reference(x)  # one ordinary training forward pass
    stats = [n for n in before if "running" in n]
    assert all(torch.allclose(net.state_dict()[n], reference.state_dict()[n]) for n in stats)  # the second pass adds nothing
    loss.backward()
    used = [p for p, _ in sam.pending]  # the parameters the forward pass uses (WRN's quirk leaves two bn1s out)
    sam.restore(None, (), {})
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())
    assert len(used) >= len(list(net.parameters())) - 4 and all(p.grad is not None for p in used)  # gradients from w + e


# --- Neural Cleanse --------------------------------------------------------------------------


class PlantedCorner(torch.nn.Module):
    """A nearest-colour classifier with a planted backdoor: a white 3x3 top-left corner sends any
    image to class 3. Reaching another class needs most of the image recoloured."""

    def __init__(self, prototypes, backdoor=True):
        super().__init__()
        self.prototypes = torch.nn.Parameter(prototypes.clone())
        self.backdoor = backdoor

    def forward(self, x):
        logits = -40 * torch.cdist(x.mean((2, 3)), self.prototypes).pow(2)
        if self.backdoor:
            bonus = 60 * torch.sigmoid(20 * (x[:, :, :3, :3].mean((1, 2, 3)) - 0.75))
            logits = logits + bonus[:, None] * torch.nn.functional.one_hot(torch.tensor(3), 10).to(x)
        return logits


def colour_holdout(n=300, seed=1):
    from benchbd.data import Split

    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, 3, generator=g) * 0.6 + 0.2
    labels = torch.arange(n) % 10
    images = (prototypes[labels][:, None, None, :] + 0.05 * torch.randn(n, 32, 32, 3, generator=g)).clamp(0, 1)
    return Split((images * 255).to(torch.uint8), labels), prototypes


def nc_run(backdoor=True):
    from benchbd.data.augment import SmallImages
    from benchbd.train import Budget, Trainer, TrainRecipe

    holdout, prototypes = colour_holdout()
    model = PlantedCorner(prototypes, backdoor)
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=80), "cpu", seed=0)
    params = DEFENSES.get("nc").Params(batch_size=100, recipe=TrainRecipe(optimizer="sgd", lr=0.01, epochs=2, batch_size=100))
    ctx = DefenseContext(trainer, None, 10, 0, holdout=holdout, backdoored_model=model, attack_target=3)
    defense = DEFENSES.get("nc")(params, "nc")
    return defense, ctx, defense.run(ctx), model


def test_nc_flags_the_planted_target_with_the_highest_anomaly_index_and_unlearns_its_trigger():
    defense, ctx, out, model = nc_run()
    l1 = ctx.metrics["nc_mask_l1"]
    assert ctx.metrics["nc_flagged"] == [3] and ctx.metrics["nc_found_target"] is True
    assert int(np.argmin(l1)) == 3 and ctx.metrics["nc_anomaly_index"] > 2
    assert l1[3] < 0.05 * np.median(l1)  # the planted trigger is tiny next to every other label's
    mask, pattern = defense.reverse_engineer(ctx, copy.deepcopy(model).eval(), ctx.holdout, 3)
    assert mask[0, :3, :3].sum() > 0.5 * mask.sum() and pattern[:, :3, :3].mean() > 0.6  # a white corner, recovered
    assert not torch.equal(out.prototypes, model.prototypes)  # flagged: the model was fine-tuned (unlearning)
    assert torch.equal(model.prototypes, colour_holdout()[1])  # the backdoored model itself is untouched


def test_nc_without_a_backdoor_flags_nothing_and_returns_the_model_unchanged():
    _, ctx, out, model = nc_run(backdoor=False)
    assert ctx.metrics["nc_flagged"] == [] and ctx.metrics["nc_found_target"] is False
    assert torch.equal(out.prototypes, model.prototypes)


def test_nc_cost_schedule_and_mad_by_hand():
    from benchbd.defenses.nc import CostSchedule, anomaly

    p = DEFENSES.get("nc").Params(init_cost=1e-3, patience=2, cost_multiplier=2.0)
    s = CostSchedule(p)
    costs = []
    for success in [True, True, True, True, False, False, True]:
        s.update(success, float("inf"))
        costs.append(s.cost)
    # 0 until 2 successes, then init; doubled after 2 more; divided by 2^1.5 after 2 failures
    assert costs[:2] == [0.0, 1e-3] and costs[3] == 2e-3 and abs(costs[5] - 2e-3 / 2**1.5) < 1e-12
    l1 = torch.tensor([10.0, 100, 104, 96, 102, 98])
    index, flagged = anomaly(l1, 2.0)
    median = float(np.median(l1.numpy()))  # the official test's numpy median: 99, where torch's lower median is 98
    mad = 1.4826 * float(np.median(np.abs(l1.numpy() - median)))
    assert flagged == [0] and abs(index - abs(10 - median) / mad) < 1e-4
    lower = float((l1 - l1.median()).abs().median())
    assert abs(index - abs(10 - float(l1.median())) / (1.4826 * lower)) > 0.1  # torch's lower median gives another index


# --- RNP -------------------------------------------------------------------------------------


def rnp_setting():
    """A WRN that has learnt the colour task (holdout accuracy well above 20%) and its holdout."""
    from benchbd.data.augment import SmallImages
    from benchbd.train import Budget, Trainer, TrainRecipe

    holdout, _ = colour_holdout(n=640)
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=6), "cpu", seed=0)
    torch.manual_seed(0)
    model = trainer.fit(create_model("wrn16_1", 10), holdout, TrainRecipe(lr=0.01, epochs=6, batch_size=64))
    return trainer, holdout, model


def test_rnp_unlearns_below_the_clean_threshold_then_prunes_the_backdoored_model_by_recovered_masks(monkeypatch):
    from benchbd.defenses.anp import batchnorms
    from benchbd.defenses.rnp import ReconstructiveNeuronPruning

    trainer, holdout, backdoored = rnp_setting()
    assert trainer.accuracy(backdoored, holdout) > 0.6
    seen = {}
    real_recover = ReconstructiveNeuronPruning.recover

    def spy(self, ctx, model, clean):
        seen["unlearned"] = copy.deepcopy(model)
        masks = real_recover(self, ctx, model, clean)
        seen["masks"] = masks
        planted = {n: torch.ones_like(m) for n, m in masks.items()}
        planted["units.2.bn2"][4] = 0.1  # one channel that "did not recover"
        return planted

    monkeypatch.setattr(ReconstructiveNeuronPruning, "recover", spy)
    clips = []  # the official clip call sits between zero_grad and backward: it never clips, nor may ours
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *args, **kwargs: clips.append(args))
    params = DEFENSES.get("rnp").Params(holdout_share=1.0, batch_size=64, unlearning_lr=0.05)
    ctx = DefenseContext(trainer, None, 10, 0, holdout=holdout, backdoored_model=copy.deepcopy(backdoored))
    out = DEFENSES.get("rnp")(params, "rnp").run(ctx)
    assert not clips
    probe = ctx.probes["rnp_unlearned"]  # the row gets its ASR and CA (rnp_unlearned_asr, rnp_unlearned_ca)
    assert all(torch.equal(a, b) for a, b in zip(probe.state_dict().values(), seen["unlearned"].state_dict().values()))
    assert ctx.metrics["unlearned_accuracy"] <= 0.2  # unlearning erased the clean task before recovery
    assert trainer.accuracy(seen["unlearned"], holdout) < 0.35
    assert all(0 <= float(m.min()) and float(m.max()) <= 1 for m in seen["masks"].values())
    assert any(float(m.min()) < 1 for m in seen["masks"].values())  # the masks were learnt
    assert ctx.metrics["pruned_channels"] == 1 and ctx.metrics["n_clean"] == len(holdout)
    bn = batchnorms(out)["units.2.bn2"]
    assert bn.weight[4] == 0 and bn.bias[4] == batchnorms(backdoored)["units.2.bn2"].bias[4]  # weight only, as the official code
    changed = [n for n, v in out.state_dict().items() if not torch.equal(v, backdoored.state_dict()[n])]
    assert changed == ["units.2.bn2.weight"]  # pruned on the backdoored model, not the unlearned one


def test_rnp_halves_its_unlearning_lr_until_unlearning_is_gradual_on_the_clean_data_alone():
    trainer, holdout, backdoored = rnp_setting()
    fast = DEFENSES.get("rnp").Params(holdout_share=1.0, batch_size=64, unlearning_lr=0.05)
    ctx = DefenseContext(trainer, None, 10, 0, holdout=holdout, backdoored_model=copy.deepcopy(backdoored))
    DEFENSES.get("rnp")(fast, "rnp").run(ctx)
    quick = ctx.metrics["unlearning_epochs"]
    gradual = DEFENSES.get("rnp").Params(holdout_share=1.0, batch_size=64, unlearning_lr=0.05, min_unlearning_epochs=quick + 2)
    ctx = DefenseContext(trainer, None, 10, 0, holdout=holdout, backdoored_model=copy.deepcopy(backdoored))
    DEFENSES.get("rnp")(gradual, "rnp").run(ctx)
    m = ctx.metrics
    assert m["rnp_unlearning_lrs_tried"][0] == 0.05 and len(m["rnp_unlearning_lrs_tried"]) >= 2
    assert m["rnp_unlearning_lr"] < 0.05 and m["rnp_unlearning_lr"] in m["rnp_unlearning_lrs_tried"]
    assert m["unlearning_epochs"] >= quick and m["unlearned_accuracy"] <= 0.2  # the kept run reached the threshold
    with pytest.raises(ValueError, match="min_unlearning_epochs=30 is more than unlearning_epochs=20"):
        DEFENSES.get("rnp").Params(min_unlearning_epochs=30)


def test_rnp_takes_its_own_share_of_the_holdout():
    trainer, holdout, backdoored = rnp_setting()
    ctx = DefenseContext(trainer, None, 10, 0, holdout=holdout, backdoored_model=backdoored)
    DEFENSES.get("rnp")(DEFENSES.get("rnp").Params(), "rnp").run(ctx)
    assert ctx.metrics["n_clean"] == int(0.2 * len(holdout))  # 1% of a training set whose holdout is 5%


# --- SAU -------------------------------------------------------------------------------------


def test_sau_shared_adversarial_term_by_hand():
    from benchbd.defenses.sau import js_divergence, shared_adversarial_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=g)
    adv_label = torch.tensor([1, 2, 3, 4, 5, 6])
    selected = torch.tensor([True, False, True, True, False, True])
    p = torch.softmax(logits, 1)[torch.arange(6), adv_label]
    by_hand = -torch.log(1 - p[selected]).sum() / 6
    assert torch.allclose(shared_adversarial_loss(logits, adv_label, selected), by_hand, atol=1e-4)
    assert float(shared_adversarial_loss(logits, adv_label, torch.zeros(6, dtype=torch.bool))) == 0
    a, b = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    assert torch.allclose(js_divergence(a, b), js_divergence(b, a)) and torch.allclose(js_divergence(a, a), torch.zeros(4), atol=1e-6)
    pa, pb = torch.softmax(a, 1), torch.softmax(b, 1)
    m = (pa + pb) / 2
    assert torch.allclose(js_divergence(a, b), 0.5 * (pa * (pa / m).log()).sum(1) + 0.5 * (pb * (pb / m).log()).sum(1), atol=1e-5)


def test_sau_outer_loss_holds_the_shared_term_and_pgd_stays_in_its_ball():
    from benchbd.defenses.sau import SharedAdversarialUnlearning, shared_adversarial_loss

    reference = trained_looking().eval()
    model = copy.deepcopy(reference)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(0.05 * torch.randn_like(q))
    x, y = torch.rand(32, 3, 32, 32), torch.arange(32) % 10
    sau = SharedAdversarialUnlearning(DEFENSES.get("sau").Params(), "sau")
    delta = sau.shared_pgd(model, reference, x, y)
    assert float(delta.abs().max()) <= 0.2 + 1e-6 and not torch.all(delta == 0.2)  # moved from its +0.2 start, projected
    with_term, _ = sau.unlearning_loss(model, reference, x, y, delta)
    sau.params.lambda_shared = 0.0
    without, _ = sau.unlearning_loss(model, reference, x, y, delta)
    with torch.no_grad():
        adv_ref, clean_ref = reference(x + delta).argmax(1), reference(x).argmax(1)
        poison = (adv_ref != y) & (adv_ref != clean_ref)
        term = shared_adversarial_loss(model(x + delta), adv_ref, poison)
    assert poison.any() and float(term) > 0
    assert torch.allclose(with_term - without, term, atol=1e-5)


def test_sau_repairs_a_copy_with_bn_frozen_and_leaves_the_backdoored_model_alone(monkeypatch):
    trainer, holdout, backdoored = fst_setting()
    before = copy.deepcopy(backdoored.state_dict())
    ctx = DefenseContext(trainer, None, 10, 0, holdout=holdout, backdoored_model=backdoored)
    optimizers = []
    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **k: optimizers.append(k) or adam(*a, **k))
    out = DEFENSES.get("sau")(DEFENSES.get("sau").Params(batch_size=64), "sau").run(ctx)
    assert optimizers == [{"lr": 1e-4, "amsgrad": True}]  # the official optimiser
    assert all(torch.equal(v, before[n]) for n, v in backdoored.state_dict().items())
    stats = [n for n in before if "running" in n]
    assert all(torch.equal(out.state_dict()[n], before[n]) for n in stats)  # eval mode throughout, as the official code
    assert any(not torch.equal(out.state_dict()[n], before[n]) for n in before if n not in stats)
    assert 0 <= ctx.metrics["sau_shared_share_last_round"] <= 1


# --- Spectral Signatures and Activation Clustering ---------------------------------------------


def toy_net():
    """Features = the image average-pooled to 8x8 (the last unit's output and the classifier's input)."""
    from benchbd.models.base import SplitNet

    return SplitNet([torch.nn.Identity(), torch.nn.AvgPool2d(4)], torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)))


def toy_poisoned(n_poison, n_per=60, target=0, seed=0):
    """Ten plain-colour labels; poison: other labels' images with a white 4x4 corner, labelled `target`."""
    import itertools

    from benchbd.data import PoisonedSplit

    colours = torch.tensor([*itertools.product((0.2, 0.8), repeat=3), (0.5, 0.5, 0.5), (0.2, 0.5, 0.8)])
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10 * n_per) % 10
    images = (colours[labels][:, None, None, :] + 0.05 * torch.randn(len(labels), 32, 32, 3, generator=g)).clamp(0, 1)
    sources = torch.nonzero(labels != target).flatten()
    chosen = sources[torch.randperm(len(sources), generator=g)[:n_poison]].sort().values
    images[chosen, :4, :4] = 1.0
    labels[chosen] = target
    return PoisonedSplit((images * 255).to(torch.uint8), labels, poisoned=chosen)


def cleanse(name, n_poison, monkeypatch, **params):
    """Run SS or AC on the toy set; (metrics, removed mask, the sizes every training saw)."""
    from benchbd.data.augment import SmallImages
    from benchbd.train import Budget, Trainer, TrainRecipe

    data = toy_poisoned(n_poison)
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=15), "cpu", seed=0)
    recipe = TrainRecipe(lr=0.01, epochs=15, batch_size=32)
    torch.manual_seed(0)
    backdoored = trainer.fit(toy_net(), data, recipe)
    sizes, removed = [], {}
    from benchbd.defenses import common

    real_fit, real_score = trainer.fit, common.score_removal

    def fit_spy(model, split, recipe, **kwargs):
        sizes.append(len(split))
        return real_fit(model, split, recipe, **kwargs)

    def score_spy(ctx, data, mask, score=None):
        removed["mask"] = mask.clone()
        real_score(ctx, data, mask, score)

    monkeypatch.setattr(trainer, "fit", fit_spy)
    monkeypatch.setattr(common, "score_removal", score_spy)
    ctx = DefenseContext(trainer, toy_net, 10, 0, poisoned_train=data, backdoored_model=backdoored, normal_recipe=recipe)
    out = DEFENSES.get(name)(DEFENSES.get(name).Params(**params), name).run(ctx)
    assert out is not backdoored
    target = data.labels == 0
    in_target = removed["mask"] & target
    return ctx.metrics, removed["mask"], sizes, float(data.poison_mask[in_target].double().mean())


def test_spectral_signatures_remove_the_poison_of_the_target_label_and_retrain_on_the_rest(monkeypatch):
    metrics, removed, sizes, target_precision = cleanse("spectral", 20, monkeypatch)
    assert metrics["detection_recall"] >= 0.9 and target_precision >= 0.45  # 1.5 eps caps at half a label: 40 of 80
    assert metrics["detection_auroc"] > 0.9 and 0 < metrics["detection_f1"] <= 1  # its own score ranks the poison first
    assert metrics["removed"] == int(removed.sum()) and sizes == [600 - metrics["removed"]]  # one retraining, on the kept samples
    # per label: min(1.5 x 10% x 600, half the label)
    assert int(removed[toy_poisoned(20).labels == 3].sum()) == int(0.5 * int((toy_poisoned(20).labels == 3).sum()))
    # a smaller budget removes fewer per label
    small, removed_small, _, _ = cleanse("spectral", 20, monkeypatch, poison_budget=0.01)
    assert small["removed"] < metrics["removed"] and small["detection_precision"] > metrics["detection_precision"]


def test_auroc_of_a_known_score():
    from benchbd.defenses.common import auroc

    positive = torch.tensor([True, True, False, False, False])
    assert auroc(torch.tensor([0.9, 0.8, 0.1, 0.2, 0.3]), positive) == 1.0
    assert auroc(torch.tensor([0.1, 0.2, 0.9, 0.8, 0.7]), positive) == 0.0
    # (positive, negative) pairs: 0.5 beats 0.1 and 0.2 and ties 0.5 (half); 0.3 beats 0.1 and 0.2: (2.5 + 2) / 6
    assert abs(auroc(torch.tensor([0.5, 0.3, 0.1, 0.2, 0.5]), positive) - 4.5 / 6) < 1e-12
    assert np.isnan(auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])))


def test_spectral_score_is_the_squared_projection_on_the_top_singular_vector_of_centred_features():
    from benchbd.defenses.spectral import spectral_scores

    g = torch.Generator().manual_seed(0)
    features = torch.randn(50, 6, generator=g) + 3.0
    centred = (features - features.mean(0)).double().numpy()
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    assert np.allclose(spectral_scores(features).numpy(), (centred @ v) ** 2)


def test_activation_clustering_by_size_at_low_poison_and_by_exclusionary_reclassification_at_half(monkeypatch):
    low, _, sizes, precision = cleanse("ac", 20, monkeypatch)  # a quarter of the target label: the size rule decides
    assert low["detection_recall"] >= 0.9 and precision >= 0.9 and 0 not in low["ac_reclassified_labels"]
    assert len(sizes) == (3 if low["ac_decided_by_size"] < 10 else 1)  # two judges (without either cluster) when a label is undecided
    half, removed, sizes, precision = cleanse("ac", 60, monkeypatch)  # half the target label: no cluster under 35%
    assert 0 in half["ac_reclassified_labels"] and half["detection_recall"] >= 0.85 and precision >= 0.9
    assert sizes[-1] == 600 - half["removed"]  # the final model trains on what is kept
    size_only, _, _, _ = cleanse("ac", 60, monkeypatch, analysis="relative_size")  # without it the poison stays
    assert size_only["detection_recall"] < 0.2


def test_two_means_and_reclassification_by_hand():
    from benchbd.defenses.activation_clustering import reclassification, two_means

    g = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(30, 2, generator=g) * 0.1, torch.randn(10, 2, generator=g) * 0.1 + 5]).double()
    assign = two_means(points, 3, torch.Generator().manual_seed(1))
    assert len(set(assign[:30].tolist())) == 1 and len(set(assign[30:].tolist())) == 1 and assign[0] != assign[-1]
    ratio, spread = reclassification(torch.tensor([2, 2, 2, 5, 5, 1]), 2, 10)
    assert ratio == 1.5 and spread == 2 / 6


# --- BTI-DBF ---------------------------------------------------------------------------------


class CornerStamp(torch.nn.Module):
    """A stand-in trigger generator: paints the white 4x4 corner of `toy_poisoned`'s poison."""

    def forward(self, x):
        out = x.clone()
        out[:, :, :4, :4] = 1.0
        return out


def toy_backdoored():
    from benchbd.data.augment import SmallImages
    from benchbd.train import Budget, Trainer, TrainRecipe

    data = toy_poisoned(100)
    trainer = Trainer(SmallImages(), Budget("t", max_epochs=30), "cpu", seed=0)
    torch.manual_seed(0)
    model = trainer.fit(toy_net(), data, TrainRecipe(lr=0.03, epochs=30, batch_size=32), augment=False)  # crops would move the corner
    clean = torch.ones(len(data), dtype=torch.bool)
    clean[data.poisoned] = False
    return trainer, data.subset(clean), model


def toy_asr(trainer, model, clean):
    x = trainer.pipeline.test(clean.images)
    keep = clean.labels != 0
    with torch.no_grad():
        return float((model.eval()(CornerStamp()(x))[keep].argmax(1) == 0).double().mean())


def test_bti_dbf_detects_the_target_from_generated_images_and_unlearning_the_generated_trigger_removes_it():
    from benchbd.defenses.bti_dbf import BtiDbf

    trainer, clean, backdoored = toy_backdoored()
    assert toy_asr(trainer, backdoored, clean) > 0.8
    defense = BtiDbf(DEFENSES.get("bti_dbf").Params(batch_size=32, unlearning_epochs=5), "bti_dbf")
    ctx = DefenseContext(trainer, toy_net, 10, 0, holdout=clean)
    assert defense.detect_target(ctx, backdoored, CornerStamp(), clean) == 0  # the inverted trigger's majority label
    after = {}
    for name, gen_net in (("trigger", CornerStamp()), ("identity", torch.nn.Identity())):
        model = copy.deepcopy(backdoored)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        defense.unlearn(ctx, model, gen_net, optimizer, clean, 0)
        after[name] = toy_asr(trainer, model, clean)
    assert after["trigger"] < 0.2 < after["identity"]  # unlearning acts through the generated images


def test_bti_dbf_generator_shifts_non_benign_features_only_within_its_image_bound():
    from benchbd.defenses.bti_dbf import BtiDbf, UNet

    trainer, clean, backdoored = toy_backdoored()
    x = trainer.pipeline.test(clean.images[:64])
    moved = {}
    for bound in (1e-9, 10.0):
        torch.manual_seed(0)
        gen_net = UNet(base=4, levels=2)
        params = DEFENSES.get("bti_dbf").Params(batch_size=32, norm_bound=bound, feature_bound=1e9, mask_epochs=2, generator_epochs=5)
        ctx = DefenseContext(trainer, toy_net, 10, 0, holdout=clean)
        optimizer = torch.optim.Adam(gen_net.parameters(), lr=0.01)
        BtiDbf(params, "bti_dbf").invert(ctx, copy.deepcopy(backdoored), gen_net, optimizer, clean, 0, None)
        with torch.no_grad():
            out = gen_net.eval()(x)
            moved[bound] = float(torch.nn.functional.mse_loss(backdoored.penultimate(out), backdoored.penultimate(x)))
    assert moved[10.0] > 3 * moved[1e-9]  # unbounded, G pushes the features away; bounded, it only tracks the image


def test_bti_dbf_caches_its_generator_warm_up_and_reports_the_detected_target():
    trainer, clean, backdoored = toy_backdoored()
    calls = []
    ctx = DefenseContext(trainer, toy_net, 10, 0, holdout=clean, backdoored_model=backdoored, attack_target=0)
    ctx.cache_model = lambda purpose, identity, model, train: calls.append((purpose, identity)) or bool(train(model))
    params = DEFENSES.get("bti_dbf").Params(
        rounds=2, pretrain_epochs=1, mask_epochs=1, generator_epochs=1, unlearning_epochs=1, batch_size=32, generator_width=4
    )
    out = DEFENSES.get("bti_dbf")(params, "bti_dbf").run(ctx)
    assert [c[0] for c in calls] == ["generator_warmup"] and calls[0][1]["n_holdout"] == len(clean)
    assert ctx.metrics["bti_found_target"] == (ctx.metrics["bti_target"] == 0) and "bti_image_mse" in ctx.metrics
    assert any(not torch.equal(a, b) for a, b in zip(out.parameters(), backdoored.parameters()))


def test_bti_dbf_unet_is_the_official_network():
    """The official UNet's output on fixed images, with its weights loaded into ours by name
    (tests/fixtures/official/bti_dbf_unet.npz, made by tools/official_fixtures.py from
    xuxiong0214/BTIDBF), and the official parameter count at 32 filters and 4 levels."""
    from benchbd.defenses.bti_dbf import UNet

    fixture = np.load(REPO / "tests" / "fixtures" / "official" / "bti_dbf_unet.npz")
    ours = UNet(base=4, levels=2).eval()

    def our_name(official: str) -> str:
        for old, new in (
            ("contracting_path.", "down."),
            ("expanding_path.", "up."),
            ("bottle_neck_layer.", "bottom."),
            ("output.", "out."),
            ("up_sample_tranposed.", "upsample."),
            ("down_sample.", "block."),
            ("bn_op_", "norm"),
        ):
            official = official.replace(old, new)
        return official

    state = {our_name(k.removeprefix("param:")): torch.from_numpy(fixture[k]) for k in fixture.files if k.startswith("param:")}
    assert state.keys() == ours.state_dict().keys()
    ours.load_state_dict(state)
    with torch.no_grad():
        out = ours(torch.from_numpy(fixture["input"]))
    assert torch.allclose(out, torch.from_numpy(fixture["output"]), atol=1e-5)
    assert sum(p.numel() for p in UNet().parameters()) == int(fixture["parameters_used_at_32x4"])


def test_bti_dbf_measures_images_in_the_official_loaders_normalised_units(monkeypatch):
    """The official bounds (0.3 image MSE, 0.1 warm-up switch) and noise (0.03) are in the units of
    the official loader's mean/std normalisation. benchbd's CIFAR-10 models take raw pixels, so the
    units come from the parameters (the official CIFAR-10 statistics; GTSRB is fed raw), not from
    the model: a shift of 0.12 in pixels is 0.0144 of pixel MSE but 0.0144 / std^2 here."""
    from benchbd.config import Layers
    from benchbd.defenses import bti_dbf
    from benchbd.defenses.bti_dbf import BtiDbfParams, NormalisedGenerator, image_mse

    p = Layers().params("defense", "bti_dbf", "cifar10", BtiDbfParams)
    assert p.official_std == (0.2023, 0.1994, 0.2010) and p.official_mean == (0.4914, 0.4822, 0.4465)
    assert Layers().params("defense", "bti_dbf", "gtsrb", BtiDbfParams).official_std is None
    assert not create_model("wrn16_1", 10).normalize.enabled  # the units cannot come from the model
    std = torch.tensor(p.official_std).view(1, 3, 1, 1)
    x = torch.rand(4, 3, 32, 32)
    want = float(((0.12 / std) ** 2).mean())
    assert abs(float(image_mse(x + 0.12, x, std)) - want) < 1e-5 and want > 0.3  # over the bound; 0.0144 in pixels is not
    seen = []
    generator = NormalisedGenerator(
        type("Spy", (torch.nn.Module,), {"forward": lambda self, z: seen.append(z) or z})(), p.official_mean, p.official_std
    )
    assert torch.allclose(generator(x), x, atol=1e-6)  # identity in normalised units is identity in pixels
    assert torch.allclose(seen[0], (x - torch.tensor(p.official_mean).view(1, 3, 1, 1)) / std)
    # the defense's own run measures every image difference in those units
    trainer, clean, backdoored = toy_backdoored()
    scales = []
    real = bti_dbf.image_mse
    monkeypatch.setattr(bti_dbf, "image_mse", lambda a, b, s: scales.append(s) or real(a, b, s))
    ctx = DefenseContext(trainer, toy_net, 10, 0, holdout=clean, backdoored_model=backdoored)
    small = dict(rounds=1, pretrain_epochs=1, mask_epochs=1, generator_epochs=1, unlearning_epochs=1, batch_size=32, generator_width=4)
    params = DEFENSES.get("bti_dbf").Params(**small, official_mean=p.official_mean, official_std=p.official_std)
    DEFENSES.get("bti_dbf")(params, "bti_dbf").run(ctx)
    assert scales and all(torch.equal(s.cpu(), std) for s in scales)


def test_bti_dbf_masks_the_spatial_feature_map_before_pooling(monkeypatch):
    """The official features are the last stage's map before pooling: the benign-feature mask has its
    shape [1, C, H, W], and features -> logits through pooling gives the model's own logits."""
    from benchbd.defenses.bti_dbf import BtiDbf

    model = create_model("wrn16_1", 10).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feat = model.spatial_features(x)
        assert feat.shape == (2, 64, 8, 8) and torch.allclose(model.from_spatial_features(feat), model(x), atol=1e-5)
    from benchbd.defenses import bti_dbf
    from benchbd.defenses.bti_dbf import UNet

    trainer, clean, backdoored = toy_backdoored()
    shapes = []
    original = bti_dbf.feature_mask
    monkeypatch.setattr(bti_dbf, "feature_mask", lambda raw: shapes.append(tuple(raw.shape)) or original(raw))
    gen_net = UNet(base=4, levels=2)
    params = DEFENSES.get("bti_dbf").Params(batch_size=32, mask_epochs=1, generator_epochs=1)
    ctx = DefenseContext(trainer, toy_net, 10, 0, holdout=clean)
    BtiDbf(params, "bti_dbf").invert(ctx, copy.deepcopy(backdoored), gen_net, torch.optim.Adam(gen_net.parameters()), clean, 0, None)
    assert shapes and set(shapes) == {(1, 3, 8, 8)}  # toy_net's map before flattening: 3 channels at 8x8


def official(name):
    """An official-output fixture (tools/official_fixtures.py wrote it by running the official code)."""
    return np.load(REPO / "tests" / "fixtures" / "official" / f"{name}.npz")


def test_nc_mad_test_gives_the_official_anomaly_index_and_flags():
    """bolunwang/backdoor's outlier_detection on fixed mask norms: one clear outlier, one at 2.9, none."""
    from benchbd.defenses.nc import anomaly

    fixture = official("nc_mad")
    for norms, index, flagged in zip(fixture["norms"], fixture["anomaly_index"], fixture["flagged"]):
        ours, labels = anomaly(torch.tensor(norms), 2.0)
        assert abs(ours - index) < 1e-5, (ours, index)  # the official prints 6 decimals
        assert labels == [int(i) for i in np.nonzero(flagged)[0]]


def test_spectral_scores_match_the_official_code_uncentred_and_the_paper_centred():
    """MadryLab's compute_corr.py on one label's fixed features (80 clean rows, 20 shifted): the same top
    singular vector; `centred=False` ranks as its |v . R| and removes what its 85th percentile removes;
    the default is the paper's centred score, which differs on these features."""
    from benchbd.defenses.spectral import spectral_scores

    fixture = official("spectral_scores")
    features, v = torch.from_numpy(fixture["features"]), fixture["top_vector"]
    official_order = np.argsort(-fixture["scores"], kind="stable")
    uncentred = spectral_scores(features, centred=False).numpy()
    assert np.allclose(uncentred, fixture["scores"] ** 2)
    removed = fixture["removed"]
    assert sorted(np.argsort(-uncentred, kind="stable")[: len(removed)].tolist()) == sorted(removed.tolist())
    assert np.array_equal(np.argsort(-uncentred, kind="stable"), official_order)
    centred = fixture["features"] - fixture["features"].mean(0)
    assert np.allclose(spectral_scores(features).numpy(), (centred @ v) ** 2)  # v's sign does not matter once squared
    assert set(np.argsort(-spectral_scores(features).numpy())[: len(removed)].tolist()) != set(removed.tolist())


def test_activation_clustering_reduces_clusters_and_judges_size_as_art():
    """ART's cluster_activations (PCA 10, 2-means) and analyze_by_relative_size on fixed activations of
    four labels: a third poisoned, half, 52 of 150 (34.67%, which ART rounds to 0.35: not poison), and a
    clean label with a third apart (the size rule's false positive). The same projections (up to each
    axis' sign), the same partitions (up to the clusters' names) and the same decisions."""
    from benchbd.defenses.activation_clustering import poison_by_size, reduce, two_means

    fixture = official("ac_clusters")
    for i in range(len(fixture["sizes"])):
        ours = reduce(torch.from_numpy(fixture[f"activations_{i}"]), 10).numpy()
        theirs = fixture[f"reduced_{i}"]
        signs = np.sign((ours * theirs).sum(0))
        assert np.allclose(ours * signs, theirs, atol=1e-8)
        assign = two_means(torch.from_numpy(ours), 10, torch.Generator().manual_seed(0)).numpy()
        official_assign = fixture[f"clusters_{i}"]
        assert np.array_equal(assign, official_assign) or np.array_equal(assign, 1 - official_assign)
        smaller = int(min(np.bincount(assign, minlength=2)))
        flagged = poison_by_size(smaller, len(assign), 0.35)
        assert flagged == bool(fixture[f"poison_clusters_{i}"].any())
        assert flagged == (fixture[f"assigned_clean_{i}"].sum() < len(assign))
    assert not poison_by_size(52, 150, 0.35) and 52 < 0.35 * 150  # the rounding decides this label


def test_clp_prunes_the_channels_the_official_code_prunes():
    """rkteddy's CLP on a seeded conv -> BN -> ReLU -> conv -> BN network (a planted high-bound channel per
    layer) at u = 3 and u = 0: the same BN channels zeroed."""
    fixture = official("clp_bound")
    for u in (3, 0):
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
        )
        net.load_state_dict({k.removeprefix("state:"): torch.from_numpy(fixture[k]) for k in fixture.files if k.startswith("state:")})
        ctx = DefenseContext(None, None, 10, 0, backdoored_model=net)
        out = DEFENSES.get("clp")(DEFENSES.get("clp").Params(u=float(u)), "clp").run(ctx)
        zeroed = np.stack([(out[i].weight == 0).numpy() for i in (1, 4)])
        assert (zeroed == fixture[f"zeroed_u{u}"]).all(), (u, np.nonzero(zeroed), np.nonzero(fixture[f"zeroed_u{u}"]))


def test_clp_residual_convs_examines_the_convolutions_no_batchnorm_follows():
    """Off (the official method): only conv -> BN pairs; on: every other conv too, by its kernel's bound,
    a chosen channel pruned at the conv's output."""
    from benchbd.defenses.clp import conv_bn_pairs

    model = trained_looking()
    pairs = conv_bn_pairs(model, 32)
    alone = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and all(m is not c for c, _ in pairs)]
    assert len(pairs) == 7 and len(alone) == 8  # WRN-16-1: 6 conv2 and 2 shortcut convolutions feed residual sums
    target = alone[3]
    with torch.no_grad():
        target.weight[9] *= 40  # a planted outlier in a residual conv
    name = next(n for n, m in model.named_modules() if m is target)
    for residual, expect in ((False, False), (True, True)):
        ctx = DefenseContext(None, None, 10, 0, backdoored_model=model)
        out = DEFENSES.get("clp")(DEFENSES.get("clp").Params(residual_convs=residual), "clp").run(ctx)
        conv = dict(out.named_modules())[name]
        assert bool((conv.weight[9] == 0).all()) is expect
        assert ("clp_residual_layers" in ctx.metrics) is residual and ctx.metrics["clp_layers"] == 7
    assert int((target.weight[9] == 0).all()) == 0  # the backdoored model is left alone


def test_defenses_whose_official_loader_keeps_the_last_partial_batch_keep_it(tmp_path, monkeypatch):
    """FST, FT-SAM, NC, SAU, RNP and BTI-DBF (drop_last=False in their official loaders); the
    backdoored model's training and plain fine-tuning drop it (the paper's defenses' loaders)."""
    from benchbd.train import Trainer

    calls = []
    fit, batches = Trainer.fit, Trainer.batches

    def spy_fit(self, model, data, recipe, **kw):
        calls.append((kw.get("desc"), kw.get("drop_last", True)))
        return fit(self, model, data, recipe, **kw)

    def spy_batches(self, data, batch_size, purpose, augment=False, drop_last=True):
        calls.append((purpose, drop_last))
        return batches(self, data, batch_size, purpose, augment, drop_last)

    monkeypatch.setattr(Trainer, "fit", spy_fit)
    monkeypatch.setattr(Trainer, "batches", spy_batches)
    layers = Layers(cli=parse_set(["defense.nc.anomaly_threshold=0.001"]))  # NC flags labels, so it unlearns
    runner = Runner(Results(tmp_path / "r"), Cache(tmp_path / "c"), layers, device="cpu")
    rows = runner.run(runner.plan(["synthetic"], "badnet_grid", "fst,ftsam,nc,sau,rnp,bti_dbf,ft", [0], "smoke"))
    assert all(r["status"] == "ok" for r in rows)
    kept = {name.split(":")[0] for name, drop in calls if not drop}
    dropped = {name.split(":")[0] for name, drop in calls if drop}
    assert {"fst", "ft-sam", "NC unlearning", "nc", "sau", "rnp", "bti"} <= kept
    assert kept.isdisjoint(dropped) and {"backdoored", "fine-tuning"} <= dropped


def test_top_singular_vector_by_subspace_iteration_is_the_full_svds_and_falls_back_when_it_cannot_converge():
    """Spectral's speed route: the same v as a full SVD (up to sign) on features with a planted split;
    on a flat spectrum (isotropic noise) three iterations cannot converge, and the full SVD's v is returned."""
    from benchbd.defenses.spectral import top_right_singular_vector

    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, 64, generator=g, dtype=torch.float64) / torch.arange(1, 65, dtype=torch.float64)
    features[:200] += 0.5 * torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64)).Q[:, 7]
    features -= features.mean(0)
    full = torch.linalg.svd(features, full_matrices=False)[2][0]
    fast = top_right_singular_vector(features)
    assert torch.linalg.vector_norm(fast - torch.sign(fast @ full) * full) < 1e-8
    noise = torch.randn(400, 64, generator=g, dtype=torch.float64)
    assert torch.equal(top_right_singular_vector(noise, max_iter=3), torch.linalg.svd(noise, full_matrices=False)[2][0])
