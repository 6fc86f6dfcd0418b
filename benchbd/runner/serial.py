"""The default executor: one cell after another in this process. Apart from executors.py so that the
runner needs no executor module (executors' workers import the runner, never the other way round)."""

from __future__ import annotations

from typing import Callable

Write = Callable[[dict], None]


class Serial:
    """One cell after another in this process (the default on a CPU or one slot)."""

    def run(self, runner, cells: list, write: Write) -> None:
        for cell in cells:
            if runner.out_of_time():
                return
            runner.progress.start_cell(cell.label)
            row = runner.safe_run_cell(cell)
            write(row)
            runner.progress.end_cell(runner.summary(row))
