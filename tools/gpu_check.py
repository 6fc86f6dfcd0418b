"""The whole GPU check in one command, for a leased GPU with no internet (docs/performance.md):

    PYTHONPATH=. python tools/gpu_check.py OUT --data-root DIR [--time-limit 5m]

1. installs the wheels shipped in .whl/ for what is missing (opacus, ray), into /tmp/site;
2. runs the tests marked `cuda` (bf16 / channels_last against float32, DP-SGD on CUDA, two
   workers sharing one GPU and the dataset, the same seed twice, peak memory in the row);
3. runs `benchbd bench` against the reference loop, one and K trainings at once;
4. runs the fast CIFAR-10 grid with K workers per GPU under a time limit, into the layout of
   results/cifar10-fast, so its rows join the committed ones (rows record their device).

Everything to keep lands in OUT, in 6 files: summary.txt, cuda_tests.log, bench.txt, run.log,
table.md and rows.tar.gz; results and cache go to --work (default /tmp/benchbd-gpu-check).
Each step runs even if an earlier one failed; the exit status is 1 if any failed.
`--device cpu --budget smoke --dataset synthetic` rehearses it on a CPU (a test does, so the
first GPU run cannot die of a typo).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / ".whl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--data-root", default=None, help="folder with cifar10.npz [default: benchbd's]")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--budget", default="fast")
    parser.add_argument("--attacks", default="all")
    parser.add_argument("--defenses", default="all")
    parser.add_argument("--jobs", type=int, default=8, help="workers per GPU for the grid, trainings at once for bench")
    parser.add_argument("--time-limit", default="5m", help="no new cell of the grid starts after this")
    parser.add_argument("--bench-images", type=int, default=50000)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="passed on to benchbd run (repeatable)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/benchbd-gpu-check"), help="results and cache (not kept)")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.txt").write_text("")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (install_missing_wheels(out), str(REPO), env.get("PYTHONPATH", "")) if p)
    results = args.work / "results" / f"{args.dataset}-{args.budget}"
    benchbd = [sys.executable, "-m", "benchbd.cli"]
    data = ["--data-root", args.data_root] if args.data_root else []
    sets = [item for s in args.sets for item in ("--set", s)]
    steps = [
        (
            "cuda tests",
            "cuda_tests.log",
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(REPO / "tests")],
        ),
        (
            "bench",
            "bench.txt",
            [
                *benchbd,
                "bench",
                "--device",
                args.device,
                "--images",
                str(args.bench_images),
                "--batch",
                "256",
                "--concurrent",
                str(args.jobs),
            ],
        ),
        (
            "grid",
            "run.log",
            [
                *benchbd,
                "run",
                "--dataset",
                args.dataset,
                *data,
                "--budget",
                args.budget,
                "--attacks",
                args.attacks,
                "--defenses",
                args.defenses,
                "--device",
                args.device,
                "--jobs-per-gpu",
                str(args.jobs),
                "--time-limit",
                args.time_limit,
                "--results",
                str(results),
                "--cache-dir",
                str(args.work / "cache"),
                *sets,
            ],
        ),
        ("table", "table.md", [*benchbd, "table", "--results", str(results), "--compare", "paper"]),
    ]
    summary = []
    for name, log, command in steps:
        started = time.monotonic()
        with open(out / log, "w") as handle:
            handle.write("$ " + " ".join(command) + "\n")
            handle.flush()
            code = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
        # pytest's 5: no test collected (none marked cuda here) counts as a failure of the check
        summary.append(f"{name}: exit {code} in {time.monotonic() - started:.0f}s (log: {log})")
        print(summary[-1], flush=True)
    rows = results / "rows"
    with tarfile.open(out / "rows.tar.gz", "w:gz") as archive:
        if rows.is_dir():
            archive.add(rows, arcname=f"{results.name}/rows")
    count = len(list(rows.glob("*.json"))) if rows.is_dir() else 0
    summary.append(f"rows: {count} in rows.tar.gz (unpack into results/ to join {results.name})")
    with open(out / "summary.txt", "a") as handle:
        handle.write("\n".join(summary) + "\n")
    print(summary[-1])
    return 0 if all(" exit 0 " in line for line in summary[:-1]) else 1


def install_missing_wheels(out: Path) -> str:
    """Install the shipped wheels into /tmp/site when a package they provide is missing; returns
    the folder to put on PYTHONPATH ('' when nothing was needed)."""
    missing = [name for name in ("opacus", "ray") if importlib.util.find_spec(name) is None]
    wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    if not missing or not wheels:
        return ""
    target = Path("/tmp/site")
    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(target),
            *map(str, wheels),
        ],
        capture_output=True,
        text=True,
    )
    (out / "summary.txt").write_text(f"wheels for {', '.join(missing)}: pip exit {code.returncode}\n{code.stdout}{code.stderr}")
    return str(target) if code.returncode == 0 else ""


if __name__ == "__main__":
    sys.exit(main())
