"""A device farm: one command over several targets (``profile --target a,b,c``, ``check --all``),
boards in parallel, one thread per *lane*.

Why lanes: a board's agent already measures one job at a time, so two boards can work side by
side; but two targets that measure on the same device must not, or each disturbs the other's
numbers. Targets are grouped by where they measure: every local (non-remote) target shares the
one ``local`` lane (this host's CPU), remote targets share a lane per agent URL (one board with
two device targets is still one board). Lanes run concurrently, the items of a lane one after
another, and results come back in the caller's order, whatever order they finished in.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from edgeprune.errors import INTERNAL_ERROR, EdgepruneError, UsageError

T = TypeVar("T")
R = TypeVar("R")
LOCAL = "local"


@dataclass
class Outcome(Generic[R]):
    """One item's result, or the error that stopped it (one item's failure never stops the others)."""

    name: str
    value: R | None = None
    error: BaseException | None = None
    lane: str = LOCAL

    @property
    def exit_code(self) -> int:
        if self.error is None:
            return 0
        return self.error.exit_code if isinstance(self.error, EdgepruneError) else INTERNAL_ERROR

    def message(self) -> str:
        e = self.error
        return str(e) if isinstance(e, EdgepruneError) else f"internal error: {type(e).__name__}: {e}"


def split_targets(text: str) -> list[str]:
    """``a,b,c`` as names; an empty name or one given twice is refused (two profiles of one
    target would write the same table)."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise UsageError(f"--target {text!r} has an empty name; separate target names or YAML paths with ','")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--target names {', '.join(twice)} more than once")
    return names


def lane_of(target: str | None) -> str:
    """Where ``target`` measures: ``remote:URL`` for a board's agent, else ``local``. A target
    that cannot be read goes to the local lane; its own run then reports the error."""
    if not target:
        return LOCAL
    from edgeprune.runtime.spec import load_spec
    try:
        spec = load_spec(target)
    except EdgepruneError:
        return LOCAL
    if spec.runtime != "remote":
        return LOCAL
    return "remote:" + str(spec.options.get("url", "")).rstrip("/")


@dataclass
class _Lane:
    key: str
    items: list[int] = field(default_factory=list)


def run_lanes(items: list[T], names: list[str], lanes: list[str], work: Callable[[T], R]) -> list[Outcome[R]]:
    """``work(item)`` for every item: concurrently across lanes, one at a time within a lane.
    Returns one Outcome per item, in ``items``' order."""
    grouped: dict[str, _Lane] = {}
    for i, lane in enumerate(lanes):
        grouped.setdefault(lane, _Lane(lane)).items.append(i)
    out = [Outcome(name=names[i], lane=lanes[i]) for i in range(len(items))]

    def run(lane: _Lane) -> None:
        for i in lane.items:
            try:
                out[i].value = work(items[i])
            except Exception as e:  # noqa: BLE001 (reported per item; the other lanes go on)
                out[i].error = e
    if len(grouped) == 1:  # nothing to overlap: no thread
        run(next(iter(grouped.values())))
        return out
    threads = [threading.Thread(target=run, args=(lane,), name=f"farm-{lane.key}", daemon=True)
               for lane in grouped.values()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


def worst_exit(outcomes: list[Outcome]) -> int:
    """The command's exit code: an internal error (3) over bad input (2) over any other failure."""
    codes = [o.exit_code for o in outcomes]
    return max(codes, key=lambda c: (c == INTERNAL_ERROR, c == 2, c)) if codes else 0


def report_errors(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        if o.error is not None:
            print(f"edgeprune: error: {o.name}: {o.message()}", file=sys.stderr)
