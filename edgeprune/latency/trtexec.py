"""A LatencyTable from trtexec's exported files (``edgeprune profile --from-trtexec``).

TensorRT runs on the user's board, not here; trtexec's ``--exportProfile``/``--exportLayerInfo``/
``--exportTimes`` files are read as plain JSON (``edgeprune.latency.trtexec_files``).

Design decisions:

- One configuration. A trtexec profile times the unpruned engine only, so other widths are a
  model, not a measurement: each table layer's measured time is scaled by its work at the
  asked widths, ``(c_in/C_in)·(c_out/C_out)`` for convolutions and GEMMs, ``c/C`` for depthwise
  convolutions and for pooling and elementwise layers (their group found by walking tensors back
  to the convolution that produced their input), constant for layers without a group. Every
  such work function is exact on a small grid, so the layer is an ordinary ``LayerEntry``. The
  meta says ``source: trtexec``, ``configurations: 1``, ``width_model: work-proportional``.
- Mapping. A TensorRT layer names its ONNX nodes in ``Metadata`` (TensorRT 10, detailed
  verbosity); otherwise its name is split on `` + `` with ``PWN(...)`` unwrapped, Q/DQ nodes,
  ``(Unnamed Layer* N)``, ``{ForeignNode[...]}`` and synthetic squeeze/unsqueeze names dropped,
  and ``x.weight``/``x.bias`` fragments kept as module hints (TensorRT 8's QAT names carry
  ``Conv_12``, which has no scope). An ONNX node ``/layer1/layer1.0/conv1/Conv`` is module
  ``layer1.0.conv1`` (torch.onnx writes each scope as its path relative to the scope above;
  Myelin writes ``classifier_1`` for ``classifier.1``). With ``--model``, modules become the
  channel groups of ``edgeprune.pruning.groups``.
- Overhead. Reformat, NoOp and shape-call layers (reformatting copies, Q/DQ reformats,
  Myelin's ``dummy_shape_call``) and anything naming no ONNX node go to the table's overhead,
  constant at every width; the command reports mapped and unmapped time.
- Calibration. The profiled run's per-layer averages add up to more than the timed run's end
  to end (ResNet-18: 0.364 vs 0.277 ms; per-layer synchronisation and no CUDA graph), so the
  sum is scaled to the end-to-end median: ``scale = e2e / Σ averages``. At full width that
  prediction equals the e2e median by construction (an in-sample 0%), so the table's
  ``TableError`` is the spread of what was measured end to end (per-iteration times from
  ``--times``, else the metadata's statistics) around it, and ``meta.error_basis`` says so;
  the raw sum's error against e2e is ``meta.raw_vs_e2e_pct``. Without an end-to-end time the
  table is uncalibrated (scale 1), said in its meta and the command's output.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeprune.errors import UsageError
from edgeprune.latency.calibration import Calibration
from edgeprune.latency.table import SCHEMA_VERSION, LatencyTable, LayerEntry, TableError
from edgeprune.latency.trtexec_files import (
    EndToEnd,
    LayerGraph,
    LayerInfo,
    Profile,
    check_same_layers,
    end_to_end,
    load_layer_graph,
    load_metadata,
    load_profile,
)

OVERHEAD_TYPES = {"Reformat", "NoOp", "shape_call"}
OVERHEAD_PREFIXES = ("Reformatting CopyNode", "dummy_shape_call", "copied_", "__myl_")
META_NODE = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
MYELIN_SUFFIX = re.compile(r"_myl\d+_\d+$")
DROPPED = re.compile(r"^(Quantize|Dequantize)Linear|Unnamed Layer\*|ForeignNode|^unsqueeze_node|squeeze_after|_output$")
LEVEL_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)  # grid of each axis; the work functions are exact on it
MAX_ERROR_SAMPLES = 10  # per-iteration times are summarised, not all written into the table


@dataclass
class TrtLayer:
    """One engine layer as profiled, and what it maps to."""

    name: str
    ms: float
    layer_type: str = ""
    nodes: list[str] = field(default_factory=list)     # ONNX node names
    modules: list[str] = field(default_factory=list)   # candidate module paths, most specific first
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    key: str | None = None   # table layer it adds to; None: overhead
    conv: str | None = None  # the model's Conv/Linear it runs (with --model)
    work: Counter = field(default_factory=Counter)  # group -> exponent of (width / channels)


@dataclass
class Result:
    table: LatencyTable
    layers: list[TrtLayer]
    e2e: EndToEnd
    convs_total: int = 0

    @property
    def sum_ms(self) -> float:
        return sum(l.ms for l in self.layers)

    @property
    def mapped_ms(self) -> float:
        return sum(l.ms for l in self.layers if l.key is not None)

    @property
    def convs_mapped(self) -> int:
        return len({l.conv for l in self.layers if l.conv})


def onnx_nodes(name: str, metadata: str | None = None) -> tuple[list[str], list[str]]:
    """(ONNX node names, module hints from weight names) of one TensorRT layer."""
    if metadata and META_NODE.search(metadata):
        return META_NODE.findall(metadata), []
    if name.startswith(OVERHEAD_PREFIXES):
        return [], []
    nodes, hints = [], []
    for part in name.split(" + "):
        if DROPPED.search(part.strip()):
            continue
        for token in re.sub(r"PWN\(|\)", ",", part).split(","):  # PWN(PWN(a, b), c): pointwise fusions
            token = MYELIN_SUFFIX.sub("", token.strip())
            if not token or DROPPED.search(token):
                continue
            if token.endswith((".weight", ".bias")):
                hints.append(token.rsplit(".", 1)[0])
            else:
                nodes.append(token)
    return nodes, hints


def module_path(node: str) -> str | None:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``; None for a node at the root scope
    or without one (TensorRT 8's ``Conv_12``)."""
    if not node.startswith("/"):
        return None
    attrs, prev = [], None
    for part in node.split("/")[1:-1]:
        if prev and part.startswith(prev + "."):
            attrs.append(part[len(prev) + 1:])
        elif prev and re.fullmatch(re.escape(prev) + r"_[0-9_]+", part):  # Myelin: classifier_1
            attrs.append(part[len(prev) + 1:].replace("_", "."))
        else:
            attrs.append(part)
        prev = part
    return ".".join(attrs) or None


def map_layers(profile: Profile, graph: LayerGraph | None) -> list[TrtLayer]:
    """Every profiled layer with its ONNX nodes and candidate modules; overhead layers get none."""
    info = {l.name: l for l in graph.layers} if graph else {}
    out = []
    for row in profile.rows:
        li = info.get(row.name)
        layer = TrtLayer(row.name, row.average_ms, li.layer_type if li else "",
                         inputs=[t.name for t in li.inputs] if li else [],
                         outputs=[t.name for t in li.outputs] if li else [])
        layer.nodes, hints = layer_nodes(row.name, li)
        layer.modules = hints + [m for m in map(module_path, layer.nodes) if m]
        out.append(layer)
    return out


def layer_nodes(name: str, info: LayerInfo | None = None) -> tuple[list[str], list[str]]:
    """(ONNX nodes, module hints) of the engine layer ``name``, ``info`` its layer information
    (trtexec's ``--exportLayerInfo`` or the engine inspector's JSON, the same format); none for
    the overhead layers (reformats, no-ops, shape calls, Q/DQ reformats). The one mapping the
    trtexec import and the tensorrt target's IProfiler path share."""
    if info is not None and (info.layer_type in OVERHEAD_TYPES or info.origin == "QDQ"):
        return [], []
    return onnx_nodes(name, info.metadata if info else None)


def assign(layers: list[TrtLayer], structure=None, module_names: set[str] | None = None) -> None:
    """Set each layer's table key, its Conv/Linear and its work exponents per group."""
    for l in layers:
        if structure is not None:
            l.conv = next((m for m in l.modules if m in structure.layers), None)
            known = next((m for m in l.modules if m in module_names), None)
            l.key = l.conv or known or (l.nodes[0] if l.nodes else None)
            if l.conv:
                l.work = conv_work(structure.layers[l.conv])
        else:
            l.key = l.modules[0] if l.modules else (l.nodes[0] if l.nodes else None)
    if structure is not None:
        for l in layers:
            if l.key and not l.conv:
                group = upstream_group(l, layers, structure)
                l.work = Counter({group: 1}) if group else Counter()


def conv_work(layer) -> Counter:
    """Exponents of (width / channels) in a Conv/Linear's multiply-adds."""
    if layer.depthwise:
        return Counter({layer.out_group: 1}) if layer.out_group else Counter()
    return Counter(g for g in (layer.in_group, layer.out_group) if g)


def upstream_group(layer: TrtLayer, layers: list[TrtLayer], structure) -> str | None:
    """The group of a pool or elementwise layer's channels: the output group of the Conv that
    produced its input, found through the tensors (or, without them, the last Conv before it)."""
    producer = {t: l for l in layers for t in l.outputs}
    if layer.inputs:
        seen, tensor = set(), layer.inputs[0]
        while tensor in producer and tensor not in seen:
            seen.add(tensor)
            p = producer[tensor]
            if p.conv:
                return structure.layers[p.conv].out_group
            tensor = p.inputs[0] if p.inputs else None
        return None
    before = layers[:layers.index(layer)]
    conv = next((p.conv for p in reversed(before) if p.conv), None)
    return structure.layers[conv].out_group if conv else None


def work_entry(parts: list[tuple[float, Counter]], groups: dict[str, int]) -> LayerEntry:
    """A LayerEntry whose every cell is Σ ms · Π (w/C)^p: the measured times scaled by work."""
    axes = list(dict.fromkeys(a for _, work in parts for a in work))
    levels = [sorted({max(1, round(groups[a] * f)) for f in LEVEL_FRACTIONS}) for a in axes]
    grid = np.zeros([len(l) for l in levels])
    for idx in np.ndindex(*grid.shape):
        w = {a: levels[i][idx[i]] / groups[a] for i, a in enumerate(axes)}
        grid[idx] = sum(ms * float(np.prod([w[a] ** p for a, p in work.items()])) for ms, work in parts)
    return LayerEntry(axes, levels, grid.round(7).tolist())


def assemble(layers: list[TrtLayer], e2e: EndToEnd, meta: dict, groups: dict[str, int],
             weights: dict[str, list] | None = None) -> LatencyTable:
    """The table: mapped layers as work-scaled entries, the rest overhead, scaled to e2e."""
    parts: dict[str, list[tuple[float, Counter]]] = {}
    for l in layers:
        if l.key is not None:
            parts.setdefault(l.key, []).append((l.ms, l.work))
    entries = {k: work_entry(p, groups) for k, p in parts.items()}
    overhead = sum(l.ms for l in layers if l.key is None)
    total = sum(l.ms for l in layers)
    scale = e2e.median_ms / total if e2e.median_ms and total > 0 else 1.0
    table = LatencyTable(meta, dict(groups), entries, round(overhead, 7), Calibration(scale=scale), weights=weights or {})
    if e2e.median_ms and e2e.samples:
        full = table.predict(groups)
        table.error = TableError.from_pairs([full] * len(e2e.samples), e2e.samples)
        if len(table.error.samples) > MAX_ERROR_SAMPLES:
            table.error.samples = []
    return table


def load_structure(model_name: str, graph: LayerGraph | None, input_size: int | None):
    """(structure, module names, layer weights) of ``model_name`` at the engine's input shape."""
    from edgeprune.pruning.groups import analyse
    from edgeprune.training.models import build_model
    dims = graph.tensor_dims(graph.bindings[0]) if graph and graph.bindings else None
    channels = dims[1] if dims and len(dims) == 4 else 3
    if input_size:
        shape = (1, channels, input_size, input_size)
    elif dims and len(dims) == 4:
        shape = (1, *dims[1:])
    else:
        raise UsageError("pass --input-size: the input shape is not in the layer info (give --layer-info "
                         "exported with --profilingVerbosity=detailed, or --input-size)")
    out = graph.tensor_dims(graph.bindings[-1]) if graph and len(graph.bindings) > 1 else None
    classes = int(np.prod(out[1:])) if out and len(out) > 1 else 1000
    model = build_model(model_name, num_classes=classes, in_channels=channels).eval()
    structure = analyse(model, shape)
    weights = {l.name: [l.in_group, l.out_group, l.in_channels, l.out_channels, l.kernel, l.depthwise]
               for l in structure.layers.values()}
    return structure, {n for n, _ in model.named_modules() if n}, weights


def from_trtexec(profile_path: str | Path, layer_info: str | Path | None = None, times: str | Path | None = None,
                 metadata: str | Path | None = None, e2e_ms: float | None = None, model: str | None = None,
                 input_size: int | None = None) -> Result:
    """Read trtexec's files and build the table (not saved)."""
    from edgeprune import __version__
    profile = load_profile(profile_path)
    graph = load_layer_graph(layer_info) if layer_info else None
    if graph:
        check_same_layers(profile, graph, layer_info)
    md = load_metadata(metadata) if metadata else None
    e2e = end_to_end(e2e_ms, times, md, metadata)
    layers = map_layers(profile, graph)
    meta = {"source": "trtexec", "configurations": 1, "width_model": "work-proportional",
            "width_model_note": "measured at full width only; other widths scale each layer's time by its work: "
                                "c_in*c_out (conv, gemm), c (depthwise, pool, elementwise), constant (no group)",
            "runtime": "tensorrt", "device": md.device if md else None, "schema": SCHEMA_VERSION,
            "files": {k: Path(v).name for k, v in (("profile", profile_path), ("layer_info", layer_info),
                                                  ("times", times), ("metadata", metadata)) if v},
            "profile_iterations": profile.count}
    structure, weights = None, None
    if model:
        structure, names, weights = load_structure(model, graph, input_size)
        assign(layers, structure, names)
        if not any(l.conv for l in layers):
            raise UsageError(f"no profiled layer names a Conv or Linear of {model}; is the engine built from {model}?")
        meta.update(model=model, model_signature=structure.signature, input_shape=list(structure.input_shape))
    else:
        assign(layers)
    groups = structure.full_widths() if structure else {}
    result = Result(assemble(layers, e2e, meta, groups, weights), layers, e2e, len(structure.layers) if structure else 0)
    _describe(result)
    result.table.meta.update(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), edgeprune_version=__version__)
    return result


def _describe(r: Result) -> None:
    """Record in the meta what was mapped, what it was calibrated to and how good that is."""
    total, e2e = r.sum_ms, r.e2e.median_ms
    r.table.meta.update(
        layer_sum_ms=round(total, 6), mapped_ms=round(r.mapped_ms, 6), unmapped_ms=round(total - r.mapped_ms, 6),
        calibrated=e2e is not None, e2e_ms=e2e, e2e_source=r.e2e.source,
        raw_vs_e2e_pct=round(100 * (total - e2e) / e2e, 2) if e2e else None,
        error_basis=(f"in-sample at full width only: {r.e2e.basis} against the calibrated full-width prediction "
                     "(which equals the e2e median by construction); other widths are not checked")
        if e2e else "none: no end-to-end time, uncalibrated (scale 1)",
        layer_sources={k: [l.name for l in r.layers if l.key == k] for k in r.table.layers})


def summary(r: Result, path: Path) -> list[str]:
    """The command's report, a few lines."""
    t, total, e2e = r.table, r.sum_ms, r.e2e.median_ms
    pct = lambda x: 100 * x / total if total else 0.0
    unmapped = [l for l in r.layers if l.key is None]
    lines = [f"wrote {path}: {len(r.layers)} trtexec layers -> {len(t.layers)} table layers, {len(t.groups)} groups"
             + (f", {r.convs_mapped}/{r.convs_total} convolutions of {t.meta['model']} mapped" if r.convs_total else ""),
             (f"mapped {r.mapped_ms:.4f} ms ({pct(r.mapped_ms):.1f}%), unmapped overhead {total - r.mapped_ms:.4f} ms "
              f"({pct(total - r.mapped_ms):.1f}%, {len(unmapped)} layers: {_kinds(unmapped)})")]
    if e2e:
        e = t.error
        lines += [(f"per-layer averages {total:.4f} ms vs end to end {e2e:.4f} ms ({r.e2e.source}): raw sum "
                   f"{t.meta['raw_vs_e2e_pct']:+.1f}%, calibration scale {t.scale:.4f}"),
                  (f"calibrated error: {abs(100 * (t.predict(t.groups) - e2e) / e2e):.2f}% at full width (in-sample); "
                   f"e2e spread over {e.n} values: RMSPE {e.rmspe:.2%}, max {e.max_abs_pct:.2%}")]
    else:
        lines.append(f"per-layer averages {total:.4f} ms; no end-to-end time (--times, --metadata or --e2e-ms): "
                     "uncalibrated, scale 1")
    lines.append("other widths: work-proportional model of this one configuration, not measured")
    return lines


def _kinds(layers: list[TrtLayer]) -> str:
    """'Reformat x2, shape_call x1': what the unmapped time was spent on."""
    kinds = Counter(l.layer_type or ("Q/DQ" if "QuantizeLinear" in l.name else "unnamed") for l in layers)
    return ", ".join(f"{k} x{n}" for k, n in kinds.most_common()) or "none"


def run_cli(a) -> int:
    """``edgeprune profile --from-trtexec``: build, save atomically, print the summary."""
    import json
    if not a.out:
        raise UsageError("--from-trtexec needs --out FILE (the table to write)")
    if Path(a.out).is_dir():
        raise UsageError(f"--out {a.out} is a directory; give the table's file name")
    r = from_trtexec(a.from_trtexec, a.layer_info, a.times, a.metadata, a.e2e_ms,
                     a.model_name or a.model, a.input_size)
    try:
        path = r.table.save(a.out)
    except OSError as e:
        raise UsageError(f"cannot write the table {a.out}: {e.strerror or e}") from None
    lines = summary(r, path)
    if a.json:
        m = r.table.meta
        print(json.dumps({"path": str(path), "hash": r.table.digest, "layers": len(r.layers),
                          "table_layers": len(r.table.layers), "groups": r.table.groups, "scale": r.table.scale,
                          "convs_mapped": r.convs_mapped, "convs_total": r.convs_total,
                          **{k: m[k] for k in ("layer_sum_ms", "mapped_ms", "unmapped_ms", "e2e_ms", "calibrated",
                                               "raw_vs_e2e_pct")}}))
    else:
        print("\n".join(lines))
    return 0
