"""Progress a person can follow in a log file, and a run bounded by time (--time-limit)."""

import io
import re

import pytest
from click.testing import CliRunner

from benchbd.cli import _parse_duration, main
from benchbd.errors import BenchbdError
from benchbd.progress import LineProgress
from benchbd.runner import Results

SYN = ["--dataset", "synthetic", "--set", "dataset.synthetic.n_train=300", "--set", "dataset.synthetic.n_test=100", "--budget", "smoke"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_a_run_without_a_terminal_prints_plain_lines(tmp_path):
    res = invoke("run", *SYN, "--attacks", "badnet_grid", "--defenses", "none,ft", "--results", tmp_path / "r")
    assert res.exit_code == 0, res.output
    log = res.stderr
    assert f"grid: 2 cell(s); one result row per finished cell in {tmp_path / 'r'}/rows/" in log
    # one line per training epoch: cell, stage, epoch k/n with its loss, images/s, ETA
    assert re.search(
        r"cell synthetic / badnet_grid / none / seed 0 \| backdoored \| epoch 1/1 loss \d+\.\d+ \| \d+ images/s \| ETA \S+", log
    )
    assert re.search(r"\| fine-tuning \| epoch 1/1 loss", log)
    # one line per finished cell: ASR, CA, wall time, and the grid's progress
    assert re.search(r"cell synthetic / badnet_grid / none / seed 0: ASR \d+\.\d+  CA \d+\.\d+  \(\d+s\); grid 1/2, ETA \S+", log)
    assert re.search(r"cell synthetic / badnet_grid / ft / seed 0: ASR .*; grid 2/2\n", log)
    assert "\x1b[" not in log  # no terminal control codes in a log


def test_line_progress_reports_steps_without_epochs_at_most_every_interval():
    out = io.StringIO()
    progress = LineProgress(out, every_s=3600)
    progress.start_grid(1)
    progress.start_cell("c")
    progress.start_run("ANP masks", 100)
    for _ in range(99):
        progress.advance(1)
    assert "ANP masks" not in out.getvalue()  # no line before the interval passes
    progress.advance(1, "done")
    assert re.search(r"cell c \| ANP masks \| done \| \d+\.\d steps/s \| ETA 0s", out.getvalue())


def test_time_limit_starts_no_new_cell_and_the_next_run_resumes(tmp_path):
    results = tmp_path / "r"
    args = ["run", *SYN, "--quiet", "--attacks", "badnet_grid,blend", "--defenses", "none", "--results", results]
    res = invoke(*args, "--time-limit", "0.001s")  # over before the first cell could start
    assert res.exit_code == 0, res.output
    assert "time limit 0.001s reached: 2 cell(s) left for the next run" in res.output
    assert Results(results).rows() == []
    res = invoke(*args)
    assert res.exit_code == 0 and "2 cell(s) run, 0 already done" in res.output
    assert "time limit" not in res.output


def test_time_limit_lets_the_cell_in_flight_finish(tmp_path, monkeypatch):
    """The limit passes while the first cell runs: it finishes and is written, no other starts."""
    from benchbd.runner.grid import Runner

    original = Runner.safe_run_cell

    def run_then_expire(self, cell):
        row = original(self, cell)
        self.deadline = 0.0  # the limit passed while this cell ran
        return row

    monkeypatch.setattr(Runner, "safe_run_cell", run_then_expire)
    results = tmp_path / "r"
    res = invoke("run", *SYN, "--quiet", "--attacks", "badnet_grid", "--defenses", "none,ft,fp", "--results", results, "--time-limit", "1h")
    assert res.exit_code == 0, res.output
    assert len(Results(results).rows()) == 1
    assert "1 cell(s) run, 0 already done" in res.output and "time limit 1h reached: 2 cell(s) left" in res.output


@pytest.mark.parametrize("text, seconds", [("50m", 3000), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert _parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "50", "5 minutes", "0m", "m"])
def test_bad_time_limit_is_one_line(text, tmp_path):
    with pytest.raises(BenchbdError, match="bad --time-limit"):
        _parse_duration(text)
    res = invoke("run", *SYN, "--results", tmp_path / "r", "--time-limit", text)
    assert res.exit_code == 2 and "Traceback" not in res.output and "bad --time-limit" in res.output


def test_gpu_check_rehearses_on_the_cpu(tmp_path):
    """tools/gpu_check.py end to end at `smoke` on synthetic data: every step runs, 6 files come back."""
    import subprocess
    import sys
    import tarfile

    from .conftest import REPO

    out = tmp_path / "out"
    command = [
        sys.executable,
        str(REPO / "tools" / "gpu_check.py"),
        str(out),
        "--work",
        str(tmp_path / "work"),
        "--device",
        "cpu",
        "--dataset",
        "synthetic",
        "--budget",
        "smoke",
        "--attacks",
        "badnet_grid",
        "--defenses",
        "none,tnr",
        "--jobs",
        "2",
        "--bench-images",
        "256",
        "--time-limit",
        "20m",
        "--set",
        "dataset.synthetic.n_train=300",
        "--set",
        "dataset.synthetic.n_test=100",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr + "".join(p.read_text() for p in out.glob("*.log"))
    assert sorted(p.name for p in out.iterdir()) == ["bench.txt", "cuda_tests.log", "rows.tar.gz", "run.log", "summary.txt", "table.md"]
    summary = (out / "summary.txt").read_text()
    assert "cuda tests: exit 0" in summary and "grid: exit 0" in summary and "rows: 2 in rows.tar.gz" in summary
    assert "skipped" in (out / "cuda_tests.log").read_text()  # no GPU here: the cuda tests are collected and skipped
    assert "ratio" in (out / "bench.txt").read_text()
    with tarfile.open(out / "rows.tar.gz") as archive:
        assert len([n for n in archive.getnames() if n.endswith(".json")]) == 2
    assert "| badnet_grid " in (out / "table.md").read_text()


def test_rich_grid_eta_appears_once_a_cell_has_finished():
    """Cells take minutes to hours: the grid's ETA must come from the cells finished so far, not a
    30-second window that holds no progress."""
    from rich.console import Console

    from benchbd.progress import RichProgress

    now = [0.0]
    progress = RichProgress(Console(file=io.StringIO()), get_time=lambda: now[0])
    with progress:
        progress.start_grid(3)
        grid = progress.bars.tasks[0]
        progress.start_cell("a")
        assert grid.fields["info"] == ""
        now[0] = 1800.0  # a 30-minute cell
        progress.end_cell("ASR 1.00  CA 80.00")
        assert grid.completed == 1 and grid.fields["info"] == "ETA 1h00m"  # two cells left at 30 minutes each


def test_every_cli_option_has_help_and_clean_is_not_dirty():
    import click

    def options(command, prefix="benchbd"):
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from options(sub, f"{prefix} {name}")
        for param in command.params:
            if isinstance(param, click.Option):
                yield prefix, param

    missing = [f"{where} {param.opts[0]}" for where, param in options(main) if not param.help]
    assert missing == []
    res = CliRunner().invoke(main, ["list", "attacks"], env={"COLUMNS": "300"})
    clean = next(line for line in res.output.splitlines() if line.startswith("clean "))
    assert " none " in clean and "dirty" not in clean


@pytest.mark.parametrize("kind", ["attacks", "defenses", "datasets", "models", "budgets"])
def test_list_fits_an_80_column_terminal_one_line_per_item(kind):
    from benchbd.components import components

    res = CliRunner().invoke(main, ["list", kind], env={"COLUMNS": "80"})
    lines = res.output.splitlines()
    assert res.exit_code == 0 and max(len(line) for line in lines) <= 80
    assert len(lines) == sum(
        e.module.startswith("benchbd.") for e in components()[kind].entries()
    )  # built-ins (a test may have loaded plugins)


def test_info_runs_without_data_gpu_or_chromium(tmp_path, monkeypatch):
    import shutil

    import torch

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = CliRunner().invoke(main, ["info", "--data-root", str(tmp_path / "empty"), "--results", str(tmp_path)])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "cpu (" in res.output and "precision fp32" in res.output and "cuda:" not in res.output
    assert f"cifar10: not in {tmp_path / 'empty'}" in res.output and "chromium): not found" in res.output
    assert len(res.output.splitlines()) <= 24  # one screen


def test_info_names_a_dataset_with_its_size_and_content_hash(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    x = np.zeros((4, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "cifar10.npz", x_train=x, y_train=np.arange(4), x_test=x, y_test=np.arange(4))
    res = CliRunner().invoke(main, ["info", "--data-root", str(tmp_path)])
    from benchbd.data.datasets import DatasetParams, NpzDataset

    digest = NpzDataset(DatasetParams(), path=str(tmp_path / "cifar10.npz")).load().sha256
    assert res.exit_code == 0 and "4 train / 4 test" in res.output and f"data_sha256 {digest[:12]}" in res.output, res.output


def clocked_run(monkeypatch, every_s: float, desc: str, total_steps: int, batch_size: int = 0):
    """A LineProgress inside one run of cell 'c' on a clock the test moves: (clock, output, progress)."""
    clock = [0.0]
    monkeypatch.setattr("benchbd.progress.time.monotonic", lambda: clock[0])
    out = io.StringIO()
    progress = LineProgress(out, every_s=every_s)
    progress.start_grid(1)
    progress.start_cell("c")
    progress.start_run(desc, total_steps, batch_size)
    return clock, out, progress


def test_an_epoch_line_just_after_a_periodic_line_reports_the_rate_of_a_longer_window(monkeypatch):
    """The periodic line falls on an epoch's last step; the epoch's own line follows 10 ms later with
    no new step: its rate is measured from the mark before, not 0 steps over 10 ms."""
    clock, out, progress = clocked_run(monkeypatch, 60, "training", 1000, batch_size=125)
    for _ in range(480):  # 8 steps/s = 1,000 images/s; the periodic line falls on the last, at 60 s
        clock[0] += 0.125
        progress.advance(1)
    clock[0] += 0.01
    progress.advance(0, "epoch 1/3 loss 1.000")
    rates = [int(r) for r in re.findall(r"\| (\d+) images/s", out.getvalue())]
    assert rates == [1000, 1000]  # the periodic line at 60 s and the epoch's line


def test_slow_steps_read_as_seconds_per_step(monkeypatch):
    """BTI-DBF's epochs as steps, 50 s each: '50 s/step', where '0.0 steps/s' said nothing."""
    clock, out, progress = clocked_run(monkeypatch, 3600, "BTI-DBF generator warm-up", 50)
    for epoch in range(2):
        clock[0] += 50.0
        progress.advance(1, f"epoch {epoch + 1}/50")
    assert re.findall(r"\| (\S+ \S+) \| ETA", out.getvalue()) == ["50 s/step", "50 s/step"]
