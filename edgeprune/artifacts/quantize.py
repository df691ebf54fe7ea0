"""FP32, FP16 and INT8 of a pruned model compared on its OpenVINO target: latency measured
interleaved in one run (so the ratios are fair on a shared machine), accuracy and macro F1 on
the same test images run through the target itself, and file size.

``compare_precisions(run_dir)`` rebuilds the pruned model from a prune output directory
(its ``run.json``, or an older run's ``report.json``: widths + ``model.pt``), writes the IRs
beside it (the run's own FP32 IR ``model.xml`` is reused when it has one; ``model-fp16.xml``;
``model-int8.xml`` quantized with NNCF on a seeded subset of the training split) and
``precisions.json`` + ``precisions.md``.
Every input is checked before anything is written; each file lands whole (written, then renamed).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeprune.artifacts.int8 import (
    DEFAULT_SAMPLES,
    PRESETS,
    calibration_loader,
    import_nncf,
    quantize_ir,
    quantized_ops,
    require_nncf,
)
from edgeprune.errors import UsageError
from edgeprune.runs import Run, read_run
from edgeprune.training.metrics import Metrics, confusion_matrix, from_confusion

DEFAULT_TARGET = "openvino-cpu"
PRECISIONS = ("fp32", "fp16", "int8")
EXPORT_KINDS = {"fp32": "openvino", "fp16": "openvino-fp16"}


@dataclass
class PrecisionJob:
    """Everything ``edgeprune quantize`` takes."""

    run: Path
    target: str | None = None          # None: the run's own target when it is OpenVINO, else openvino-cpu
    data: str | None = None            # None: the run's dataset
    data_root: str | None = None
    calibration_samples: int = DEFAULT_SAMPLES
    test_samples: int | None = None    # None: the whole test split
    preset: str = "performance"
    seed: int = 0


def evaluate_ir(path: str | os.PathLike, loader, num_classes: int, target=None) -> Metrics:
    """Accuracy, macro precision/recall/F1 and loss of an OpenVINO IR (or ONNX file) over
    ``loader``, run by ``target`` (default openvino-cpu) as it is deployed and measured: same
    device, threads and inference precision, at the model's own static batch size."""
    if target is None:
        from edgeprune.runtime import get_target
        from edgeprune.runtime.spec import load_spec
        target = get_target(load_spec(DEFAULT_TARGET))
    compiled = target.compile(path)
    batch = compiled.example.shape[0]
    cm, loss_sum, n, k = None, 0.0, 0, num_classes
    for x, y in loader:
        logits = torch.from_numpy(_run_batched(compiled, x.numpy().astype(np.float32), batch))
        k = max(k, logits.shape[1])  # a wider head may predict extra classes
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        n += len(y)
        part = confusion_matrix(y, logits.argmax(1), k)
        cm = part if cm is None else cm + part
    if cm is None:
        cm = torch.zeros(k, k, dtype=torch.long)
    return from_confusion(cm, loss_sum / n if n else float("nan"))


def compare_precisions(job: PrecisionJob) -> dict:
    """Write the three IRs, measure and evaluate them; returns what precisions.json holds."""
    from edgeprune.artifacts.export import export_artifact
    from edgeprune.artifacts.kinds import read_metadata
    from edgeprune.session import Session, SessionConfig

    run = Path(job.run)
    info = read_run(run)  # its run.json (or an older run's report.json)
    report = info.report  # gains a Precisions section
    if report is None:
        raise UsageError(f"{run} has no report.json to add the comparison to; run prune again")
    target = resolve_target(job.target, {"target": info.target})
    require_nncf()
    if job.calibration_samples < 1:
        raise UsageError(f"--calibration-samples must be >= 1, got {job.calibration_samples}")
    if job.preset not in PRESETS:
        raise UsageError(f"unknown preset {job.preset!r}; expected one of {', '.join(PRESETS)}")
    s = Session.open(SessionConfig(
        model=info.model, target=target, input_size=info.input_size, data=run_data(job, {"data": info.data}),
        data_root=job.data_root or info.data_root, train_samples=job.calibration_samples,
        test_samples=job.test_samples, progress=False))
    model = s.pruned(info.widths, info.weights)
    meta = {k: v for k, v in read_metadata(info.onnx).items() if k != "edgeprune_version"}
    paths = artifact_paths(run, info)
    for p in EXPORT_KINDS:
        if paths[p].name != "model.xml":  # the run's own device IR is reused as it is
            export_artifact(model, EXPORT_KINDS[p], paths[p], s.input_shape, meta)
    calib = calibration_loader(s.data.train, job.calibration_samples, job.seed, s.input_shape[0])
    quantize_ir(paths["fp32"], calib, paths["int8"], job.calibration_samples, job.preset,
                {"calibration_split": "train", "calibration_seed": job.seed})
    latencies = s.target.measure_many([paths[p] for p in PRECISIONS])
    test = s.data.loader("test")
    metrics = {p: evaluate_ir(paths[p], test, s.data.num_classes, s.target) for p in PRECISIONS}
    rows = [_row(p, paths[p], latencies[i], metrics[p], latencies[0], metrics["fp32"])
            for i, p in enumerate(PRECISIONS)]
    result = {
        "model": info.model, "target": s.spec.name, "run": str(run), "input_shape": list(s.input_shape),
        "data": s.data.name, "test_images": metrics["fp32"].n, "calibration_images": len(calib.dataset),
        "calibration": {"split": "train", "seed": job.seed, "preset": job.preset},
        "inference_precision": s.spec.precision, "interleaved": True, "rows": rows,
        "int8_ops": quantized_ops(paths["int8"]),
        "versions": {"runtime": s.target.runtime_version(), "nncf": import_nncf().__version__},
        "fingerprint": s.target.fingerprint(),
    }
    write_precisions(result, run)
    from edgeprune.reports.report import write_report
    keep = ("precision", "path", "size_bytes", "median_ms", "p90_ms", "speedup_vs_fp32", "accuracy",
            "accuracy_delta_vs_fp32", "f1")
    write_report(report.model_copy(update={"precisions": {  # the report gains a Precisions section (an extra key)
        "target": s.spec.name, "test_images": result["test_images"],
        "calibration_images": result["calibration_images"],
        "rows": [{k: row[k] for k in keep} for row in rows]}}), run)
    return result


def resolve_target(name: str | None, report: dict) -> str:
    """The target to compare on: ``name``, else the run's own when it is OpenVINO, else
    openvino-cpu; a target of another runtime is refused."""
    from edgeprune.runtime.spec import load_spec
    if name is None:
        own = report.get("target")
        try:
            name = own if own and load_spec(own).runtime == "openvino" else DEFAULT_TARGET
        except UsageError:
            name = DEFAULT_TARGET
        if name != own:  # a decision the user should see, not a silent switch
            print(f"edgeprune: the run was pruned for {own!r}, not an OpenVINO target; comparing precisions "
                  f"on {name} (pass --target to choose)", file=sys.stderr)
    spec = load_spec(name)
    if spec.runtime != "openvino":
        raise UsageError(f"precisions are compared on an OpenVINO target (NNCF INT8 IR); target "
                         f"{spec.name!r} runs {spec.runtime}: pass --target openvino-cpu")
    return name


def run_data(job: PrecisionJob, report: dict) -> str:
    """--data, else the run's dataset (an ImageFolder run records only its directory's name)."""
    if job.data:
        return job.data
    from edgeprune.training.data import ALIASES, BUILTIN
    name = str(report.get("data") or "")
    if ALIASES.get(name.lower(), name.lower()) in BUILTIN or (name and Path(name).is_dir()):
        return name
    raise UsageError(f"the run's dataset {name or '(not recorded)'!r} cannot be found; pass --data with its path")


def artifact_paths(run: Path, info: Run) -> dict[str, Path]:
    """Where each precision's IR goes: the run's own device IR (model.xml) stands for its
    precision when it has one; the others are written as model-fp32/-fp16/-int8.xml."""
    paths = {p: run / f"model-{p}.xml" for p in PRECISIONS}
    for p, kind in EXPORT_KINDS.items():
        if info.device_kind == kind and info.device_artifact and info.device_artifact.is_file():
            paths[p] = info.device_artifact
    return paths


def write_precisions(result: dict, run: Path) -> tuple[Path, Path]:
    """precisions.json and precisions.md in ``run``, each written whole then renamed."""
    from edgeprune.artifacts.onnxio import atomic_write
    written = []
    for name, text in (("precisions.json", json.dumps(result, indent=2) + "\n"),
                       ("precisions.md", render_markdown(result))):
        with atomic_write(run / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(run / name)
    return written[0], written[1]


def render_markdown(r: dict) -> str:
    from edgeprune.reports.report import precision_table
    ops = r.get("int8_ops") or {}
    notes = [
        f"Latency on `{r['target']}` (OpenVINO {r['versions']['runtime']}, inference precision "
        f"{r['inference_precision']}), the three models measured interleaved in one run. Accuracy "
        f"on the same {r['test_images']} {r['data']} test images, run by the target.",
        f"INT8: NNCF {r['versions']['nncf']} post-training quantization, preset "
        f"{r['calibration']['preset']}, calibrated on {r['calibration_images']} training images "
        f"(seed {r['calibration']['seed']}); {ops.get('fake_quantize', 0)} FakeQuantize nodes, "
        f"{ops.get('int8_constants', 0)} 8-bit constants.",
        "FP16 stores weights in half precision; the device computes at its inference precision.",
    ]
    title = f"# Precisions: {r['model']} on {r['target']}"
    return "\n\n".join([title, "\n".join(precision_table(r["rows"])), *notes]) + "\n"


def _row(precision: str, path: Path, lat, m: Metrics, fp32_lat, fp32: Metrics) -> dict:
    from edgeprune.artifacts.kinds import kind_of
    size = kind_of(path).size_bytes(path)  # the IR's .xml and .bin
    return {"precision": precision, "path": str(path), "size_bytes": size,
            "median_ms": lat.median_ms, "p90_ms": lat.p90_ms, "runs": lat.runs,
            "speedup_vs_fp32": fp32_lat.median_ms / lat.median_ms, "latency": lat.to_dict(),
            "accuracy": m.accuracy, "f1": m.f1, "accuracy_delta_vs_fp32": m.accuracy - fp32.accuracy,
            "metrics": m.to_dict()}


def _run_batched(compiled, x: np.ndarray, batch: int) -> np.ndarray:
    """Logits for every row of ``x``, run ``batch`` rows at a time (the last chunk padded)."""
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        short = batch - len(chunk)
        if short:
            chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), np.float32)])
        out.append(compiled.run(np.ascontiguousarray(chunk))[:batch - short])
    return np.concatenate(out)
