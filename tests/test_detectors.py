"""Input-level detectors and the retuning check: mechanisms on toy models, scores by hand, the
threshold's data, and the CLI end to end on synthetic data."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner

from benchbd.cli import main
from benchbd.data import Split
from benchbd.data.augment import SmallImages
from benchbd.detectors import DETECTORS
from benchbd.detectors.corruptions import CORRUPTIONS, corrupt
from benchbd.detectors.evaluation import detect, split_calibration, threshold_at_fpr
from benchbd.detectors.ibd_psc import amplified, deepest_batchnorms
from benchbd.detectors.strip import entropy_bits
from benchbd.detectors.teco import transition_points
from benchbd.retune import RetuneParams, retune, retuning_set
from benchbd.train import Budget, Trainer

TARGET = 3


def identity_bn(channels: int) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels, eps=1e-12)
    bn.eval()
    return bn


CHECKER = (torch.arange(3)[:, None] + torch.arange(3)[None, :]) % 2 == 0  # the 3x3 top-left trigger's white cells


class ColourNet(torch.nn.Module):
    """A nearest-colour classifier whose colour means pass an identity BatchNorm, with a planted
    backdoor behind a BatchNorm of its own: a black-and-white 3x3 checker in the top-left corner
    sends any image to class 3 (`trigger_weight` 0: the backdoor's feature is computed but does not
    reach the logits). The feature is the checker's contrast wherever it is in the image, which a
    superimposed, scaled or shifted image keeps and a plain colour lacks."""

    def __init__(self, prototypes: torch.Tensor, backdoor: bool = True, trigger_weight: float = 1.0, sharpness: float = 10.0):
        super().__init__()
        self.sharpness = sharpness
        self.trigger_bn = identity_bn(1)  # registered first: the shallower layer for IBD-PSC
        self.colour_bn = identity_bn(3)
        self.prototypes = torch.nn.Parameter(prototypes.clone())
        self.trigger_weight = torch.nn.Parameter(torch.tensor(float(trigger_weight)))
        self.backdoor = backdoor

    def forward(self, x):
        colour = self.colour_bn(x.mean((2, 3))[:, :, None, None]).flatten(1)
        logits = -self.sharpness * torch.cdist(colour, self.prototypes).pow(2)
        if self.backdoor:
            kernel = (CHECKER / CHECKER.sum() - ~CHECKER / (~CHECKER).sum()).to(x)[None, None]
            contrast = torch.nn.functional.conv2d(x.mean(1, keepdim=True), kernel).amax((1, 2, 3))  # anywhere: crops move it
            feature = self.trigger_bn(contrast[:, None, None, None]).flatten()
            bonus = 60 * self.trigger_weight * torch.sigmoid(30 * (feature - 0.5))
            logits = logits + bonus[:, None] * torch.nn.functional.one_hot(torch.tensor(TARGET), 10).to(x)
        return logits


def colour_data(n: int, seed: int, prototypes: torch.Tensor | None = None) -> tuple[Split, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if prototypes is None:
        prototypes = torch.rand(10, 3, generator=torch.Generator().manual_seed(100)) * 0.6 + 0.2
    labels = torch.arange(n) % 10
    images = (prototypes[labels][:, None, None, :] + 0.05 * torch.randn(n, 32, 32, 3, generator=g)).clamp(0, 1)
    return Split((images * 255).round().to(torch.uint8), labels), prototypes


def stamp(split: Split) -> Split:
    """The triggered non-target images of `split`, with their true labels."""
    keep = split.labels != TARGET
    images = split.images[keep].clone()
    images[:, :3, :3] = (CHECKER[..., None] * 255).to(torch.uint8)
    return Split(images, split.labels[keep])


def trainer() -> Trainer:
    return Trainer(SmallImages(), Budget("t", max_epochs=100), "cpu", seed=0)


def run_detector(name: str, backdoor: bool, sharpness: float = 10.0, **params) -> dict:
    holdout, prototypes = colour_data(400, seed=1)
    test, _ = colour_data(300, seed=2, prototypes=prototypes)
    detector = DETECTORS.get(name)(DETECTORS.get(name).Params(**params), name)
    model = ColourNet(prototypes, backdoor, sharpness=sharpness)
    return detect(trainer(), model, detector, holdout, test, stamp(test), TARGET, 10, seed=0)


@pytest.mark.parametrize("name", ["strip", "scale_up", "ibd_psc", "teco"])
def test_each_detector_separates_a_planted_trigger_and_not_the_same_model_without_it(name):
    params = {"overlays": 20} if name == "strip" else {}
    planted, clean = run_detector(name, True, **params), run_detector(name, False, **params)
    assert planted["auroc"] > 0.9, planted
    assert abs(clean["auroc"] - 0.5) < 0.15, clean
    assert planted["holdout_fpr"] <= 5.0 and planted["n_fit"] + planted["n_calibration"] == 400
    # the toy's ASR is 100 without the detector: behind it, exactly the triggered inputs it lets through
    assert planted["filtered_asr"] == pytest.approx(100 - planted["tpr_at_5fpr"], abs=1e-3)
    assert planted["cost_forward_passes"] == DETECTORS.get(name)(DETECTORS.get(name).Params(**params)).forward_passes()


@pytest.mark.parametrize("name", sorted(n for n in DETECTORS.names() if DETECTORS.entry(n).module.startswith("benchbd.")))
def test_every_registered_detector_fits_on_the_holdout_and_scores_one_number_per_input(name):
    holdout, prototypes = colour_data(40, seed=1)
    detector = DETECTORS.get(name)(DETECTORS.get(name).Params(), name)
    assert detector.source and detector.forward_passes() >= 1
    from benchbd.detectors.base import DetectorContext

    model = ColourNet(prototypes)
    detector.fit(DetectorContext(trainer(), model, holdout, 10, 0))
    x = SmallImages().test(holdout.images[:6])
    scores = detector.score(model, x, torch.Generator().manual_seed(0))
    assert scores.shape == (6,) and bool(torch.isfinite(scores).all())


def test_the_threshold_is_set_on_the_holdout_and_never_moves_with_the_test_set():
    holdout, prototypes = colour_data(400, seed=1)
    test, _ = colour_data(300, seed=2, prototypes=prototypes)
    detector = DETECTORS.get("ibd_psc")(DETECTORS.get("ibd_psc").Params(), "ibd_psc")  # continuous scores
    model = ColourNet(prototypes)
    first = detect(trainer(), model, detector, holdout, test, stamp(test), TARGET, 10, seed=0)
    poisoned_test = Split(stamp(test).images, torch.full((len(stamp(test)),), TARGET))  # test labels and images both changed
    second = detect(trainer(), model, detector, holdout, poisoned_test, stamp(test), TARGET, 10, seed=0)
    assert first["threshold"] == second["threshold"] and first["holdout_fpr"] == second["holdout_fpr"]
    from benchbd.detectors.base import DetectorContext
    from benchbd.detectors.evaluation import scores_of

    fit, cal = split_calibration(holdout, seed=0)
    detector.fit(DetectorContext(trainer(), model, fit, 10, 0))  # detect() fitted a copy of its own
    assert first["threshold"] == threshold_at_fpr(scores_of(trainer(), model, detector, cal.images, 0, "calibration"))
    fit, cal = split_calibration(holdout, seed=0)
    assert len(fit) == len(cal) == 200 and all(int((cal.labels == c).sum()) == 20 for c in range(10))


def test_tied_scores_get_the_expected_rates_of_the_randomised_test_at_five_percent():
    """SCALE-UP's SPC is discrete: on this toy most clean holdout images tie at the top, so the
    strict threshold flags nothing; the randomised test flags a tied input with the probability
    that makes the holdout rate 5% in expectation."""
    found = run_detector("scale_up", True, sharpness=10.0)
    r = found["tie_flag_probability"]
    assert 0 < r <= 1 and found["fpr_tiebreak"] >= found["fpr"] and found["tpr_at_5fpr_tiebreak"] >= found["tpr_at_5fpr"]


def test_threshold_at_fpr_keeps_the_holdout_rate_at_or_below_the_target_with_ties():
    scores = torch.tensor([0.0] * 10 + [1.0] * 85 + [2.0] * 5)
    tau = threshold_at_fpr(scores, 0.05)
    assert tau == 1.0 and float((scores > tau).double().mean()) <= 0.05
    tied = torch.tensor([0.0] * 90 + [1.0] * 10)  # 10% tied at the top: nothing above 1 may be flagged
    assert threshold_at_fpr(tied, 0.05) == 1.0


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_strip_entropy_by_hand_uniform_and_constant_models():
    x = torch.rand(4, 3, 8, 8)
    strip = DETECTORS.get("strip")(DETECTORS.get("strip").Params(overlays=5), "strip")
    strip.pool = torch.rand(6, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    assert torch.allclose(strip.score(FixedLogits(torch.zeros(10)), x, gen), torch.full((4,), -torch.log2(torch.tensor(10.0))))
    assert torch.allclose(strip.score(FixedLogits([100.0] + [0.0] * 9), x, gen), torch.zeros(4), atol=1e-6)
    p = torch.tensor([[0.5, 0.25, 0.25]])
    assert torch.allclose(entropy_bits(p.log()), torch.tensor([1.5]))  # -(.5 log2 .5 + 2 x .25 log2 .25)


def test_strip_sums_the_overlay_unclipped_as_the_official_notebook_unless_told_to_clip():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen["max"] = float(x.max())
            return torch.zeros(len(x), 10)

    for superimpose, top in (("sum", 2.0), ("clip", 1.0)):
        strip = DETECTORS.get("strip")(DETECTORS.get("strip").Params(overlays=3, superimpose=superimpose), "strip")
        strip.pool = torch.ones(2, 3, 4, 4)
        strip.score(Spy(), torch.ones(1, 3, 4, 4), torch.Generator().manual_seed(0))
        assert seen["max"] == top


def test_scale_up_consistency_by_hand_and_its_data_limited_statistics():
    class Brightness(torch.nn.Module):  # class 1 when the mean pixel is above 0.5, else class 0
        def forward(self, x):
            return torch.stack([0.5 - x.mean((1, 2, 3)), x.mean((1, 2, 3)) - 0.5], 1)

    up = DETECTORS.get("scale_up")(DETECTORS.get("scale_up").Params(factors=(2, 3)), "scale_up")
    x = torch.stack([torch.full((3, 4, 4), v) for v in (0.1, 0.2, 0.3, 0.9)])
    # 0.1 -> 0.2, 0.3 (class 0, 0): 1; 0.2 -> 0.4, 0.6: 1/2; 0.3 -> 0.6, 0.9: 0; 0.9 -> clipped 1, 1: 1
    assert up.score(Brightness(), x, None).tolist() == [1.0, 0.5, 0.0, 1.0]
    assert up.score(FixedLogits([0.0, 1.0]), x, None).tolist() == [1.0] * 4  # a constant-class model
    limited = DETECTORS.get("scale_up")(
        DETECTORS.get("scale_up").Params(factors=(2, 3), variant="data_limited", min_class_images=2), "scale_up"
    )
    fit = Split(
        (torch.stack([torch.full((4, 4, 3), v) for v in (0.1, 0.2, 0.3, 0.9)]) * 255).round().to(torch.uint8), torch.tensor([0, 0, 0, 1])
    )
    from benchbd.detectors.base import DetectorContext

    limited.fit(DetectorContext(trainer(), Brightness(), fit, 2, 0))
    assert limited.fitted["pooled_classes"] == [1]  # one image of class 1: pooled statistics
    assert abs(float(limited.mean[0]) - 0.5) < 1e-6 and float(limited.std[0]) == pytest.approx((1 / 6) ** 0.5, abs=1e-3)


def test_ibd_psc_amplifies_the_deepest_batchnorms_without_touching_the_model_and_scores_by_hand():
    holdout, prototypes = colour_data(200, seed=1)
    model = ColourNet(prototypes)
    before = copy.deepcopy(model.state_dict())
    assert deepest_batchnorms(model) == ["colour_bn", "trigger_bn"]
    # BN weight and bias times omega = the eval-mode output times omega (identity statistics)
    bn, x = identity_bn(3), torch.randn(5, 3, 2, 2)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1), bn.running_mean.uniform_(-1, 1)
    from torch.func import functional_call

    assert torch.allclose(
        functional_call(bn, {k.split(".", 1)[1]: v for k, v in amplified(torch.nn.Sequential(bn), ["0"], 1.5).items()}, (x,)), 1.5 * bn(x)
    )
    detector = DETECTORS.get("ibd_psc")(DETECTORS.get("ibd_psc").Params(n=3), "ibd_psc")
    from benchbd.detectors.base import DetectorContext

    t = trainer()
    detector.fit(DetectorContext(t, model, holdout, 10, 0))
    assert detector.fitted["selection_fallback"] in (True, False) and detector.ensemble == [2, 2, 2]  # saturates at L = 2
    images = SmallImages().test(stamp(holdout).images[:8])
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        for bn in (by_hand.colour_bn, by_hand.trigger_bn):
            bn.weight *= 1.5
            bn.bias *= 1.5
        label = model(images).argmax(1)
        probs = by_hand(images).double().softmax(1)
        rest = probs.scatter(1, label[:, None], 0.0).sum(1)  # 1 - PSC as the other labels' mass (members identical here)
    score = detector.score(model, images, None)
    assert torch.allclose(score, -rest.log(), rtol=1e-6) and bool((score > 30).any())  # PSC within 1e-13 of 1: still ordered
    assert detector.paper_threshold() == pytest.approx(-math.log(0.1))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_ibd_psc_falls_back_to_all_layers_when_no_amplification_crosses_xi():
    holdout, prototypes = colour_data(100, seed=1)
    detector = DETECTORS.get("ibd_psc")(DETECTORS.get("ibd_psc").Params(omega=1.0), "ibd_psc")  # nothing changes
    from benchbd.detectors.base import DetectorContext

    detector.fit(DetectorContext(trainer(), ColourNet(prototypes), holdout, 10, 0))
    assert detector.fitted["selection_fallback"] is True and detector.fitted["k_star"] == 2


def test_teco_transition_points_and_corruptions_of_the_original_image():
    same = torch.tensor([[False, False, False, False, False], [True, True, True, True, True], [True, True, False, True, False]])
    assert transition_points(same).tolist() == [1, 6, 3]
    x = torch.rand(2, 3, 32, 32)
    kept = x.clone()
    for name in CORRUPTIONS:
        a = corrupt(x, name, 3, torch.Generator().manual_seed(7))
        b = corrupt(x, name, 3, torch.Generator().manual_seed(7))
        assert torch.equal(a, b) and torch.equal(x, kept), name  # seeded, and the input is left as it was
        assert float(a.min()) >= 0 and float(a.max()) <= 1 and torch.equal(a, (a * 255).round() / 255), name
    assert not torch.equal(corrupt(x, "contrast", 5, None), corrupt(corrupt(x, "contrast", 4, None), "contrast", 5, None))


def test_teco_corrupts_the_original_image_at_every_severity_never_the_previous_output():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(len(x), 10)

    teco = DETECTORS.get("teco")(DETECTORS.get("teco").Params(corruptions=("contrast", "brightness")), "teco")
    x = torch.rand(2, 3, 32, 32)
    teco.score(Spy(), x, torch.Generator().manual_seed(0))
    assert len(seen) == 1 + 2 * 5  # the clean prediction, then each (corruption, severity)
    expected = [corrupt(x, name, s, None) for name in ("contrast", "brightness") for s in range(1, 6)]
    assert all(torch.equal(got, want) for got, want in zip(seen[1:], expected))


def test_retuning_brings_a_superficially_removed_backdoor_back_and_not_onto_a_clean_model():
    clean, prototypes = colour_data(1000, seed=3)
    poison = stamp(clean)
    from benchbd.data import PoisonedSplit

    pool = PoisonedSplit(poison.images, torch.full((len(poison),), TARGET), poisoned=torch.arange(len(poison)))
    params = RetuneParams()
    data = retuning_set(clean, pool, 50_000, params, seed=0)
    assert len(data) == 1000 and int((data.images[:, :3, :3] == stamp(clean).images[0, :3, :3]).flatten(1).all(1).sum()) >= 5
    assert int((data.labels[:5] == TARGET).sum()) == 5
    test, _ = colour_data(300, seed=4, prototypes=prototypes)
    t = Trainer(SmallImages(), Budget("t", max_epochs=100), "cpu", seed=0)

    def evaluate(model):
        model.eval()
        with torch.no_grad():
            asr = float((model(SmallImages().test(stamp(test).images)).argmax(1) == TARGET).double().mean()) * 100
            ca = float((model(SmallImages().test(test.images)).argmax(1) == test.labels).double().mean()) * 100
        return asr, ca

    class Retunable(ColourNet):  # the toy's BatchNorms are identities by construction: kept so in training
        def train(self, mode=True):
            super().train(mode)
            self.colour_bn.eval(), self.trigger_bn.eval()
            return self

    purified = Retunable(prototypes, trigger_weight=0.0)  # the trigger's feature stays, its weight is gone
    back = retune(t, purified, data, params, 0, evaluate)
    assert len(back["retuning_asr"]) == 6 and back["retuning_asr"][0] < 5 and back["asr_after_retuning"] > 50
    assert back["retuning_epoch_asr_above_50"] is not None and back["ca_after_retuning"] > 80
    never = retune(t, Retunable(prototypes, backdoor=False), data, params, 0, evaluate)
    assert never["asr_after_retuning"] < 20 and never["retuning_epoch_asr_above_50"] is None
    assert float(purified.trigger_weight) == 0.0  # retuned a copy


def test_detectors_and_retuning_through_the_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "r"
    args = ["run", "--dataset", "synthetic", "--attacks", "blend", "--defenses", "ft", "--detectors", "ibd_psc,scale_up",
            "--retune", "--budget", "smoke", "--results", str(out), "--quiet"]  # fmt: skip
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    rows = [json.loads(p.read_text()) for p in (out / "rows").glob("*.json")]
    detectors = {r["detector"]: r for r in rows if "detector" in r}
    assert set(detectors) == {"ibd_psc", "scale_up"} and len(rows) == 4  # none joins for the controls
    for r in detectors.values():
        assert {"auroc", "tpr_at_5fpr", "fpr", "f1", "filtered_asr", "filtered_ca", "cost_forward_passes"} <= set(r["metrics"])
        assert r["asr"] == r["metrics"]["filtered_asr"] and r["defense_group"] == "detector"
    none = next(r for r in rows if r["defense"] == "none" and "detector" not in r)
    assert len(none["metrics"]["retuning_asr"]) == 6 and len(none["metrics"]["clean_model_retuning_asr"]) == 6
    ft = next(r for r in rows if r["defense"] == "ft")
    assert "asr_after_retuning" in ft["metrics"] and "clean_model_asr_after_retuning" not in ft["metrics"]
    assert any(t["name"] == "retuning" for t in ft["trainings"])
    row_file = out / "rows" / f"{detectors['scale_up']['cell_key']}.json"
    redo = runner.invoke(main, ["reproduce", str(row_file), "--quiet"])  # planned from the row alone: the detector's cell
    assert redo.exit_code == 0 and "reproduced: equal to the last digit" in redo.output, redo.output
    again = runner.invoke(main, args)
    assert again.exit_code == 0 and "0 cell(s) run, 4 already done" in again.output
    table = runner.invoke(main, ["table", "--results", str(out)])
    assert "detectors: AUROC" in table.output and "retuning controls" in table.output and "asr_after_retuning" in table.output
    assert "ca_after_retuning" in table.output
    from benchbd.report.plots import _retuned_points
    from benchbd.report.tables import build_grids
    from benchbd.runner import Results

    (grid,) = build_grids(Results(out).load())
    ((start, end),) = _retuned_points(grid, ["blend"], "ft").values()  # the scatter joins the cell to its retuned point
    assert end == (ft["metrics"]["asr_after_retuning"], ft["metrics"]["ca_after_retuning"]) and start == (ft["asr"], ft["ca"])
    scatter = runner.invoke(main, ["plot", "scatter", "--results", str(out), "--out", str(tmp_path / "s.png")])
    assert scatter.exit_code == 0 and (tmp_path / "s.png").is_file(), scatter.output
    listed = runner.invoke(main, ["list", "detectors"])
    assert all(name in listed.output for name in ("strip", "scale_up", "ibd_psc", "teco"))
    bad = runner.invoke(main, ["run", "--dataset", "synthetic", "--detectors", "stirp", "--results", str(out), "--dry-run"])
    assert bad.exit_code != 0 and "did you mean 'strip'" in bad.output and "Traceback" not in bad.output


def test_a_plugin_detector_from_the_plugin_guide_runs_through_the_cli(tmp_path):
    guide = (__import__("pathlib").Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    code = guide.split("## A detector", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    module = tmp_path / "my_detectors.py"
    module.write_text(code)
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["run", "--plugin", str(module), "--dataset", "synthetic", "--attacks", "badnet_white",
                                    "--detectors", "brightest_corner", "--budget", "smoke", "--results", str(out), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(p.read_text()) for p in (out / "rows").glob("*.json")]
    assert row["detector"] == "brightest_corner" and 0 <= row["metrics"]["auroc"] <= 1 and row["metrics"]["cost_forward_passes"] == 0
