"""End to end through the CLI (click's runner and subprocesses) on tiny synthetic data."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from click.testing import CliRunner

from benchbd.cli import main
from benchbd.runner import Results

from .conftest import REPO

SYN = [
    "--dataset",
    "synthetic",
    "--set",
    "dataset.synthetic.n_train=300",
    "--set",
    "dataset.synthetic.n_test=100",
    "--budget",
    "smoke",
    "--quiet",
]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    res = invoke("run", *SYN, "--attacks", "badnet_grid", "--defenses", "none,tnr", "--seeds", "0,1", "--results", results)
    assert res.exit_code == 0, res.output
    return results


def test_run_writes_one_row_per_cell(grid):
    rows = Results(grid).rows()
    assert sorted((r["defense"], r["seed"]) for r in rows) == [("none", 0), ("none", 1), ("tnr", 0), ("tnr", 1)]
    for row in rows:
        assert 0 <= row["asr"] <= 100 and 0 <= row["ca"] <= 100
        assert row["dataset"] == "synthetic" and row["budget"] == "smoke" and row["model"] == "wrn16_1"
        assert row["defense_group"] == {"none": "paper", "tnr": "paper"}[row["defense"]]  # tables read it, not the registry
        assert row["params"]["attack"] == {"poison_ratio": 0.1, "target": 0}
        assert row["device"] and row["code_sha256"] and row["git_commit"] and row["wall_time_s"] > 0
        assert row["n_test"] == 100 and 0 < row["n_asr"] < 100  # the ASR set leaves out target-class images
    tnr = next(r for r in rows if r["defense"] == "tnr")
    assert tnr["params"]["defense"]["rec_weight"] == 10 and "train" not in tnr["params"]


def test_rerun_skips_and_force_reruns(grid):
    before = {p.name: p.stat().st_mtime_ns for p in (grid / "rows").iterdir()}
    res = invoke("run", *SYN, "--attacks", "badnet_grid", "--defenses", "none,tnr", "--seeds", "0,1", "--results", grid)
    assert "0 cell(s) run, 4 already done" in res.output
    assert before == {p.name: p.stat().st_mtime_ns for p in (grid / "rows").iterdir()}
    res = invoke("run", *SYN, "--attacks", "badnet_grid", "--defenses", "none", "--seeds", "0", "--results", grid, "--force")
    assert "1 cell(s) run, 0 already done" in res.output
    row = next(r for r in Results(grid).rows() if r["defense"] == "none" and r["seed"] == 0)
    assert row["cached"] == {"poisoned_split": True, "backdoored_model": True}


def test_changed_parameter_is_a_new_cell(grid, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(grid, copy)
    res = invoke("run", *SYN, "--attacks", "badnet_grid", "--defenses", "tnr", "--results", copy, "--set", "defense.tnr.rec_weight=1")
    assert "1 cell(s) run, 0 already done" in res.output
    weights = sorted(r["params"]["defense"]["rec_weight"] for r in Results(copy).rows() if r["defense"] == "tnr" and r["seed"] == 0)
    assert weights == [1, 10]


@pytest.mark.parametrize("fmt", ["markdown", "latex", "csv", "html"])
def test_table_formats(grid, fmt):
    res = invoke("table", "--results", grid, "--format", fmt)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "badnet_grid" in out.replace("\\_", "_") and "Average" not in out  # one attack: no Average row
    if fmt == "markdown":
        assert "| attack | none | tnr |" in out and "±" in out and "(n=2)" in out
    if fmt == "latex":
        assert out.count(r"\begin{tabular}") == 1 and r"\multicolumn{2}{c}{tnr}" in out
        assert all(rule in out for rule in (r"\toprule", r"\midrule", r"\bottomrule")) and r"\hline" not in out  # booktabs
    if fmt == "csv":
        header = out.splitlines()[0].split(",")
        assert header[:7] == ["dataset", "budget", "group", "attack", "defense", "metric", "mean"] and "ci95_low" in header
        assert {line.split(",")[header.index("seeds")] for line in out.splitlines()[1:]} == {"2"}  # integers, not 2.0
    if fmt == "html":  # a standalone, styled page
        assert out.startswith("<!DOCTYPE html>") and "<style>" in out and "<table" in out and "background:hsl(" in out and "http" not in out


def test_concurrent_run_is_refused_and_rows_stay_whole(grid, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(grid, copy)
    with Results(copy).lock():
        res = CliRunner().invoke(main, ["run", *SYN, "--results", str(copy), "--force"])
    assert res.exit_code == 2
    assert res.output.startswith("error: results directory") and "in use by another benchbd run" in res.output
    assert res.output.count("\n") == 1
    assert len(Results(copy).rows()) == 4


def test_two_processes_at_once_never_interleave(tmp_path):
    """Two real `benchbd run` processes on one directory: one runs, the other is refused (or waits
    its turn); every row file is whole JSON and each cell appears once."""
    cmd = [sys.executable, "-m", "benchbd", "run", *SYN, "--attacks", "badnet_grid,blend", "--defenses", "none", "--results", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    outcomes = []

    def launch():
        outcomes.append(subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300))

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(o.returncode for o in outcomes)
    assert codes in ([0, 0], [0, 2]), [o.stderr for o in outcomes]
    if codes == [0, 2]:
        refused = next(o for o in outcomes if o.returncode == 2)
        assert "in use by another benchbd run" in refused.stderr
    rows = [json.loads(p.read_text()) for p in (tmp_path / "rows").glob("*.json")]
    assert sorted(r["attack"] for r in rows) == ["badnet_grid", "blend"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--attacks", "badnet_gird"], "unknown attack 'badnet_gird' (did you mean 'badnet_grid'?)"),
        (["run", "--defenses", "tnrr"], "unknown defense 'tnrr' (did you mean 'tnr'?)"),
        (["run", "--dataset", "cifar1O"], "unknown dataset 'cifar1O' (did you mean 'cifar10'?)"),
        (["run", "--budget", "fastt"], "unknown budget 'fastt' (did you mean 'fast'?)"),
        (["run", "--set", "attack.blend.alpha"], "malformed --set 'attack.blend.alpha'"),
        (["run", "--set", "attack.poison_ratio=1.5"], "poison_ratio=1.5 must be in (0, 1)"),
        (["run", "--set", "attack.target=10"], "target=10 is out of range: valid 0..9"),
        (["run", "--set", "defense.tnr.rec_wieght=1"], "unknown parameter 'defense.tnr.rec_wieght' in --set (did you mean 'rec_weight'?)"),
        (["run", "--seeds", "a"], "bad --seeds 'a'"),
        (["run", "--set", "defense.tnr.split=9"], "defense.tnr.split=9 is out of range for WideResNet: valid 3..6 (default 5"),
        (["run", "--set", "defense.tnr.split=1"], "defense.tnr.split=1 is out of range for WideResNet: valid 3..6 (default 5"),
        (["run", "--set", "dataset.model=wrn"], "unknown model 'wrn'"),
        (["run", "--dataset", "cifar10", "--data-root", "{tmp}"], "cifar10.npz"),
        (["run", "--dataset", "npz:{tmp}/missing.npz"], "does not exist"),
        (["run", "--plugin", "no_such_module_xyz"], "cannot import plugin module 'no_such_module_xyz'"),
        (["table", "--format", "latx", "--results", "{tmp}"], "unknown format 'latx' (did you mean 'latex'?)"),
        (["table", "--results", "{tmp}/none"], "does not exist"),
        (["list", "defences"], "unknown list kind 'defences' (did you mean 'defenses'?)"),
        (["run", "--seeds", "3-1"], "bad --seeds '3-1': the range 3-1 is empty (write it low-high, e.g. 1-3)"),
        (["run", "--attacks", ""], "no attack named; valid: all, "),
        (["run", "--defenses", " , "], "no defense named; valid: all, "),
        (["run", "--device", "tpu"], "unknown device 'tpu' (did you mean 'cpu'?); valid: auto, cpu, cuda, cuda:N"),
        (["run", "--device", "cdua"], "unknown device 'cdua' (did you mean 'cuda'?)"),
        (["run", "--device", "cuda"], "--device cuda: no CUDA GPU is available on this machine; use --device cpu (or auto)"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.setattr("benchbd.data.datasets.Cifar10.download", lambda self, root: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the same answer on a machine with a GPU
    (tmp_path / "rows").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "run":
        args += ["--results", str(tmp_path / "res"), "--quiet"] + ([] if "--budget" in args else ["--budget", "smoke"])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert res.output.startswith("error: ") and res.output.count("\n") == 1 and "Traceback" not in res.output
    assert not (tmp_path / "res" / "rows").exists()


def test_list_shows_every_kind():
    for kind, expected in [
        ("attacks", "badnet_grid"),
        ("defenses", "holdout+poisoned"),
        ("datasets", "npz:PATH"),
        ("models", "wrn16_1"),
        ("budgets", "smoke"),
    ]:
        res = CliRunner().invoke(main, ["list", kind], env={"COLUMNS": "300"})  # wide: cells unwrapped
        assert res.exit_code == 0 and expected in res.output


def test_list_reads_the_stored_summaries_and_they_match_the_registry():
    """`benchbd list` answers from benchbd/listing.json (no component import, no torch): the file must say
    what the registry says (`python -m benchbd.components` rewrites it), and a plugin's components
    still show, because plugins make `list` import everything."""
    from importlib import resources

    from benchbd.components import index_text, summary_index

    stored = resources.files("benchbd").joinpath("listing.json").read_text()
    assert stored == index_text(summary_index()), "benchbd/listing.json is stale: run `python -m benchbd.components`"
    res = CliRunner().invoke(main, ["list", "defenses", "--plugin", str(PLUGIN)], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "reinit_fc" in res.output and "tnr" in res.output


def test_help_lists_commands():
    out = invoke("--help").output
    assert all(cmd in out for cmd in ("run", "table", "list"))


# ---- plugins: the example from docs/, through --plugin and through the entry-point group

PLUGIN = REPO / "docs" / "examples" / "benchbd_example_plugin.py"


def test_docs_show_the_complete_example_plugin():
    assert PLUGIN.read_text().strip() in (REPO / "docs" / "plugins.md").read_text()


def test_plugin_module_runs_without_touching_benchbd(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN.parent))
    res = invoke(
        "run",
        *SYN,
        "--plugin",
        "benchbd_example_plugin",
        "--defenses",
        "reinit_fc",
        "--results",
        tmp_path,
        "--set",
        "defense.reinit_fc.recipe.epochs=2",
    )
    assert res.exit_code == 0, res.output
    (row,) = Results(tmp_path).rows()
    assert row["defense"] == "reinit_fc" and row["metrics"]["trained_parameters"] > 0
    assert row["params"]["defense"]["recipe"]["epochs"] == 2
    assert "reinit_fc" in invoke("list", "defenses", "--plugin", "benchbd_example_plugin").output


def test_plugin_cannot_silently_replace_a_built_in(tmp_path, monkeypatch):
    (tmp_path / "shadowing_plugin.py").write_text(
        textwrap.dedent("""
        from benchbd.defenses import DEFENSES, Defense

        @DEFENSES.register("tnr")
        class NotTnR(Defense):
            def run(self, ctx):
                return ctx.backdoored_model
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    res = invoke("run", *SYN, "--plugin", "shadowing_plugin", "--results", tmp_path / "r")
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "Traceback" not in res.output
    assert "defense 'tnr' is already registered by benchbd.defenses.tnr; shadowing_plugin may not replace it" in res.output
    from benchbd.defenses import DEFENSES

    assert DEFENSES.get("tnr").__module__ == "benchbd.defenses.tnr"


def test_entry_point_plugin_is_discovered(tmp_path):
    site = tmp_path / "site"
    dist = site / "example_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: example-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[benchbd.plugins]\nexample = benchbd_example_plugin\n")
    shutil.copy(PLUGIN, site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "COLUMNS": "300"}
    out = subprocess.run([sys.executable, "-m", "benchbd", "list", "defenses"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "reinit_fc" in out.stdout and "example plugin" in out.stdout


STALL_PLUGIN = '''
import os
import time

from benchbd.defenses import DEFENSES, Defense, Need


@DEFENSES.register("stall_on_seed_1")
class StallOnSeed1(Defense):
    """Test defense: hangs on seed 1 while BENCHBD_TEST_STALL is set, else returns the backdoored model."""

    needs = frozenset({Need.BACKDOORED_MODEL})

    def run(self, ctx):
        if ctx.seed == 1 and os.environ.get("BENCHBD_TEST_STALL"):
            time.sleep(600)
        return ctx.backdoored_model
'''


def test_killed_run_keeps_finished_cells_and_resumes(tmp_path):
    (tmp_path / "stall_plugin.py").write_text(STALL_PLUGIN)
    results = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "benchbd",
        "run",
        *SYN,
        "--plugin",
        "stall_plugin",
        "--defenses",
        "stall_on_seed_1",
        "--seeds",
        "0,1",
        "--results",
        str(results),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.Popen(cmd, env={**env, "BENCHBD_TEST_STALL": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list((results / "rows").glob("*.json")) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # now inside the stalled seed-1 cell
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    (row,) = Results(results).rows()
    assert row["seed"] == 0
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 cell(s) run, 1 already done" in done.stdout
    assert sorted(r["seed"] for r in Results(results).rows()) == [0, 1]


def test_every_attack_runs_end_to_end(tmp_path):
    from benchbd.attacks import ATTACKS

    res = invoke("run", *SYN, "--attacks", "all,lba_12", "--defenses", "none,tnr", "--results", tmp_path)
    assert res.exit_code == 0, res.output
    rows = Results(tmp_path).rows()
    in_all = {n for n in ATTACKS.names() if ATTACKS.get(n).in_all}
    from benchbd.attacks import attack_groups

    modern = set(attack_groups()["modern"])  # tested in test_modern_attacks.py
    assert in_all == set(ATTACKS.names()) - {"lba_10", "lba_12", "lba_14", "clean"} - modern
    assert {r["attack"] for r in rows} == in_all | {"lba_12"} and len(rows) == 2 * (len(in_all) + 1)
    assert len(list((tmp_path / "cache" / "lcba_surrogate").glob("*.pt"))) == 1  # built once, shared by both defenses
    assert len(list((tmp_path / "cache" / "poisoned").glob("*.pt"))) == len(in_all) + 1


def test_show_attacks_draws_the_gallery(tmp_path):
    from PIL import Image

    out = tmp_path / "gallery.png"
    res = invoke("show", "attacks", "--dataset", "synthetic", "--attacks", "badnet_grid,blend,sig", "--out", out)
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.size == (720, 780)  # three columns (1.6 in each) of three rows, 150 dpi
    res = CliRunner().invoke(main, ["show", "attacks", "--dataset", "synthetic", "--index", "100000", "--out", str(out)])
    assert res.exit_code == 2 and "--index 100000 is out of range" in res.output


def _every_defense():
    sys.path.insert(0, str(PLUGIN.parent))
    import benchbd_example_plugin  # noqa: F401  (plugins are registered defenses too)

    from benchbd.defenses import DEFENSES

    return DEFENSES.names()


@pytest.mark.parametrize("name", _every_defense())
def test_every_registered_defense_runs_through_the_cli(name, tmp_path):
    res = invoke(
        "run",
        *SYN,
        "--plugin",
        "benchbd_example_plugin",
        "--defenses",
        name,
        "--results",
        tmp_path,
        "--set",
        "defense.anp.iterations=3",
        "--set",
        "defense.ibau.rounds=1",
    )
    assert res.exit_code == 0, res.output
    (row,) = Results(tmp_path).rows()
    assert row["defense"] == name and 0 <= row["ca"] <= 100 and 0 <= row["asr"] <= 100


def test_table_extra_shows_dp_epsilon(tmp_path):
    invoke("run", *SYN, "--defenses", "none,dp", "--results", tmp_path)
    out = invoke("table", "--results", tmp_path, "--extra", "epsilon").output
    assert "baselines: ASR / CA / epsilon in %" in out  # the third number of each cell
    dp_cell = next(line for line in out.splitlines() if line.startswith("| badnet_grid")).split("|")[3]
    none_cell = next(line for line in out.splitlines() if line.startswith("| badnet_grid")).split("|")[2]
    assert dp_cell.count("/") == 2 and float(dp_cell.split("/")[2]) > 0 and none_cell.strip().endswith("/ –")
    row = next(r for r in Results(tmp_path).rows() if r["defense"] == "dp")
    assert f"{row['metrics']['epsilon']:.4g}" in out  # metrics other than ASR/CA: four significant digits


def test_defenses_all_trains_each_backdoored_model_once(tmp_path):
    res = invoke(
        "run", *SYN, "--defenses", "all", "--results", tmp_path, "--set", "defense.anp.iterations=2", "--set", "defense.ibau.rounds=1"
    )
    assert res.exit_code == 0, res.output
    rows = Results(tmp_path).rows()
    from benchbd.defenses import DEFENSES, Need, defense_groups

    repairs = [r for r in rows if "backdoored_model" in r["cached"]]
    expected = [n for n in defense_groups()["all"] if Need.BACKDOORED_MODEL in DEFENSES.get(n).needs]
    assert sorted(r["defense"] for r in repairs) == sorted(expected) and len(expected) >= 6
    assert sum(not r["cached"]["backdoored_model"] for r in repairs) == 1  # trained by the first, reused by the rest
    assert len(list((tmp_path / "cache" / "backdoored").glob("*.pt"))) == 1


def test_damaged_rows_are_skipped_with_a_warning_and_redone(tmp_path):
    results = tmp_path / "r"
    args = ["run", *SYN, "--attacks", "badnet_grid,blend", "--defenses", "none,ft", "--results", results]
    assert invoke(*args).exit_code == 0
    paths = sorted((results / "rows").iterdir())
    paths[0].write_bytes(b"\xff\xfe not utf-8")
    paths[1].write_text("[1, 2, 3]")
    row = json.loads(paths[2].read_text())
    row["ca"] = "high"
    paths[2].write_text(json.dumps(row))
    table = invoke("table", "--results", results)
    assert table.exit_code == 0 and "Traceback" not in table.output
    for path, problem in zip(paths, ("not UTF-8 text", "a JSON list, not a row", "'ca' is 'high', not a number")):
        assert f"warning: ignoring damaged result row '{path}' ({problem})" in table.output
    dry = invoke(*args, "--dry-run")
    assert dry.exit_code == 0 and "3 of 4 cell(s) to run" in dry.output.replace("\n", " ")
    again = invoke(*args)
    assert again.exit_code == 0 and "3 cell(s) run, 1 already done" in again.output, again.output
    assert len(Results(results).rows()) == 4


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "is a directory; --config takes a YAML file"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not text (not UTF-8)"),
        (b"attack: 5\n", "section 'attack' of config file"),
        (b"defense:\n  nad: 3\n", "'defense.nad' in config file"),
        (b"defense:\n  nad:\n    bogus: 1\n", "unknown parameter 'defense.nad.bogus' in config file"),
        (
            b"attack:\n  blend:\n    per_dataset:\n      cifar100: {alpha: 0.1}\n",
            "unknown dataset 'cifar100' under attack.blend.per_dataset",
        ),
        (
            b"attack:\n  blend:\n    per_dataset:\n      gtsrb: {alpah: 0.1}\n",
            "unknown parameter 'attack.blend.per_dataset.gtsrb.alpah' in config file (did you mean 'alpha'?)",
        ),
    ],
)
def test_bad_config_files_are_one_line(content, message, tmp_path):
    config = tmp_path / "my.yaml"
    if content is None:
        config.mkdir()
    else:
        config.write_bytes(content)
    res = invoke("run", *SYN, "--config", config, "--results", tmp_path / "r")
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, res.output


def test_a_parameter_of_a_defense_outside_the_grid_is_still_checked(tmp_path):
    res = invoke("run", *SYN, "--defenses", "none", "--set", "defense.nad.bogus=1", "--results", tmp_path / "r")
    assert res.exit_code == 2 and "unknown parameter 'defense.nad.bogus' in --set" in res.output, res.output


@pytest.mark.parametrize(
    "source, message",
    [
        ("raise RuntimeError('no licence key')\n", "plugin module 'broken_plugin' failed to import: RuntimeError: no licence key"),
        ("def oops(:\n", "plugin module 'broken_plugin' failed to import: SyntaxError (line 1)"),
        ("import not_installed_dependency_xyz\n", "failed to import: ModuleNotFoundError: No module named 'not_installed_dependency_xyz'"),
    ],
)
def test_a_broken_plugin_is_one_line_and_debug_shows_its_traceback(source, message, tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    res = invoke("run", *SYN, "--plugin", "broken_plugin", "--results", tmp_path / "r")
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, res.output
    debug = CliRunner().invoke(main, ["--debug", "run", *map(str, SYN), "--plugin", "broken_plugin", "--results", str(tmp_path / "r")])
    assert debug.exit_code == 2 and "Traceback" in debug.output and message in debug.output


def test_plugin_given_as_a_path_to_a_file(tmp_path):
    plugin = tmp_path / "plugins" / "path_plugin.py"
    plugin.parent.mkdir()
    plugin.write_text(
        textwrap.dedent("""
        from benchbd.defenses import DEFENSES, Defense, Need

        @DEFENSES.register("from_a_path")
        class FromAPath(Defense):
            needs = frozenset({Need.BACKDOORED_MODEL})

            def run(self, ctx):
                return ctx.need(Need.BACKDOORED_MODEL)
    """)
    )
    res = invoke("run", *SYN, "--plugin", plugin, "--defenses", "from_a_path", "--results", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert Results(tmp_path / "r").rows()[0]["defense"] == "from_a_path"
    res = invoke("run", *SYN, "--plugin", tmp_path / "missing.py", "--results", tmp_path / "r")
    assert res.exit_code == 2 and "is not a .py file" in res.output


def test_paths_that_cannot_be_written_are_one_line(tmp_path):
    """(Root ignores permission bits, so a path under a regular file stands for an unwritable place.)"""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    grid = tmp_path / "grid"
    assert invoke("run", *SYN, "--attacks", "badnet_grid", "--defenses", "none", "--results", grid).exit_code == 0
    cases = [
        (["run", *SYN, "--results", blocker / "results"], f"cannot write to the results directory '{blocker / 'results'}'"),
        (
            ["run", *SYN, "--results", tmp_path / "ok", "--cache-dir", blocker / "cache"],
            f"cannot write to the cache directory '{blocker / 'cache'}'",
        ),
        (["table", "--results", grid, "-o", blocker / "x.md"], f"cannot write '{blocker / 'x.md'}'"),
        (["show", "attacks", "--attacks", "blend", "--out", blocker / "g.png"], f"cannot write '{blocker / 'g.png'}'"),
        (["plot", "scatter", "--results", grid, "--out", blocker / "s.png"], f"cannot write '{blocker / 's.png'}'"),
        (["run", *SYN, "--results", tmp_path / "dry", "--dry-run", "--jobs-per-gpu", "0"], "--jobs-per-gpu 0 is invalid"),
        (["run", *SYN, "--results", tmp_path / "dry", "--dry-run", "--executor", "slurm"], "unknown executor 'slurm'"),
    ]
    for args, message in cases:
        res = invoke(*args)
        assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, (args, res.output)
    assert not (tmp_path / "ok" / "rows").exists()


def test_show_out_without_an_extension_says_the_file_it_wrote(tmp_path):
    res = invoke("show", "attacks", "--attacks", "blend", "--out", tmp_path / "g5")
    assert res.exit_code == 0 and f"wrote {tmp_path / 'g5.png'}" in res.output and (tmp_path / "g5.png").is_file()


def test_show_a_component_gives_values_defaults_and_their_sources(tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text("defense:\n  nad:\n    power: 3\n")
    res = CliRunner().invoke(
        main,
        ["show", "defense", "nad", "--dataset", "gtsrb", "--config", str(config), "--set", "defense.nad.student.epochs=5"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    lines = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]] for line in res.output.splitlines() if line.startswith("│")
    }
    assert lines["student.epochs"] == ["5", "20", "--set defense.nad.student.epochs"]
    assert lines["power"] == ["3.0", "2.0", "config file (defense.nad)"]
    assert lines["betas"][2] == "registry.yaml (defense.nad)" and lines["teacher.gamma"][2] == "code default"
    res = CliRunner().invoke(main, ["show", "attack", "smooth", "--dataset", "gtsrb"], env={"COLUMNS": "200"})
    assert "registry.yaml (attack.smooth.per_dataset.gtsrb)" in res.output and "'gtsrb'" in res.output
    res = invoke("show", "defense", "nadd")
    assert res.exit_code == 2 and "unknown defense 'nadd' (did you mean 'nad'?)" in res.output
