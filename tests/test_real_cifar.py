"""On real CIFAR-10 (a 5,000-image slice of ../shared/datasets), the poisoning really plants a backdoor."""
from benchbd.data import split_holdout
from benchbd.models import create_model
from benchbd.runner import Cache, Results, Runner
from benchbd.train import BUDGETS, Trainer


def test_badnet_grid_backdoor_is_learned(cifar_slice, tmp_path):
    runner = Runner(Results(tmp_path), Cache(tmp_path / "cache"), device="cpu")
    (cell,) = runner.plan([f"npz:{cifar_slice}"], "badnet_grid", "none", [0], "demo")
    (row,) = runner.run([cell])
    assert (row["n_train"], row["n_holdout"]) == (4750, 250)
    assert row["n_asr"] == int((cell.data.test.labels != 0).sum())

    # Control: how often the same model calls a clean non-target test image "target" (its chance rate).
    splits = split_holdout(cell.data.train, cell.data.test, 10, 0.05, 0)
    trainer = Trainer(cell.dataset.pipeline, BUDGETS.get("demo"), "cpu", 0)
    new_model = lambda dropout=0.0: create_model("wrn16_1", 10)  # noqa: E731
    poisoned, _ = runner.poisoned_split(cell, splits, trainer, new_model)
    model, from_cache = runner.trained_model(cell, trainer, new_model, "backdoored", {"poison": cell.poison_identity()},
                                             poisoned.plus_clean(splits.holdout))
    assert from_cache
    clean = splits.test.subset(splits.test.labels != 0)
    control = 100 * (trainer.predict(model, clean.images) == 0).double().mean().item()
    assert row["ca"] > 40, row
    assert row["asr"] > 40 and row["asr"] > 4 * control, (row["asr"], control)
