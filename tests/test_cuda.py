"""CUDA checks, run by tools/gpu_check.py on a leased GPU (marked `cuda`; skipped without a GPU,
so the CPU suite and CI, which have none, do not run them)."""

import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from benchbd.cli import main
from benchbd.config import build_params
from benchbd.data import DATASETS, split_holdout
from benchbd.data.augment import SmallImages
from benchbd.models import create_model
from benchbd.runner import Results
from benchbd.train import Budget, Trainer, TrainRecipe

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SYN = [
    "--dataset",
    "synthetic",
    "--set",
    "dataset.synthetic.n_train=600",
    "--set",
    "dataset.synthetic.n_test=200",
    "--budget",
    "smoke",
    "--quiet",
    "--device",
    "cuda",
]


def _data():
    cls = DATASETS.get("synthetic")
    data = cls(build_params(cls.Params, {"n_train": 1024, "n_test": 64}, "dataset.synthetic")).load()
    return split_holdout(data.train, data.test, 10, 0.05, 0)


def test_bf16_channels_last_training_tracks_float32():
    """The same steps on the same batches under bf16 autocast and in float32: finite, close losses."""
    splits = _data()
    trajectories = {}
    for mixed in (True, False):
        losses = []

        def recorded(model, x, y, gen, losses=losses):
            value = F.cross_entropy(model(x), y)
            losses.append(float(value))
            return value

        torch.manual_seed(0)
        trainer = Trainer(SmallImages(), Budget("t", max_epochs=1, max_steps_per_epoch=6), "cuda", seed=0)
        model = trainer.fit(
            create_model("wrn16_1", 10), splits.train, TrainRecipe(epochs=1, batch_size=128), loss=recorded, mixed_precision=mixed
        )
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        trajectories[mixed] = losses
    assert len(trajectories[True]) == 6 and all(math.isfinite(v) for v in trajectories[True])
    for low, full in zip(trajectories[True], trajectories[False]):
        assert abs(low - full) <= 0.05 + 0.05 * abs(full), trajectories


def test_dp_sgd_runs_on_cuda_in_float32(tmp_path):
    res = CliRunner().invoke(main, ["run", *SYN, "--attacks", "badnet_grid", "--defenses", "dp", "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (row,) = Results(tmp_path).rows()
    assert row["status"] == "ok" and 0 < row["metrics"]["epsilon"] < float("inf")
    assert "cpu" not in row["device"].lower()


def test_two_workers_share_one_gpu_and_record_peak_memory(tmp_path):
    res = CliRunner().invoke(
        main, ["run", *SYN, "--attacks", "badnet_grid,blend", "--defenses", "none,tnr", "--jobs-per-gpu", "2", "--results", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    rows = Results(tmp_path).rows()
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert all(r["peak_gpu_memory_mib"] > 0 for r in rows)


def test_the_same_seed_gives_the_same_row_twice(tmp_path):
    """Up to cuDNN's non-deterministic kernels: within a point of each other."""
    args = ["run", *SYN, "--attacks", "blend", "--defenses", "none", "--results", str(tmp_path / "a")]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "b"), "--cache-dir", str(tmp_path / "cache-b")])
    assert first.exit_code == 0 and second.exit_code == 0, (first.output, second.output)
    (a,), (b,) = Results(tmp_path / "a").rows(), Results(tmp_path / "b").rows()
    assert a["cell_key"] == b["cell_key"]
    assert abs(a["ca"] - b["ca"]) <= 1.0 and abs(a["asr"] - b["asr"]) <= 1.0, (a, b)
