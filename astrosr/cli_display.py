"""What the CLI shows: rich progress bars fed by the library's progress calls, log lines, result tables.

The library reports progress as ``progress(task, done, total)`` calls
(:mod:`astrosr.progress`) and logs through :mod:`logging`; this module is
the only place that turns them into a terminal display.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["Bars", "console", "err_console", "wide", "log_to", "quiet_logs", "evaluate_tables"]

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class Bars:
    """A rich progress display with one bar per task name, fed by ``progress(task, done, total)`` calls.

    Parameters
    ----------
    labels : dict, optional
        Task name -> the description shown (default: the task name).
    enabled : bool
        False (not a terminal, ``--no-progress``) shows nothing.

    Examples
    --------
    >>> from astrosr.cli_display import Bars
    >>> with Bars(enabled=False) as bars:
    ...     bars("images", 1, 2)
    """

    def __init__(self, labels: dict[str, str] | None = None, *, enabled: bool = True, out: Console | None = None):
        self.labels = labels or {}
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        self.progress = Progress(*columns, console=out or console, transient=True,
                                 disable=not (enabled and (out or console).is_terminal))
        self.tasks: dict[str, Any] = {}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(self.labels.get(task, task), total=total)
        self.progress.update(self.tasks[task], completed=done, total=total)

    def __enter__(self) -> Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)


def wide() -> Console:
    """The console for tables: the terminal's, or 160 columns into a file or pipe.

    A log file or pipe would get rich's 80 columns, too narrow for a method
    table: every cell would end in '…'.
    """
    return console if console.is_terminal else Console(width=160, highlight=False, soft_wrap=True)


def log_to(out: Console | None = None, level: int = logging.INFO) -> None:
    """Show the library's log lines (logger ``astrosr``) on stderr: stdout holds only results.

    On a terminal through rich; into a file or pipe as plain lines, one per message, never wrapped.
    """
    logger = logging.getLogger("astrosr")
    quiet_logs()
    target = out or err_console
    if target.is_terminal:
        handler = RichHandler(console=target, show_path=False, show_level=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if level > logging.INFO else "%(message)s"))
    handler.astrosr_cli = True
    logger.addHandler(handler)
    logger.setLevel(level)


def quiet_logs() -> None:
    """Hide the library's log lines again (the state of a fresh process)."""
    logger = logging.getLogger("astrosr")
    for handler in [h for h in logger.handlers if getattr(h, "astrosr_cli", False)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def _table(groups: dict, title: str, first: str, *, calibration: bool) -> Table:
    from .evaluate_report import HEADER, fmt, format_row

    table = Table(title=title)
    for col in [first, "method"] + HEADER + (["z<=1"] if calibration else []):
        table.add_column(col, justify="left" if col in (first, "method") else "right", no_wrap=True)
    for name, methods in groups.items():
        for i, (method, row) in enumerate(methods.items()):
            u = row["uncertainty"] or {}
            extra = [fmt(u.get("within_1"), ".3f", "-")] if calibration else []
            table.add_row(name if i == 0 else "", method, *format_row(row), *extra)
        table.add_section()
    return table


def evaluate_tables(summary: dict, out_dir: str, to: Console | None = None) -> None:
    """Print an evaluate run's per-image and per-field tables and where its files went."""
    to = to or wide()
    samples = summary["provenance"]["options"].get("samples") or 0
    threads = summary["provenance"]["hardware"]["threads"]
    note = f"; z<=1: source pixels within 1 sigma (with ORI's noise), {samples} draws" if samples else ""
    to.print(_table({n: img["methods"] for n, img in summary["images"].items()}, "bench-v1 per image", "image",
                    calibration=bool(samples)))
    to.print(_table(summary["fields"], f"bench-v1 per field (s/Mpix: wall clock, {threads} torch threads{note})",
                    "field", calibration=bool(samples)))
    choice = summary["baselines"]
    to.print(f"RL n={choice['rl_iters']}, Wiener b={choice['wiener_balance']:g}: {choice['note']}")
    figures = len(summary["files"]) - 3
    to.print(f"wrote {out_dir}/report.md, metrics.csv, summary.json and {figures} figure{'s' if figures != 1 else ''}")
