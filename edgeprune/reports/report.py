"""The run report: JSON for machines, Markdown for people, a short table for the terminal.

The pipeline builds the report as a typed ``PruneReport`` (``reports/model.py``) and an older
report.json is validated into one by ``load_report``; the renderers take only that. Every key except
model/target/budget may be missing (a run can stop early or skip stages, an older version wrote
fewer keys), so each section renders what is there and shows "—" for a missing value instead of
failing.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from edgeprune.artifacts.onnxio import atomic_write
from edgeprune.reports.model import PruneReport, as_report_dict

MISSING = "—"
METRICS = ("accuracy", "precision", "recall", "f1")
MAX_MODULES_SHOWN = 4


# --- number formatting -------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_ms(v: Any) -> str:
    """Milliseconds to 3 significant digits: 123 ms, 12.3 ms, 1.23 ms, 0.123 ms."""
    f = _num(v)
    if f is None:
        return MISSING
    if f == 0:
        return "0 ms"
    decimals = min(6, max(0, 2 - math.floor(math.log10(abs(f)))))
    return f"{f:.{decimals}f} ms"


def fmt_pct(v: Any) -> str:
    """A fraction in 0..1 as a percentage with one decimal."""
    f = _num(v)
    return MISSING if f is None else f"{100 * f:.1f}%"


def fmt_count(v: Any) -> str:
    """Parameter counts: 11.18M, 61.7k, 950."""
    f = _num(v)
    if f is None:
        return MISSING
    if abs(f) >= 1e6:
        return f"{f / 1e6:.2f}M"
    if abs(f) >= 1e3:
        return f"{f / 1e3:.1f}k"
    return f"{f:.0f}"


def fmt_mega(v: Any, decimals: int = 1) -> str:
    """MACs in millions / bytes in MB (10^6)."""
    f = _num(v)
    return MISSING if f is None else f"{f / 1e6:,.{decimals}f}"


def fmt_float(v: Any, spec: str = ".4g") -> str:
    f = _num(v)
    return MISSING if f is None else format(f, spec)


def fmt_speedup(v: Any) -> str:
    f = _num(v)
    return MISSING if f is None else f"{f:.2f}×"


def fmt_bool(v: Any) -> str:
    return MISSING if v is None else ("✓" if v else "✗")


def fmt_text(v: Any) -> str:
    if v is None:
        return MISSING
    if isinstance(v, (list, tuple)):
        return "×".join(str(x) for x in v)
    return str(v)


# --- markdown building blocks ------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """Markdown table lines; pipes in cells are escaped so a module name cannot break it."""
    header = list(header)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows]
    return lines


def _section(title: str, lines: list[str]) -> list[str]:
    return [f"## {title}", "", *lines, ""]


# --- sections: each returns [] when its data is absent -----------------------------------------

def _summary(r: dict) -> list[str]:
    rows = [
        ("model", fmt_text(r.get("model"))), ("target", fmt_text(r.get("target"))),
        ("input size", fmt_text(r.get("input_size"))), ("data", fmt_text(r.get("data"))),
        ("pruning engine", fmt_text(r.get("engine", "torch-pruning"))),  # runs before --engine: Torch-Pruning
        ("budget", fmt_ms(r.get("budget_ms")) + _share(r.get("budget_ratio"))), ("baseline", fmt_ms(r.get("baseline_ms"))),
        ("predicted", fmt_ms(r.get("predicted_ms"))),
        ("measured", fmt_ms(r.get("measured_ms"))),
        ("measured (p90)", fmt_ms(r.get("measured_p90_ms"))),
        ("speedup", fmt_speedup(r.get("speedup")) + _interval(r.get("speedup_ci"), r.get("speedup_method"))),
        ("within budget", fmt_bool(r.get("within_budget")) + _verdict(r.get("budget_verdict"))),
    ]
    return _section("Summary", md_table(("", "value"), rows))


def _share(ratio: Any) -> str:
    """' (50% of the unpruned model, paired)' for a relative budget; '' otherwise."""
    return f" ({ratio:.0%} of the unpruned model, paired)" if isinstance(ratio, (int, float)) else ""


def _verdict(v: Any) -> str:
    """' (fits: 0.9512 ms, 95% CI 0.9401–0.9650 ms)'; reports made before the verdict: ''."""
    if not isinstance(v, dict) or not isinstance(v.get("ci_ms"), list) or len(v["ci_ms"]) != 2:
        return ""
    return (f" ({fmt_text(v.get('verdict'))}: {fmt_ms(v.get('latency_ms'))}, 95% CI "
            f"{fmt_ms(v['ci_ms'][0])}–{fmt_ms(v['ci_ms'][1])})")


def _interval(ci: Any, method: Any) -> str:
    if not ci or len(ci) != 2 or _num(ci[0]) is None or _num(ci[1]) is None:
        return ""
    return f" (95% CI {ci[0]:.2f}–{ci[1]:.2f}{', ' + str(method) if method else ''})"


def _search(r: dict) -> list[str]:
    """What chose the widths, and the accuracy path: as pruned, after BN re-estimation, fine-tuned."""
    s = r.get("search") or {}
    keys = ("accuracy_pruned", "accuracy_recalibrated", "accuracy_after")
    if not s and not any(r.get(k) is not None for k in keys):
        return []
    rows = [("objective", fmt_text(s.get("objective"))), ("candidates scored", fmt_text(s.get("candidates"))),
            ("chosen: val accuracy after BN re-estimation", fmt_pct(s.get("proxy_accuracy"))),
            ("uniform prune at the same budget: same score", fmt_pct(s.get("uniform_proxy_accuracy"))),
            ("kept-importance plan at the same budget: same score", fmt_pct(s.get("importance_proxy_accuracy"))),
            ("test accuracy right after pruning", fmt_pct(r.get("accuracy_pruned"))),
            ("... after BN re-estimation", fmt_pct(r.get("accuracy_recalibrated"))),
            ("... after fine-tuning", fmt_pct(r.get("accuracy_after")))]
    return _section("Search and accuracy", md_table(("", "value"), [x for x in rows if x[1] != MISSING]))


def _metric(r: dict, when: str, name: str) -> Any:
    """metrics_<when>[name], falling back to accuracy_<when> for accuracy."""
    value = (r.get(f"metrics_{when}") or {}).get(name)
    return r.get(f"accuracy_{when}") if value is None and name == "accuracy" else value


def _model(r: dict) -> list[str]:
    keys = ("accuracy_before", "accuracy_after", "metrics_before", "metrics_after",
            "params_before", "params_after", "macs_before", "macs_after",
            "size_bytes_before", "size_bytes_after")
    if not any(r.get(k) is not None for k in keys):
        return []
    rows = [(n if n != "f1" else "F1", fmt_pct(_metric(r, "before", n)),
             fmt_pct(_metric(r, "after", n))) for n in METRICS]
    for label, key, fmt in (("params", "params", fmt_count), ("MACs (M)", "macs", fmt_mega),
                            ("file size (MB)", "size_bytes", lambda v: fmt_mega(v, 2))):
        rows.append((label, fmt(r.get(f"{key}_before")), fmt(r.get(f"{key}_after"))))
    return _section("Model", md_table(("", "before", "after"), rows))


def _modules(mods: Any) -> str:
    mods = list(mods or [])
    if not mods:
        return MISSING
    shown = ", ".join(f"`{m}`" for m in mods[:MAX_MODULES_SHOWN])
    rest = len(mods) - MAX_MODULES_SHOWN
    return shown + (f" … (+{rest})" if rest > 0 else "")


def _layers(r: dict) -> list[str]:
    layers = r.get("layers") or []
    rows = [(fmt_text(l.get("group")), _modules(l.get("modules")), fmt_text(l.get("channels")),
             fmt_text(l.get("kept")), fmt_float(l.get("ratio"), ".2f"),
             "yes" if l.get("protected") else "") for l in layers]
    header = ("group", "modules", "channels", "kept", "ratio", "protected")
    return _section("Per-layer widths", md_table(header, rows)) if rows else []


def _rounds(r: dict) -> list[str]:
    relative = isinstance(r.get("budget_ratio"), (int, float))
    rows = [(fmt_text(x.get("round")), fmt_ms(x.get("search_budget_ms")),
             fmt_ms(x.get("predicted_ms")), fmt_ms(x.get("measured_ms")),
             *([fmt_float(x.get("yardstick"), ".2f")] if relative else []))
            for x in r.get("rounds") or []]
    header = ("round", "search budget", "predicted", "measured", *(("unpruned's drift",) if relative else ()))
    paired = ([("Each reading is paired with the unpruned model and given in the table's units "
                "(the share it measured times the table's prediction for the unpruned model). "
                "The unpruned's drift is how far that model read off the table, over how far the "
                "candidate did: near 1 the host moved both; far from 1 the yardstick moved alone.")]
              if relative else [])
    return _section("Closed-loop rounds", [*paired, *([""] if paired else []), *md_table(header, rows)]) if rows else []


def _table(r: dict) -> list[str]:
    t = r.get("table")
    if not t:
        return []
    err = t.get("error") or {}
    rows = [("path", fmt_text(t.get("path"))), ("hash", fmt_text(t.get("hash"))),
            ("end-to-end checks", fmt_text(err.get("n"))),
            ("within 10%", fmt_pct(err.get("within_10pct"))),
            ("RMSPE", fmt_pct(err.get("rmspe")))]
    picks = t.get("error_at_picks") or {}
    if picks.get("n"):
        rows.append(("at the search's picks (loop rounds): median |error|",
                     f"{fmt_pct(picks.get('median_abs'))} over {picks['n']} "
                     f"({', '.join(f'{100 * e:+.1f}%' for e in picks.get('errors', []))})"))
    land = t.get("landings") or {}
    if land.get("used") and picks.get("profile_median_abs") is not None:
        rows.append(("the same, profile alone (without this host's landings)",
                     f"{fmt_pct(picks['profile_median_abs'])} "
                     f"({', '.join(f'{100 * e:+.1f}%' for e in picks.get('profile_errors', []))})"))
    if land.get("used"):
        rows.append(("landings (loop readings correcting the table)",
                     f"{land.get('before')} before this run, {land.get('after')} kept"))
    return _section("Latency table prediction error", md_table(("", "value"), rows))


def _stages(r: dict) -> list[str]:
    stages = r.get("stage_seconds") or {}
    if not stages:
        return []
    rows = [(name, fmt_float(s, ".1f")) for name, s in stages.items()]
    total = sum(_num(s) or 0.0 for s in stages.values())
    rows.append(("**total**", f"**{total:.1f}**"))
    return _section("Time per stage", md_table(("stage", "seconds"), rows))


def _finetune(r: dict) -> list[str]:
    ft = r.get("finetune") or {}
    history = ft.get("history") or []
    if not history:
        return []
    per_epoch_rollback = any("rolled_back" in h for h in history)
    rows = [[fmt_text(h.get("epoch")), fmt_float(h.get("train_loss")),
             fmt_pct((h.get("val") or {}).get("accuracy")), fmt_pct((h.get("val") or {}).get("f1"))]
            + ([fmt_bool(h.get("rolled_back"))] if per_epoch_rollback else [])
            for h in history]
    header = ["epoch", "train loss", "val accuracy", "val F1"] + ["rolled back"] * per_epoch_rollback
    lines = md_table(header, rows)
    if ft.get("rolled_back"):
        lines += ["", "Fine-tuning was rolled back."]
    return _section("Fine-tune history", lines)


def _artifact(r: dict) -> list[str]:
    found = [a for a in (r.get("artifact"), r.get("device_artifact")) if a]
    if not found:
        return []
    rows = [(fmt_text(a.get("path")), fmt_text(a.get("kind")), fmt_float(a.get("max_abs_diff"), ".3g"))
            for a in found]
    return _section("Artifacts", md_table(("path", "kind", "max abs diff vs PyTorch"), rows))


def precision_table(rows: list[dict]) -> list[str]:
    """FP32 / FP16 / INT8 rows of ``edgeprune quantize`` as a Markdown table."""
    header = ("precision", "artifact", "size (MB)", "median", "p90", "speed-up vs FP32",
              "accuracy", "Δ accuracy", "macro F1")
    return md_table(header, [(x["precision"].upper(), f"`{Path(x['path']).name}`", fmt_mega(x["size_bytes"], 2),
                              fmt_ms(x["median_ms"]), fmt_ms(x["p90_ms"]), fmt_speedup(x["speedup_vs_fp32"]),
                              fmt_pct(x["accuracy"]), f"{100 * x['accuracy_delta_vs_fp32']:+.1f} pt",
                              f"{x['f1']:.3f}") for x in rows])


def _precisions(r: dict) -> list[str]:
    p = r.get("precisions")
    if not p:
        return []
    return _section("Precisions (edgeprune quantize)", precision_table(p["rows"]) + [
        "", f"Measured interleaved on {p['target']}; accuracy on {p['test_images']} test images; "
            f"INT8 calibrated on {p['calibration_images']} training images. Details: precisions.md."])


def _charts(r: dict) -> list[str]:
    charts = r.get("charts") or {}
    text = {"pareto": "Accuracy against measured latency", "layers": "Where the time goes, per layer (measured)"}
    lines = [f"![{text.get(k, k)}]({v})" for k, v in charts.items()]
    return _section("Charts", lines) if lines else []


def write_charts(report: PruneReport, out_dir: str | os.PathLike) -> dict[str, str]:
    """pareto.png (unpruned and pruned model) and layers.png (measured per-layer time before and
    after) beside the report; returns {chart: file name} for report.md to link."""
    from edgeprune.reports.plots import Point, layers_png, pareto_png
    report = as_report_dict(report)
    out, charts = Path(out_dir), {}
    name = f"{fmt_text(report.get('model'))} on {fmt_text(report.get('target'))}"
    before, after = (_num(report.get(k)) for k in ("baseline_ms", "measured_ms"))
    acc_before, acc_after = (_num(report.get(k)) for k in ("accuracy_before", "accuracy_after"))
    if None not in (before, after, acc_before, acc_after):
        pareto_png({name: [Point(before, acc_before, label="unpruned"), Point(after, acc_after, label="pruned")]},
                   out / "pareto.png", name)
        charts["pareto"] = "pareto.png"
    layer_ms = report.get("layer_ms") or {}
    if layer_ms.get("before") or layer_ms.get("after"):
        layers_png(layer_ms.get("before") or {}, layer_ms.get("after") or {}, out / "layers.png", name)
        charts["layers"] = "layers.png"
    return charts


def _versions(r: dict) -> list[str]:
    versions = r.get("versions") or {}
    rows = [(k, fmt_text(v)) for k, v in versions.items()]
    return _section("Versions", md_table(("package", "version"), rows)) if rows else []


SECTIONS: tuple[Callable[[dict], list[str]], ...] = (
    _summary, _model, _search, _layers, _rounds, _table, _stages, _finetune, _artifact, _precisions, _charts, _versions)


def render_markdown(report: PruneReport) -> str:
    """The whole report as Markdown: title, then each section that has data."""
    return _markdown(as_report_dict(report))


def _markdown(report: dict) -> str:
    title = f"# edgeprune report: {fmt_text(report.get('model'))} on {fmt_text(report.get('target'))}"
    lines = [title, ""]
    for section in SECTIONS:
        lines += section(report)
    return "\n".join(lines).rstrip() + "\n"


# --- files and terminal ------------------------------------------------------------------------

def _json_default(obj: Any) -> Any:
    """Paths, dataclasses, numpy scalars/arrays and Latency-like objects as plain JSON."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def _write_atomic(path: Path, text: str) -> Path:
    """Write beside the target and rename, so a reader never sees half a report."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_report(report: PruneReport, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write report.json and report.md into ``out_dir``; returns (json path, md path). A
    PruneReport is written as ``PruneReport.to_json_dict``: the keys report.json always had."""
    out = Path(out_dir)
    r = as_report_dict(report)
    text = json.dumps(r, indent=2, default=_json_default, ensure_ascii=False) + "\n"
    json_path = _write_atomic(out / "report.json", text)
    md_path = _write_atomic(out / "report.md", _markdown(r))
    return json_path, md_path


def print_summary(report: PruneReport, console=None) -> None:
    """A short table on stdout: the numbers a user looks at first."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    r = as_report_dict(report)
    table = Table(title=f"{fmt_text(r.get('model'))} on {fmt_text(r.get('target'))}")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    within = r.get("within_budget")
    verdict = (r.get("budget_verdict") or {}).get("verdict") if isinstance(r.get("budget_verdict"), dict) else None
    mark = "" if within is None else (" ?" if verdict == "inconclusive" else (" ✓" if within else " ✗"))
    table.add_row("budget", "", fmt_ms(r.get("budget_ms")) + _verdict(r.get("budget_verdict")))
    table.add_row("latency", fmt_ms(r.get("baseline_ms")), fmt_ms(r.get("measured_ms")) + mark)
    table.add_row("speedup", "", fmt_speedup(r.get("speedup")))
    table.add_row("accuracy", fmt_pct(_metric(r, "before", "accuracy")),
                  fmt_pct(_metric(r, "after", "accuracy")))
    table.add_row("params", fmt_count(r.get("params_before")), fmt_count(r.get("params_after")))
    console.print(table)
