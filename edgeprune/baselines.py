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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .groups import output_layers
from .lut import LatencyTable
from .onnxio import export_onnx
from .prune import prune_to_widths, widths_of


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


def paired_ratio(target, reference_onnx: Path, candidate_onnx: Path) -> tuple[float, tuple[float, float]]:
    """latency(candidate) / latency(reference) from alternating blocks in one run."""
    from .comparison import compare_paired
    alt = target.measure_alternating(reference_onnx, candidate_onnx)
    c = compare_paired(alt.log_ratios, alt.latencies[0].median_ms, alt.latencies[1].median_ms)
    return c.ratio, (c.low, c.high)


def match(build: Callable[[float], nn.Module], predict: Callable[[nn.Module], float], goal_ms: float,
          lo: float, hi: float, target, reference_onnx: Path, input_shape: tuple[int, ...],
          tolerance: float = 0.03, attempts: int = 5) -> Matched:
    """Turn the knob of ``build`` until the model measures within ``tolerance`` of the reference.

    The table's prediction (``predict``) finds the knob for ``goal_ms``; a paired measurement
    against the reference then says how far off the real latency is, and the goal is scaled by
    that miss. The closest of ``attempts`` tries is returned when none is within tolerance."""
    cache: dict[float, nn.Module] = {}

    def model_at(k: float) -> nn.Module:
        if k not in cache:
            cache[k] = build(k)
        return cache[k]

    best: Matched | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(1, attempts + 1):
            knob = bisect(lambda k: predict(model_at(k)), goal_ms, lo, hi)
            onnx = export_onnx(model_at(knob), input_shape, Path(tmp) / f"try{i}.onnx")
            ratio, ci = paired_ratio(target, reference_onnx, onnx)
            if best is None or abs(math.log(ratio)) < abs(math.log(best.ratio)):
                best = Matched(knob, model_at(knob), ratio, ci, i)
            if abs(ratio - 1) <= tolerance:
                break
            goal_ms /= ratio
    return best


def uniform_model(model: nn.Module, input_shape, table: LatencyTable, keep: float, round_to: int = 8) -> nn.Module:
    return prune_to_widths(model, input_shape, uniform_widths(table, keep, round_to))


def predicted_ms(table: LatencyTable, input_shape) -> Callable[[nn.Module], float]:
    """The table's prediction for any pruned variant of the table's model."""
    return lambda m: table.predict(widths_of(m, input_shape))
