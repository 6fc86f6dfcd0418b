"""Run each mechanism test against a deliberately broken copy of its method and report which fail
(every line should say CAUGHT). Restores each file after its run. `ONLY=ABL python tools/mutation_check.py`
runs the mutants whose name contains ABL."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
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
    results.append((name, test, "CAUGHT" if r.returncode == 1 else f"NOT CAUGHT (rc {r.returncode})", last))
    print(results[-1], flush=True)
