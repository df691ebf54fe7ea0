"""The Python API; every CLI command is a thin wrapper over one of these functions.

The modules that load torch (session, pipeline, search) are imported inside the functions that
need them: `edgeprune check` on an artifact and `edgeprune targets` never load torch, which
took 3 s of every such command (a CI job runs `check` once per artifact and target)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune.checks.request import CheckRequest
from edgeprune.errors import UsageError
from edgeprune.runtime.spec import load_spec, target_files
from edgeprune.runtime.timing import Latency

if TYPE_CHECKING:
    from edgeprune.latency.table import LatencyTable
    from edgeprune.reports.model import PruneReport
    from edgeprune.search.knapsack import SearchConfig, SearchResult


def targets() -> list[dict]:
    """Every target file found, with whether its runtime is installed here and, separately,
    whether its device is present (``None``: unknown without the runtime)."""
    from edgeprune.runtime import target_class
    rows = []
    for name, path in sorted(target_files().items()):
        try:
            spec = load_spec(str(path))
            cls = target_class(spec.runtime)
            rows.append({"name": name, "runtime": spec.runtime, "device": spec.device,
                         "threads": spec.threads, "installed": cls.installed(),
                         "device_present": cls.device_present(spec), "path": str(path),
                         "budgets_ms": spec.budgets_ms})
        except UsageError as e:
            rows.append({"name": name, "error": str(e), "path": str(path), "installed": False})
    return rows


def measure(model_or_onnx: str, target: str = "ort-cpu", input_size: int | None = None,
            weights: str | None = None) -> Latency:
    """End-to-end latency of a model name/factory or an ONNX file on ``target``."""
    from edgeprune.artifacts.kinds import find_kind
    from edgeprune.runtime import get_target
    kind = find_kind(model_or_onnx)
    if kind is not None:  # an artifact file (ONNX, ORT format, OpenVINO IR...), not a model name
        kind.check(model_or_onnx)
        return get_target(target).measure(model_or_onnx)
    from edgeprune.search.loop import measure_model
    from edgeprune.session import Session, SessionConfig
    s = Session.open(SessionConfig(model=model_or_onnx, target=target, input_size=input_size, weights=weights))
    return measure_model(s.model, s.input_shape, s.target)


def profile(model: str, target: str = "ort-cpu", input_size: int | None = None,
            out: str | None = None, **session) -> LatencyTable:
    """Measure (or resume measuring) the model's latency table on ``target``."""
    from edgeprune.session import Session, SessionConfig
    cfg = SessionConfig(model=model, target=target, input_size=input_size, table=out, reprofile=True, **session)
    return Session.open(cfg).table()


def search(model: str, budget_ms: float | None = None, target: str = "ort-cpu", input_size: int | None = None,
           config: SearchConfig | None = None, objective: str | None = None, abn=None,
           budget_ratio: float | None = None, **session) -> SearchResult:
    """Per-group widths predicted to fit ``budget_ms`` (default: the target file's budget for
    the model; profiles first if no table exists), or ``budget_ratio`` of the unpruned model's
    predicted latency. ``objective``: ``adaptive-bn`` (the default
    when ``data`` is given: candidates scored by val accuracy after BN re-estimation, the trained
    ``weights`` matter), ``capacity`` (the most MACs among candidates scoring at least the uniform
    prune's; an alternative, not better than adaptive-bn so far: ``search.accuracy``) or ``importance`` (kept channel
    importance, no data needed)."""
    from edgeprune.pipeline import OBJECTIVES, SCORED_OBJECTIVES, budget_ratio_or_raise, prune_budget_ms
    from edgeprune.search.knapsack import SearchConfig
    from edgeprune.search.knapsack import search as _search
    from edgeprune.session import Session, SessionConfig
    budget_ratio_or_raise(budget_ratio, budget_ms)
    s = Session.open(SessionConfig(model=model, target=target, input_size=input_size, **session))
    objective = objective or ("adaptive-bn" if s.data is not None else "importance")
    if objective not in OBJECTIVES:
        from edgeprune.errors import unknown
        raise unknown("search objective", objective, OBJECTIVES)
    if objective in SCORED_OBJECTIVES and s.data is None:
        raise UsageError(f"the {objective} objective scores candidates on data: pass --data (or --objective importance)")
    if objective in SCORED_OBJECTIVES and not s.trained:
        raise UsageError(f"the {objective} objective scores a trained model: pass --weights for {model} "
                         "(prune trains a baseline itself)")
    budget_ms = prune_budget_ms(budget_ms, s) if budget_ratio is None else None
    cfg, table = s.search_config(config or SearchConfig()), s.table()
    budget_ms = budget_ms if budget_ratio is None else budget_ratio * table.full_ms
    if objective == "importance":
        return _search(table, s.scores(), budget_ms, cfg)
    from edgeprune.search.accuracy import AbnConfig, AdaptiveBN, ShapePlanner
    scorer = AdaptiveBN(s.model, s.input_shape, s.data, s.cfg.importance, abn or AbnConfig(), s.scoring_device())
    return ShapePlanner(table, scorer, cfg, s.scores(), objective)(budget_ms)


def prune(model: str, out: str | Path, budget_ms: float | None = None, target: str = "ort-cpu",
          data: str = "digits", epochs: int = 3, finetune: bool = True, steps: int = 1,
          search: SearchConfig | None = None, objective: str = "adaptive-bn", abn=None,
          engine: str = "torch-pruning", typed: bool = False, budget_ratio: float | None = None,
          **session) -> dict | PruneReport:
    """Prune, fine-tune and export ``model`` to fit ``budget_ms`` measured on ``target``, or
    ``budget_ratio`` of the unpruned model's latency there (each reading paired with it).

    ``objective`` picks what the widths maximise: ``adaptive-bn`` (default) scores candidate
    widths by validation accuracy after BN re-estimation (``accuracy_search.AbnConfig`` in
    ``abn`` sets how many); ``capacity`` takes the most MACs among candidates scoring at least
    the uniform prune's; ``importance`` keeps the most channel importance per millisecond.
    ``engine`` is the library that physically removes the channels (``torch-pruning`` or
    ``nni``; ``pruning/engine.py``): the group names, the search and the channels kept are the
    same with either. Returns the report as report.json holds it (``typed``: the PruneReport
    itself, which the CLI's terminal table takes without a round trip through the dict)."""
    from edgeprune.pipeline import PruneJob, run_prune
    from edgeprune.search.accuracy import AbnConfig
    from edgeprune.search.knapsack import SearchConfig
    from edgeprune.session import SessionConfig
    job = PruneJob(SessionConfig(model=model, target=target, data=data, **session), Path(out), budget_ms,
                   epochs, finetune, steps, search or SearchConfig(), objective=objective, abn=abn or AbnConfig(),
                   engine=engine, budget_ratio=budget_ratio)
    report = run_prune(job)  # None on a torchrun rank other than 0: it only trained
    return report if typed or report is None else report.to_json_dict()  # the dict: as report.json holds it


def export(model: str, out: str | Path, kind: str = "onnx", input_size: int | None = None,
           weights: str | None = None, target: str = "ort-cpu", widths: dict[str, int] | None = None):
    """Export a model (optionally pruned to ``widths`` with ``weights`` of the pruned model)."""
    from edgeprune.artifacts.export import export_artifact, resolve_kind
    from edgeprune.session import Session, SessionConfig
    resolve_kind(kind)
    s = Session.open(SessionConfig(model=model, target=target, input_size=input_size,
                                   weights=None if widths else weights))
    model_ = s.pruned(widths, weights) if widths else s.model
    return export_artifact(model_, kind, out, s.input_shape, {"model": model, "target": s.spec.name})


def quantize(run: str | Path, target: str | None = None, data: str | None = None, data_root: str | None = None,
             calibration_samples: int = 300, test_samples: int | None = None, preset: str = "performance",
             seed: int = 0) -> dict:
    """INT8 (NNCF, calibrated on ``calibration_samples`` training images) beside FP32 and FP16
    IRs of a prune run's model: latency on the OpenVINO ``target`` measured interleaved,
    accuracy/F1 on the test set, file size. Writes ``run``/model-int8.xml, precisions.json and
    precisions.md; returns precisions.json's content."""
    from edgeprune.artifacts.quantize import PrecisionJob, compare_precisions
    return compare_precisions(PrecisionJob(Path(run), target, data, data_root, calibration_samples,
                                           test_samples, preset, seed))


def check(artifact: str | CheckRequest | None = None, target: str | None = None, baseline: str | None = None,
          tolerance: float | None = None, budget_ms: float | None = None, update: bool = False,
          allow_mismatch: bool = False, confirm: bool = True, deploy: str | None = None,
          reference: str | None = None, absolute: bool = False, run: str | None = None,
          budget_ratio: float | None = None, unpruned: str | None = None) -> list:
    """Check an artifact's latency on ``target`` against its baseline and budget (``update``:
    write the baseline instead), or every check of a ``deploy`` file. The old artifact (the
    baseline's frozen copy, or ``reference``) runs in turn with the new one in one run;
    ``absolute`` compares with the baseline's recorded numbers instead. Returns one
    ``check.CheckResult`` per (artifact, target); ``check.exit_code(results)`` is the CLI's code.
    ``run``: a prune output directory; its run.json names the artifact, target and budget.
    ``budget_ratio``: instead of ``budget_ms``, at most this share of ``unpruned``'s latency, read
    in pairs with it (what ``run`` gives for a run pruned with ``budget_ratio``).
    ``artifact`` may instead be a whole ``CheckRequest`` (what the CLI passes), with no other
    argument. Contradictory arguments and a single check's bad input raise UsageError; in a
    deploy file an entry's bad input becomes that check's error."""
    from edgeprune.checks.check import run_checks
    if isinstance(artifact, CheckRequest):
        if (target, baseline, tolerance, budget_ms, update, allow_mismatch, confirm, deploy, reference,
                absolute, run, budget_ratio, unpruned) != (None, None, None, None, False, False, True, None, None,
                                                           False, None, None, None):
            raise TypeError("check(request) takes no other arguments: they are the request's fields")
        return run_checks(artifact)
    return run_checks(CheckRequest.from_flags(artifact, target, baseline, tolerance, budget_ms, update,
                                              allow_mismatch, confirm, deploy, reference, absolute, run,
                                              budget_ratio, unpruned))
