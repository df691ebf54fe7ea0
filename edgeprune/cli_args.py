"""The command line's argument types and parser: argparse errors and range checks as the CLI
contract's one line (exit 2), and help that shows every default. Kept apart from ``cli`` so the
commands stay readable there."""
from __future__ import annotations

import argparse

from edgeprune.errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse's errors as the contract's one line (exit 2, via main), not a usage block plus
    an error: the usage hides the one line that says what was wrong."""

    def error(self, message):
        raise UsageError(f"{message} (see: {self.prog} --help)")


def int_at_least(low: int):
    """An argparse type: an integer >= ``low``, refused at parse time with the flag's name."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def fraction(text: str) -> float:
    """An argparse type: a fraction in (0, 1] (NaN and infinities refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def number(text: str) -> float:
    """An argparse type: a float, with a one-line message for a non-number (the range is
    checked where the value is used: budgets must also be finite, tolerances in [0, 1))."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def device_name(text: str) -> str:
    """An argparse type: auto, cpu, cuda or cuda:N (whether that device exists is checked when
    training starts, by ``training.distributed.resolve_device``: the parser never loads torch)."""
    name = text.strip().lower()
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


POSITIVE, COUNT = int_at_least(1), int_at_least(0)


class HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it says it already or has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"
