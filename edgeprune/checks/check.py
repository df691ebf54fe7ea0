"""Performance regression checks: re-measure an artifact on its target, compare with the old one.

What is compared (the statistics are in ``comparison``). A baseline (``--update``) records the
artifact's numbers *and* a frozen copy of it. A check runs that copy and the new artifact in
alternating short blocks in one run (``measure_pair``): a model change is judged by the paired
ratio, which a shared host's drift cannot fool. The copy's latency now against its own recorded
numbers is the environment's drift since the baseline; it is reported, and judged only with
``absolute`` (which compares the new artifact with the recorded numbers, for a steady board
whose image or clock changed). Without a usable copy the comparison is absolute, with a note.
``--reference OLD`` is the paired comparison with any previous artifact, no baseline file.
The modes and which flags combine are ``request.CheckRequest``'s; ``run_check`` runs one.

A measurement (``measure.Attempt``) is ``SESSIONS`` fresh runtime sessions of several windows
each, or a paired run; under a relative budget (``budget``: a share of the unpruned model, as a
``--budget-ratio`` run was pruned) the artifact's share, read in pairs with the unpruned model,
follows it. A failure (regression or over budget) must be flagged by a first and by a
confirming measurement.

The contention guard. Each measurement also records how long the measuring thread was runnable
but waiting for a CPU (Linux schedstat): a neighbour's work, not the model's. Since contention
can only add time, a measurement that passes is a pass however busy the machine was; but one
that fails while it waited for the CPU more than ``MAX_BUSY_SHARE`` of the time proves nothing and
is measured again (``RETRIES`` times at most). A failure never confirmed by undisturbed
measurements is reported as *inconclusive* (machine too busy), not as a regression.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from edgeprune.checks.baseline import (
    Baseline,
    artifact_metadata,
    check_same_artifact,
    default_path,
    describe_mismatch,
    file_digest,
    freeze,
    frozen_artifact,
    mismatches,
    record,
)
from edgeprune.checks.budget import Budget, check_budget
from edgeprune.checks.comparison import (  # noqa: F401
    CONFIDENCE,
    DEFAULT_TOLERANCE,
    METHODS,
    Comparison,
    compare,
    compare_paired,
    latency_of,
)
from edgeprune.checks.measure import (  # noqa: F401  (re-exported: check.Attempt, check.check_timing)
    PAIRED_SESSIONS,
    SESSIONS,
    Attempt,
    check_timing,
    measure_attempt,
    measure_pair,
    measure_share,
    with_share,
)
from edgeprune.checks.request import CheckRequest, Mode
from edgeprune.errors import UsageError
from edgeprune.runtime.base import MAX_BUSY_SHARE, too_busy

BASELINE_MEASUREMENTS = 2   # a baseline pools this many measurements (4 sessions, 20 windows)
RETRIES = 2                 # extra measurements to replace disturbed ones
RETRY_PAUSE_S = 5.0
VERDICT = (f"regression = ratio > 1 + tolerance and CI above 1, in a first and a confirming "
           f"measurement, each waiting for the CPU <= {MAX_BUSY_SHARE:.0%} of its time")


@dataclass
class CheckResult:
    """The outcome of checking one artifact on one target."""

    artifact: str
    target: str
    baseline: str | None = None
    status: str = "pass"                  # pass | fail | inconclusive | updated | error
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    baseline_ms: float | None = None
    comparison: Comparison | None = None
    drift: Comparison | None = None       # the old artifact now vs its recorded numbers (paired checks)
    regression: bool = False
    over_budget: bool = False
    incomparable: dict = field(default_factory=dict)
    budget: Budget | None = None
    attempts: list[Attempt] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "target": self.target, "baseline": self.baseline,
                "status": self.status, "problems": self.problems, "notes": self.notes,
                "latency_ms": _round(self.latency_ms), "baseline_ms": _round(self.baseline_ms),
                "comparison": self.comparison.to_dict() if self.comparison else None,
                "drift": self.drift.to_dict() if self.drift else None,
                "regression": self.regression, "over_budget": self.over_budget,
                "incomparable": {k: list(v) for k, v in self.incomparable.items()},
                "budget_ms": self.budget.ms if self.budget else None,
                "budget_share": self.budget.share if self.budget else None,
                "budget_source": self.budget.source if self.budget else None,
                "attempts": [a.to_dict() for a in self.attempts], "seconds": round(self.seconds, 2)}


def exit_code(results: list[CheckResult]) -> int:
    """2 if any check could not run, else 1 if any failed or was inconclusive, else 0."""
    if any(r.status == "error" for r in results):
        return 2
    return 1 if any(r.status in ("fail", "inconclusive") for r in results) else 0


# --- the check ---------------------------------------------------------------------------------

def run_checks(request: CheckRequest) -> list[CheckResult]:
    """Every single check ``request`` stands for (``CheckRequest.checks``). One bad entry of a
    deploy file must not hide the others' verdicts, so its error becomes that entry's result;
    a single check's bad input raises UsageError (the CLI's one line, exit 2). A deploy file's
    checks on different boards run at once, one at a time per board and all local ones one
    after another (``runtime.farm``); results keep the file's order."""
    from edgeprune.errors import EdgepruneError
    from edgeprune.runtime.farm import lane_of, run_lanes
    checks = request.checks()
    if request.deploy is None:
        return [run_check(c) for c in checks]
    outcomes = run_lanes(checks, [c.artifact for c in checks], [lane_of(c.target) for c in checks], run_check)
    results = []
    for c, o in zip(checks, outcomes):
        if o.error is not None and not isinstance(o.error, EdgepruneError):
            raise o.error  # a bug: the CLI's internal error, as before
        results.append(o.value if o.error is None else
                       CheckResult(c.artifact, c.target or "-", c.baseline, status="error", problems=[str(o.error)]))
    return results


@dataclass(frozen=True)
class _Subject:
    """What every mode needs, resolved once: the target, the artifact and its metadata, the
    baseline file's path and the target's fingerprint (what must match for a comparison)."""

    target: object
    path: Path
    meta: dict
    bpath: Path
    fingerprint: dict
    budget: Budget | None = None

    def with_share(self, measure: Callable[[], Attempt]) -> Callable[[], Attempt]:
        """``measure``, and under a relative budget the share after it (``measure.with_share``)."""
        return with_share(self.target, self.path, self.budget, measure)


def run_check(request: CheckRequest) -> CheckResult:
    """Measure ``request.artifact`` on its target in the request's mode: compare with its
    baseline (paired with the baseline's frozen copy of the old artifact when that can run
    here, else or with ``absolute`` against its recorded numbers), with a ``reference``
    artifact, or ``update`` the baseline; and judge the budget. Bad input raises UsageError;
    performance failures are in the result. ``--all`` and ``--run`` are ``run_checks``'s."""
    from edgeprune.runtime import get_target
    if request.deploy is not None or request.run is not None:
        raise ValueError("run_check checks one artifact; run_checks(request) expands --all and --run")
    t0 = time.perf_counter()
    path = Path(request.artifact)
    meta = artifact_metadata(path)
    tgt = get_target(request.target or meta.get("target") or "ort-cpu")
    bpath = Path(request.baseline) if request.baseline else default_path(tgt.spec.name, path, request.baseline_root)
    res = CheckResult(str(request.artifact), tgt.spec.name, str(bpath))
    res.budget = check_budget(request.budget_ms, tgt.spec, meta, request.budget_source, request.budget_ratio,
                              request.unpruned)
    if res.budget is not None and res.budget.unpruned is not None:
        artifact_metadata(res.budget.unpruned)  # a missing or corrupt yardstick is bad input
    _MODES[request.mode](res, request, _Subject(tgt, path, meta, bpath, tgt.fingerprint(), res.budget))
    update = request.mode is Mode.UPDATE
    res.latency_ms = res.baseline_ms if update else min(a.latency_ms for a in res.attempts)
    if res.budget is None:
        res.notes.append("no budget (none given, none in the target file for this model)")
    if res.over_budget:
        res.problems.append(f"over budget: {_least_over(res, update)} > {res.budget.describe()} ({res.budget.source})")
    if res.status != "inconclusive":
        res.status = "fail" if res.problems else ("updated" if update else "pass")
    res.seconds = time.perf_counter() - t0
    return res


def _against_reference(res: CheckResult, req: CheckRequest, s: _Subject) -> None:
    """Mode ``reference``: the old artifact runs in turn with the new one; no baseline file."""
    ref = Path(req.reference)
    artifact_metadata(ref)  # a missing or corrupt reference is bad input
    res.baseline = str(ref)
    res.notes.append(f"same-run comparison with {ref} (alternating blocks in one run)")
    tgt, tol = s.target, req.tolerance
    judge(res, s.with_share(lambda: measure_pair(tgt, ref, s.path, tgt.spec.timing, tol)), None, tol, req.confirm)
    res.baseline_ms = res.comparison.baseline_ms if res.comparison else None


def _update(res: CheckResult, req: CheckRequest, s: _Subject) -> None:
    """Mode ``update``: pooled undisturbed measurements and a frozen copy of the artifact, so a
    later check can run the old artifact beside the new one."""
    timing = check_timing(s.target.spec.timing)
    used = _baseline_attempts(res, lambda: measure_attempt(s.target, s.path, timing))
    res.baseline_ms = latency_of([w for a in used for w in a.windows_ms])
    frozen = freeze(s.path, s.bpath)
    record(s.path, s.meta, s.target.spec.name, s.fingerprint, timing.model_dump(), SESSIONS, used,
           res.baseline_ms, frozen).save(s.bpath)
    res.notes.append(f"baseline written to {s.bpath}, with a frozen copy of the artifact beside it")
    if res.budget is not None and res.budget.relative:
        last = res.attempts[-1]  # a baseline records ms; the share is read once, beside it
        res.attempts[-1] = s.with_share(lambda: last)()
        res.over_budget = res.budget.over(res.attempts[-1])
    else:
        res.over_budget = res.budget is not None and res.baseline_ms > res.budget.ms


def _against_baseline(res: CheckResult, req: CheckRequest, s: _Subject) -> None:
    """Mode ``baseline``: paired with the baseline's frozen artifact when it runs here (a shared
    host's drift cancels), else, or with ``absolute``, against its recorded numbers."""
    tgt, bpath, tol = s.target, s.bpath, req.tolerance
    if not bpath.is_file():
        where = f" --baseline {req.baseline}" if req.baseline else ""
        raise UsageError(f"no baseline at {bpath}; create it with: edgeprune check {req.artifact} "
                         f"--target {req.target or tgt.spec.name}{where} --update")
    base = Baseline.load(bpath)
    check_same_artifact(base, s.path, bpath)
    res.baseline_ms = float(base.latency["latency_ms"])
    _describe_baseline(res, base, s.path, s.fingerprint, req.allow_mismatch)
    timing = _timing(base, bpath)
    old = None if req.absolute or res.incomparable else frozen_artifact(base, bpath, res.notes)
    if old is not None:  # the baseline's own artifact runs here: compare in one run
        judge(res, s.with_share(lambda: measure_pair(tgt, old, s.path, timing, tol)), None, tol, req.confirm)
        _note_drift(res, base, tol)
        return
    if not req.absolute and not res.incomparable:
        res.notes.append("absolute comparison with the baseline's recorded numbers: on a shared "
                         "host its drift between the two dates is part of the ratio")
    judge(res, s.with_share(lambda: measure_attempt(tgt, s.path, timing, base.sessions)),
          base.windows if req.allow_mismatch or not res.incomparable else None, tol, req.confirm)


def _budget_only(res: CheckResult, req: CheckRequest, s: _Subject) -> None:
    """Mode ``budget`` (the pytest plugin's assertion): no old artifact, only the budget."""
    if res.budget is None:
        raise UsageError(f"no budget for {req.artifact} on {s.target.spec.name}: give one or add it to "
                         "the target file's budgets_ms")
    res.baseline = None
    timing = check_timing(s.target.spec.timing)
    b = res.budget  # a share's alternation measures the artifact too: no separate reading of it
    judge(res, (lambda: measure_share(s.target, b.unpruned, s.path, s.target.spec.timing)) if b.relative
          else (lambda: measure_attempt(s.target, s.path, timing)), None, req.tolerance, req.confirm)


_MODES = {Mode.BASELINE: _against_baseline, Mode.REFERENCE: _against_reference, Mode.UPDATE: _update,
          Mode.BUDGET: _budget_only}


def judge(res: CheckResult, measure: Callable[[], Attempt], baseline_windows, tolerance: float,
          confirm: bool = True) -> None:
    """Measure until the verdict is settled: a pass as soon as one measurement passes; a failure
    once ``2`` (``1`` without ``confirm``) undisturbed measurements flag it; else inconclusive."""
    needed, clean = (2 if confirm else 1), []
    for i in range(needed + RETRIES):
        if i and res.attempts[-1].disturbed:
            time.sleep(RETRY_PAUSE_S)
        a = measure()
        if baseline_windows is not None:
            a = replace(a, comparison=compare(baseline_windows, a.windows_ms, tolerance))
        res.attempts.append(a)
        if not _flagged(a, res.budget):
            break
        if not a.disturbed:
            clean.append(a)
            if len(clean) == needed:
                break
    last = res.attempts[-1]
    res.comparison = last.comparison
    disturbed = [x for x in res.attempts if x.disturbed]
    if disturbed:
        res.notes.append(f"{len(disturbed)} of {len(res.attempts)} measurements waited for the CPU more than "
                         f"{MAX_BUSY_SHARE:.0%} of the time (up to {max(x.cpu_wait for x in disturbed):.0%}): "
                         "a busy machine, so they could not prove a failure")
    if not _flagged(last, res.budget):
        if len(res.attempts) > 1:
            now = f": now {res.comparison.describe()}" if res.comparison else ""
            res.notes.append(f"an earlier measurement failed, the last one passed{now}")
        elif res.comparison and res.comparison.faster:
            res.notes.append(f"faster than the baseline: {res.comparison.describe()}; consider --update")
        return
    if len(clean) < needed:
        res.status = "inconclusive"
        what = (res.comparison.describe() if res.comparison and res.comparison.regression
                else f"{res.budget.reading(last)} against a budget of {res.budget.describe()}")
        res.problems.append(f"inconclusive: the machine stayed too busy to confirm the failure ({what}); "
                            "run again when it is quieter")
        return
    res.regression = all(x.comparison is not None and x.comparison.regression for x in clean)
    res.over_budget = res.budget is not None and all(res.budget.over(x) for x in clean)
    if res.regression:
        how = " in both measurements" if needed > 1 else ""
        res.problems.append(f"regression{how}: {clean[-1].comparison.describe()}")


def _baseline_attempts(res: CheckResult, measure: Callable[[], Attempt]) -> list[Attempt]:
    """BASELINE_MEASUREMENTS undisturbed measurements if the machine allows, else the least
    disturbed ones with a warning (a slow baseline hides regressions)."""
    for _ in range(BASELINE_MEASUREMENTS + RETRIES):
        res.attempts.append(measure())
        clean = [a for a in res.attempts if not a.disturbed]
        if len(clean) >= BASELINE_MEASUREMENTS:
            return clean[:BASELINE_MEASUREMENTS]
        if res.attempts[-1].disturbed:
            time.sleep(RETRY_PAUSE_S)
    used = sorted(res.attempts, key=lambda a: a.latency_ms)[:BASELINE_MEASUREMENTS]  # least slowed
    res.notes.append(f"WARNING: recorded on a busy machine (waited for the CPU up to "
                     f"{max(a.cpu_wait or 0 for a in used):.0%} of the time): the baseline may be too slow "
                     "and hide regressions; record it again when the machine is quiet")
    return used


def _flagged(a: Attempt, budget: Budget | None) -> bool:
    return (a.comparison is not None and a.comparison.regression) or (budget is not None and budget.over(a))


def _least_over(res: CheckResult, update: bool) -> str:
    """The over-budget reading the problem names: the least over of the measurements that were
    (an updated baseline's pooled ms, when the budget is in ms)."""
    b = res.budget
    if update and not b.relative:
        return f"{res.latency_ms:.4f} ms"
    return b.reading(min((a for a in res.attempts if b.over(a)), key=b.value))


def _timing(base: Baseline, bpath: Path):
    from pydantic import ValidationError

    from edgeprune.runtime.spec import TimingSpec
    try:
        return TimingSpec.model_validate(base.timing)
    except ValidationError as e:
        raise UsageError(f"baseline {bpath} has an invalid timing block: {e.errors()[0]['msg']}") from None


def _describe_baseline(res: CheckResult, base: Baseline, path: Path, fp: dict, allow_mismatch: bool) -> None:
    res.notes.append(f"baseline of {base.created}, {base.fingerprint.get('runtime')} "
                     f"{base.fingerprint.get('runtime_version')}, {len(base.windows)} windows")
    waits = [w for w in base.latency.get("cpu_wait") or [] if w is not None]
    if waits and too_busy(max(waits)):
        res.notes.append(f"WARNING: the baseline was recorded on a busy machine (waited for the CPU up to "
                         f"{max(waits):.0%} of the time): it may be too slow and hide regressions")
    if base.artifact.get("sha256") and base.artifact["sha256"] != file_digest(path):
        res.notes.append(f"the artifact changed since the baseline (recorded for {base.artifact.get('path')})")
    res.incomparable = mismatches(base.fingerprint, fp)
    if res.incomparable:
        what = describe_mismatch(res.incomparable)
        if allow_mismatch:
            res.notes.append(f"compared despite a different setup (--allow-mismatch): {what}")
        else:
            res.problems.append(f"incomparable baseline, measured under other conditions ({what}); "
                                f"compare anyway with --allow-mismatch, or re-create it with --update")


def _note_drift(res: CheckResult, base: Baseline, tolerance: float) -> None:
    """How the old artifact's latency now compares with its recorded numbers: the environment's
    drift since the baseline (host, clock, image), shown but not judged (``--absolute`` judges)."""
    now = [w for a in res.attempts for w in a.reference_windows_ms]
    if now:
        drift = res.drift = compare(base.windows, now, tolerance)
        res.notes.append(f"environment drift, not judged without --absolute: the baseline's own artifact now "
                         f"measures {drift.ratio:.3f}× its recorded latency (CI [{drift.low:.3f}, {drift.high:.3f}])")


def _round(x: float | None, digits: int = 5) -> float | None:
    return None if x is None else round(x, digits)
