"""Progress of long work at three levels: the grid (cells), the cell (its stage), the training run
(steps, with ETA). The trainer and runner report here; `NullProgress` keeps the library quiet,
`RichProgress` draws bars on a terminal, `LineProgress` prints plain lines for a log file."""

from __future__ import annotations

import abc
import sys
import time
from datetime import datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class NullProgress:
    """Reports nowhere: the default for library use and for tests."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def start_grid(self, total: int) -> None:
        """A grid of `total` cells begins."""

    def start_cell(self, label: str) -> None:
        """A cell begins."""

    def stage(self, text: str) -> None:
        """The running cell moved to a new stage (poisoning, training the backdoored model, ...)."""

    def end_cell(self, summary: str) -> None:
        """The running cell finished (or was skipped)."""

    def skipped(self, count: int) -> None:
        """`count` cells of the grid were done earlier."""

    def start_run(self, desc: str, total_steps: int, batch_size: int = 0) -> None:
        """A training run of `total_steps` optimiser steps of `batch_size` images (0: not counted in images) begins."""

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        """`steps` more optimiser steps are done."""

    def end_run(self) -> None:
        """The training run finished."""


class SlottedProgress(NullProgress, abc.ABC):
    """A display with one view per running cell (a worker slot, or None for this process): the
    NullProgress calls made on the display itself go to the view of slot None."""

    slots: dict

    @abc.abstractmethod
    def make_view(self, slot: int | None) -> NullProgress:
        """The view of one slot (made on first use)."""

    def view(self, slot: int | None) -> NullProgress:
        if slot not in self.slots:
            self.slots[slot] = self.make_view(slot)
        return self.slots[slot]

    def start_cell(self, label: str) -> None:
        self.view(None).start_cell(label)

    def stage(self, text: str) -> None:
        self.view(None).stage(text)

    def end_cell(self, summary: str) -> None:
        self.view(None).end_cell(summary)

    def start_run(self, desc: str, total_steps: int, batch_size: int = 0) -> None:
        self.view(None).start_run(desc, total_steps, batch_size)

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        self.view(None).advance(steps, info)

    def end_run(self) -> None:
        self.view(None).end_run()


class RichProgress(SlottedProgress):
    """Bars on stderr: the grid, and for every running cell (one per worker slot) its stage and
    its training run. `view(slot)` is the NullProgress interface for one slot."""

    def __init__(self, console: Console | None = None, get_time=None):
        self.console = console or Console(stderr=True)
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            get_time=get_time,
        )
        self.grid_task = None
        self.slots: dict[int | None, SlotProgress] = {}
        self.cell_seconds: list[float] = []

    def cell_done(self, seconds: float) -> None:
        """Advance the grid; its ETA from the mean time of the cells finished so far (cells take
        minutes to hours, longer than rich's 30-second speed window)."""
        if self.grid_task is None:
            return
        self.cell_seconds.append(seconds)
        self.bars.advance(self.grid_task)
        task = self.bars.tasks[self.grid_task] if self.grid_task < len(self.bars.tasks) else None
        left = (task.total or 0) - task.completed if task else 0
        eta = sum(self.cell_seconds) / len(self.cell_seconds) * left / max(1, len(self.slots))
        self.bars.update(self.grid_task, info=f"ETA {duration(eta)}" if left > 0 else "done")

    def __enter__(self):
        self.bars.start()
        return self

    def __exit__(self, *exc):
        self.bars.stop()

    def start_grid(self, total: int) -> None:
        self.grid_task = self.bars.add_task("grid", total=total, info="")

    def skipped(self, count: int) -> None:
        if count:
            self.bars.advance(self.grid_task, count)
            self.console.print(f"{count} cell(s) done earlier, skipped")

    def make_view(self, slot: int | None) -> "SlotProgress":
        return SlotProgress(self, slot)


class SlotProgress(NullProgress):
    """One running cell's lines in a RichProgress: the cell and its stage, its training run."""

    def __init__(self, parent: RichProgress, slot: int | None):
        self.parent, self.bars = parent, parent.bars
        self.prefix = "" if slot is None else f"[{slot}] "
        self.cell_task = self.bars.add_task(f"{self.prefix}cell", total=None, info="")
        self.run_task = None
        self.label, self.started = "", 0.0

    def start_cell(self, label: str) -> None:
        self.label, self.started = label, self.bars.get_time()
        self.bars.update(self.cell_task, description=f"{self.prefix}cell {label}", info="")

    def stage(self, text: str) -> None:
        self.bars.update(self.cell_task, info=text)

    def end_cell(self, summary: str) -> None:
        self.bars.console.print(f"{self.label}: {summary}")
        self.bars.update(self.cell_task, description=f"{self.prefix}idle", info="")
        self.parent.cell_done(self.bars.get_time() - self.started)

    def start_run(self, desc: str, total_steps: int, batch_size: int = 0) -> None:
        self.end_run()
        self.run_task = self.bars.add_task(f"{self.prefix}  {desc}", total=total_steps, info="")

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        if self.run_task is None:
            return
        if info is None:
            self.bars.advance(self.run_task, steps)
        else:
            self.bars.update(self.run_task, advance=steps, info=info)

    def end_run(self) -> None:
        if self.run_task is not None:
            self.bars.remove_task(self.run_task)
            self.run_task = None


def duration(seconds: float) -> str:
    """1h02m, 4m05s, 12s."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


MIN_RATE_WINDOW_S = 5.0


def steps_rate(per_second: float) -> str:
    """Steps per second, or seconds per step where a step is an epoch of a slow run (0.0 steps/s said nothing)."""
    return f"{per_second:.1f} steps/s" if per_second >= 0.5 or per_second <= 0 else f"{1 / per_second:.0f} s/step"


class LineProgress(SlottedProgress):
    """Plain lines for a log (`nohup benchbd run ... > run.log 2>&1 &; tail -f run.log`): one per
    cell start and stage, one per training epoch (loss, images/s, ETA of the run), one per finished
    cell (ASR, CA, wall time) with the grid's ETA. Step counts alone print at most every `every_s`."""

    def __init__(self, stream=None, results: str | None = None, every_s: float = 300.0):
        self.stream = stream or sys.stderr
        self.results, self.every_s = results, every_s
        self.total = self.finished = 0
        self.cell_seconds: list[float] = []
        self.slots: dict[int | None, _LineSlot] = {}

    def print(self, text: str) -> None:
        print(f"[{datetime.now():%H:%M:%S}] {text}", file=self.stream, flush=True)

    def start_grid(self, total: int) -> None:
        self.total = total
        self.print(f"grid: {total} cell(s)" + (f"; one result row per finished cell in {self.results}/rows/" if self.results else ""))

    def skipped(self, count: int) -> None:
        if count:
            self.finished += count
            self.print(f"{count} cell(s) done earlier, skipped")

    def cell_done(self, seconds: float) -> str:
        """Count a finished cell; the grid's progress and ETA (mean time of the cells run so far)."""
        self.finished += 1
        self.cell_seconds.append(seconds)
        left = self.total - self.finished
        eta = sum(self.cell_seconds) / len(self.cell_seconds) * left / max(1, len(self.slots))
        return f"grid {self.finished}/{self.total}" + (f", ETA {duration(eta)}" if left else "")

    def make_view(self, slot: int | None) -> "_LineSlot":
        return _LineSlot(self, slot)


class _LineSlot(NullProgress):
    """One running cell's lines in a LineProgress."""

    def __init__(self, parent: LineProgress, slot: int | None):
        self.parent = parent
        self.prefix = "" if slot is None else f"[worker {slot}] "
        self.label, self.cell_started = "", 0.0
        self.desc, self.total, self.done, self.batch_size = "", 0, 0, 0
        self.run_started = 0.0
        self.marks = [(0.0, 0), (0.0, 0)]  # (time, steps) of the last two rate windows' starts

    def print(self, text: str) -> None:
        self.parent.print(self.prefix + text)

    def start_cell(self, label: str) -> None:
        self.label, self.cell_started = label, time.monotonic()
        self.print(f"cell {label}: started")

    def stage(self, text: str) -> None:
        self.print(f"cell {self.label}: {text}")

    def end_cell(self, summary: str) -> None:
        grid = self.parent.cell_done(time.monotonic() - self.cell_started)
        self.print(f"cell {self.label}: {summary}; {grid}")

    def start_run(self, desc: str, total_steps: int, batch_size: int = 0) -> None:
        self.desc, self.total, self.done, self.batch_size = desc, total_steps, 0, batch_size
        self.run_started = time.monotonic()
        self.marks = [(self.run_started, 0), (self.run_started, 0)]

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        self.done += steps
        now = time.monotonic()
        if info is None and now - self.marks[1][0] < self.parent.every_s:
            return
        # A line soon after the last one (an epoch's end just after a periodic line) measures the
        # rate from the mark before: a few steps over a few milliseconds read as thousands of images/s.
        window_long = now - self.marks[1][0] >= MIN_RATE_WINDOW_S
        since, steps_then = self.marks[1] if window_long else self.marks[0]
        rate = (self.done - steps_then) / max(now - since, 1e-9)
        speed = f"{rate * self.batch_size:.0f} images/s" if self.batch_size else steps_rate(rate)
        elapsed = now - self.run_started
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        self.print(f"cell {self.label} | {self.desc} | {info or f'step {self.done}/{self.total}'} | {speed} | ETA {duration(eta)}")
        if window_long:
            self.marks = [self.marks[1], (now, self.done)]
