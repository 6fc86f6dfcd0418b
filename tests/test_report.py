"""`benchbd report`: one self-contained HTML page, checked as HTML and as a real headless browser
(Debian's chromium) renders it."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from benchbd.cli import main

from .test_cli import SYN

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def browser() -> str:
    """A headless Chromium. CI installs Debian's (see .ci/run), so there it must be found; elsewhere
    the browser test is skipped with the command that installs it."""
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH: .ci/run installs it (apt-get install chromium)")
        pytest.skip("needs a headless chromium: apt-get install chromium")
    return found


def headless(exe: str, *args) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = tmp_path_factory.mktemp("report") / "results"
    res = invoke("run", *SYN, "--attacks", "badnet_grid,blend", "--defenses", "none,tnr", "--results", results)
    assert res.exit_code == 0, res.output
    out = results.parent / "report.html"
    res = invoke("report", "--results", results, "--out", out, "--set", "dataset.synthetic.n_test=100")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"wrote {out}"
    return out


def test_report_is_one_self_contained_page(report):
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert re.findall(r'(?:src|href)="(?!data:|#)', page) == [], "every figure is embedded; nothing is fetched"
    assert "http://" not in page and "https://" not in page
    images = re.findall(r'<img src="data:image/png;base64,', page)
    assert len(images) == 2  # the scatter and the gallery
    assert page.count("<table") == 1 and "<th>badnet_grid" in page and "<th>blend" in page
    # a heat map: each cell coloured by its ASR (2 attacks + Average, 2 defenses; the Average is empty: nothing planted)
    assert page.count('<td style="background:') == 6 and page.count('<td style="background:hsl(') == 4
    assert "The paper has no numbers for dataset &#x27;synthetic&#x27;" in page
    assert "budget: smoke; dataset: synthetic" in page  # provenance from the rows


def test_report_renders_in_a_headless_browser(report, tmp_path):
    exe = browser()
    shot = tmp_path / "report.png"
    done = headless(exe, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    assert pixels.shape == (2400, 1200, 3)
    ink = (pixels.min(-1) < 200).mean()
    colour = (pixels.max(-1) - pixels.min(-1) > 60).mean()
    assert ink > 0.01, f"the page rendered blank ({ink:.4f} of the pixels carry ink)"
    assert colour > 0.0002, f"no coloured pixels: the embedded figures did not render ({colour:.5f})"
    dom = headless(exe, "--dump-dom", report.as_uri()).stdout
    assert dom.count("<table") == 1 and dom.count("<tr>") >= 3 and "badnet_grid" in dom
    assert dom.count("background:hsl(") + dom.count("background: hsl(") + dom.count("background-color: rgb(") >= 4  # the heat map
    assert dom.count('<img src="data:image/png;base64,') == 2


def test_report_notes_a_gallery_it_cannot_draw_and_checks_its_options(report, tmp_path):
    results = tmp_path / "moved"
    shutil.copytree(report.parent / "results" / "rows", results / "rows")
    for row_file in (results / "rows").iterdir():  # rows made on a machine whose data is not here
        row = json.loads(row_file.read_text())
        row_file.write_text(json.dumps({**row, "dataset": f"npz:{tmp_path / 'gone.npz'}"}))
    res = CliRunner().invoke(main, ["report", "--results", str(results), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "warning: no trigger gallery for npz:" in res.output
    page = (tmp_path / "r.html").read_text()
    assert "no trigger gallery for npz:" in page and page.count("<img ") == 1  # the scatter is still there
    res = CliRunner().invoke(main, ["report", "--results", str(results), "--compare", "papr"])
    assert res.exit_code == 2 and "did you mean 'paper'" in res.output
    res = CliRunner().invoke(main, ["report", "--results", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "results directory" in res.output
    res = CliRunner().invoke(main, ["report", "--results", str(results), "--out", str(tmp_path / "no" / "dir" / "r.html")])
    assert res.exit_code == 2 and "cannot write" in res.output and "Traceback" not in res.output
