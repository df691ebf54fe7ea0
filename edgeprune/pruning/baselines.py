"""The prunes a user would compare edgeprune with, built the way the common tools build them.

* **uniform**: the same keep-ratio in every channel group, L1 channels (Torch-Pruning's
  ``pruning_ratio`` with DepGraph groups, or NNI's L1NormPruner + ModelSpeedup: ``nni_uniform``).
* **global magnitude**: Torch-Pruning's global L1 ranking across all groups, one ratio.

Each is a family with one knob; ``match`` turns the knob until the pruned model's latency equals
a reference model's, judged by a *paired* same-run measurement on the target (``tolerance``
±3% by default), so accuracy is compared at equal measured latency.
"""
from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgeprune.artifacts.onnxio import export_onnx
from edgeprune.latency.table import LatencyTable
from edgeprune.pruning.groups import output_layers
from edgeprune.pruning.prune import prune_to_widths, widths_of


def uniform_widths(table: LatencyTable, keep: float, round_to: int = 8, min_width: int = 8) -> dict[str, int]:
    """``keep`` of every group's channels, rounded to ``round_to`` (Torch-Pruning's round_to)."""
    return {g: c if keep >= 1 else int(min(c, max(min_width, round_to * round(keep * c / round_to))))
            for g, c in table.groups.items()}


def global_magnitude(model: nn.Module, input_shape: tuple[int, ...], ratio: float, round_to: int = 8) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of its prunable channels removed by one global L1 ranking."""
    import torch_pruning as tp
    model = copy.deepcopy(model).eval()
    example = torch.zeros(*input_shape)
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=0.9,
                                  round_to=round_to, ignored_layers=output_layers(model, input_shape))
    pruner.step()
    return model


def macs(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    import torch_pruning as tp
    return float(tp.utils.count_ops_and_params(model, torch.zeros(*input_shape))[0])


def bisect(f: Callable[[float], float], goal: float, lo: float, hi: float, steps: int = 14) -> float:
    """The knob in [lo, hi] whose ``f`` is closest to ``goal``; ``f`` monotone (either way)."""
    seen: dict[float, float] = {}

    def value(x: float) -> float:  # each knob evaluated once (a prune and a prediction each)
        if x not in seen:
            seen[x] = f(x)
        return seen[x]

    increasing = value(hi) >= value(lo)
    best = min((lo, hi), key=lambda x: abs(value(x) - goal))
    for _ in range(steps):
        mid = (lo + hi) / 2
        best = min((best, mid), key=lambda x: abs(value(x) - goal))
        if (value(mid) < goal) == increasing:
            lo = mid
        else:
            hi = mid
    return best


@dataclass
class Matched:
    knob: float
    model: nn.Module
    ratio: float          # paired latency ratio vs the reference (1.0 = equal)
    ci: tuple[float, float]
    attempts: int
    tries: list[tuple[float, float]] = field(default_factory=list)  # (knob, ratio) of every measured try
    confirmed: float | None = None  # the chosen pair measured again ...
    confirmed_ci: tuple[float, float] | None = None  # ... and that reading's 95% CI


def paired_ratio(target, reference_onnx: Path, candidate_onnx: Path) -> tuple[float, tuple[float, float]]:
    """latency(candidate) / latency(reference) from alternating blocks in one run."""
    from edgeprune.checks.comparison import compare_paired
    alt = target.measure_alternating(reference_onnx, candidate_onnx)
    c = compare_paired(alt.log_ratios, alt.latencies[0].median_ms, alt.latencies[1].median_ms)
    return c.ratio, (c.low, c.high)


def match(build: Callable[[float], nn.Module], predict: Callable[[nn.Module], float], goal_ms: float,
          lo: float, hi: float, target, reference_onnx: Path, input_shape: tuple[int, ...],
          tolerance: float = 0.03, attempts: int = 8) -> Matched:
    """Turn the knob of ``build`` until the model measures within ``tolerance`` of the reference.

    The table's prediction finds the knob for ``goal_ms``; a paired measurement against the
    reference says how far off the real latency is, and the goal is scaled by that miss. Once
    one try is faster and one slower than the reference, the knob is bisected between them
    instead: widths move in steps of ``round_to`` channels, and near the answer the table cannot
    tell neighbouring steps apart as well as a measurement can (issue 9's first matches stopped
    at 0.93-0.97). A knob whose architecture was already measured is not measured again.

    When no try lands within ``tolerance``, the one kept is the closest that is not faster than
    the reference by more than the tolerance: the compared method then has at least the
    reference's latency to spend, so a claim that the reference is more accurate is not helped by
    a faster baseline. The kept pair is measured once more (``confirmed``)."""
    cache: dict[float, nn.Module] = {}

    def model_at(k: float) -> nn.Module:
        if k not in cache:
            cache[k] = build(k)
        return cache[k]

    tries: list[Matched] = []
    measured: dict[tuple, Matched] = {}
    knob: float | None = bisect(lambda k: predict(model_at(k)), goal_ms, lo, hi)
    with tempfile.TemporaryDirectory() as tmp:
        while knob is not None and len(tries) < attempts:
            arch = architecture(model_at(knob))
            if arch in measured:
                break  # the table maps the new goal to widths already measured
            onnx = export_onnx(model_at(knob), input_shape, Path(tmp) / f"try{len(tries) + 1}.onnx")
            ratio, ci = paired_ratio(target, reference_onnx, onnx)
            measured[arch] = m = Matched(knob, model_at(knob), ratio, ci, len(tries) + 1)
            tries.append(m)
            if abs(ratio - 1) <= tolerance:
                break
            goal_ms /= ratio
            if _bracketed(tries):
                knob = _between(tries, model_at)
            else:
                knob = bisect(lambda k: predict(model_at(k)), goal_ms, lo, hi)
        best = choose(tries, tolerance)
        best.tries = [(round(t.knob, 6), round(t.ratio, 4)) for t in tries]
        onnx = export_onnx(best.model, input_shape, Path(tmp) / "confirm.onnx")
        best.confirmed, best.confirmed_ci = paired_ratio(target, reference_onnx, onnx)
    return best


def choose(tries: list[Matched], tolerance: float) -> Matched:
    """Within tolerance: the closest try. Otherwise the closest not faster than the reference
    by more than the tolerance, or, when every try is faster, the slowest."""
    inside = [t for t in tries if abs(t.ratio - 1) <= tolerance]
    if inside:
        return min(inside, key=lambda t: abs(math.log(t.ratio)))
    slower = [t for t in tries if t.ratio > 1]
    return min(slower, key=lambda t: t.ratio) if slower else max(tries, key=lambda t: t.ratio)


def _bracketed(tries: list[Matched]) -> bool:
    return any(t.ratio < 1 for t in tries) and any(t.ratio > 1 for t in tries)


def _between(tries: list[Matched], model_at) -> float | None:
    """A knob between the closest faster and slower tries whose architecture is neither's
    (None when they are neighbouring architectures: nothing lies between)."""
    a = max((t for t in tries if t.ratio < 1), key=lambda t: t.ratio).knob
    b = min((t for t in tries if t.ratio > 1), key=lambda t: t.ratio).knob
    arch_a, arch_b = architecture(model_at(a)), architecture(model_at(b))
    for _ in range(12):
        mid = (a + b) / 2
        arch = architecture(model_at(mid))
        if arch == arch_a:
            a = mid
        elif arch == arch_b:
            b = mid
        else:
            return mid
    return None


def architecture(model: nn.Module) -> tuple:
    """What latency depends on: the shapes of every parameter."""
    return tuple(tuple(p.shape) for p in model.parameters())


def uniform_model(model: nn.Module, input_shape, table: LatencyTable, keep: float, round_to: int = 8) -> nn.Module:
    return prune_to_widths(model, input_shape, uniform_widths(table, keep, round_to))


def predicted_ms(table: LatencyTable, input_shape) -> Callable[[nn.Module], float]:
    """The table's prediction for any pruned variant of the table's model."""
    return lambda m: table.predict(widths_of(m, input_shape))
