"""Rich progress bars with ETA for every long step (training, export validation, profiling).

On a terminal: a live bar. Redirected to a file or a CI log, rich draws nothing until the bar ends, so a long run
would be silent for an hour; there the same progress is written as plain lines (each tenth of the work, at least
once a minute while it moves, and at the end), with elapsed time and ETA.
"""
from __future__ import annotations

import datetime
import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)

# plain lines: at each tenth of the work, but not closer than LINE_GAP_S apart (a 30 s evaluation would print ten
# lines), at least every LINE_EVERY_S while it advances, and always at the end
LINE_GAP_S, LINE_EVERY_S = 10.0, 60.0


def _quiet() -> bool:
    # EDGEKD_QUIET=1, or a process other than rank 0 of a torchrun / accelerate launch (RANK is theirs)
    return os.environ.get("EDGEKD_QUIET") == "1" or os.environ.get("RANK", "0") != "0"


def _info(fields: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))  # h:mm:ss


class _Lines:
    """Progress as plain lines, for a console that is not a terminal."""

    def __init__(self, total: int, desc: str, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.clock = max(total, 0), desc, clock
        self.done, self.start = 0, clock()
        self.last_line, self.last_tenth = self.start, 0

    def advance(self, n: int = 1, **fields) -> None:
        self.done += n
        now = self.clock()
        tenth = 10 * self.done // self.total if self.total else 10
        gap = now - self.last_line
        if (tenth > self.last_tenth and gap >= LINE_GAP_S) or gap >= LINE_EVERY_S or self.done >= self.total:
            self.last_tenth, self.last_line = tenth, now
            console.print(self.line(now, fields), highlight=False, soft_wrap=True)

    def line(self, now: float, fields: dict) -> str:
        elapsed = now - self.start
        share = self.done / self.total if self.total else 1.0
        eta = elapsed * (1 - share) / share if share > 0 else float("nan")
        eta_text = _clock(eta) if eta == eta else "?"
        text = f"{self.desc}: {share:.0%} ({self.done}/{self.total}) elapsed {_clock(elapsed)} eta {eta_text}"
        info = _info(fields)
        return f"{text} {info}" if info else text


@contextmanager
def progress(total: int, desc: str) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, **fields)`; `fields` (e.g. loss=0.31) are shown after the bar."""
    quiet = _quiet()
    if not quiet and not console.is_terminal:
        yield _Lines(total, desc).advance
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, disable=quiet, transient=False, refresh_per_second=4,
    ) as bar:
        task = bar.add_task(desc, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            bar.update(task, advance=n, info=_info(fields))

        yield advance


def log(msg: str) -> None:
    if not _quiet():
        console.print(msg)
