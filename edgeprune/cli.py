"""Command line: parse, call the API, print. Errors become one line on stderr and an exit code."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from edgeprune import __version__
from edgeprune.agent.serve import add_commands as add_agent_commands
from edgeprune.cli_args import (
    COUNT,
    POSITIVE,
    HelpWithDefaults,
    Parser,
    device_name,
    fraction,
    int_at_least,
    number,
)
from edgeprune.errors import INTERNAL_ERROR, EdgepruneError, UsageError
from edgeprune.runtime.cpus import passive_openmp

DEFAULT_TARGET = "ort-cpu"


def main(argv: list[str] | None = None) -> int:
    passive_openmp()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:  # a flag out of range, a bad choice, a missing argument (Parser.error)
        print(f"edgeprune: error: {e}", file=sys.stderr)
        return e.exit_code
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except EdgepruneError as e:
        print(f"edgeprune: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgeprune: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (a bug or the machine, never "bad input" nor "regression")
        if args.debug or os.environ.get("EDGEPRUNE_DEBUG"):
            raise
        where = traceback.extract_tb(e.__traceback__)[-1]
        print(f"edgeprune: internal error: {type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno}; "
              f"--debug or EDGEPRUNE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return INTERNAL_ERROR


def _session_kwargs(a) -> dict:
    keys = ("input_size", "weights", "table", "profiles_dir", "allow_table_mismatch", "importance", "landings",
            "device")
    kw = {k: getattr(a, k) for k in keys if getattr(a, k, None) is not None}
    if getattr(a, "levels", None) is not None:
        from edgeprune.latency.profile import ProfileConfig
        kw["profile"] = ProfileConfig(levels=a.levels, runs=a.runs, validate=a.validate, calibrate=a.calibrate)
    return kw


def cmd_targets(a) -> int:
    from edgeprune.api import targets
    rows = targets()
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'target':<20} {'runtime':<14} {'device':<10} {'runtime':<15} device")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<20} invalid: {r['error']}")
            continue
        runtime = "installed" if r["installed"] else "not installed"
        device = {True: "present", False: "absent", None: "unknown"}[r["device_present"]]
        print(f"{r['name']:<20} {r['runtime']:<14} {r['device']:<10} {runtime:<15} {device}")
    return 0


def cmd_measure(a) -> int:
    from edgeprune.api import measure
    lat = measure(a.model, a.target, a.input_size, a.weights)
    if a.json:
        print(json.dumps({"target": a.target, **lat.to_dict()}))
    else:
        print(f"{a.model} on {a.target}: median {lat.median_ms:.3f} ms, p90 {lat.p90_ms:.3f} ms ({lat.runs} runs)")
    return 0


def cmd_profile(a) -> int:
    if a.from_trtexec:
        from edgeprune.latency.trtexec import run_cli
        return run_cli(a)
    if not a.model:
        raise UsageError("profile needs a MODEL (or --from-trtexec PROFILE.json)")
    from edgeprune.api import profile
    kw = _session_kwargs(a)
    kw.pop("table", None)
    if "," in a.target:  # a farm: one table per target, boards in parallel
        from edgeprune.latency.farm import cmd_profile_farm
        return cmd_profile_farm(a, {k: v for k, v in kw.items() if k != "input_size"})
    t = profile(a.model, a.target, out=a.out, **{k: v for k, v in kw.items() if k != "input_size"},
                input_size=a.input_size)
    e = t.error
    if a.json:
        print(json.dumps({"path": str(t.path), "hash": t.digest, "layers": len(t.layers), "groups": t.groups,
                          "error": {"n": e.n, "within_10pct": e.within_10pct, "rmspe": e.rmspe}}))
        return 0
    print(f"wrote {t.path}: {len(t.layers)} layers, {len(t.groups)} groups; prediction error over "
          f"{e.n} random configurations: {e.within_10pct:.0%} within ±10%, RMSPE {e.rmspe:.1%}")
    return 0


def _search_config(a):
    from edgeprune.search.knapsack import SearchConfig
    return SearchConfig(min_ratio=a.min_ratio, min_width=a.min_width, round_to=a.round_to,
                        protect=list(a.protect or []))


def cmd_search(a) -> int:
    from edgeprune.api import search
    data = dict(data=a.data, data_root=a.data_root, train_samples=a.train_samples, val_samples=a.val_samples) if a.data else {}
    r = search(a.model, a.budget_ms, a.target, config=_search_config(a), objective=a.objective,
               abn=_abn_config(a), budget_ratio=a.budget_ratio, **data, **_session_kwargs(a))
    if a.json:
        print(json.dumps(r.to_dict()))
    else:
        score = (f"val accuracy after BN re-estimation {r.proxy_accuracy:.1%}" if r.proxy_accuracy is not None
                 else f"importance kept {r.kept_importance:.1%}")
        print(f"predicted {r.predicted_ms:.3f} ms (budget {r.budget_ms:.3f}, unpruned {r.full_ms:.3f}); {score}")
        for g, w in r.widths.items():
            print(f"  {g:<32} {w}")
    return 0


def cmd_prune(a) -> int:
    from edgeprune.api import prune
    from edgeprune.reports.report import print_summary
    out = Path(a.out)
    report = prune(a.model, out, a.budget_ms, a.target, data=a.data, epochs=a.epochs,
                   finetune=not a.no_finetune, steps=a.steps, search=_search_config(a),
                   data_root=a.data_root, train_samples=a.train_samples, val_samples=a.val_samples,
                   test_samples=a.test_samples, baseline_epochs=a.baseline_epochs, objective=a.objective,
                   abn=_abn_config(a), engine=a.engine, budget_ratio=a.budget_ratio, typed=True,
                   **_session_kwargs(a))
    if report is None:  # a torchrun rank other than 0: it trained beside rank 0, which reports
        return 0
    if a.json:
        print((out / "report.json").read_text().strip())  # the report as written
    else:
        print_summary(report)
        print(f"report: {out / 'report.md'}  model: {out / 'model.onnx'}")
    return 0 if report.within_budget else 1


def _abn_config(a):
    from edgeprune.search.accuracy import AbnConfig
    return AbnConfig(samples=a.candidates, refine=a.refine, seed=a.search_seed, finetune_steps=a.finetune_steps)


def cmd_export(a) -> int:
    from edgeprune.api import export
    from edgeprune.runs import read_run
    widths, input_size, target = None, a.input_size, a.target
    if a.run:  # the run's own model, input size and target (its run.json), unless given
        run = read_run(a.run)
        if run.model != a.model:
            raise UsageError(f"{a.run} pruned {run.model!r}, not {a.model!r}")
        widths = run.widths
        a.weights = a.weights or str(run.weights)
        input_size = input_size or run.input_size
        target = target or run.target
    r = export(a.model, a.out, a.format, input_size, a.weights, target or DEFAULT_TARGET, widths)
    if a.json:
        print(json.dumps({"path": str(r.path), "kind": r.kind, "size_bytes": r.size_bytes,
                          "max_abs_diff": r.max_abs_diff}))
    else:
        print(f"wrote {r.path} ({r.kind}, {r.size_bytes} bytes, max |diff| vs PyTorch {r.max_abs_diff:.2e})")
    return 0


def cmd_quantize(a) -> int:
    from edgeprune.api import quantize
    from edgeprune.artifacts.quantize import render_markdown
    r = quantize(a.run, a.target, a.data, a.data_root, a.calibration_samples, a.test_samples, a.preset, a.seed)
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    run = Path(a.run)
    print(render_markdown(r))
    print(f"wrote {run / 'model-int8.xml'}, {run / 'precisions.json'}, {run / 'precisions.md'}")
    return 0


def cmd_report(a) -> int:
    from edgeprune.reports.runs_report import compare_runs
    out = a.out or (a.runs[0] if len(a.runs) == 1 else "report")
    path = compare_runs(a.runs, out)
    if a.json:
        print(json.dumps({"report": str(path), "pareto": str(Path(out) / "pareto.png"), "runs": a.runs}))
    else:
        print(f"wrote {path} and {Path(out) / 'pareto.png'}; refreshed report.md and charts in {len(a.runs)} run(s)")
    return 0


def cmd_check(a) -> int:
    from edgeprune.api import check
    from edgeprune.checks.check import exit_code
    from edgeprune.checks.check_report import junit_cases, render, to_json
    from edgeprune.checks.request import CheckRequest
    results = check(CheckRequest.from_flags(a.artifact, a.target, a.baseline, a.tolerance, a.budget_ms, a.update,
                                            a.allow_mismatch, not a.no_confirm, deploy=a.all, run=a.run,
                                            reference=a.reference, absolute=a.absolute, budget_ratio=a.budget_ratio,
                                            unpruned=a.unpruned))  # refuses contradictions
    if a.junit:
        from edgeprune.checks.junit import write
        write(junit_cases(results), a.junit, suite="edgeprune check")
    print(json.dumps(to_json(results), indent=2) if a.json else render(results))
    return exit_code(results)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="edgeprune", description="Prune CNNs to a measured latency budget. Exit codes: "
                                "0 done; 1 over budget or regression; 2 bad input; 3 internal error; 130 interrupted.")
    p.add_argument("--version", action="version", version=f"edgeprune {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = p.add_subparsers(title="commands")

    def cmd(name, func, help_):
        c = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpWithDefaults)
        c.set_defaults(func=func)
        return c

    def common(c, model=True, target=DEFAULT_TARGET):
        if model:
            c.add_argument("model", help="torchvision name, efficientnet_lite0, or pkg.module:factory")
        c.add_argument("--target", default=target, help=f"target name in targets/ or a YAML path (default {target})")
        c.add_argument("--input-size", type=POSITIVE, help="square input size in pixels")
        c.add_argument("--weights", help="trained state dict (loaded with weights_only=True)")

    def table_args(c):
        c.add_argument("--table", help="latency table file (default profiles/TARGET/MODEL-SIZEpx.json)")
        c.add_argument("--profiles-dir", help="where tables are kept (default ./profiles)")
        c.add_argument("--allow-table-mismatch", action="store_true", default=None,
                       help="use a table measured under other conditions")
        c.add_argument("--importance", help="channel importance: l1 (default), l2, bn_scale, fpgm, lamp")
        c.add_argument("--no-landings", dest="landings", action="store_false", default=None,
                       help="neither use nor keep the loop's readings beside the table (TABLE.landings.json), "
                            "which correct its predictions where budgets land")
        g = c.add_argument_group("profiling (when a table is measured)")
        g.add_argument("--levels", type=int_at_least(2), default=5, help="widths per group (rounded up to a prime)")
        g.add_argument("--runs", type=POSITIVE, default=10, help="profiled runs per configuration")
        g.add_argument("--calibrate", type=COUNT, default=60, help="random configurations to calibrate on")
        g.add_argument("--validate", type=COUNT, default=5, help="other random configurations for the error")

    def accuracy_args(c, default):
        g = c.add_argument_group("accuracy search")
        g.add_argument("--objective", default=default, choices=["adaptive-bn", "capacity", "importance"],
                       help="adaptive-bn (default with data): candidates at the budget scored by validation "
                            "accuracy after BN re-estimation; capacity: of those scoring at least the uniform "
                            "prune's, the most MACs (an alternative, not better than adaptive-bn after "
                            "fine-tuning so far: BENCHMARKS.md); importance: most channel importance kept per ms")
        g.add_argument("--candidates", type=COUNT, default=32, help="random width shapes scored (adaptive-bn)")
        g.add_argument("--refine", type=COUNT, default=16, help="mutations of the best shapes scored (adaptive-bn)")
        g.add_argument("--search-seed", type=COUNT, default=0, help="seed of the candidate sampling")
        g.add_argument("--finetune-steps", type=COUNT, default=0,
                       help="score the finalists after this many distillation steps, NetAdapt-style (for deep "
                            "prunes, where BN re-estimation alone scores every shape near chance; 0: off)")

    def search_args(c):
        b = c.add_mutually_exclusive_group()
        b.add_argument("--budget-ms", type=number, help="latency budget (default: the target file's)")
        b.add_argument("--budget-ratio", type=fraction, metavar="SHARE",
                       help="budget as a share of the unpruned model's latency on this target (0.5: twice as "
                            "fast); every reading is paired with the unpruned model, so a drifting host cancels")
        c.add_argument("--min-ratio", type=fraction, default=0.25, help="no group below this fraction")
        c.add_argument("--min-width", type=POSITIVE, default=8)
        c.add_argument("--round-to", type=POSITIVE, default=8)
        c.add_argument("--protect", nargs="+", metavar="NAME", help="layers or groups kept whole")

    c = cmd("targets", cmd_targets, "list targets and whether their runtime is installed")
    c.add_argument("--json", action="store_true")

    c = cmd("measure", cmd_measure, "measure a model or ONNX file end to end on a target")
    common(c)
    c.add_argument("--json", action="store_true")

    c = cmd("profile", cmd_profile, "measure the per-layer latency table of a model on a target")
    c.add_argument("model", nargs="?", help="torchvision name, efficientnet_lite0, or pkg.module:factory")
    common(c, model=False)
    table_args(c)
    c.add_argument("--out", help="table file to write (several targets: put {target} in it)")
    c.add_argument("--json", action="store_true")
    g = c.add_argument_group("from trtexec (a table from TensorRT's exported files; README: TensorRT profiles)")
    g.add_argument("--from-trtexec", metavar="PROFILE.json", help="trtexec --exportProfile file")
    g.add_argument("--layer-info", metavar="LAYERS.json", help="trtexec --exportLayerInfo file (maps layers)")
    g.add_argument("--times", metavar="TIMES.json", help="trtexec --exportTimes file: calibrate to its median")
    g.add_argument("--metadata", metavar="FILE", help="trex profile.metadata.json: calibrate to its GPU compute median")
    g.add_argument("--e2e-ms", type=number, help="calibrate to this end-to-end time (overrides --times/--metadata)")
    g.add_argument("--model", dest="model_name", help="model the engine was built from: map layers to its groups")

    c = cmd("search", cmd_search, "choose per-group widths that fit a budget (prediction only)")
    common(c)
    table_args(c)
    search_args(c)
    accuracy_args(c, default=None)
    c.add_argument("--data", help="data to score candidates on (adaptive-bn): digits, fashion-mnist, or a folder")
    c.add_argument("--data-root", help="Fashion-MNIST directory")
    c.add_argument("--train-samples", type=POSITIVE)
    c.add_argument("--val-samples", type=POSITIVE)
    c.add_argument("--json", action="store_true")

    c = cmd("prune", cmd_prune, "prune, fine-tune and export a model to fit a measured budget")
    common(c)
    table_args(c)
    search_args(c)
    c.add_argument("--data", default="digits", help="digits, fashion-mnist, or an ImageFolder path")
    c.add_argument("--data-root", help="Fashion-MNIST directory")
    c.add_argument("--epochs", type=COUNT, default=3, help="fine-tune epochs (spread over --steps)")
    c.add_argument("--baseline-epochs", type=COUNT, default=3, help="epochs to train an untrained model first")
    c.add_argument("--no-finetune", action="store_true")
    c.add_argument("--device", type=device_name, default="auto",
                   help="where the baseline and fine-tune train: auto (CUDA when present, else cpu), cpu, cuda, "
                        "cuda:N; mixed precision on CUDA. Under torchrun each process trains one DDP rank")
    c.add_argument("--steps", type=POSITIVE, default=1, help="gradual pruning: prune+fine-tune steps")
    c.add_argument("--engine", default="torch-pruning", metavar="{torch-pruning,nni}",
                   help="library that physically removes the channels: torch-pruning (default) or nni "
                        "(pip install 'edgeprune[nni]'); group names and the search are the same with either")
    accuracy_args(c, default="adaptive-bn")
    c.add_argument("--train-samples", type=POSITIVE)
    c.add_argument("--val-samples", type=POSITIVE)
    c.add_argument("--test-samples", type=POSITIVE)
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--json", action="store_true", help="print the report as JSON (also in OUT/report.json)")

    c = cmd("export", cmd_export, "export a (pruned) model as a validated device artifact")
    common(c, target=None)
    c.add_argument("--format", default="onnx", help="onnx, ort, openvino (FP32 IR), openvino-fp16 (tensorrt: later)")
    c.add_argument("--run", help="a prune output directory: export its pruned model (its input size and target "
                   "unless given)")
    c.add_argument("--out", required=True, help="artifact file to write")
    c.add_argument("--json", action="store_true")

    c = cmd("quantize", cmd_quantize, "INT8 post-training quantization (NNCF) of a prune run's model; FP32, "
            "FP16 and INT8 latency (interleaved), accuracy and size on an OpenVINO target")
    c.add_argument("--run", required=True, help="a prune output directory")
    c.add_argument("--target", help="OpenVINO target (default: the run's own if OpenVINO, else openvino-cpu)")
    c.add_argument("--data", help="dataset (default: the run's): digits, fashion-mnist, or an ImageFolder path")
    c.add_argument("--data-root", help="Fashion-MNIST directory")
    c.add_argument("--calibration-samples", type=POSITIVE, default=300, help="training images to calibrate on")
    c.add_argument("--test-samples", type=POSITIVE, help="test images to evaluate on (default: all)")
    c.add_argument("--preset", default="performance", choices=["performance", "mixed"],
                   help="NNCF preset: symmetric (performance) or asymmetric (mixed) activations")
    c.add_argument("--seed", type=COUNT, default=0, help="seed of the calibration subset")
    c.add_argument("--json", action="store_true")

    c = cmd("report", cmd_report, "re-render prune runs' reports and charts; plot several runs' accuracy "
            "against measured latency (one series per objective and target)")
    c.add_argument("runs", nargs="+", metavar="RUN", help="prune output directories")
    c.add_argument("--out", help="where pareto.png and report.md go (default: the run, or ./report for several)")
    c.add_argument("--json", action="store_true")

    c = cmd("check", cmd_check, "re-measure an artifact and fail on a latency regression or budget excess "
            "(exit 0 pass; 1 regression, over budget, incomparable baseline or too busy to tell; 2 bad input; 3 internal error)")
    c.add_argument("artifact", nargs="?", help="ONNX (or .ort) file to check")
    c.add_argument("--all", metavar="DEPLOY_FILE", help="check every artifact x target of a deploy file")
    c.add_argument("--run", metavar="DIR", help="a prune output directory: check its deployed artifact on its "
                   "target against its budget (each unless given)")
    c.add_argument("--target", help="target name or YAML path (default: the artifact's, else ort-cpu)")
    c.add_argument("--baseline", help="baseline file (default profiles/TARGET/baseline-STEM.json)")
    c.add_argument("--tolerance", type=number, help="slowdown tolerated as a fraction (default 0.05)")
    c.add_argument("--budget-ms", type=number, help="budget (default: the target file's for the model)")
    c.add_argument("--budget-ratio", type=number, metavar="SHARE",
                   help="instead: at most this share of --unpruned's latency, the two run in alternating blocks "
                        "(a --budget-ratio run's check --run does this by itself)")
    c.add_argument("--unpruned", metavar="FILE", help="the unpruned model a --budget-ratio is a share of")
    c.add_argument("--update", action="store_true", help="measure and (over)write the baseline")
    c.add_argument("--reference", metavar="OLD_ARTIFACT",
                   help="compare with this artifact measured in turn in the same run (robust on a noisy "
                        "machine; no baseline file)")
    c.add_argument("--absolute", action="store_true",
                   help="judge against the baseline's recorded numbers, not its artifact run beside this "
                        "one (for environment changes: board image, clock; needs a steady host)")
    c.add_argument("--allow-mismatch", action="store_true",
                   help="compare with a baseline from another runtime version or device anyway")
    c.add_argument("--no-confirm", action="store_true", help="do not re-measure to confirm a failure")
    c.add_argument("--json", action="store_true")
    c.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    add_agent_commands(cmd)
    return p


if __name__ == "__main__":
    sys.exit(main())
