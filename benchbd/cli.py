"""The command line: parses, delegates, prints. No science here."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .errors import BenchbdError, unknown

LIST_KINDS = ("attacks", "defenses", "datasets", "models", "budgets")


class Cli(click.Group):
    """Turns a BenchbdError anywhere below into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BenchbdError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


def _components():
    """Import the built-in components (registration) lazily: `benchbd --help` stays fast."""
    from . import attacks, defenses, models  # noqa: F401
    from .data import DATASETS
    from .train import BUDGETS
    return {"attacks": attacks.ATTACKS, "defenses": defenses.DEFENSES, "datasets": DATASETS,
            "models": models.MODELS, "budgets": BUDGETS}


def _load_plugins(plugins: tuple[str, ...]) -> None:
    from .registry import load_plugins
    _components()
    load_plugins(plugins)


plugin_option = click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
                             help="Import MODULE first, so the components it registers can be used (repeatable).")


@click.group(cls=Cli)
@click.version_option(package_name="benchbd")
def main():
    """benchbd: benchmark backdoor defenses on image classifiers."""


@main.command("list")
@click.argument("kind", default="attacks")
@plugin_option
def list_cmd(kind: str, plugins):
    """List registered attacks, defenses, datasets, models or budgets."""
    _load_plugins(plugins)
    registries = _components()
    if kind not in registries:
        raise unknown("list kind", kind, LIST_KINDS)
    table = Table(title=kind, show_lines=False)
    for column in ("name", "aliases", "description"):
        table.add_column(column)
    if kind == "defenses":
        table.add_column("needs")
        table.add_column("applies")
    if kind == "attacks":
        table.add_column("label")
    for entry in registries[kind].entries():
        row = [entry.name, ", ".join(entry.aliases), entry.description]
        if kind == "defenses":
            row += [", ".join(sorted(n.value for n in entry.obj.needs)), entry.obj.scenario()]
        if kind == "attacks":
            row.append(("clean" if entry.obj.clean_label else "dirty") + ("" if entry.obj.in_all else ", not in 'all'"))
        if kind == "datasets" and entry.obj.takes_path:
            row[0] += ":PATH"
        table.add_row(*row)
    Console(width=int(os.environ.get("COLUMNS", 160))).print(table)


def _parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if dash and lo else [int(part)]
        except ValueError:
            raise BenchbdError(f"bad --seeds '{text}': expected integers like 0 or 0,1,2 or 0-4") from None
    return list(dict.fromkeys(seeds))


@main.command()
@click.option("--dataset", "datasets", default="cifar10-mini", show_default=True,
              help="Comma-separated: cifar10, gtsrb, imagenet12, cifar10-mini, synthetic, npz:PATH, imagefolder:PATH.")
@click.option("--attacks", default="badnet_grid", show_default=True, help="Comma-separated attack names, or 'all'.")
@click.option("--defenses", default="none,tnr", show_default=True, help="Comma-separated defense names, or 'all'.")
@click.option("--seeds", default="0", show_default=True, help="Seeds: 0 or 0,1,2 or 0-4.")
@click.option("--budget", default="fast", show_default=True, help="Training budget: paper, fast, demo, smoke.")
@click.option("--results", "results_dir", default="results", show_default=True, type=click.Path(file_okay=False), help="Results directory.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Artifact cache [default: RESULTS/cache].")
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help="Where datasets live [default: $BENCHBD_DATA or ~/.cache/benchbd/data].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--config", "config_file", default=None, help="A YAML file of parameters in registry.yaml's layout.")
@click.option("--set", "sets", multiple=True, metavar="KIND.NAME.PARAM=VALUE", help="Override one parameter (repeatable).")
@plugin_option
@click.option("--force", is_flag=True, help="Rerun cells that already have a result row.")
@click.option("--quiet", is_flag=True, help="No progress display.")
def run(datasets, attacks, defenses, seeds, budget, results_dir, cache_dir, data_root, device, config_file, sets, plugins, force, quiet):
    """Train every (dataset, attack, defense, seed) cell and write one result row per cell."""
    _load_plugins(plugins)
    from .config import Layers, load_user_config, parse_set
    from .progress import NullProgress, RichProgress
    from .runner import Cache, Results, Runner

    layers = Layers(user=load_user_config(config_file) if config_file else {}, cli=parse_set(sets))
    warn = lambda msg: click.echo(msg, err=True)  # noqa: E731
    results = Results(results_dir)
    runner = Runner(results, Cache(cache_dir or Path(results_dir) / "cache", warn), layers,
                    Path(data_root) if data_root else None, device, warn=warn)
    cells = runner.plan([d for d in datasets.split(",") if d.strip()], attacks, defenses, _parse_seeds(seeds), budget)
    progress = NullProgress() if quiet else RichProgress()
    runner.progress = progress
    if quiet:
        written = runner.run(cells, force)
    else:
        with progress:
            written = runner.run(cells, force)
    click.echo(f"{len(written)} cell(s) run, {len(cells) - len(written)} already done; results in {results_dir}/")


@main.command()
@click.argument("what", default="attacks")
@click.option("--dataset", default="cifar10-mini", show_default=True, help="Dataset whose test image is shown.")
@click.option("--attacks", default="all", show_default=True, help="Comma-separated attack names, or 'all'.")
@click.option("--index", default=0, show_default=True, help="Which non-target test image (0 = the first).")
@click.option("--amplify", default=5.0, show_default=True, help="Factor on the difference image.")
@click.option("--out", default="gallery.png", show_default=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--data-root", default=None, type=click.Path(file_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KIND.NAME.PARAM=VALUE")
@plugin_option
def show(what, dataset, attacks, index, amplify, out, data_root, sets, plugins):
    """Draw the trigger gallery: per attack, a clean test image, its triggered version, the difference."""
    _load_plugins(plugins)
    from .attacks import ATTACKS
    from .config import Layers, parse_set
    from .report.gallery import attack_gallery
    from .runner import Cache, Results, Runner

    import torch

    if what != "attacks":
        raise unknown("thing to show", what, ["attacks"])
    runner = Runner(Results("."), Cache("."), Layers(cli=parse_set(sets)), Path(data_root) if data_root else None, "cpu")
    label, name, _, data = runner.dataset(dataset)
    chosen = [runner.attack(a, name, data) for a in ATTACKS.expand(attacks, [n for n in ATTACKS.names() if ATTACKS.get(n).in_all])]
    candidates = torch.nonzero(data.test.labels != chosen[0].params.target).flatten()
    if not 0 <= index < len(candidates):
        raise BenchbdError(f"--index {index} is out of range: valid 0..{len(candidates) - 1}")
    path = attack_gallery(chosen, data.test.images[candidates[index]], out, amplify, f"{label}: triggers")
    click.echo(f"wrote {path}")


@main.command()
@click.option("--results", "results_dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--format", "fmt", default="markdown", show_default=True, help="markdown, latex, csv or html.")
@click.option("--compare", default=None, help="'paper': the paper's numbers and the difference beside ours.")
@click.option("--dataset", "datasets", default=None, help="Only these datasets (comma-separated).")
@click.option("--budget", "budgets", default=None, help="Only these budgets (comma-separated).")
@click.option("--extra", multiple=True, metavar="METRIC", help="Also show this per-cell metric, e.g. epsilon of dp (repeatable).")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
def table(results_dir, fmt, compare, datasets, budgets, extra, output):
    """Print the ASR/CA grid of the results, per dataset and budget."""
    from .report.tables import render
    from .runner import Results

    if not Path(results_dir).is_dir():
        raise BenchbdError(f"results directory '{results_dir}' does not exist: run `benchbd run` first or pass --results DIR")
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    text = render(Results(results_dir).load(), fmt, compare, split(datasets), split(budgets), extra)
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
