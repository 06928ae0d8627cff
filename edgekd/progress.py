"""Rich progress bars with ETA for every long step (training, export validation, profiling)."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def _quiet() -> bool:
    # EDGEKD_QUIET=1, or a process other than rank 0 of a torchrun / accelerate launch (RANK is theirs)
    return os.environ.get("EDGEKD_QUIET") == "1" or os.environ.get("RANK", "0") != "0"


@contextmanager
def progress(total: int, desc: str) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, **fields)`; `fields` (e.g. loss=0.31) are shown after the bar."""
    quiet = _quiet()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, disable=quiet, transient=False, refresh_per_second=4 if sys.stderr.isatty() else 0.2,
    ) as bar:
        task = bar.add_task(desc, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            bar.update(task, advance=n, info=info)

        yield advance


def log(msg: str) -> None:
    if not _quiet():
        console.print(msg)
