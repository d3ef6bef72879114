"""One progress protocol for every long-running library function.

The library never draws a progress bar: a function that takes a while accepts
``progress``, a callable it calls as ``progress(task, done, total)`` after
each unit of work (``task`` names what is counted: ``'images'``, ``'tiles'``,
``'steps'``...; ``done`` counts them so far; ``total`` is their number, or
None when unknown). The CLI turns these calls into rich progress bars; a
notebook can pass ``print``-like functions or nothing at all.

Examples
--------
>>> from astrosr.progress import report
>>> seen = []
>>> report(lambda task, done, total: seen.append((task, done, total)), "images", 1, 3)
>>> seen
[('images', 1, 3)]
>>> report(None, "images", 2, 3)  # no callback: nothing happens
"""

from __future__ import annotations

from typing import Callable, Optional

__all__ = ["ProgressCallback", "report"]

#: ``progress(task, done, total)``; see the module docstring
ProgressCallback = Optional[Callable[[str, int, Optional[int]], None]]


def report(progress: ProgressCallback, task: str, done: int, total: int | None) -> None:
    """Call ``progress(task, done, total)`` when a callback was given (None or False: none)."""
    if progress:
        progress(task, done, total)
