"""The defenses compared with since the paper (`--defenses modern`): each mechanism on tiny data."""

import copy

import numpy as np
import torch
from click.testing import CliRunner

from benchbd.cli import main
from benchbd.defenses import DEFENSES, DefenseContext, defense_groups
from benchbd.defenses.clp import conv_bn_pairs
from benchbd.models import create_model
from benchbd.runner import Results

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


def test_defense_groups_and_the_cli_path(tmp_path):
    groups = defense_groups()
    assert groups["modern"] == ["clp", "fst", "ftsam"] and not set(groups["modern"]) & set(groups["all"])
    assert {"tnr", "ft", "fp", "dp"} <= set(groups["all"])
    res = CliRunner().invoke(main, ["run", *SYN, "--attacks", "badnet_grid,wanet", "--defenses", "modern", "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = Results(tmp_path).rows()
    assert {(r["attack"], r["defense"]) for r in rows} == {(a, d) for a in ("badnet_grid", "wanet") for d in ("clp", "fst", "ftsam")}
    assert all("pruned_channels" in r["metrics"] for r in rows if r["defense"] == "clp")
    assert all(r["metrics"]["n_clean"] == int(0.4 * r["n_holdout"]) for r in rows if r["defense"] == "fst")
    res = CliRunner().invoke(main, ["table", "--results", str(tmp_path), "--extra", "pruned_channels"])
    assert res.exit_code == 0 and "pruned_channels" in res.output
    res = CliRunner().invoke(main, ["list", "defenses"], env={"COLUMNS": "250"})
    assert "clp" in res.output and "Zheng" in res.output and "group 'modern'" in res.output


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
