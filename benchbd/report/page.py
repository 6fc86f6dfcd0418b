"""`benchbd report`: one self-contained HTML page for a results directory, for reading in a
browser or attaching to a mail: what produced the rows, every grid (ours beside the paper's
where the paper has the cell), the CA-against-ASR scatter and the trigger gallery. Figures are
embedded as data URIs, styles inline: the page needs no network and no other file."""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import BenchbdError
from .detection import render_extras
from .plots import scatter_figure
from .publish import provenance
from .tables import build_grids, grid_id, html_page, title, to_html

REPORT_STYLE = """
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } .note { color: #8a5a00; } .grid { overflow-x: auto; }
"""


def _png(draw: Callable[[Path], Path]) -> str:
    """Run a figure-writing function into a temporary file; return the PNG as a data URI."""
    with tempfile.TemporaryDirectory() as tmp:
        path = draw(Path(tmp) / "figure.png")
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(uri: str, alt: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}">\n<figcaption>{html.escape(caption)}</figcaption></figure>\n'


def _attack_variants(rows: pd.DataFrame, dataset: str) -> list[tuple[str, dict, str, int]]:
    """(attack name, its parameters as the rows recorded them, a budget and a seed it ran at) for
    each attack setting of a dataset."""
    part = rows[rows["dataset"] == dataset]
    seen: dict[str, tuple[str, dict, str, int]] = {}
    for name, params, budget, seed in zip(part["attack"], part["params"], part["budget"], part["seed"]):
        attack_params = (params or {}).get("attack", {}) if isinstance(params, dict) else {}
        seen.setdefault(f"{name} {json.dumps(attack_params, sort_keys=True)}", (name, attack_params, budget, int(seed)))
    return list(seen.values())


def _gallery(rows: pd.DataFrame, dataset: str, runner, warn: Callable[[str], None]) -> str:
    """The trigger gallery of a dataset's attacks, drawn on one of its test images; a note instead
    when the dataset cannot be loaded here (the rows may come from another machine)."""
    from ..config import Layers
    from .gallery import attack_gallery, gallery_columns

    try:
        _, name, _, data = runner.dataset(dataset)
    except BenchbdError as exc:
        message = f"no trigger gallery for {dataset}: {exc}"
        warn(f"warning: {message}")
        return f'<p class="note">{html.escape(message)} (pass --data-root to draw it)</p>\n'
    attacks, notes = [], []
    for attack_name, params, budget, seed in _attack_variants(rows, dataset):
        layers = Layers(user={"attack": {attack_name: params}})
        (cell,) = runner.plan([dataset], attack_name, "none", [seed], budget, layers)
        try:  # a trained trigger (input_aware) comes from the results' cache, or is left out with a note
            runner.prepare_from_cache(cell)
            attacks.append(cell.attack)
        except BenchbdError as exc:
            warn(f"warning: {exc}")
            notes.append(f'<p class="note">{html.escape(str(exc))}</p>\n')
    if not attacks:
        return "".join(notes)
    uri = _png(lambda out: attack_gallery(gallery_columns(data, attacks, 0), out, 5.0, f"{dataset}: triggers"))
    caption = "Per attack: a clean test image, its triggered version, |difference| x5."
    return "".join(notes) + _figure(uri, f"trigger gallery of {dataset}", caption)


def report_page(results_dir: Path, runner, compare: str | None = "paper", datasets=None, budgets=None, warn=print) -> str:
    """The whole HTML document of a results directory; without a `runner`, no trigger gallery."""
    from ..runner import Results

    rows = Results(results_dir).load()
    grids = build_grids(rows, compare, datasets, budgets)
    shown = {g.dataset for g in grids}
    parts = [f"<h1>benchbd report: {html.escape(str(results_dir))}</h1>\n", "<h2>What produced these rows</h2>\n<ul>\n"]
    parts += [f"<li>{html.escape(line.removeprefix('- '))}</li>\n" for line in provenance(rows[rows["dataset"].isin(shown)])]
    parts.append("</ul>\n<h2>Results</h2>\n")
    if compare == "paper":
        parts.append("<p>The paper's ASR / CA in parentheses; differences over 5 points listed under each table.</p>\n")
    if len(grids) > 1:  # a table of contents: one link per table
        links = "".join(f'<li><a href="#{grid_id(g)}">{html.escape(title(g))}</a></li>' for g in grids)
        parts.append(f"<nav><p>Tables:</p><ul>{links}</ul></nav>\n")
    parts.append("<p>Each cell is coloured by its ASR (green 0%, red 100%); the numbers are ASR / CA in %.</p>\n")
    parts += [f'<div class="grid">{to_html(grid)}</div>\n' for grid in grids]
    extras = render_extras(rows[rows["dataset"].isin(shown)], "html")  # detectors and retuning controls, where rows have them
    if extras:
        parts.append(f"<h2>Detectors and the retuning check</h2>\n{extras}")
    parts.append("<h2>CA against ASR</h2>\n")
    uri = _png(lambda out: scatter_figure(grids, out, "CA against ASR per cell (mean over seeds)"))
    parts.append(_figure(uri, "scatter of CA against ASR", "One marker per defense, one colour per attack (both in the legends)."))
    if runner is not None:  # the gallery draws triggers: the only part that needs the registry (and torch)
        parts.append("<h2>Trigger gallery</h2>\n")
        parts += [_gallery(rows, dataset, runner, warn) for dataset in dict.fromkeys(g.dataset for g in grids)]
    return html_page(f"benchbd report: {results_dir}", "".join(parts), REPORT_STYLE)
