"""``edgeprune profile MODEL --target a,b,c``: one latency table per target, boards profiled in
parallel (``edgeprune.runtime.farm``: local targets one after another, one lane per board), each
thread's progress as lines prefixed with its target's name."""
from __future__ import annotations

import json
from pathlib import Path

from edgeprune.errors import UsageError
from edgeprune.progress import lines, say
from edgeprune.runtime.farm import (
    Outcome,
    lane_of,
    report_errors,
    run_lanes,
    split_targets,
    worst_exit,
)


def label(target: str) -> str:
    """A target's short name in progress lines: the name, or a YAML path's stem."""
    return Path(target).stem if target.endswith((".yaml", ".yml")) else target


def table_out(out: str | None, target: str, several: bool) -> str | None:
    """``--out`` for one target: with several targets it must hold ``{target}`` (one file each)."""
    if out is None:
        return None
    if several and "{target}" not in out:
        raise UsageError("--out with several targets needs {target} in it (one table per target), "
                         "e.g. --out 'profiles/{target}/model.json'; or leave --out out")
    return out.replace("{target}", label(target))


def profile_targets(model: str, targets: list[str], input_size: int | None = None, out: str | None = None,
                    **session) -> list[Outcome]:
    """Profile ``model`` on every target (``api.profile`` each), lanes in parallel."""
    several = len(targets) > 1
    outs = [table_out(out, t, several) for t in targets]  # refused before anything starts

    def one(i: int):
        from edgeprune.latency.profile import TORCH_LOCK
        from edgeprune.session import Session, SessionConfig
        name = label(targets[i])
        with lines(name):
            say(name, f"profiling {model}")
            cfg = SessionConfig(model=model, target=targets[i], input_size=input_size, table=outs[i],
                                reprofile=True, **session)
            with TORCH_LOCK:  # building the model touches torch's global state too
                s = Session.open(cfg)
            table = s.table()
            say(name, f"wrote {table.path}")
            return table
    idx = list(range(len(targets)))
    return run_lanes(idx, [label(t) for t in targets], [lane_of(t) for t in targets], one)


def cmd_profile_farm(a, session: dict) -> int:
    """The CLI's ``profile`` with a comma list of targets: a summary line (or JSON) per target."""
    outcomes = profile_targets(a.model, split_targets(a.target), a.input_size, a.out, **session)
    if a.json:
        print(json.dumps([_json(o) for o in outcomes]))
    else:
        for o in outcomes:
            if o.value is not None:
                e = o.value.error
                print(f"{o.name}: wrote {o.value.path}: {len(o.value.layers)} layers; prediction error over "
                      f"{e.n} random configurations: {e.within_10pct:.0%} within ±10%, RMSPE {e.rmspe:.1%}")
    report_errors(outcomes)
    return worst_exit(outcomes)


def _json(o: Outcome) -> dict:
    if o.value is None:
        return {"target": o.name, "error": o.message()}
    t = o.value
    return {"target": o.name, "path": str(t.path), "hash": t.digest, "layers": len(t.layers), "groups": t.groups,
            "error": {"n": t.error.n, "within_10pct": t.error.within_10pct, "rmspe": t.error.rmspe}}
