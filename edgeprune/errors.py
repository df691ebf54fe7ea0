"""Errors the CLI turns into one line on stderr and an exit code, never a traceback."""
from __future__ import annotations

import difflib
from typing import Iterable

INTERNAL_ERROR = 3  # exit code of an unexpected exception: CI can tell a crash from a regression (1)


class EdgepruneError(Exception):
    """Base class; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UsageError(EdgepruneError):
    """Bad input from the user: unknown names, malformed files, impossible budgets (exit 2)."""

    exit_code = 2


class MissingBackend(UsageError):
    """An optional runtime is not installed; the message carries the install hint."""

    def __init__(self, package: str, extra: str | None = None, what: str = ""):
        hint = f"pip install 'edgeprune[{extra}]'" if extra else f"pip install {package}"
        what = f" for {what}" if what else ""
        super().__init__(f"{package} is not installed{what}; install it with: {hint}")


class InfeasibleBudget(UsageError):
    """The budget is below what the smallest allowed model reaches."""

    def __init__(self, budget_ms: float, reachable_ms: float, how: str = "predicted"):
        self.budget_ms = budget_ms
        self.reachable_ms = reachable_ms
        super().__init__(
            f"budget {budget_ms:.3f} ms is infeasible: the smallest allowed model is "
            f"{reachable_ms:.3f} ms ({how}); raise the budget or lower --min-ratio/--min-width"
        )


class BudgetNotMet(EdgepruneError):
    """The closed loop ran out of rounds with the measured latency still over budget (exit 1)."""


def budget_ms_or_raise(budget_ms: float) -> float:
    """A latency budget as a float; UsageError unless positive and finite (NaN fails both
    comparisons; inf would fit every model). One wording for prune, search and check."""
    if not 0 < budget_ms < float("inf"):
        raise UsageError(f"budget must be a positive, finite number of milliseconds, got {budget_ms}")
    return float(budget_ms)


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UsageError:
    """A UsageError for an unknown name, listing or suggesting valid ones."""
    choices = sorted(choices)
    hint = suggest(name, choices) or f"; known: {', '.join(choices)}"
    return UsageError(f"unknown {kind} {name!r}{hint}")


MACHINE_ERRORS = (MemoryError, RecursionError)  # never "bad input", whatever raised them


def is_bad_input(e: BaseException, *libraries: str) -> bool:
    """Whether ``e``, raised while reading or running the user's file or model, says the input is
    bad (a file, value or runtime error, or an error type of one of ``libraries``) rather than the
    machine (out of memory, recursion) or a bug of ours (TypeError, AttributeError...): only the
    former may become "bad input, exit 2"."""
    if isinstance(e, MACHINE_ERRORS):
        return False
    return (isinstance(e, (OSError, ValueError, RuntimeError, EOFError))
            or any(type(e).__module__.startswith(lib) for lib in libraries))

