"""The command line: parses, delegates, prints. No science here."""

from __future__ import annotations

import functools
import os
import re
import sys
import time
import traceback
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .errors import BenchbdError, unknown

DATA_ROOT_HELP = "Where datasets live [default: $BENCHBD_DATA or ~/.cache/benchbd/data]."
CACHE_HELP = "Artifact cache [default: RESULTS/cache]."
DEVICE_HELP = "auto, cpu, cuda, cuda:1, ..."
CONFIG_HELP = "A YAML file of parameters in registry.yaml's layout."
SET_HELP = "Override one parameter (repeatable)."


class Cli(click.Group):
    """Turns a BenchbdError anywhere below into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BenchbdError as exc:
            if ctx.params.get("debug"):
                traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: every finished cell's row is kept; the same command resumes", err=True)
            ctx.exit(130)


def _components():
    """Import the built-in components (registration) lazily: `benchbd --help` stays fast."""
    from .components import components

    return components()


def _load_plugins(plugins: tuple[str, ...]) -> None:
    from .registry import load_plugins

    _components()
    load_plugins(plugins)


plugin_option = click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE (a module name on PYTHONPATH, or a path to a .py file) first, so the components "
    "it registers can be used (repeatable).",
)


@click.group(cls=Cli)
@click.version_option(package_name="benchbd")
@click.option("--debug", is_flag=True, help="On an error, also print the traceback of its cause (e.g. a plugin's bug).")
def main(debug):
    """benchbd: benchmark backdoor defenses on image classifiers."""


@main.command("list")
@click.argument("kind", default="attacks")
@plugin_option
def list_cmd(kind: str, plugins):
    """List registered attacks, defenses, datasets, models or budgets: one line each (details:
    `benchbd show attack|defense|dataset NAME`)."""
    import shutil

    from .components import LIST_KINDS, listing, stored_summaries, summaries
    from .registry import installed_plugins

    if kind not in LIST_KINDS:
        raise unknown("list kind", kind, LIST_KINDS)
    rows = None if plugins or installed_plugins() else stored_summaries(kind)  # built-ins only: no import
    if rows is None:
        _load_plugins(plugins)
        rows = summaries(kind, _components()[kind])
    for line in listing(kind, rows, shutil.get_terminal_size((100, 24)).columns):
        click.echo(line)


def _parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            chosen = list(range(int(lo), int(hi) + 1)) if dash and lo else [int(part)]
        except ValueError:
            raise BenchbdError(f"bad --seeds '{text}': expected integers like 0 or 0,1,2 or 0-4") from None
        if not chosen:
            raise BenchbdError(f"bad --seeds '{text}': the range {part} is empty (write it low-high, e.g. {hi}-{lo})")
        seeds += chosen
    return list(dict.fromkeys(seeds))


@main.command()
@click.option(
    "--dataset",
    "datasets",
    default=None,
    help="Comma-separated: cifar10, gtsrb, imagenet12, cifar10-mini, synthetic, npz:PATH, imagefolder:PATH "
    "[default: cifar10-mini, or the experiment's].",
)
@click.option("--attacks", default=None, help="Comma-separated attack names, or 'all' [default: badnet_grid, or the experiment's].")
@click.option("--defenses", default=None, help="Comma-separated defense names, or 'all' [default: none,tnr].")
@click.option(
    "--detectors",
    default=None,
    help="Also run these input-level detectors (comma-separated, or 'all') on each cell's backdoored model: one row per detector.",
)
@click.option(
    "--retune",
    is_flag=True,
    help="Add the retuning check (Min et al., NeurIPS 2024) to every defended cell; adds `none`, which holds the controls.",
)
@click.option("--experiment", default=None, help="A named experiment (see `benchbd experiments`) or an experiment YAML file.")
@click.option("--seeds", default=None, help="Seeds: 0 or 0,1,2 or 0-4 [default: 0, or the experiment's].")
@click.option("--budget", default="fast", show_default=True, help="Training budget: paper, fast, demo, smoke.")
@click.option("--results", "results_dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Results directory.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help=CACHE_HELP)
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help=DATA_ROOT_HELP)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--config", "config_file", default=None, help=CONFIG_HELP)
@click.option("--set", "sets", multiple=True, metavar="KIND.NAME.PARAM=VALUE", help=SET_HELP)
@plugin_option
@click.option("--force", is_flag=True, help="Rerun cells that already have a result row.")
@click.option("--dry-run", is_flag=True, help="List the cells (and which are done) without training.")
@click.option(
    "--jobs-per-gpu",
    "--jobs-per-device",
    "jobs_per_gpu",
    type=int,
    default=None,
    help="Cells at once on each GPU (or on the CPU) [default: from free GPU memory; 1 on a CPU].",
)
@click.option("--executor", default="local", show_default=True, help="local (worker processes on this machine) or ray.")
@click.option("--address", default=None, help="Ray cluster address for --executor ray (e.g. auto) [default: a local Ray].")
@click.option("--retries", default=1, show_default=True, help="Reruns of a cell whose worker died, in the same run.")
@click.option(
    "--time-limit",
    default=None,
    metavar="DURATION",
    help="Start no new cell after this long (e.g. 50m, 2h, 1h30m, 90s); cells in flight finish, the next run resumes.",
)
@click.option("--quiet", is_flag=True, help="No progress display.")
def run(
    datasets,
    attacks,
    defenses,
    detectors,
    retune,
    experiment,
    seeds,
    budget,
    results_dir,
    cache_dir,
    data_root,
    device,
    config_file,
    sets,
    plugins,
    force,
    dry_run,
    jobs_per_gpu,
    executor,
    address,
    retries,
    time_limit,
    quiet,
):
    """Train every (dataset, attack, defense, seed) cell and write one result row per cell."""
    _load_plugins(plugins)
    from .progress import LineProgress, NullProgress, RichProgress

    started = time.monotonic()  # the time limit counts from here, data loading included
    limit_s = _parse_duration(time_limit) if time_limit is not None else None
    from .runner.executors import ExecutorOptions, check_options

    check_options(executor, ExecutorOptions(device, jobs_per_gpu, retries, address))
    runner = _runner(results_dir, cache_dir, data_root, device, config_file, sets)
    results = runner.results
    dataset_list = _names(datasets)
    seed_list = _parse_seeds(seeds) if seeds is not None else None
    columns = {}
    if experiment:
        from . import experiments

        if defenses:
            raise BenchbdError(
                "--defenses cannot be combined with --experiment: the experiment's columns are its defenses "
                "(copy its YAML file to change them)"
            )
        chosen = experiments.load(experiment)
        if detectors or retune:
            raise BenchbdError("--detectors and --retune cannot be combined with --experiment yet: run them as a grid")
        cells, members = experiments.plan(chosen, runner, budget, seed_list, dataset_list, attacks)
        columns = {key: name for name, keys in reversed(members.items()) for key in keys}
    else:
        cells = runner.plan(
            dataset_list or ["cifar10-mini"],
            "badnet_grid" if attacks is None else attacks,
            ("" if detectors else "none,tnr") if defenses is None else defenses,
            seed_list or [0],
            budget,
            detectors=detectors,
            retune=retune,
        )
    if dry_run:
        _print_plan(cells, results, columns)
        return
    _writable_dir(Path(results_dir), "results directory")
    _writable_dir(Path(cache_dir) if cache_dir else Path(results_dir) / "cache", "cache directory")
    from .runner.executors import make_executor

    chosen_executor = make_executor(executor, runner, cells, ExecutorOptions(device, jobs_per_gpu, retries, address))
    if experiment:
        experiments.Membership(results_dir, chosen.name).add(members)
    if quiet:
        runner.progress = NullProgress()
    else:  # bars on a terminal; plain lines in a log file (nohup ... > run.log)
        runner.progress = RichProgress() if sys.stderr.isatty() else LineProgress(results=results_dir)
    if limit_s is not None:
        runner.deadline = started + limit_s
    with runner.progress:
        written = runner.run(cells, force, chosen_executor)
    failed = [row for row in written if row.get("status") == "failed"]
    keys, finished = {cell.key for cell in cells}, {row["cell_key"] for row in written}
    left = sum(key not in finished and not results.done(key) for key in keys)
    done_before = len(keys) - len(written) - left
    click.echo(
        f"{len(written) - len(failed)} cell(s) run, {done_before} already done"
        + (f", {len(failed)} FAILED (see `benchbd table`; the next run retries them)" if failed else "")
        + f"; results in {results_dir}/"
    )
    if left:
        click.echo(f"time limit {time_limit} reached: {left} cell(s) left for the next run (the same command resumes)")
    if failed:
        sys.exit(1)  # after finishing the others: scripts and CI can tell a grid with failed cells


def _parse_duration(text: str) -> float:
    """Seconds in '50m', '2h', '1h30m', '90s'."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text or "")
    if not text or not match or not any(match.groups()):
        raise BenchbdError(f"bad --time-limit '{text}': expected a duration like 50m, 2h, 1h30m or 90s")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise BenchbdError(f"bad --time-limit '{text}': must be longer than 0s")
    return total


def _runner(results_dir, cache_dir, data_root, device, config_file, sets):
    from .config import Layers, load_user_config, parse_set
    from .runner import Cache, Results, Runner

    layers = Layers(user=load_user_config(config_file) if config_file else {}, cli=parse_set(sets))
    warn = lambda msg: click.echo(msg, err=True)  # noqa: E731
    return Runner(
        Results(results_dir, warn),
        Cache(cache_dir or Path(results_dir) / "cache", warn),
        layers,
        Path(data_root) if data_root else None,
        device,
        warn=warn,
    )


def _print_plan(cells, results, columns: dict[str, str]) -> None:
    table = Table(title=f"{len(cells)} cell(s)")
    for name in ("dataset", "attack", "defense", "setting", "seed", "budget", "status"):
        table.add_column(name)
    todo = 0
    for cell in cells:
        done = results.done(cell.key)
        todo += not done
        status = "done" if done else ("failed earlier: to run" if results.has(cell.key) else "to run")
        table.add_row(
            cell.dataset_name,
            cell.attack.name,
            f"detector {cell.detector.name}" if cell.detector else cell.defense.name,
            columns.get(cell.key, ""),
            str(cell.seed),
            cell.budget,
            status,
        )
    Console().print(table)  # the terminal's real width (COLUMNS when set); rich wraps cells to fit
    click.echo(f"{todo} of {len(cells)} cell(s) to run")


@main.command()
@click.argument("row_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help=DATA_ROOT_HELP)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option(
    "--scratch",
    default=None,
    type=click.Path(file_okay=False),
    help="Results and cache of the rerun [default: a temporary folder, removed].",
)
@plugin_option
@click.option("--quiet", is_flag=True, help="No progress display.")
def reproduce(row_file, data_root, device, scratch, plugins, quiet):
    """Rerun the one cell a result row records and print its numbers beside the row's."""
    import tempfile

    _load_plugins(plugins)
    from .progress import LineProgress, NullProgress, RichProgress
    from .runner.reproduce import read_published_row, reproduce

    row = read_published_row(Path(row_file))
    with tempfile.TemporaryDirectory(prefix="benchbd-reproduce-") as temporary:
        where = Path(scratch or temporary)
        runner = _runner(str(where / "results"), str(where / "cache"), data_root, device, None, ())
        runner.progress = NullProgress() if quiet else (RichProgress() if sys.stderr.isatty() else LineProgress())
        with runner.progress:
            comparison = reproduce(runner, row, warn=lambda text: click.echo(text, err=True))
    table = Table(title=f"{row['dataset']} / {row['attack']} / {row['defense']} / seed {row['seed']} / {row['budget']}")
    for column in ("number", "recorded", "rerun", ""):
        table.add_column(column, justify="right" if column in ("recorded", "rerun") else "left")
    for name, value in comparison.recorded.items():
        new = comparison.new.get(name, float("nan"))
        table.add_row(name, f"{value:.4f}", f"{new:.4f}", "differs" if comparison.differs(name) else "")
    Console(width=100).print(table)
    click.echo(comparison.verdict)
    if comparison.verdict.startswith("NOT"):
        sys.exit(1)


@main.command()
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help=DATA_ROOT_HELP)
@click.option("--results", "results_dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Results directory.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help=CACHE_HELP)
def info(data_root, results_dir, cache_dir):
    """Versions, devices and precision, datasets found (size, content hash), cache, report tools."""
    from .data.datasets import default_data_root
    from .info import report

    for line in report(Path(data_root) if data_root else default_data_root(), Path(cache_dir or Path(results_dir) / "cache")):
        click.echo(line)


@main.command("experiments")
def experiments_cmd():
    """List the named experiments: what each reproduces and its grid."""
    from . import experiments

    table = Table(title="experiments (benchbd run --experiment NAME; benchbd table --experiment NAME --compare paper)")
    for column in ("name", "reproduces", "what", "datasets", "attacks", "columns", "cells per seed"):
        table.add_column(column)
    for name in experiments.names():
        e = experiments.load(name)
        table.add_row(
            name,
            e.reproduces,
            e.title,
            ", ".join(e.datasets),
            ", ".join(e.attacks),
            ", ".join(c.name for c in e.columns),
            str(len(e.datasets) * len(e.attacks) * len(e.columns)),
        )
    Console().print(table)


@main.command()
@click.argument("what", default="attacks")
@click.argument("name", required=False)
@click.option(
    "--dataset",
    default="cifar10-mini",
    show_default=True,
    help="Dataset whose test image is shown, or whose per-dataset values are resolved.",
)
@click.option("--attacks", default="all,modern", show_default=True, help="Comma-separated attack names or groups (all, modern).")
@click.option("--index", default=0, show_default=True, help="Which non-target test image (0 = the first).")
@click.option("--amplify", default=5.0, show_default=True, help="Factor on the difference image.")
@click.option(
    "--out", default="gallery.png", show_default=True, type=click.Path(dir_okay=False), help="Image to write (.png if no extension)."
)
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help=DATA_ROOT_HELP)
@click.option("--set", "sets", multiple=True, metavar="KIND.NAME.PARAM=VALUE", help=SET_HELP)
@click.option("--config", "config_file", default=None, help=CONFIG_HELP)
@click.option(
    "--results", "results_dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Results directory of the run."
)
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help=CACHE_HELP + " Source of trained triggers (input_aware).")
@click.option("--budget", default="fast", show_default=True, help="Budget whose trained triggers (input_aware) are drawn.")
@plugin_option
def show(what, name, dataset, attacks, index, amplify, out, data_root, sets, config_file, results_dir, cache_dir, budget, plugins):
    """`show attacks`: the trigger gallery (per attack, a clean test image, its triggered version, the
    difference). `show attack|defense|dataset NAME`: the component's parameters, resolved for
    --dataset, with their defaults and the layer each value comes from."""
    _load_plugins(plugins)
    if what in ("attack", "defense", "dataset", "detector", "train"):
        from .config import Layers, load_user_config, parse_set
        from .describe import component_details, parameter_table

        if not name:
            raise BenchbdError(
                f"show {what} needs a name, e.g. `benchbd show {what} "
                + {"attack": "blend", "defense": "nad", "dataset": "cifar10", "detector": "strip", "train": "normal"}[what]
                + "`"
            )
        layers = Layers(user=load_user_config(config_file) if config_file else {}, cli=parse_set(sets))
        for line in component_details(what, name):
            click.echo(line)
        if what in ("attack", "defense", "detector"):
            from .components import components
            from .fidelity import card_line

            line = card_line(what, components()[f"{what}s"].resolve(name))
            if line:
                click.echo(line)
        Console().print(parameter_table(what, name, dataset, layers))
        return
    from .config import Layers, parse_set
    from .report.gallery import attack_gallery, gallery_columns
    from .runner import Cache, Results, Runner

    if what != "attacks":
        raise unknown("thing to show", what, ["attacks", "attack", "defense", "dataset", "detector", "train"])
    cache = Cache(cache_dir or Path(results_dir) / "cache")
    runner = Runner(Results(results_dir), cache, Layers(cli=parse_set(sets)), Path(data_root) if data_root else None, "cpu")
    cells = runner.plan([dataset], attacks, "none", [0], budget)
    chosen = []
    for cell in cells:  # attacks whose trigger is trained (input_aware) draw from the cache, or are left out
        try:
            runner.prepare_from_cache(cell)
            chosen.append(cell.attack)
        except BenchbdError as exc:
            click.echo(f"left out of the gallery: {exc}", err=True)
    if not chosen:
        raise BenchbdError("no attack left to draw")
    path = attack_gallery(gallery_columns(cells[0].data, chosen, index), out, amplify, f"{cells[0].dataset_name}: triggers")
    click.echo(f"wrote {path}")


@main.command()
@click.option(
    "--results", "results_dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Results directory to read."
)
@click.option("--format", "fmt", default="markdown", show_default=True, help="markdown, latex, csv or html.")
@click.option("--compare", default=None, help="'paper': the paper's numbers and the difference beside ours.")
@click.option("--experiment", default=None, help="Only this experiment's cells, one column per setting (name or YAML file).")
@click.option("--dataset", "datasets", default=None, help="Only these datasets (comma-separated).")
@click.option("--budget", "budgets", default=None, help="Only these budgets (comma-separated).")
@click.option(
    "--metrics",
    default="asr,ca",
    show_default=True,
    help="asr and ca, plus ra (robust accuracy) and/or der (defense effectiveness rating vs the same seed's backdoored model).",
)
@click.option("--extra", multiple=True, metavar="METRIC", help="Also show this per-defense metric, e.g. epsilon of dp (repeatable).")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
def table(results_dir, fmt, compare, experiment, datasets, budgets, metrics, extra, output):
    """Print the ASR/CA grid of the results, per dataset and budget."""
    from .report.tables import METRICS, ROW_METRICS, render

    chosen_metrics = _names(metrics) or []
    for name in chosen_metrics:
        if name not in METRICS + ROW_METRICS:
            raise unknown("--metrics entry", name, METRICS + ROW_METRICS)
    rows, chosen, members = _saved_results(results_dir, experiment)
    more = tuple(m for m in ROW_METRICS if m in chosen_metrics) + tuple(extra)
    text = render(rows, fmt, compare, _names(datasets), _names(budgets), more, chosen, members)
    if output:
        _write(Path(output), text)
    else:
        sys.stdout.write(text)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise BenchbdError(f"cannot write '{path}': {exc.strerror or exc}") from None


def _writable_dir(path: Path, what: str) -> None:
    """Refuse, before anything trains, a directory that cannot be made or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".benchbd-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BenchbdError(f"cannot write to the {what} '{path}': {exc.strerror or exc}") from None


@main.command()
@click.option(
    "--results", "results_dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Results directory to read."
)
@click.option(
    "--out", default="report.html", show_default=True, type=click.Path(dir_okay=False), help="HTML file to write (one self-contained page)."
)
@click.option("--compare", default="paper", show_default=True, help="'paper': the paper's numbers beside ours; 'none': ours only.")
@click.option("--dataset", "datasets", default=None, help="Only these datasets (comma-separated).")
@click.option("--budget", "budgets", default=None, help="Only these budgets (comma-separated).")
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help=DATA_ROOT_HELP + " Used for the trigger gallery.")
@click.option("--set", "sets", multiple=True, metavar="KIND.NAME.PARAM=VALUE", help=SET_HELP)
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help=CACHE_HELP + " Source of trained triggers (input_aware).")
@click.option("--gallery/--no-gallery", default=True, show_default=True, help="Draw the trigger gallery (loads data and torch).")
@plugin_option
def report(results_dir, out, compare, datasets, budgets, data_root, sets, cache_dir, gallery, plugins):
    """One self-contained HTML page of a results directory: provenance, every grid beside the paper's,
    the CA-vs-ASR scatter with each point labelled by attack, and the trigger gallery."""
    from .report.page import report_page

    if compare not in ("paper", "none"):
        raise unknown("--compare source", compare, ["paper", "none"])
    if not Path(results_dir).is_dir():
        raise BenchbdError(f"results directory '{results_dir}' does not exist: run `benchbd run` first or pass --results DIR")
    runner = None
    if gallery:
        _load_plugins(plugins)
        from .config import Layers, parse_set
        from .runner import Cache, Results, Runner

        cache = Cache(cache_dir or Path(results_dir) / "cache")
        runner = Runner(Results(results_dir), cache, Layers(cli=parse_set(sets)), Path(data_root) if data_root else None, "cpu")
    warn = functools.partial(click.echo, err=True)
    text = report_page(Path(results_dir), runner, None if compare == "none" else compare, _names(datasets), _names(budgets), warn)
    path = Path(out)
    if not path.suffix:
        path = path.with_name(path.name + ".html")
    _write(path, text)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option(
    "--into",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Also fill this file's block between <!-- benchbd:results:begin NAME --> and <!-- ...:end NAME --> (repeatable).",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a published file differs from what the rows give.")
def publish(results_dir, into, check):
    """Write RESULTS_DIR/README.md (provenance and the table beside the paper's) from its rows alone."""
    from .report.publish import publish as publish_rows

    if not Path(results_dir).is_dir():
        raise BenchbdError(f"results directory '{results_dir}' does not exist")
    changed = publish_rows(Path(results_dir), [Path(p) for p in into], check)
    if check:
        for path in changed:
            click.echo(
                f"{path} differs from what the rows in {results_dir}/rows give: run `benchbd publish {results_dir}"
                + "".join(f" --into {p}" for p in into)
                + "`",
                err=True,
            )
        sys.exit(1 if changed else 0)
    click.echo(f"wrote {', '.join(map(str, changed))}" if changed else "up to date")


@main.command()
@click.option("--device", default=None, help="cpu or cuda [default: cuda when there is one].")
@click.option("--images", default=4096, show_default=True, help="Synthetic training images per epoch.")
@click.option("--batch", default=256, show_default=True, help="Batch size of both loops.")
@click.option("--epochs", default=2, show_default=True, help="Timed epochs (one more warms up).")
@click.option("--workers", default=2, show_default=True, help="DataLoader workers of the reference loop.")
@click.option("--concurrent", default=0, show_default=True, help="Also measure K benchbd trainings at once (K processes).")
def bench(device, images, batch, epochs, workers, concurrent):
    """Training images/s of benchbd's trainer against the usual research loop, in the same run."""
    import torch

    from .bench.throughput import report

    for name, value in (("--images", images), ("--batch", batch), ("--epochs", epochs)):
        if value < 1:
            raise BenchbdError(f"{name} {value} is invalid: must be at least 1")
    report(device or ("cuda" if torch.cuda.is_available() else "cpu"), images, batch, epochs, workers, concurrent, click.echo)


@main.group()
def plot():
    """Figures: stem-feature PCA (paper Figure 2), CA-vs-ASR scatter, reconstructions (Figure 4)."""


def cell_options(default_defense: str):
    """Options naming one cell to train (or take from the cache) for a figure."""
    options = [
        click.option("--dataset", default="cifar10-mini", show_default=True, help="The cell's dataset."),
        click.option("--attack", default="blend", show_default=True, help="The cell's attack."),
        click.option(
            "--defense", default=default_defense, show_default=True, help="A defense, optionally with settings: 'tnr[rec_weight=1]'."
        ),
        click.option("--seed", default=0, show_default=True, help="The cell's seed."),
        click.option("--budget", default="fast", show_default=True, help="Training budget: paper, fast, demo, smoke."),
        click.option(
            "--results",
            "results_dir",
            default="results",
            show_default=True,
            type=click.Path(file_okay=False),
            help="Where the cell's row goes; its cache is reused.",
        ),
        click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help=CACHE_HELP),
        click.option("--data-root", default=None, type=click.Path(file_okay=False), help=DATA_ROOT_HELP),
        click.option("--device", default="auto", show_default=True, help=DEVICE_HELP),
        click.option("--config", "config_file", default=None, help=CONFIG_HELP),
        click.option("--set", "sets", multiple=True, metavar="KIND.NAME.PARAM=VALUE", help=SET_HELP),
        plugin_option,
        click.option("--quiet", is_flag=True, help="No progress display."),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _figure_runner(results_dir, cache_dir, data_root, device, config_file, sets, plugins, quiet):
    from .progress import NullProgress, RichProgress

    _load_plugins(plugins)
    runner = _runner(results_dir, cache_dir, data_root, device, config_file, sets)
    runner.progress = NullProgress() if quiet else RichProgress()
    return runner


@plot.command("pca")
@cell_options("tnr")
@click.option(
    "--versus",
    default="none",
    show_default=True,
    help="The left panel's model: 'none' (normal training, no reconstruction) or e.g. 'tnr[rec_weight=0, tv_weight=0]'.",
)
@click.option("--source", default=None, type=int, help="Source class [default: the first class that is not the target].")
@click.option("--split", default=None, type=int, help="Where to cut models that do not know their stem [default: the architecture's].")
@click.option("--out", default="pca.png", show_default=True, type=click.Path(dir_okay=False), help="Image to write (.png if no extension).")
def plot_pca(
    dataset,
    attack,
    defense,
    seed,
    budget,
    results_dir,
    cache_dir,
    data_root,
    device,
    config_file,
    sets,
    plugins,
    quiet,
    versus,
    source,
    split,
    out,
):
    """Stem features of clean target-class, clean source-class and poisoned source-class test images,
    projected by PCA: the --versus model beside the --defense model (the paper's Figure 2)."""
    from .report.plots import pca_figure
    from .runner.inspect import pca_panels

    runner = _figure_runner(results_dir, cache_dir, data_root, device, config_file, sets, plugins, quiet)
    panels, title = pca_panels(runner, dataset, attack, [versus, defense], seed, budget, source, split)
    click.echo(f"wrote {pca_figure(panels, out, title)}")


@plot.command("recon")
@cell_options("tnr")
@click.option("--count", default=8, show_default=True, help="Images per row.")
@click.option(
    "--out", default="recon.png", show_default=True, type=click.Path(dir_okay=False), help="Image to write (.png if no extension)."
)
def plot_recon(
    dataset, attack, defense, seed, budget, results_dir, cache_dir, data_root, device, config_file, sets, plugins, quiet, count, out
):
    """Test images, clean and triggered, and their reconstructions by T&R's stage-1 decoder (Figure 4)."""
    from .report.plots import recon_figure
    from .runner.inspect import reconstruction_rows

    runner = _figure_runner(results_dir, cache_dir, data_root, device, config_file, sets, plugins, quiet)
    rows, title = reconstruction_rows(runner, dataset, attack, defense, seed, budget, count)
    click.echo(f"wrote {recon_figure(rows, out, title)}")


@plot.command("scatter")
@click.option(
    "--results", "results_dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Results directory to read."
)
@click.option("--experiment", default=None, help="Only this experiment's cells.")
@click.option("--dataset", "datasets", default=None, help="Only these datasets (comma-separated).")
@click.option("--budget", "budgets", default=None, help="Only these budgets (comma-separated).")
@click.option(
    "--out", default="scatter.png", show_default=True, type=click.Path(dir_okay=False), help="Image to write (.png if no extension)."
)
def plot_scatter(results_dir, experiment, datasets, budgets, out):
    """CA against ASR for every cell of a results directory, one marker per defense."""
    from .report.plots import scatter_figure
    from .report.tables import build_grids

    rows, chosen, members = _saved_results(results_dir, experiment)
    grids = build_grids(rows, None, _names(datasets), _names(budgets), (), chosen, members)
    click.echo(f"wrote {scatter_figure(grids, out, 'CA against ASR per cell (mean over seeds)')}")


def _names(text: str | None) -> list[str] | None:
    """'a, b' -> ['a', 'b']; None stays None (no filter)."""
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _saved_results(results_dir: str, experiment: str | None):
    """(rows, experiment or None, its column membership or None) of a results directory."""
    from .runner import Results

    if not Path(results_dir).is_dir():
        raise BenchbdError(f"results directory '{results_dir}' does not exist: run `benchbd run` first or pass --results DIR")
    chosen = members = None
    if experiment:
        from . import experiments

        chosen = experiments.load(experiment)
        members = experiments.Membership(results_dir, chosen.name).read()
    return Results(results_dir).load(), chosen, members


if __name__ == "__main__":
    main()
