"""What one ``edgeprune check`` is asked to do, as one typed, validated value.

The command has three modes (compare with a stored baseline, compare with a ``--reference``
artifact in one run, ``--update`` the baseline) and three sources of artifacts (one file, a
prune ``--run``, a deploy file ``--all``); most flags make sense in only some of them. They
used to be twelve loose parameters checked in three places (the API, the single check, the
deploy loop), so a contradiction was refused or silently ignored depending on where it
landed. Here the mode is one field, and every contradiction is refused in ``_refuse``, when
the request is built: before any file is read or anything is measured, with one UsageError
line that names the flags as the command line spells them.

``CheckRequest.from_flags`` maps the command line's flags onto a request (the CLI, ``api.check``);
``checks()`` expands ``--all`` and ``--run`` into single-artifact requests, which is what
``check.run_check`` measures. The pytest plugin builds ``Mode.BUDGET`` requests.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from edgeprune.checks.comparison import DEFAULT_TOLERANCE
from edgeprune.errors import UsageError, unknown


class Mode(str, Enum):
    """What the new artifact is compared with (a ``str`` enum: ``Mode("update")`` works and
    the value reads as the flag it comes from)."""

    BASELINE = "baseline"    # the stored baseline: its frozen artifact run beside, or its numbers
    REFERENCE = "reference"  # another artifact (``--reference OLD``) run beside it; no baseline file
    UPDATE = "update"        # nothing: measure and (over)write the baseline
    BUDGET = "budget"        # nothing: only the budget is judged (the pytest plugin's assertion)


@dataclass(frozen=True)
class CheckRequest:
    """One check (or, with ``deploy`` or ``run``, the checks a deploy file or prune run names).

    Frozen: the CLI, the API and the deploy loop hand the same value on, and a per-entry
    request is a ``dataclasses.replace`` of the command's, which validates it again."""

    artifact: str | None = None          # None only with ``deploy`` or ``run``
    target: str | None = None            # None: the artifact's metadata, else ort-cpu
    mode: Mode = Mode.BASELINE
    reference: str | None = None         # the old artifact, in mode ``reference``
    absolute: bool = False               # mode ``baseline``: judge against the recorded numbers
    baseline: str | None = None          # None: ``baseline_root``/TARGET/baseline-KEY.json
    baseline_root: str | Path = "profiles"
    budget_ms: float | None = None       # None: the target file's or the artifact's own budget
    budget_source: str | None = None     # what the report names as the budget's origin
    budget_ratio: float | None = None    # instead of budget_ms: this share of ``unpruned``'s latency
    unpruned: str | None = None          # the unpruned model a relative budget is read against, in pairs
    tolerance: float = DEFAULT_TOLERANCE
    allow_mismatch: bool = False
    confirm: bool = True
    deploy: str | None = None            # ``--all``: a deploy file of artifacts x targets
    run: str | None = None               # ``--run``: a prune output directory

    def __post_init__(self) -> None:
        if not isinstance(self.mode, Mode):
            if self.mode not in {m.value for m in Mode}:
                raise unknown("check mode", str(self.mode), [m.value for m in Mode])
            object.__setattr__(self, "mode", Mode(self.mode))
        _refuse(self)

    @classmethod
    def from_flags(cls, artifact: str | None = None, target: str | None = None, baseline: str | None = None,
                   tolerance: float | None = None, budget_ms: float | None = None, update: bool = False,
                   allow_mismatch: bool = False, confirm: bool = True, deploy: str | None = None,
                   reference: str | None = None, absolute: bool = False, run: str | None = None,
                   budget_ratio: float | None = None, unpruned: str | None = None) -> CheckRequest:
        """The command line's flags as a request: ``--update`` and ``--reference`` become the
        mode. Both at once is not resolved here but refused by the validation, like every
        other contradiction."""
        mode = Mode.UPDATE if update else Mode.REFERENCE if reference else Mode.BASELINE
        return cls(artifact, target, mode, reference, absolute, baseline, budget_ms=budget_ms,
                   tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
                   allow_mismatch=allow_mismatch, confirm=confirm, deploy=deploy, run=run,
                   budget_ratio=budget_ratio, unpruned=unpruned)

    @property
    def update(self) -> bool:
        return self.mode is Mode.UPDATE

    def checks(self) -> list[CheckRequest]:
        """The single-artifact requests this one stands for: a deploy file's entries (its
        target, baseline, budget and tolerance; this request's mode and flags), the prune run's
        artifact, target and budget (each unless given), or itself. A deploy file or run that
        cannot be read is a UsageError for the whole request."""
        if self.deploy is not None:
            from edgeprune.checks.deploy import requests
            return requests(self)
        if self.run is None:
            return [self]
        from edgeprune.runs import read_run
        r = read_run(self.run)
        budget_ms, source, share = self.budget_ms, self.budget_source, {}
        given = budget_ms is not None or self.budget_ratio is not None  # the command's own budget wins
        if not given and r.budget_ratio is not None and r.unpruned is not None:
            # a relative run is judged as it was pruned: a share of its unpruned model, read in
            # pairs, which a host that drifted since the run cannot fool (its ms can)
            share, source = {"budget_ratio": r.budget_ratio, "unpruned": str(r.unpruned)}, f"run {self.run}"
        elif not given and r.budget_ms is not None:
            budget_ms, source = r.budget_ms, f"run {self.run}"
        return [replace(self, run=None, artifact=self.artifact or str(r.artifact), target=self.target or r.target,
                        budget_ms=budget_ms, budget_source=source, **share)]


def _refuse(r: CheckRequest) -> None:
    """Every contradiction between a check's flags, refused in one place (first one wins)."""
    if r.run is not None and r.deploy is not None:
        raise UsageError("--run checks one prune run; it does not combine with --all")
    if (r.artifact is None and r.run is None) == (r.deploy is None):
        raise UsageError("give either an artifact or a deploy file (--all), not both or neither")
    if not 0 <= r.tolerance < 1:  # NaN fails too
        raise UsageError(f"tolerance must be a fraction in [0, 1), got {r.tolerance}")
    if r.deploy is not None:
        if r.reference:
            raise UsageError("--reference compares one artifact with another; it does not combine with --all")
        if r.target or r.baseline or r.budget_ms is not None or r.budget_ratio is not None or r.unpruned:
            raise UsageError("--target, --baseline and the budget flags belong in the deploy file's checks, "
                             "not with --all")
    if r.reference and (r.mode is Mode.UPDATE or r.absolute):
        raise UsageError("--reference compares two artifacts in one run; it takes neither --update nor "
                         "--absolute")
    if r.reference and r.mode is not Mode.REFERENCE:
        raise UsageError(f"reference= is the old artifact of mode 'reference', not of mode '{r.mode.value}'")
    if r.mode is Mode.REFERENCE and not r.reference:
        raise UsageError("mode 'reference' compares with an old artifact: give it (--reference OLD_ARTIFACT)")
    half_given = (r.budget_ratio is None) != (r.unpruned is None)
    out_of_range = r.budget_ratio is not None and not 0 < r.budget_ratio < 1  # NaN fails too
    if half_given or out_of_range or (r.budget_ratio is not None and r.budget_ms is not None):
        raise UsageError(f"a relative budget is a share in (0, 1) of an unpruned model's latency: give both "
                         f"--budget-ratio and --unpruned, and no --budget-ms (got {r.budget_ratio}, unpruned {r.unpruned})")
    if r.mode is Mode.BUDGET and r.absolute:
        raise UsageError("a budget-only check compares with no baseline; it takes no --absolute")
