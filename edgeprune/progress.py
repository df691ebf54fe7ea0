"""Progress bars on stderr when it is a terminal; silent otherwise (CI logs stay readable)."""
from __future__ import annotations

import sys
from contextlib import contextmanager


def enabled(flag: bool = True) -> bool:
    return flag and sys.stderr.isatty()


@contextmanager
def bar(description: str, total: int, show: bool = True):
    """Yields ``advance(n=1, **fields)``; a rich progress bar only when shown."""
    if not enabled(show):
        yield lambda n=1, **kw: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=Console(stderr=True), transient=False) as p:
        task = p.add_task(description, total=total, info="")
        yield lambda n=1, info="": p.update(task, advance=n, info=info)
