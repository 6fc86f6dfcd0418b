"""Run each mechanism test against a deliberately broken copy of its method and report which fail
(every line should say CAUGHT). Restores each file after its run. `ONLY=ABL python tools/mutation_check.py`
runs the mutants whose name contains ABL.

The outcome of every mutant run is merged into tests/fixtures/mutations.json (with the commit it ran
at), keyed by the method's fidelity card (`defenses/nad`): docs/fidelity.md shows it per method."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECORD = ROOT / "tests" / "fixtures" / "mutations.json"
METHOD = {  # a mutant's fidelity card, by the file it breaks
    "benchbd/defenses/": "defenses/",
    "benchbd/attacks/": "attacks/",
    "benchbd/detectors/": "detectors/",
}
CARDS_OF_FILE = {  # else the file's stem
    "lba": ["lba_10", "lba_12", "lba_14"],
    "evaluation": ["strip", "scale_up", "ibd_psc", "teco"],
    "activation_clustering": ["ac"],
}
MUTANTS = [
    (
        "NAD attention term x0",
        "benchbd/defenses/nad.py",
        "value = value + beta * attention_loss(s, t, p.power)",
        "value = value + 0 * beta * attention_loss(s, t, p.power)",
        "nad_distils",
    ),
    (
        "ANP without the adversarial term",
        "benchbd/defenses/anp.py",
        "(1 - p.alpha) * F.cross_entropy(forward(x, noise_w, noise_b), y)",
        "(1 - p.alpha) * F.cross_entropy(forward(x), y)",
        "adversarial_noise_is_what_prunes",
    ),
    (
        "ANP noise clamped again",
        "benchbd/defenses/anp.py",
        "t.data = t.data + p.eps * g.sign()",
        "t.data = (t.data + p.eps * g.sign()).clamp_(-p.eps, p.eps)",
        "noise_step_is_not_clamped",
    ),
    (
        "ABL descends on the isolated set",
        "benchbd/defenses/abl.py",
        "return -F.cross_entropy(m(x), y)",
        "return F.cross_entropy(m(x), y)",
        "unlearning_raises",
    ),
    ("ABL without LGA", "benchbd/defenses/abl.py", "return torch.sign(loss - p.gamma) * loss", "return loss", "trains_with_the_lga_loss"),
    (
        "ABL isolation picks the highest losses",
        "benchbd/defenses/abl.py",
        "return losses.argsort()[:count].sort().values",
        "return losses.argsort(descending=True)[:count].sort().values",
        "isolates_mostly_poisoned",
    ),
    (
        "I-BAU as clean fine-tuning",
        "benchbd/defenses/ibau.py",
        "return F.cross_entropy(model(x + patch * pert), y)",
        "return F.cross_entropy(model(x), y)",
        "implicit_hypergradient_of_perturbed",
    ),
    (
        "I-BAU with the direct gradient",
        "benchbd/defenses/ibau.py",
        "grads = implicit_hypergradient(outer, fp_map, d, params, p.fixed_point_iterations)",
        "grads = [g if g is not None else torch.zeros_like(w) "
        "for g, w in zip(torch.autograd.grad(outer(d), params, allow_unused=True), params)]",
        "implicit_hypergradient_of_perturbed",
    ),
    (
        "T&R stage 2 does not train",
        "benchbd/defenses/tnr.py",
        'ctx.trainer.fit(model, ctx.need(Need.HOLDOUT), p.stage2, loss=loss, params=head.parameters(), desc="T&R stage 2")',
        "pass",
        "stage2_freezes",
    ),
    (
        "DP without noise",
        "benchbd/defenses/dp.py",
        "noise_multiplier=self.params.noise_multiplier",
        "noise_multiplier=0.0",
        "dp_adds_noise",
    ),
    (
        "FP without its accuracy stop rule",
        "benchbd/defenses/fp.py",
        "if ctx.trainer.accuracy(net, holdout) < start - self.params.max_drop:",
        "if False:",
        "fp_stops_pruning",
    ),
    (
        "lba features not those of the training step's forward pass",
        "benchbd/attacks/lba.py",
        "features = features.float().flatten(1)",
        "features = features.float().flatten(1).roll(1, 0)",
        "formula_on_the_training",
    ),
    (
        "CLP prunes the lowest bounds",
        "benchbd/defenses/clp.py",
        "return uclc > uclc.mean() + u * uclc.std()",
        "return uclc < uclc.mean() - u * uclc.std()",
        "clp_prunes_the_channel_with_a_planted",
    ),
    (
        "NC with torch's lower median",
        "benchbd/defenses/nc.py",
        "median = l1.quantile(0.5)",
        "median = l1.median()",
        "nc_mad_test_gives_the_official",
    ),
    (
        "RNP prunes the channels that recovered",
        "benchbd/defenses/rnp.py",
        "off = masks[name] <= p.threshold",
        "off = masks[name] > p.threshold",
        "rnp_unlearns_below",
    ),
    (
        "FST pulls towards the old head",
        "benchbd/defenses/fst.py",
        "return F.cross_entropy(model(x), y) + alpha * (head.weight * old.to(head.weight.device)).sum()",
        "return F.cross_entropy(model(x), y) - alpha * (head.weight * old.to(head.weight.device)).sum()",
        "fst_feature_shift_term_lowers",
    ),
    (
        "SAU's shared term on the unselected samples",
        "benchbd/defenses/sau.py",
        "pos = probs[chosen][selected]",
        "pos = probs[chosen][~selected]",
        "sau_shared_adversarial_term_by_hand",
    ),
    (
        "FT-SAM without the adaptive scaling",
        "benchbd/defenses/ftsam.py",
        "scaled = [(p.detach().abs() if adaptive else 1.0) * g for p, g in zip(params, grads)]",
        "scaled = [g for p, g in zip(params, grads)]",
        "ftsam_step_differs_from_plain_sgd",
    ),
    (
        "BTI-DBF bounds in [0, 1] pixels",
        "benchbd/defenses/bti_dbf.py",
        "        return channel_std(self.params.official_std, device)\n\n    def warm_up",
        "        return 1.0\n\n    def warm_up",
        "bti_dbf_measures_images_in_the_official_loaders_normalised_units",
    ),
    (
        "Input-aware's diversity in [0, 1] pixels",
        "benchbd/attacks/input_aware.py",
        "        return channel_std(self.params.official_std, device)",
        "        return 1.0",
        "input_aware_diversity_is_in_the_official_normalised_units",
    ),
    (
        "Input-aware's diversity pairing an image with itself",
        "benchbd/attacks/input_aware.py",
        "                x2 = partner(x, gen, avoid=n_bd)",
        "                x2 = partner(x, gen)",
        "input_aware_diversity_never_pairs_an_image_with_itself",
    ),
    (
        "Input-aware's generator gradients never zeroed",
        "benchbd/attacks/input_aware.py",
        "                if not p.accumulate_generator_grads:",
        "                if False:",
        "input_aware_generator_grads_are_zeroed",
    ),
    (
        "Spectral Signatures' direction from uncentred features",
        "benchbd/defenses/spectral.py",
        "_, _, vh = torch.linalg.svd(centred_rows, full_matrices=False)",
        "_, _, vh = torch.linalg.svd(rows, full_matrices=False)",
        "spectral_scores_match_the_official_code",
    ),
    (
        "Activation Clustering's size share unrounded",
        "benchbd/defenses/activation_clustering.py",
        "return round(smaller / max(total, 1), 2) < round(threshold, 2)",
        "return smaller / max(total, 1) < threshold",
        "reduces_clusters_and_judges_size_as_art",
    ),
    (
        "FST drops the last partial batch",
        "benchbd/defenses/fst.py",
        'desc="fst", drop_last=False)',
        'desc="fst")',
        "official_loader_keeps_the_last_partial_batch",
    ),
    (
        "WaNet field not normalised by its mean magnitude",
        "benchbd/attacks/wanet.py",
        "points = control_points / control_points.abs().mean()",
        "points = control_points",
        "wanet_grid_and_warp_are_the_official_ones",
    ),
    (
        "BppAttack squeezes to m + 1 levels",
        "benchbd/attacks/bpp.py",
        "return torch.round(images.float() / 255 * (levels - 1)) / (levels - 1) * 255",
        "return torch.round(images.float() / 255 * levels) / levels * 255",
        "bpp_trigger_and_negatives_are_the_official_ones",
    ),
    (
        "STRIP scores entropy without its sign",
        "benchbd/detectors/strip.py",
        "return -entropy_bits(logits).view(b, n).mean(1)",
        "return entropy_bits(logits).view(b, n).mean(1)",
        "separates_a_planted_trigger and strip",
    ),
    (
        "SCALE-UP does not scale",
        "benchbd/detectors/scale_up.py",
        "same = [predicted(model, (n * x).clamp(0, 1)) == label for n in factors]",
        "same = [predicted(model, x.clamp(0, 1)) == label for n in factors]",
        "scale_up",
    ),
    (
        "IBD-PSC amplifies the weight only",
        "benchbd/detectors/ibd_psc.py",
        'out[f"{name}.bias"] = modules[name].bias * omega',
        'out[f"{name}.bias"] = modules[name].bias',
        "ibd_psc",
    ),
    (
        "TeCo chains its corruptions",
        "benchbd/detectors/teco.py",
        "same = torch.stack([predicted(model, corrupt(x, name, s, gen)) == label for s in SEVERITIES], -1)",
        "same = torch.stack([predicted(model, x := corrupt(x, name, s, gen)) == label for s in SEVERITIES], -1)",
        "teco_corrupts_the_original_image",
    ),
    (
        "Detector threshold set on the test set",
        "benchbd/detectors/evaluation.py",
        "tau = threshold_at_fpr(calibration)",
        "tau = threshold_at_fpr(torch.cat([calibration, scores_of(trainer, model, detector, test.images, seed, 'test-clean')]))",
        "threshold_is_set_on_the_holdout",
    ),
]
ONLY = os.environ.get("ONLY")
results = []
for name, path, old, new, test in MUTANTS:
    if ONLY and ONLY not in name:
        continue
    f = ROOT / path
    text = f.read_text()
    assert text.count(old) == 1, (name, text.count(old))
    f.write_text(text.replace(old, new))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "tests/", "-k", test, "-p", "no:cacheprovider"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        last = (r.stdout.strip().splitlines() or ["?"])[-1]
    finally:
        f.write_text(text)
    outcome = (name, test, "CAUGHT" if r.returncode == 1 else f"NOT CAUGHT (rc {r.returncode})", last)
    print(outcome, flush=True)
    kind = next(card for prefix, card in METHOD.items() if path.startswith(prefix))
    for card in CARDS_OF_FILE.get(pathlib.Path(path).stem, [pathlib.Path(path).stem]):
        results.append((kind + card, *outcome))

commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
for method, name, test, verdict, _ in results:
    runs = [run for run in record.get(method, []) if run["mutant"] != name]
    record[method] = sorted(
        runs + [{"mutant": name, "test": test, "caught": verdict == "CAUGHT", "commit": commit}], key=lambda r: r["mutant"]
    )
RECORD.write_text(json.dumps(dict(sorted(record.items())), indent=1) + "\n")
print(f"recorded in {RECORD.relative_to(ROOT)}")
