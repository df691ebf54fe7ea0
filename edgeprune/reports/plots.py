"""Charts for reports: accuracy against measured latency (Pareto), and where the time goes per layer.

matplotlib is imported inside each function with the Agg backend, so ``import edgeprune`` stays
light and charts render on a headless CI runner. Files are written atomically.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeprune.artifacts.onnxio import atomic_write


@dataclass(frozen=True)
class Point:
    latency_ms: float
    accuracy: float
    accuracy_sd: float | None = None   # spread over seeds, drawn as an error bar
    label: str = ""


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def pareto_png(series: dict[str, list[Point]], path: str | Path, title: str = "",
               xlabel: str = "measured latency (ms, median)") -> Path:
    """One line per series (method × target), points sorted by latency; the upper-left wins."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for name, points in series.items():
            pts = sorted(points, key=lambda p: p.latency_ms)
            xs, ys = [p.latency_ms for p in pts], [100 * p.accuracy for p in pts]
            errs = [100 * (p.accuracy_sd or 0.0) for p in pts]
            ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", capsize=3, label=name)
            for p in pts:
                if p.label:
                    ax.annotate(p.label, (p.latency_ms, 100 * p.accuracy), textcoords="offset points",
                                xytext=(4, 4), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title or "accuracy against measured latency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def layers_png(before: dict[str, float], after: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Horizontal bars of each layer's measured time before and after pruning, in call order."""
    plt = _pyplot()
    names = list(dict.fromkeys([*before, *after]))
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(names) + 1)), dpi=120)
    try:
        ys = range(len(names))
        ax.barh([y - 0.2 for y in ys], [before.get(n, 0.0) for n in names], height=0.4, label="unpruned")
        ax.barh([y + 0.2 for y in ys], [after.get(n, 0.0) for n in names], height=0.4, label="pruned")
        ax.set_yticks(list(ys), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("time per inference (ms, runtime profiler)")
        ax.set_title(title or "where the time goes")
        ax.legend(fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
