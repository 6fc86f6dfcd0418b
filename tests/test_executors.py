"""Scale and reliability: cells in worker processes and on Ray, artifacts built once under
concurrency, killed workers, diverging cells."""

import json
import math
import os
import sys
import textwrap
import threading
import time

import pytest
import torch
from click.testing import CliRunner

from benchbd.cli import main
from benchbd.runner import Cache, Results
from benchbd.runner.executors import QueueProgress, interleave

from .test_cli import SYN, invoke

PLUGINS = '''
import os
import signal
from pathlib import Path

from benchbd.defenses.base import DEFENSES, Defense, Need
from benchbd.train import TrainRecipe


@DEFENSES.register("killer")
class Killer(Defense):
    """Kills its own process the first $KILLER_TIMES times it runs (a crashed worker)."""

    needs = frozenset({Need.HOLDOUT})

    def run(self, ctx):
        counter = Path(os.environ["KILLER_DIR"]) / "kills"
        kills = int(counter.read_text()) if counter.exists() else 0
        if kills < int(os.environ["KILLER_TIMES"]):
            counter.write_text(str(kills + 1))
            os.kill(os.getpid(), signal.SIGKILL)
        return ctx.new_model()


@DEFENSES.register("diverger")
class Diverger(Defense):
    """Trains with a NaN loss."""

    needs = frozenset({Need.HOLDOUT})

    def run(self, ctx):
        model = ctx.new_model()
        ctx.trainer.fit(model, ctx.need(Need.HOLDOUT), TrainRecipe(epochs=1, batch_size=8),
                        loss=lambda m, x, y, gen: m(x).sum() * float("nan"))
        return model
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "scale_plugins.py").write_text(textwrap.dedent(PLUGINS))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("KILLER_DIR", str(tmp_path))
    return folder


def rows_by_defense(path):
    return {(r["attack"], r["defense"]): r for r in Results(path).rows()}


def test_diverging_cell_fails_with_its_reason_and_the_grid_goes_on(plugins, tmp_path):
    res = invoke(
        "run",
        *SYN,
        "--attacks",
        "badnet_grid,blend",
        "--defenses",
        "none,diverger",
        "--plugin",
        "scale_plugins",
        "--results",
        tmp_path / "r",
    )
    assert res.exit_code == 1 and "2 FAILED" in res.output, res.output  # a grid with a failed cell exits non-zero
    rows = rows_by_defense(tmp_path / "r")
    assert {k: r["status"] for k, r in rows.items()} == {
        ("badnet_grid", "none"): "ok",
        ("blend", "none"): "ok",
        ("badnet_grid", "diverger"): "failed",
        ("blend", "diverger"): "failed",
    }
    assert "training loss is nan" in rows[("blend", "diverger")]["error"]
    table = invoke("table", "--results", tmp_path / "r").output
    assert "| failed |" in table and "blend / diverger / seed 0: TrainingDiverged" in table
    # the next run retries the failed cells only
    again = invoke(
        "run",
        *SYN,
        "--attacks",
        "badnet_grid,blend",
        "--defenses",
        "none,diverger",
        "--plugin",
        "scale_plugins",
        "--results",
        tmp_path / "r",
    )
    assert "0 cell(s) run, 2 already done, 2 FAILED" in again.output and again.exit_code == 1


def test_worker_processes_give_the_serial_grid(tmp_path):
    args = [*SYN, "--attacks", "badnet_grid,blend", "--defenses", "none,tnr,ft", "--device", "cpu"]
    assert invoke("run", *args, "--results", tmp_path / "serial").exit_code == 0
    res = invoke("run", *args, "--jobs-per-gpu", 2, "--results", tmp_path / "pool")
    assert res.exit_code == 0 and "6 cell(s) run" in res.output, res.output
    serial, pool = rows_by_defense(tmp_path / "serial"), rows_by_defense(tmp_path / "pool")
    assert {k: r["cell_key"] for k, r in serial.items()} == {k: r["cell_key"] for k, r in pool.items()}
    assert all(r["status"] == "ok" for r in pool.values())
    # one backdoored model per attack, built by exactly one of the cells that needed it
    built = [r["cached"]["backdoored_model"] for r in pool.values() if "backdoored_model" in r["cached"]]
    assert sorted(built) == [False, False, True, True]
    assert len(list((tmp_path / "pool" / "cache" / "backdoored").glob("*.pt"))) == 2


def test_killed_worker_loses_only_its_cell_and_the_rerun_completes(plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("KILLER_TIMES", "1")
    args = [
        *SYN,
        "--attacks",
        "badnet_grid,blend,sig",
        "--defenses",
        "none,killer",
        "--plugin",
        "scale_plugins",
        "--device",
        "cpu",
        "--jobs-per-gpu",
        2,
        "--retries",
        0,
        "--results",
        tmp_path / "r",
    ]
    res = invoke("run", *args)
    assert res.exit_code == 1 and "5 cell(s) run" in res.output and "1 FAILED" in res.output, res.output
    rows = rows_by_defense(tmp_path / "r")
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["defense"] == "killer" and "worker process died (exit code -9)" in failed[0]["error"]
    finished = {path.name: path.read_text() for path in (tmp_path / "r" / "rows").glob("*.json")}
    assert all(json.loads(text)["cell_key"] + ".json" == name for name, text in finished.items())  # whole, parseable rows
    res = invoke("run", *args)
    assert "1 cell(s) run, 5 already done" in res.output, res.output
    assert all(r["status"] == "ok" for r in rows_by_defense(tmp_path / "r").values())
    for name, text in finished.items():  # the rows finished before were not touched
        if json.loads(text)["status"] == "ok":
            assert (tmp_path / "r" / "rows" / name).read_text() == text


def test_killed_worker_is_retried_in_the_same_run(plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("KILLER_TIMES", "1")
    res = invoke(
        "run",
        *SYN,
        "--defenses",
        "killer",
        "--plugin",
        "scale_plugins",
        "--device",
        "cpu",
        "--jobs-per-gpu",
        2,
        "--results",
        tmp_path / "r",
    )
    assert res.exit_code == 0 and "1 cell(s) run, 0 already done; results" in res.output, res.output
    assert (tmp_path / "kills").read_text() == "1"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--executor", "rey"], "unknown executor 'rey' (did you mean 'ray'?)"),
        (["--jobs-per-gpu", "0"], "--jobs-per-gpu 0 is invalid"),
        (["--retries", "-1"], "--retries -1 is invalid"),
    ],
)
def test_bad_executor_options_are_one_line(args, message, tmp_path):
    res = CliRunner().invoke(main, ["run", *SYN, "--results", str(tmp_path), *args])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and message in res.output, res.output


def test_artifact_is_built_once_by_concurrent_builders(tmp_path):
    builds = []

    def build():
        builds.append(threading.get_ident())
        time.sleep(0.3)
        return {"x": torch.arange(5)}

    results = []
    threads = [threading.Thread(target=lambda: results.append(Cache(tmp_path).get_or_build("k", {"a": 1}, build))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and sorted(hit for _, hit in results) == [False, True, True]
    assert all(torch.equal(artifact["x"], torch.arange(5)) for artifact, _ in results)


def test_interleave_starts_different_artifacts_first(tmp_path):
    from benchbd.config import Layers, parse_set
    from benchbd.runner import Runner

    runner = Runner(
        Results(tmp_path),
        Cache(tmp_path),
        Layers(cli=parse_set(["dataset.synthetic.n_train=300", "dataset.synthetic.n_test=100"])),
        device="cpu",
    )
    cells = runner.plan(["synthetic"], "badnet_grid,blend,sig", "none,ft,nad", [0], "smoke")
    order = interleave(cells)
    assert [c.attack.name for c in order[:3]] == ["badnet_grid", "blend", "sig"] and sorted(map(id, order)) == sorted(map(id, cells))


def test_queue_progress_batches_steps():
    sent = []

    class Box:
        def put(self, item):
            sent.append(item)

    progress = QueueProgress(3, Box(), every_s=60)
    progress.start_run("train", 100)
    for _ in range(50):
        progress.advance(1)
    progress.advance(0, "epoch 1/1")
    steps = sum(m[3][0] for m in sent if m[2] == "advance")
    assert steps == 50 and len(sent) <= 3 and all(m[1] == 3 for m in sent)


@pytest.fixture
def local_ray(plugins, tmp_path):
    import ray  # in benchbd[dev]

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": f"{plugins}:{':'.join(p for p in sys.path if p)}", "KILLER_DIR": str(tmp_path), "KILLER_TIMES": "1"}
        },
    )
    yield ray
    ray.shutdown()


def test_ray_executor_gives_the_same_results_directory(local_ray, tmp_path, monkeypatch):
    monkeypatch.setenv("KILLER_TIMES", "1")
    args = [*SYN, "--attacks", "badnet_grid,blend", "--defenses", "none,tnr,killer", "--plugin", "scale_plugins", "--device", "cpu"]
    res = invoke("run", *args, "--executor", "ray", "--results", tmp_path / "ray")
    assert res.exit_code == 0 and "6 cell(s) run" in res.output, res.output
    assert (tmp_path / "kills").read_text() == "1"  # one task's worker was killed; Ray retried it
    ray_rows = rows_by_defense(tmp_path / "ray")
    assert all(r["status"] == "ok" for r in ray_rows.values())
    # a restarted driver resumes: nothing left to run
    assert "0 cell(s) run, 6 already done" in invoke("run", *args, "--executor", "ray", "--results", tmp_path / "ray").output
    (tmp_path / "kills").write_text("1")
    assert invoke("run", *args, "--results", tmp_path / "serial").exit_code == 0
    serial = rows_by_defense(tmp_path / "serial")
    assert {k: r["cell_key"] for k, r in serial.items()} == {k: r["cell_key"] for k, r in ray_rows.items()}
    for key in serial:
        assert math.isclose(serial[key]["ca"], ray_rows[key]["ca"], abs_tol=3.0)
    assert invoke("table", "--results", tmp_path / "ray").exit_code == 0


def test_bench_compares_with_the_reference_loop_and_concurrent_cells():
    res = CliRunner().invoke(
        main, ["bench", "--device", "cpu", "--images", "128", "--batch", "32", "--epochs", "1", "--workers", "0", "--concurrent", "2"]
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1].startswith("reference loop :") and lines[2].startswith("benchbd trainer:") and lines[3].startswith("2 at once     :")
    rates = [float(line.split(":")[1].split()[0]) for line in lines[1:4]]
    ratios = [float(line.split("ratio")[1].strip().rstrip("x")) for line in lines[2:4]]
    assert all(r > 0 for r in rates) and ratios == pytest.approx([rates[1] / rates[0], rates[2] / rates[0]], rel=0.01)
    bad = CliRunner().invoke(main, ["bench", "--images", "0"])
    assert bad.exit_code == 2 and "--images 0 is invalid" in bad.output


def test_workers_share_the_dataset_instead_of_copying_it(tmp_path):
    from benchbd.config import Layers, parse_set
    from benchbd.runner import Runner
    from benchbd.runner.executors import LocalProcesses

    runner = Runner(
        Results(tmp_path),
        Cache(tmp_path / "cache"),
        Layers(cli=parse_set(["dataset.synthetic.n_train=300", "dataset.synthetic.n_test=100"])),
        device="cpu",
    )
    cells = runner.plan(["synthetic"], "badnet_grid,blend", "none", [0], "smoke")
    assert not cells[0].data.train.images.is_shared()
    written = runner.run(cells, executor=LocalProcesses(["cpu"], 2))
    assert len(written) == 2 and all(r["status"] == "ok" for r in written)
    # the workers received the training images through shared memory: the driver's tensor now lives there
    assert cells[0].data.train.images.is_shared() and cells[1].data.train.images.data_ptr() == cells[0].data.train.images.data_ptr()


def test_ctrl_c_with_workers_is_one_line_and_keeps_finished_cells(tmp_path):
    """Ctrl-C goes to the whole process group (driver and workers): no worker traceback, exit 130."""
    import signal
    import subprocess
    import sys

    results = tmp_path / "r"
    command = [
        sys.executable,
        "-m",
        "benchbd",
        "run",
        "--dataset",
        "synthetic",
        "--set",
        "dataset.synthetic.n_train=2000",
        "--budget",
        "demo",
        "--attacks",
        "badnet_grid,blend",
        "--defenses",
        "none",
        "--device",
        "cpu",
        "--jobs-per-device",
        "2",
        "--results",
        str(results),
    ]
    # a shell's background jobs and pytest-xdist's workers ignore SIGINT, and a child inherits that: the
    # user's terminal does not, so the command starts with the default disposition
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:  # wait until both workers train
        line = process.stderr.readline()
        lines.append(line)
        if sum("| backdoored | epoch" in seen for seen in lines) >= 2:
            break
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=240)  # two workers shutting down on a loaded 2-core machine
    err = "".join(lines) + err
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted: every finished cell's row is kept" in err
