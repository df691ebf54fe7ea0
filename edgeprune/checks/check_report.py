"""What `edgeprune check` prints: the table, the JSON document, and one JUnit case per check."""
from __future__ import annotations

from edgeprune.checks.check import CONFIDENCE, METHODS, VERDICT, CheckResult, exit_code


def to_json(results: list[CheckResult]) -> dict:
    code = exit_code(results)
    return {"status": ("pass", "fail", "error")[code], "exit_code": code, "method": method(results),
            "checks": [r.to_dict() for r in results]}


def render(results: list[CheckResult]) -> str:
    """A plain-text table, then each check's problems and notes, then the method."""
    head = ("artifact", "target", "baseline ms", "now ms", "ratio", f"{CONFIDENCE:.0%} CI", "budget ms", "status")
    rows = [head]
    for r in results:
        c = r.comparison
        rows.append((r.artifact, r.target, _fmt(r.baseline_ms), _fmt(r.latency_ms),
                     f"{c.ratio:.3f}" if c else "-", f"[{c.low:.3f}, {c.high:.3f}]" if c else "-",
                     _budget(r), r.status.upper()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    for r in results:
        if r.problems or r.notes:
            lines.append(f"{r.artifact} on {r.target}:")
            tag = {"error": "ERROR", "inconclusive": "BUSY "}.get(r.status, "FAIL ")
            lines += [f"  {tag} {p}" for p in r.problems] + [f"  note  {n}" for n in r.notes]
    lines.append(f"method: {method(results)}")
    return "\n".join(lines)


def method(results: list[CheckResult]) -> str:
    """The comparisons these results used, and the verdict rule."""
    used = sorted({r.comparison.method for r in results if r.comparison}) or ["paired", "absolute"]
    return "; ".join(f"{m}: {METHODS[m]}" for m in used) + f"; {VERDICT}"


def junit_cases(results: list[CheckResult]) -> list:
    """One JUnit test case per check: a failure when the model failed it, an error when the
    check could not run or not decide; the table row and details as its output."""
    from edgeprune.checks.junit import TestCase
    cases = []
    for r in results:
        message = "; ".join(r.problems) or None
        cases.append(TestCase(r.artifact, f"edgeprune.check.{r.target}", r.seconds,
                              failure=message if r.status == "fail" else None,
                              error=message if r.status in ("error", "inconclusive") else None,
                              output=render([r])))
    return cases


def _budget(r: CheckResult) -> str:
    """The budget column: ms, or a relative budget's share of the unpruned model ("0.25x unpruned")."""
    if r.budget is not None and r.budget.relative:
        return f"{r.budget.share:g}x unpruned"
    return _fmt(r.budget.ms if r.budget else None)


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.4f}"
