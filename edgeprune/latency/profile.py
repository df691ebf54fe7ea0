"""Build a LatencyTable by measuring the whole model in context on the target.

Design: with ``m`` width levels per group (m prime) and a colouring of groups such that
the two groups of any layer differ in colour, configuration (i, j) gives group g the level
(i + j * colour[g]) mod m. Every layer then sees every (c_in level, c_out level) pair exactly
once in m*m whole-model runs, measured by the runtime's own per-node profiler, so fusion and
layout effects are part of each layer's cost. End-to-end runs of random configurations
calibrate the profiler's sum (``edgeprune.latency.calibration``); other random configurations
measure the table's error.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch.nn as nn

from edgeprune import __version__
from edgeprune.artifacts.onnxio import (
    atomic_write,
    export_onnx,
    module_call_order,
    node_module_map,
)
from edgeprune.errors import UsageError
from edgeprune.latency.calibration import fit as fit_calibration
from edgeprune.latency.table import SCHEMA_VERSION, LatencyTable, LayerEntry, TableError
from edgeprune.progress import bar
from edgeprune.pruning.groups import Structure, analyse
from edgeprune.pruning.prune import prune_to_widths
from edgeprune.runtime.base import NodeTime, Target
from edgeprune.runtime.spec import TimingSpec

E2E_TIMING = TimingSpec(warmup_s=0.2, min_runs=10, min_time_s=0.1, max_time_s=5, windows=5)
MEASURE_CHUNK = 20  # configurations measured interleaved at once (each holds a compiled session)
TORCH_LOCK = threading.RLock()  # tracing and ONNX export use torch's global state: one thread at a time


@dataclass
class ProfileConfig:
    levels: int = 5          # widths measured per group; rounded up to a prime
    min_ratio: float = 0.125  # smallest width profiled, as a fraction of the group
    round_to: int = 8
    runs: int = 10           # profiled runs per configuration (per-node medians)
    calibrate: int = 60      # random configurations the profiler sum is calibrated on (end to end)
    validate: int = 5        # other random configurations, for the table's error
    align: int = 16          # width multiple whose kernels the calibration may find faster
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        low = {k: v for k, v in (("levels", self.levels - 1), ("runs", self.runs), ("calibrate", self.calibrate + 1),
                                 ("validate", self.validate + 1), ("align", self.align)) if v < 1}
        if low:
            raise UsageError(f"profile settings out of range: {', '.join(low)} (levels >= 2, runs >= 1, "
                             "calibrate >= 0, validate >= 0, align >= 1)")
        if not 0 < self.min_ratio <= 1:
            raise UsageError(f"profile min_ratio must be in (0, 1], got {self.min_ratio}")


def table_conditions(target: Target, structure: Structure) -> dict:
    """What a table is valid under, compared on load: the target's fingerprint (its own list of
    what must match) plus the model's structure, the input shape and the table schema."""
    return {**target.fingerprint(), "model_signature": structure.signature,
            "input_shape": list(structure.input_shape), "schema": SCHEMA_VERSION}


def table_meta(target: Target, structure: Structure, model_name: str) -> dict:
    """The conditions plus provenance (names, which may change without changing the latency)."""
    return {**table_conditions(target, structure), "target": target.spec.name, "model": model_name}


def build_table(model: nn.Module, target: Target, input_shape: tuple[int, ...], out: str | os.PathLike,
                model_name: str = "model", cfg: ProfileConfig | None = None) -> LatencyTable:
    """Profile ``model`` on ``target`` and save the table at ``out`` (resumable)."""
    cfg = cfg or ProfileConfig()
    t0 = time.time()
    with TORCH_LOCK:
        structure = analyse(model, input_shape)
    meta = table_meta(target, structure, model_name)
    levels = level_grid(structure, cfg)
    m = len(next(iter(levels.values()))) if levels else 1
    colours = colour_groups(structure, m)
    design = [{g: levels[g][(i + j * colours[g]) % m] for g in levels} for j in range(m) for i in range(m)]
    rng = np.random.default_rng(cfg.seed + 1)
    checks = sample_widths(structure, cfg, rng, cfg.validate)
    # the unpruned model anchors the calibration: every budget is a share of its latency
    calib = [structure.full_widths()] + sample_widths(structure, cfg, rng, cfg.calibrate - 1) if cfg.calibrate else []
    partial = Partial(Path(out), _key(meta, levels, cfg))
    chunks = [calib[k:k + MEASURE_CHUNK] for k in range(0, len(calib), MEASURE_CHUNK)]
    with tempfile.TemporaryDirectory() as work, bar(f"profile {model_name}", len(design) + len(chunks) + 1, cfg.progress) as advance:
        files = Exporter(model, input_shape, Path(work))
        for k, widths in enumerate(design):
            partial.measure(str(k), target, lambda: profile_config(files, target, widths, cfg.runs))
            advance(info=f"config {k + 1}/{len(design)}")
        for k, chunk in enumerate(chunks):
            partial.measure(f"e2e{k}", target, lambda: {"ms": files.measure(target, chunk)})
            advance(info=f"end-to-end calibration {k + 1}/{len(chunks)}")
        samples = [partial.samples[str(k)] for k in range(len(design))]
        e2e = [ms for k in range(len(chunks)) for ms in partial.samples[f"e2e{k}"]["ms"]]
        table = assemble(structure, levels, samples, meta, calib, e2e, cfg.align)
        partial.measure("checks", target, lambda: {"ms": files.measure(target, checks)})
        advance(info="validation")
    table.error = TableError.from_pairs([table.predict(w) for w in checks], partial.samples["checks"]["ms"], checks)
    table.meta.update(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), edgeprune_version=__version__,
                      profile_seconds=round(time.time() - t0, 1), profile_config=asdict(cfg), design_configs=len(design))
    table.save(out)
    partial.remove()
    return table


class Exporter:
    """Pruned-model ONNX files by configuration, exported once and kept for the run."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], work: Path):
        self.model, self.input_shape, self.work = model, input_shape, work
        self.files: dict[str, tuple[Path, list[str]]] = {}

    def onnx(self, widths: dict[str, int]) -> tuple[Path, list[str]]:
        """(ONNX path, Conv/Linear call order) of the model pruned to ``widths``."""
        key = hashlib.sha1(json.dumps(widths, sort_keys=True).encode()).hexdigest()[:12]
        if key not in self.files:
            with TORCH_LOCK:
                pruned = prune_to_widths(self.model, self.input_shape, widths)
                path = export_onnx(pruned, self.input_shape, self.work / f"{key}.onnx")
                self.files[key] = path, module_call_order(pruned, self.input_shape)
        return self.files[key]

    def measure(self, target: Target, configs: list[dict[str, int]]) -> list[float]:
        """End-to-end medians of all ``configs``, measured interleaved."""
        paths = [self.onnx(w)[0] for w in configs]
        return [lat.median_ms for lat in target.measure_many(paths, E2E_TIMING)]


def level_grid(structure: Structure, cfg: ProfileConfig) -> dict[str, list[int]]:
    """``m`` distinct widths per group (multiples of round_to), from min_ratio*C to C."""
    m = next_prime(max(cfg.levels, 2))
    grid = {}
    for g in structure.groups.values():
        lo = min(g.channels, max(cfg.round_to, _round_up(g.channels * cfg.min_ratio, cfg.round_to)))
        raw = np.linspace(lo, g.channels, m)
        vals = [min(g.channels, _round_up(v, cfg.round_to)) for v in raw]
        vals[-1] = g.channels
        grid[g.name] = vals
    return grid


def colour_groups(structure: Structure, m: int) -> dict[str, int]:
    """Greedy colouring so the in- and out-group of every layer get different colours mod m."""
    neighbours: dict[str, set[str]] = {g: set() for g in structure.groups}
    for layer in structure.layers.values():
        if len(layer.axes) == 2:
            a, b = layer.axes
            neighbours[a].add(b)
            neighbours[b].add(a)
    colours: dict[str, int] = {}
    for g in sorted(neighbours, key=lambda g: -len(neighbours[g])):
        used = {colours[n] for n in neighbours[g] if n in colours}
        free = [c for c in range(m) if c not in used]
        if not free:
            # the user's --levels, too few for this model's layer graph: bad input, not a crash
            raise UsageError(f"{m} levels cannot separate the groups around {g}; use more (--levels {m + 1} "
                             "or above)")
        colours[g] = free[0]
    return colours


def profile_config(files: Exporter, target: Target, widths: dict[str, int], runs: int) -> dict:
    """Per-layer profiler times of the model pruned to ``widths``."""
    import onnx
    path, call_order = files.onnx(widths)
    times = target.layer_times(path, runs=runs)
    per_layer, overhead = attribute(onnx.load(str(path)), call_order, times)
    return {"widths": widths, "layers": per_layer, "overhead_ms": overhead,
            "node_sum_ms": sum(t.ms for t in times)}


def layer_breakdown(target: Target, model: nn.Module, input_shape: tuple[int, ...], onnx_path: str | os.PathLike,
                    runs: int = 10) -> dict[str, float]:
    """Measured time per model layer of one exported model (the runtime's own profiler, fused
    nodes attributed to their layer; time before the first layer under ``(input)``)."""
    import onnx
    times = target.layer_times(onnx_path, runs=runs)
    per_layer, overhead = attribute(onnx.load(str(onnx_path)), module_call_order(model, input_shape), times)
    return {**({"(input)": overhead} if overhead else {}), **per_layer}


def attribute(onnx_model, call_order: list[str], times: list[NodeTime]) -> tuple[dict[str, float], float]:
    """Split runtime node times among model layers.

    A runtime node names an ONNX node or the tensor its fused node produces; its owner is the
    nearest Conv/Gemm reached by walking data inputs backwards (a fused Conv+BN+ReLU, the
    pool after a conv, a residual Add). Nodes the runtime inserted (layout reorders) go to the
    layer executed just before them; anything before the first layer is fixed overhead.
    """
    owner_of = _owners(onnx_model, node_module_map(onnx_model, call_order))
    per_layer: dict[str, float] = {}
    overhead, last = 0.0, None
    for t in times:
        owner = owner_of.get(t.name) or last
        if owner is None:
            overhead += t.ms
        else:
            per_layer[owner] = per_layer.get(owner, 0.0) + t.ms
            last = owner
    return per_layer, overhead


def _owners(onnx_model, node_to_module: dict[str, str]) -> dict[str, str]:
    """Node name or output-tensor name -> owning module, for every ONNX node."""
    producer = {o: n for n in onnx_model.graph.node for o in n.output}
    cache: dict[str, str | None] = {}

    def owner(node) -> str | None:
        seen = []
        while node is not None and node.name not in cache:
            if node.name in node_to_module:
                cache[node.name] = node_to_module[node.name]
                break
            seen.append(node.name)
            node = producer.get(node.input[0]) if node.input else None
        result = cache.get(node.name) if node is not None else None
        for name in seen:
            cache[name] = result
        return result

    out = {}
    for n in onnx_model.graph.node:
        o = owner(n)
        if o:
            out[n.name] = o
            for t in n.output:
                out[t] = o
    return out


def assemble(structure: Structure, levels: dict[str, list[int]], samples: list[dict], meta: dict,
             calib: list[dict[str, int]], e2e_ms: list[float], align: int = 16) -> LatencyTable:
    """Grid each layer's samples by its axes' levels, smooth each grid, then calibrate the sum
    to the end-to-end medians ``e2e_ms`` of the random configurations ``calib``.

    The design's configurations are extreme mixes (every group at its smallest or largest
    width against every other); a calibration fitted on them was off by about ±9% on random
    configurations in the benchmark, so typical configurations calibrate the table instead."""
    entries = {layer.name: layer_entry(layer.name, layer.axes, levels, samples) for layer in structure.layers.values()}
    overhead = statistics.median(s["overhead_ms"] for s in samples)
    table = LatencyTable(meta, structure.full_widths(), entries, round(overhead, 5), weights={
        l.name: [l.in_group, l.out_group, l.in_channels, l.out_channels, l.kernel, l.depthwise]
        for l in structure.layers.values()})
    full = [{**table.groups, **w} for w in calib]
    table.calibration = fit_calibration([table.raw(w) for w in full], calib, e2e_ms, table.groups, align,
                                        [table.weight_mb(w) for w in full])
    return table


def layer_entry(name: str, axes: list[str], levels: dict[str, list[int]], samples: list[dict]) -> LayerEntry:
    """One layer's grid over its axes' levels: per-cell medians of the profiled samples, smoothed."""
    grid_levels = [sorted(set(levels[a])) for a in axes]
    cells: dict[tuple, list[float]] = {}
    for s in samples:
        idx = tuple(g.index(s["widths"][a]) for a, g in zip(axes, grid_levels))
        cells.setdefault(idx, []).append(s["layers"].get(name, 0.0))
    shape = tuple(len(l) for l in grid_levels)
    ms = np.full(shape, np.nan) if shape else np.array(np.nan)
    for idx, vals in cells.items():
        ms[idx] = statistics.median(vals)
    measured = _fill(ms)
    return LayerEntry(axes, grid_levels, smooth(grid_levels, measured).round(5).tolist(), measured.round(5).tolist())


def smooth(levels: list[list[int]], ms: np.ndarray) -> np.ndarray:
    """Least-squares surface through a layer's grid: a + b*c_in + c*c_out + d*c_in*c_out for two
    axes (a conv's cost is close to bilinear in its widths), a quadratic for one axis.

    Each cell is a single in-context sample; the search seeks out cells that read low, so
    measurement noise in the raw grid turns into over-optimistic picks. The fit pools all of a
    layer's cells (on the benchmark tables it took random-configuration predictions within ±10%
    from 67-83% to 90%; BENCHMARKS.md)."""
    if ms.ndim == 0 or min(ms.shape) < 2:
        return ms
    if ms.ndim == 1:
        x = np.asarray(levels[0], float)
        basis = np.stack([np.ones_like(x), x, x * x], 1) if len(x) > 2 else np.stack([np.ones_like(x), x], 1)
    else:
        xi, xo = np.meshgrid(np.asarray(levels[0], float), np.asarray(levels[1], float), indexing="ij")
        basis = np.stack([np.ones(xi.size), xi.ravel(), xo.ravel(), (xi * xo).ravel()], 1)
    coef = np.linalg.lstsq(basis, ms.ravel(), rcond=None)[0]
    return np.clip(basis @ coef, 0.0, None).reshape(ms.shape)


def _fill(ms: np.ndarray) -> np.ndarray:
    """Fill unmeasured cells from the nearest measured one (only when the design is partial)."""
    if ms.ndim == 0 or not np.isnan(ms).any():
        return np.nan_to_num(ms)
    idx = np.argwhere(~np.isnan(ms))
    out = ms.copy()
    for cell in np.argwhere(np.isnan(ms)):
        nearest = idx[np.abs(idx - cell).sum(axis=1).argmin()]
        out[tuple(cell)] = ms[tuple(nearest)]
    return out


def random_widths(structure: Structure, cfg: ProfileConfig, rng: np.random.Generator) -> dict[str, int]:
    """A random configuration on the round_to lattice: every group's width drawn independently."""
    return {g.name: int(rng.choice(width_choices(g.channels, cfg))) for g in structure.groups.values()}


LEVEL_JITTER = 0.15  # level-jittered sampling: each group within this share of its channels of the level


def sample_widths(structure: Structure, cfg: ProfileConfig, rng: np.random.Generator, n: int) -> list[dict[str, int]]:
    """``n`` configurations to calibrate and check a table on, alternately independent per group
    and jittered by ±LEVEL_JITTER around one keep level per configuration.

    Why both: independent draws average a quarter of the weights, so nearly unpruned models
    (where 50-85% budgets land, and where ResNet-18's 44 MB of weights outgrow the L3) were
    missing, and the table under-predicted them by 10-29% at the search's own picks (issue 9);
    the level-jittered half covers lean to nearly unpruned models (tools/table_study.py)."""
    out = []
    for k in range(n):
        if k % 2 == 0:
            out.append(random_widths(structure, cfg, rng))
            continue
        level, w = float(rng.uniform(cfg.min_ratio, 1.0)), {}
        for g in structure.groups.values():
            choices = width_choices(g.channels, cfg)
            near = [c for c in choices if abs(c / g.channels - level) <= LEVEL_JITTER]
            w[g.name] = int(rng.choice(near or [min(choices, key=lambda c: abs(c / g.channels - level))]))
        out.append(w)
    return out


def width_choices(channels: int, cfg: ProfileConfig) -> list[int]:
    """The widths a group of ``channels`` may take: the round_to lattice from min_ratio, and full."""
    lo = min(channels, max(cfg.round_to, _round_up(channels * cfg.min_ratio, cfg.round_to)))
    return sorted(set(range(lo, channels + 1, cfg.round_to)) | {channels})


class Partial:
    """Measurements of an unfinished profile, saved after every configuration (a rerun skips
    them), and its ``run`` id, saved before the first job: a remote target derives each chunk's
    job ids from it (``Target.job_scope``), so the chunk a killed client waited for comes from
    the agent's store, not a new measurement; a new profile draws a new id (measures afresh)."""

    def __init__(self, out: Path, key: str):
        self.path = out.with_name(out.stem + ".partial.json")
        self.key = key
        self.samples: dict[str, dict] = {}
        self.run: str | None = None
        if self.path.exists():
            try:
                d = json.loads(self.path.read_text())
                if d.get("key") == key:
                    self.samples, self.run = d["samples"], d.get("run")
            except (ValueError, KeyError):
                pass

    def measure(self, k: str, target: Target, run) -> None:
        """``run()`` under chunk ``k``'s job scope and keep its sample, unless already kept."""
        if k in self.samples:
            return
        if self.run is None:
            self.run = uuid.uuid4().hex
            self._save()
        with target.job_scope(f"{self.run}:{k}"):
            self.add(k, run())

    def add(self, k: str, sample: dict) -> None:
        self.samples[k] = sample
        self._save()

    def _save(self) -> None:
        with atomic_write(self.path) as tmp:
            tmp.write_text(json.dumps({"key": self.key, "run": self.run, "samples": self.samples}))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def next_prime(n: int) -> int:
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)) or n < 2:
        n += 1
    return n


def _round_up(x: float, step: int) -> int:
    return int(step * np.ceil(x / step - 1e-9))


def _key(meta: dict, levels: dict, cfg: ProfileConfig) -> str:
    settings = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    blob = json.dumps([meta, levels, settings], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
