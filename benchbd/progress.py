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

    def start_run(self, desc: str, total_steps: int) -> None:
        """A training run of `total_steps` optimiser steps begins."""

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        """`steps` more optimiser steps are done."""

    def end_run(self) -> None:
        """The training run finished."""


class RichProgress(NullProgress):
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.grid_task = self.cell_task = self.run_task = None
        self.cell_label = ""

    def __enter__(self):
        self.bars.start()
        return self

    def __exit__(self, *exc):
        self.bars.stop()

    def start_grid(self, total: int) -> None:
        self.grid_task = self.bars.add_task("grid", total=total, info="")
        self.cell_task = self.bars.add_task("cell", total=None, info="")

    def start_cell(self, label: str) -> None:
        self.cell_label = label
        self.bars.update(self.cell_task, description=f"cell {label}", info="")

    def stage(self, text: str) -> None:
        self.bars.update(self.cell_task, info=text)

    def end_cell(self, summary: str) -> None:
        self.bars.console.print(f"{self.cell_label}: {summary}")
        self.bars.advance(self.grid_task)

    def start_run(self, desc: str, total_steps: int) -> None:
        self.run_task = self.bars.add_task(f"  {desc}", total=total_steps, info="")

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        if info is None:
            self.bars.advance(self.run_task, steps)
        else:
            self.bars.update(self.run_task, advance=steps, info=info)

    def end_run(self) -> None:
        self.bars.remove_task(self.run_task)
