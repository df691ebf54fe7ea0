"""Progress bars on stderr when it is a terminal; silent otherwise (CI logs stay readable)."""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

_local = threading.local()  # this thread's line prefix (``lines``), if any
_print_lock = threading.Lock()


def enabled(flag: bool = True) -> bool:
    return flag and sys.stderr.isatty()


@contextmanager
def bar(description: str, total: int, show: bool = True):
    """Yields ``advance(n=1, **fields)``; a rich progress bar only when shown. Inside ``lines``
    (several jobs in threads, e.g. a farm of boards) one prefixed line per step instead: rich
    bars from several threads would overwrite each other."""
    prefix = getattr(_local, "prefix", None)
    if prefix is not None and show:
        yield _line_advance(prefix, description, total)
        return
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


@contextmanager
def lines(prefix: str):
    """Progress of this thread as ``PREFIX: description k/total info`` lines on stderr."""
    outer, _local.prefix = getattr(_local, "prefix", None), prefix
    try:
        yield
    finally:
        _local.prefix = outer


def say(prefix: str, text: str) -> None:
    """One whole line on stderr (a lock keeps lines of threads from interleaving)."""
    with _print_lock:
        print(f"{prefix}: {text}", file=sys.stderr, flush=True)


def _line_advance(prefix: str, description: str, total: int):
    done = 0

    def advance(n=1, info=""):
        nonlocal done
        done += n
        say(prefix, f"{description} {done}/{total}" + (f" {info}" if info else ""))
    return advance
