"""Progress of long work at three levels: the grid (cells), the cell (its stage), the training run
(steps, with ETA). The trainer and runner report here; `NullProgress` keeps the library quiet."""
from __future__ import annotations

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

    def start_run(self, desc: str, total_steps: int) -> None:
        """A training run of `total_steps` optimiser steps begins."""

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        """`steps` more optimiser steps are done."""

    def end_run(self) -> None:
        """The training run finished."""


class RichProgress(NullProgress):
    """Bars on stderr: the grid, and for every running cell (one per worker slot) its stage and
    its training run. `view(slot)` is the NullProgress interface for one slot."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.grid_task = None
        self.slots: dict[int | None, SlotProgress] = {}

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

    def view(self, slot: int | None) -> "SlotProgress":
        if slot not in self.slots:
            self.slots[slot] = SlotProgress(self, slot)
        return self.slots[slot]

    def start_cell(self, label: str) -> None:
        self.view(None).start_cell(label)

    def stage(self, text: str) -> None:
        self.view(None).stage(text)

    def end_cell(self, summary: str) -> None:
        self.view(None).end_cell(summary)

    def start_run(self, desc: str, total_steps: int) -> None:
        self.view(None).start_run(desc, total_steps)

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        self.view(None).advance(steps, info)

    def end_run(self) -> None:
        self.view(None).end_run()


class SlotProgress(NullProgress):
    """One running cell's lines in a RichProgress: the cell and its stage, its training run."""

    def __init__(self, parent: RichProgress, slot: int | None):
        self.parent, self.bars = parent, parent.bars
        self.prefix = "" if slot is None else f"[{slot}] "
        self.cell_task = self.bars.add_task(f"{self.prefix}cell", total=None, info="")
        self.run_task = None
        self.label = ""

    def start_cell(self, label: str) -> None:
        self.label = label
        self.bars.update(self.cell_task, description=f"{self.prefix}cell {label}", info="")

    def stage(self, text: str) -> None:
        self.bars.update(self.cell_task, info=text)

    def end_cell(self, summary: str) -> None:
        self.bars.console.print(f"{self.label}: {summary}")
        self.bars.update(self.cell_task, description=f"{self.prefix}idle", info="")
        if self.parent.grid_task is not None:
            self.bars.advance(self.parent.grid_task)

    def start_run(self, desc: str, total_steps: int) -> None:
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
