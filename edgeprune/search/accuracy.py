"""Budget -> widths chosen by *measured* accuracy (adaptive BatchNorm, EagleEye, ECCV'20).

Why not kept importance: L1 mass is not comparable across layers, and maximising its sum kept
ResNet-18's stem and layer4 whole while cutting layer2 to a quarter; at equal measured latency
that lost to a uniform prune in every seed (issue 9). EagleEye showed that a pruned model's
accuracy right after re-estimating its BatchNorm statistics on a few training batches ranks
candidates much like their accuracy after fine-tuning, at a fraction of the cost.

The search: every candidate is a shape (``edgeprune.search.shapes``) scaled by the latency table to
the budget, so all of them spend the same predicted time. The pool starts with the uniform
shape (so the result is never worse than the uniform prune on this score), the kept-importance
plan, a NetAdapt-style greedy descent (``greedy_widths``), and random shapes; then mutations of
the best few refine it. Each candidate is pruned
from a copy of the model, BN-recalibrated on ``calib_batches`` training batches and scored on
the held-out validation split. The best shape is what the closed loop rescales if the measured
latency asks it to tighten.

Two objectives choose among the candidates (``rank``): ``adaptive-bn`` takes the best score;
``capacity`` takes the most MACs among those that score at least as well as the uniform shape.
Why the second: the BN score says what a prune *kept*, not what it can still *learn*. At
EfficientNet-Lite0's 35% budget, 19 shapes on one predicted latency, each fine-tuned 6 epochs
(issue 9, tools/proxy_rank.py and tools/rank_features.py, BENCHMARKS.md), the BN score ranked
the fine-tuned accuracy at Spearman +0.38 and MACs at +0.71 (+0.60 on the 12 shapes drawn after
MACs was proposed); the four shapes scoring below uniform included three of the four worst.
At equal latency, MACs measure how much of the budget buys arithmetic in the early,
high-resolution layers rather than weights in the late ones. Tested where it was not chosen
(new baseline and table, 3 seeds, latency matched), its pick scored 85.41% ± 0.52 against
adaptive-bn's 85.84% ± 0.03 and the uniform prune's 85.06%: not better than the default, so
``adaptive-bn`` stays the default and ``capacity`` an alternative.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from edgeprune.latency.table import LatencyTable
from edgeprune.search.knapsack import SearchConfig, SearchResult, bounds, search
from edgeprune.search.shapes import (
    Shape,
    fit_shape,
    mutate,
    random_shape,
    shape_of,
    uniform,
)


@dataclass
class AbnConfig:
    """How many candidates, and how each is scored. Every candidate is screened cheaply; the
    best ``finalists`` (and the uniform and kept-importance plans) are scored on more images,
    and the best of those wins (successive halving: most of the time goes to contenders)."""

    samples: int = 32          # random shapes
    refine: int = 16           # mutations of the best screened shapes
    parents: int = 4           # ... drawn from this many best
    finalists: int = 6         # screened best that get the full score
    screen_batches: int = 3    # screening: BN re-estimated on this many training batches
    screen_samples: int = 300  # ... and scored on this many validation images
    calib_batches: int = 10    # full score: training batches for BN re-estimation
    batch_size: int = 64
    eval_samples: int = 1000   # ... and validation images
    seed: int = 0
    greedy_steps: int = 8      # NetAdapt-style candidate: steps from the unpruned widths down (0: none)
    finetune_steps: int = 0    # full score after this many distillation steps (0: BN re-estimation only)

    def __post_init__(self):
        low = {k: v for k, v in (("candidates", self.samples), ("refine", self.refine), ("finalists", self.finalists),
                                 ("search-seed", self.seed), ("greedy-steps", self.greedy_steps),
                                 ("finetune-steps", self.finetune_steps)) if v < 0}
        low.update({k: v for k, v in (("parents", self.parents), ("screen_batches", self.screen_batches),
                                      ("screen_samples", self.screen_samples), ("calib_batches", self.calib_batches),
                                      ("batch_size", self.batch_size), ("eval_samples", self.eval_samples)) if v < 1})
        if low:
            from edgeprune.errors import UsageError
            raise UsageError("accuracy search: " + ", ".join(f"{k} {v} is out of range" for k, v in low.items())
                             + " (candidates, refine, search-seed, greedy-steps, finetune-steps >= 0; batches and sample counts >= 1)")


@dataclass(frozen=True)
class Score:
    accuracy: float
    loss: float

    def key(self) -> tuple[float, float]:
        return (self.accuracy, -self.loss)


@dataclass
class Candidate:
    origin: str                 # uniform, importance, greedy, random, mutation; "rescaled/carried <origin>"
    budget_ms: float            # the (predicted) budget it was scaled to
    shape: Shape
    widths: dict[str, int]
    predicted_ms: float
    screen: Score                       # the cheap score every candidate gets
    final: Score | None = None          # the full score, for finalists
    macs: float = 0.0                   # multiply-accumulates of the pruned model (objective capacity)

    @property
    def score(self) -> Score:
        return self.final or self.screen

    @property
    def kind(self) -> str:
        """How the shape was first made: the origin without "rescaled"/"carried"."""
        return self.origin.split()[-1]

    def to_dict(self) -> dict:
        d = {"origin": self.origin, "budget_ms": round(self.budget_ms, 5), "widths": self.widths,
             "predicted_ms": round(self.predicted_ms, 5), "screen_accuracy": round(self.screen.accuracy, 5),
             "macs": self.macs}
        if self.final is not None:
            d.update(accuracy=round(self.final.accuracy, 5), loss=round(self.final.loss, 5))
        return d


class AdaptiveBN:
    """Scores widths: prune a copy, re-estimate BN on fixed training batches, evaluate on val.

    The batches are drawn once, so every candidate sees the same images and differences
    between candidates are not sampling noise. Channels are chosen and removed on the CPU; the
    BN passes and the scoring run on ``device`` (the training device): they are most of the
    search's time (ResNet-18 at 224 px on one CPU thread: about 17 s a screened candidate, 60 s a
    full score, BENCHMARKS.md), so on a GPU host they run on its GPU."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], data, importance: str = "l1",
                 cfg: AbnConfig | None = None, device: str | torch.device = "cpu"):
        self.cfg = cfg = cfg or AbnConfig()
        self.model, self.input_shape, self.importance = model, input_shape, importance
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(cfg.seed)
        x, _ = data.train.tensors
        idx = torch.randperm(len(x), generator=gen)[: cfg.calib_batches * cfg.batch_size]
        self.calib = [x[idx[i:i + cfg.batch_size]].to(self.device) for i in range(0, len(idx), cfg.batch_size)]
        vx, vy = data.val.tensors
        vidx = torch.randperm(len(vx), generator=gen)[: cfg.eval_samples]
        self.val = (vx[vidx].to(self.device), vy[vidx].to(self.device))
        self.cache: dict[tuple, Score] = {}
        self.macs_cache: dict[tuple, float] = {}
        self.distill = self._distillation_batches(data, gen) if cfg.finetune_steps else []

    def __call__(self, widths: dict[str, int], screen: bool = False) -> Score:
        key = (tuple(sorted(widths.items())), screen)
        if key not in self.cache:
            from edgeprune.pruning.baselines import macs
            from edgeprune.pruning.prune import prune_to_widths
            pruned = prune_to_widths(self.model, self.input_shape, widths, self.importance)
            self.macs_cache.setdefault(key[0], macs(pruned, self.input_shape))
            self.cache[key] = self.score(pruned.to(self.device), screen)
        return self.cache[key]

    def macs(self, widths: dict[str, int]) -> float:
        """MACs of the pruned model (counted when the widths were first scored)."""
        key = tuple(sorted(widths.items()))
        if key not in self.macs_cache:
            self(widths, screen=True)
        return self.macs_cache[key]

    def score(self, model: nn.Module, screen: bool = False) -> Score:
        """Accuracy and loss of ``model`` (changed in place) after BN re-estimation; for the full
        score with ``finetune_steps``, after the short distillation and then BN re-estimation."""
        cfg = self.cfg
        if self.distill and not screen:  # training normalises by batch statistics: re-estimate after it
            short_distillation(model, self.distill, cfg.seed)
        recalibrate(model, self.calib[: cfg.screen_batches] if screen else self.calib)
        model.eval()
        correct, loss = 0, 0.0
        x, y = self.val
        if screen:
            x, y = x[: cfg.screen_samples], y[: cfg.screen_samples]
        with torch.no_grad():
            for i in range(0, len(y), 250):
                logits = model(x[i:i + 250])
                correct += int((logits.argmax(1) == y[i:i + 250]).sum())
                loss += float(nn.functional.cross_entropy(logits, y[i:i + 250], reduction="sum"))
        return Score(correct / max(1, len(y)), loss / max(1, len(y)))

    def _distillation_batches(self, data, gen: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
        """``finetune_steps`` fixed (images, labels, teacher logits) batches: every finalist is
        trained on the same images in the same order, so the scores differ by shape alone."""
        x, y = data.train.tensors
        n = self.cfg.finetune_steps * self.cfg.batch_size
        idx = torch.cat([torch.randperm(len(x), generator=gen) for _ in range(-(-n // len(x)))])[:n]
        home = next(self.model.parameters()).device
        teacher = self.model.to(self.device).eval()
        batches = []
        with torch.no_grad():
            for i in range(0, n, self.cfg.batch_size):
                bx, by = x[idx[i:i + self.cfg.batch_size]].to(self.device), y[idx[i:i + self.cfg.batch_size]].to(self.device)
                batches.append((bx, by, teacher(bx)))
        self.model.to(home)
        return batches


def short_distillation(model: nn.Module, batches: list[tuple[torch.Tensor, ...]], seed: int) -> None:
    """NetAdapt's short fine-tune, with the pipeline's own loss and optimiser (distillation
    from the unpruned model, ``finetune.sgd`` at the recipe's starting lr): right after a deep
    prune BN re-estimation alone no longer ranks shapes (EfficientNet-Lite0 at a quarter of its
    latency: every candidate 15-20%, near chance; BENCHMARKS.md, issue 9)."""
    from edgeprune.training.finetune import FinetuneConfig, distillation_loss, sgd
    cfg = FinetuneConfig()
    opt = sgd(model, cfg)
    model.train()
    with torch.random.fork_rng(devices=[]):  # dropout's draws, without moving the caller's seed
        torch.manual_seed(seed)
        for x, y, t_logits in batches:
            opt.zero_grad(set_to_none=True)
            distillation_loss(model(x), t_logits, y, cfg.kd_alpha, cfg.kd_temperature).backward()
            opt.step()
    model.eval()


def recalibrate(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """BN running statistics re-estimated as the plain average over ``batches``."""
    from edgeprune.training.finetune import recalibrate_bn
    recalibrate_bn(model, [(b, None) for b in batches], len(batches))


@dataclass
class AbnResult:
    best: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0

    def by_origin(self, origin: str) -> Candidate | None:
        found = [c for c in self.candidates if c.origin == origin]
        return max(found, key=lambda c: c.score.key()) if found else None

    @property
    def degenerate(self) -> bool:
        """All candidates came out as the same widths (a budget the unpruned model fits)."""
        return len({tuple(sorted(c.widths.items())) for c in self.candidates}) < 2


OBJECTIVES = ("adaptive-bn", "capacity")


def rank(cands: list[Candidate], objective: str, final: bool = False) -> list[Candidate]:
    """``cands`` best first by ``objective`` on their screen (or ``final``) scores: adaptive-bn
    by score; capacity by MACs among those scoring at least the uniform shape's (the others are
    dropped; without a uniform candidate, none is)."""
    score = (lambda c: c.final) if final else (lambda c: c.screen)
    if objective == "adaptive-bn":
        return sorted(cands, key=lambda c: score(c).key(), reverse=True)
    if objective != "capacity":
        from edgeprune.errors import unknown
        raise unknown("search objective", objective, OBJECTIVES)
    floor = max((score(c).accuracy for c in cands if c.origin.endswith("uniform")), default=0.0)
    return sorted((c for c in cands if score(c).accuracy >= floor), key=lambda c: (c.macs, score(c).key()),
                  reverse=True)


def abn_search(table: LatencyTable, scorer: AdaptiveBN, budget_ms: float, cfg: SearchConfig,
               importance_scores: dict[str, np.ndarray] | None = None, objective: str = "adaptive-bn",
               carried: list[Candidate] | None = None) -> AbnResult:
    """The best candidate by ``objective`` among shapes scaled to ``budget_ms`` (see the module doc).
    ``carried``: another budget's finalists, whose shapes join the pool (origin "carried ...")
    and may be mutated like any other (``ShapePlanner``)."""
    t0 = time.perf_counter()
    acfg = scorer.cfg
    rng = np.random.default_rng(acfg.seed)
    pool: list[Candidate] = []

    def add(origin: str, shape: Shape) -> None:
        widths = fit_shape(table, shape, budget_ms, cfg)
        pool.append(Candidate(origin, budget_ms, shape_of(table, widths), widths, table.predict(widths),
                              scorer(widths, screen=True), macs=scorer.macs(widths)))

    add("uniform", uniform(table))
    if importance_scores is not None:
        planned = search(table, importance_scores, budget_ms, cfg).widths
        add("importance", shape_of(table, planned))
    if acfg.greedy_steps:
        add("greedy", shape_of(table, greedy_widths(table, scorer, budget_ms, cfg, acfg.greedy_steps)))
    for c in carried or ():
        add(f"carried {c.kind}", c.shape)
    for _ in range(acfg.samples):
        add("random", random_shape(table, rng, cfg.min_ratio))
    for _ in range(acfg.refine):
        parents = rank(pool, objective)[: acfg.parents]
        add("mutation", mutate(parents[rng.integers(len(parents))].shape, rng))
    references = [c for c in pool if c.origin in REFERENCES]
    finalists = references + [c for c in rank(pool, objective) if c not in references][: acfg.finalists]
    for c in finalists:
        c.final = scorer(c.widths)
    return AbnResult(rank(finalists, objective, final=True)[0], pool, time.perf_counter() - t0)


REFERENCES = ("uniform", "importance", "greedy")  # always given the full score


def greedy_widths(table: LatencyTable, scorer: AdaptiveBN, budget_ms: float, cfg: SearchConfig,
                  steps: int) -> dict[str, int]:
    """NetAdapt-style descent (Yang et al., ECCV'18) from the unpruned widths to ``budget_ms``.

    The predicted latency is lowered in ``steps`` geometric steps; at each step every group
    proposes the widest width that *alone* meets the step's target, each proposal is screened
    (BN re-estimated, as every candidate; NetAdapt fine-tunes briefly instead), and the best
    is kept. Why: random shapes scaled to a budget cut every group; the greedy descent finds
    budgets that a few groups can pay for. On ResNet-18 at 32 px (ort-cpu, issue 9) the table
    charges layer3-4's weights for the cache they overflow; the descent kept the stem, layer1
    and layer2 whole and narrowed layer3-4's inner convolutions, and scored 87.6% after BN
    re-estimation at both the 50% and the 35% budget's prediction, where the random and
    mutated shapes' best scored 86.3% / 84.5% and uniform 82.8% / 81.2% (tools/routes_study.py,
    BENCHMARKS.md). When no group alone reaches a step's target the descent stops there and
    ``fit_shape`` scales its shape the rest of the way."""
    lo, hi = bounds(table, cfg)
    widths = dict(hi)
    start = table.predict(widths)
    for k in range(1, steps + 1):
        if table.predict(widths) <= budget_ms:
            break
        target = start * (budget_ms / start) ** (k / steps)
        proposals = []
        for g, w0 in widths.items():
            w = w0
            while w > lo[g] and table.predict({**widths, g: w}) > target:
                w = max(lo[g], (w - 1) // cfg.round_to * cfg.round_to)
            if w < w0 and table.predict({**widths, g: w}) <= target:
                proposals.append({**widths, g: w})
        if not proposals:
            break
        widths = max(proposals, key=lambda p: scorer(p, screen=True).key())
    return widths


class ShapePlanner:
    """The closed loop's planner for the accuracy objective. A budget within ``RESEARCH`` of one
    already searched rescales that search's finalists and keeps the best of them (a few full
    scores); a budget further away is searched anew. The best shape does not survive scaling:
    EfficientNet-Lite0 at 35% (issue 9, BENCHMARKS.md), the search at 0.295 ms found 70.6%; its
    finalists scaled to 0.260 ms scored at most 44.8% (uniform 46.0%), where a new search found
    56.6% in about 3 minutes. A search whose candidates all came out the same (the table said
    the unpruned model fits; the loop's measurement then said it does not) never stands for
    another budget.

    A new search starts from the earlier searches' finalists too (``_carried``): scaled to the
    new budget they compete and are mutated like any shape. Without them each search started
    from scratch, and a loop that moved through four budgets could end on a worse shape than
    one it had already found: ResNet-18 at 32 px, 35% (BENCHMARKS.md, session 16), the second
    round's search found 81.4% at 0.347 ms; the searches at 0.310 and 0.329 ms, from scratch,
    found at most 69.7%, and the loop kept the uniform shape (63.6%), which after fine-tuning
    tied the uniform prune."""

    RESEARCH = 0.05
    CARRY = 2  # per earlier search, its best finalists carried into a new one. Finalists of a
    #            larger budget outscore the rest only by being larger; within a search they are
    #            comparable. Where carried shapes won (EfficientNet-Lite0 at 35%, BENCHMARKS.md,
    #            session 16), each was its own search's best; carrying every finalist had grown
    #            a late search's pool from 51 to 79 candidates

    def __init__(self, table: LatencyTable, scorer: AdaptiveBN, cfg: SearchConfig,
                 importance_scores: dict[str, np.ndarray] | None = None, objective: str = "adaptive-bn"):
        rank([], objective)  # an unknown objective fails here, not after the first search
        self.table, self.scorer, self.cfg, self.scores = table, scorer, cfg, importance_scores
        self.objective = objective
        self.searches: list[tuple[float, AbnResult]] = []
        self.rescaled: list[Candidate] = []  # finalists re-scored at the budgets the loop moved to

    @property
    def result(self) -> AbnResult | None:
        """The latest search (its candidates go into the report)."""
        return self.searches[-1][1] if self.searches else None

    @property
    def candidates(self) -> list[Candidate]:
        return [c for _, r in self.searches for c in r.candidates] + self.rescaled

    def _carried(self) -> list[Candidate]:
        """Each earlier search's ``CARRY`` best finalists (one per shape; the uniform and
        kept-importance plans are made anew at every budget), for a new search's pool."""
        out: dict[tuple, Candidate] = {}
        for _, found in (s for s in self.searches if not s[1].degenerate):
            finalists = [c for c in found.candidates if c.final is not None and c.kind not in ("uniform", "importance")]
            for c in rank(finalists, self.objective, final=True)[: self.CARRY]:
                out.setdefault(tuple(round(v, 4) for _, v in sorted(c.shape.items())), c)
        return list(out.values())

    def _rescale(self, found: AbnResult, budget_ms: float) -> dict[str, int]:
        """The search's finalists scaled to ``budget_ms`` and scored again; the best wins.

        Scaling moves narrow groups by whole rounding steps, so the best shape at one budget
        need not be the best a few percent lower. EfficientNet-Lite0 at 35% (issue 9,
        tools/rescale_study.py): the best shape scored 70.6% at the searched budget; scaled 8%
        lower, no finalist scored above 49.3%, and the uniform shape 54.3%. Re-scoring the
        finalists costs a handful of full scores."""
        rescored = []
        for c in (c for c in found.candidates if c.final is not None):
            widths = fit_shape(self.table, c.shape, budget_ms, self.cfg)
            score = self.scorer(widths)
            rescored.append(Candidate(f"rescaled {c.origin}", budget_ms, c.shape, widths,
                                      self.table.predict(widths), score, score, self.scorer.macs(widths)))
        self.rescaled += rescored
        return rank(rescored, self.objective, final=True)[0].widths

    def __call__(self, budget_ms: float) -> SearchResult:
        t0 = time.perf_counter()
        near = [(abs(b / budget_ms - 1), r) for b, r in self.searches
                if abs(b / budget_ms - 1) <= self.RESEARCH and not r.degenerate]
        if near:
            widths = self._rescale(min(near, key=lambda x: x[0])[1], budget_ms)
        else:
            found = abn_search(self.table, self.scorer, budget_ms, self.cfg, self.scores, self.objective,
                               self._carried())
            self.searches.append((budget_ms, found))
            widths = found.best.widths
        return SearchResult(widths, self.table.predict(widths), budget_ms, self.table.predict(self.table.groups),
                            kept_importance=float("nan"), steps=len(self.candidates),
                            seconds=time.perf_counter() - t0, objective=self.objective,
                            proxy_accuracy=self.scorer(widths).accuracy)
