"""Training and fine-tuning (optionally distilled from the unpruned model) with safety nets:
BN recalibration, roll-back of epochs that hurt validation accuracy, early stopping, and
resumable atomic checkpoints.

Optimiser: SGD with Nesterov momentum and a per-step cosine LR. It needs no warm-up, works for
both a from-scratch baseline and a short fine-tune, and its schedule is a pure function of the
step, so a resumed run follows exactly the LR curve of an uninterrupted one.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeprune.errors import UsageError
from edgeprune.training import distributed
from edgeprune.training.checkpoint import (
    CHECKPOINT_FORMAT,  # noqa: F401 (re-exported: where it was)
    EpochLog,
    TrainState,
    read_checkpoint,
    restore,
    save_checkpoint,
)
from edgeprune.training.data import DataBundle
from edgeprune.training.metrics import Metrics, evaluate


@dataclass
class FinetuneConfig:
    epochs: int = 3
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    kd_alpha: float = 0.7
    kd_temperature: float = 4.0
    patience: int = 2
    collapse: float = 0.5   # an epoch below this share of the best val accuracy is rolled back
    bn_recalibration_batches: int = 20
    threads: int = 2
    seed: int = 0
    progress: bool = True
    device: str = "auto"     # auto (CUDA when present), cpu, cuda, cuda:N: where training runs
    amp: bool | None = None  # mixed precision; None: on CUDA (bf16, else fp16), off on CPU


@dataclass
class TrainResult:
    best_val: Metrics
    history: list[EpochLog]
    epochs_run: int
    stopped_early: bool
    resumed_from: int
    rollbacks: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best_val"] = self.best_val.to_dict()
        return d


def recalibrate_bn(model: nn.Module, loader, batches: int) -> None:
    """Re-estimate BN running stats on a few batches (no gradients).

    After pruning the stored statistics describe channels that no longer exist or mix
    differently; accuracy sits at chance until they are re-estimated.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return
    was_training, momenta = model.training, [m.momentum for m in bns]
    device = _device(model)
    try:
        model.eval()  # dropout etc. off; only BN collects statistics
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches seen
            m.train()
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if i >= batches:
                    break
                model(batch[0].to(device))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                      alpha: float, temperature: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets) (Hinton)."""
    t = temperature
    kd = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                  reduction="batchmean", log_target=True) * (t * t)
    if alpha >= 1.0:
        return kd
    return alpha * kd + (1.0 - alpha) * F.cross_entropy(student, targets)


def sgd(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.SGD:
    """The recipe's optimiser (also the accuracy search's short distillation, so its scores
    rank shapes under the optimiser that will fine-tune the winner)."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)


def train(model: nn.Module, data: DataBundle, cfg: FinetuneConfig, checkpoint: Path | None = None,
          teacher: nn.Module | None = None, key: str = "") -> TrainResult:
    """Train ``model`` in place; on return it holds the weights with the best val accuracy.

    The starting weights count as a candidate, so fine-tuning never returns a model worse on
    validation than the one it was given. An epoch that lowers val accuracy is rolled back
    and the LR halved from then on.

    Training runs on ``cfg.device`` (mixed precision per ``cfg.amp``); the model comes back on
    the CPU whatever the device, so export and latency measurement need not know. Under
    torchrun each process trains one DDP rank (``training.distributed``: same global batch,
    same result as one process up to BatchNorm's per-rank statistics); only rank 0 writes the
    checkpoint, every rank resumes from it and returns the same weights and result.
    """
    run = distributed.init(cfg.device)
    amp = distributed.precision(run.device, cfg.amp)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    was_training = model.training
    teacher_training = teacher.training if teacher is not None else False
    teacher_device = _device(teacher) if teacher is not None else None
    try:
        model.to(run.device)
        if teacher is not None:
            teacher.to(run.device)
        return _train(model, data, cfg, Path(checkpoint) if checkpoint else None, teacher, key, run, amp)
    finally:
        torch.set_num_threads(threads)
        model.to("cpu")
        model.train(was_training)
        if teacher is not None:
            teacher.to(teacher_device)
            teacher.train(teacher_training)


train_baseline = train


def with_teacher_logits(data: DataBundle, teacher: nn.Module, batch_size: int = 256) -> DataBundle:
    """``data`` whose training set carries the teacher's logits as a third tensor.

    The data has no augmentation and the teacher is frozen in eval mode, so its logits for an
    image never change: computing them once instead of every step removes the unpruned model's
    forward pass from every step of every epoch (at half the latency, most of a step's work)."""
    from dataclasses import replace

    from torch.utils.data import TensorDataset
    x, y = data.train.tensors[:2]
    device = _device(teacher)
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            logits = torch.cat([teacher(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    finally:
        teacher.train(was_training)
    return replace(data, train=TensorDataset(x, y, logits))


def _train(model, data, cfg, checkpoint, teacher, key, run: distributed.Dist, amp) -> TrainResult:
    run.sync_state(model)  # ranks may have built different initial weights: rank 0's count
    if teacher is not None:
        run.sync_state(teacher)
        if len(data.train.tensors) == 2:
            data = with_teacher_logits(data, teacher)
    opt = sgd(model, cfg)
    val_loader = data.loader("val", cfg.batch_size)
    saved = run.broadcast(read_checkpoint(checkpoint, key, model) if run.is_main else None)
    state = restore(saved, model, opt, amp.scaler) if saved else None
    resumed_from = state.epoch if state else 0
    if state is None:
        if teacher is not None:  # on every rank, on the same (unsharded) batches
            recalibrate_bn(model, _train_loader(data, cfg, -1), cfg.bn_recalibration_batches)
            run.sync_state(model)
        state = TrainState(0, _clone(model.state_dict()), _evaluate(run, model, val_loader, data.num_classes))
    if teacher is not None:
        teacher.eval()  # frozen: its logits are computed under no_grad
    net = run.wrap(model)
    with _progress(cfg, run.is_main) as bar:
        while state.epoch < cfg.epochs and not state.stopped_early:
            epoch = state.epoch
            torch.manual_seed(cfg.seed + epoch)  # dropout & friends: same draws when resumed
            loader = _train_loader(data, cfg, epoch, run)
            start = time.perf_counter()
            lr0 = _lr(cfg, state.lr_scale, epoch * len(loader), len(loader))
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader)) if bar else None
            loss = _run_epoch(net, loader, opt, cfg, state, teacher, (run, amp), (bar, task))
            run.sync_state(model)  # BN statistics: rank 0's, so every rank keeps the same weights
            val = _evaluate(run, model, val_loader, data.num_classes)
            if bar:
                bar.update(task, description=f"epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} "
                                             f"val {val.accuracy:.1%}")
            rolled = _accept_or_roll_back(model, opt, val, state, cfg)
            state.history.append(EpochLog(epoch + 1, loss, val.to_dict(), lr0,
                                          time.perf_counter() - start, rolled))
            state.epoch += 1
            if checkpoint is not None and run.is_main:
                save_checkpoint(checkpoint, key, model, opt, state, asdict(cfg), amp.scaler)
    model.load_state_dict(state.best_state)
    run.barrier()  # the checkpoint is written before any rank goes on
    return TrainResult(state.best_val, state.history, len(state.history), state.stopped_early,
                       resumed_from, state.rollbacks)


def _evaluate(run: distributed.Dist, model, loader, num_classes: int) -> Metrics:
    """Validation metrics computed on rank 0 and given to every rank, so that every rank takes
    the same accept / roll-back / stop decision (a lone decision would hang the others)."""
    return run.broadcast(evaluate(model, loader, num_classes) if run.is_main else None)


def _train_loader(data: DataBundle, cfg: FinetuneConfig, epoch: int, run: distributed.Dist | None = None):
    """Shuffled by (seed, epoch) so a resumed epoch sees the same batches; under torchrun this
    rank's share of each of the same global batches."""
    single = data.loader("train", cfg.batch_size, shuffle=True, seed=cfg.seed + 1000 + epoch, drop_last=True)
    return run.shard(single) if run is not None and run.world > 1 else single


def _lr(cfg: FinetuneConfig, scale: float, step: int, steps_per_epoch: int) -> float:
    total = max(1, cfg.epochs * steps_per_epoch)
    return cfg.lr * scale * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _run_epoch(net, loader, opt, cfg, state, teacher, where, progress) -> float:
    """One pass over the training set; returns the mean loss over all ranks (stops early, on
    every rank at once, on a NaN/inf loss)."""
    run, amp = where
    device = run.device
    net.train()
    bar, task = progress
    total, count = 0.0, 0
    for step, batch in enumerate(loader):
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, state.lr_scale, state.epoch * len(loader) + step, len(loader))
        x, y = batch[0].to(device), batch[1].to(device)
        with amp.autocast():
            logits = net(x)
            loss = _loss(logits, y, batch, x, teacher, cfg)
        opt.zero_grad(set_to_none=True)
        amp.step(loss, opt)
        part, n = run.sum(loss.item() * len(y), len(y))
        total += part
        count += int(n)
        if bar:
            last = state.history[-1].val["accuracy"] if state.history else state.best_val.accuracy
            bar.update(task, advance=1, description=(
                f"epoch {state.epoch + 1}/{cfg.epochs} loss {total / count:.4f} val {last:.1%}"))
        if not math.isfinite(part):
            break  # diverged: the roll-back restores the best weights
    return total / count if count else float("nan")


def _loss(logits, y, batch, x, teacher, cfg: FinetuneConfig) -> torch.Tensor:
    """Cross-entropy, or distillation from the teacher's (cached, else computed) logits."""
    if teacher is None:
        return F.cross_entropy(logits, y)
    if len(batch) > 2:  # cached (with_teacher_logits)
        t_logits = batch[2].to(logits.device)
    else:
        with torch.no_grad():
            t_logits = teacher(x)
    if t_logits.shape != logits.shape:
        raise UsageError(f"teacher outputs {list(t_logits.shape)}, student {list(logits.shape)}")
    return distillation_loss(logits, t_logits, y, cfg.kd_alpha, cfg.kd_temperature)


def _accept_or_roll_back(model, opt, val: Metrics, state: TrainState, cfg: FinetuneConfig) -> bool:
    """Keep a better epoch as the best; undo a collapsed one (and halve the LR). Returns True
    on roll-back.

    A worse epoch that did not collapse is trained on: a model that starts strong dips while the
    LR is high and recovers as it anneals (the best epoch, or the start, is returned anyway).
    Rolling every dip back stopped a 50%-latency ResNet-18 after two epochs at its start."""
    rolled = False
    if val.accuracy > state.best_val.accuracy:
        state.best_state, state.best_val, state.no_improve = _clone(model.state_dict()), val, 0
    else:
        state.no_improve += 1
        if val.accuracy < cfg.collapse * state.best_val.accuracy:
            model.load_state_dict(state.best_state)
            opt.state.clear()  # momentum from the bad trajectory would push the same way again
            state.lr_scale *= 0.5
            state.rollbacks += 1
            rolled = True
    state.stopped_early = state.no_improve >= cfg.patience and state.epoch + 1 < cfg.epochs
    return rolled


def _clone(state: dict) -> dict:
    """A copy on the CPU: the best weights take no GPU memory, and are saved as they are."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _progress:
    """A rich progress display on an interactive stderr, else a no-op (None)."""

    def __init__(self, cfg: FinetuneConfig, main: bool = True):
        self.enabled = cfg.progress and main and sys.stderr.isatty()
        self.bar = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True))
            self.bar.__enter__()
        return self.bar

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


# --- the pipeline's recipe, public so that any pruned model can be fine-tuned the same way --------

def default_batch_size(train_samples: int) -> int:
    """About 50 steps an epoch, between 32 and 128: small sets still get enough updates."""
    return int(min(128, max(32, train_samples // 50)))


def recipe(data: DataBundle, epochs: int, seed: int = 0, threads: int = 1, progress: bool = False,
           device: str = "auto") -> FinetuneConfig:
    """The fine-tune configuration ``edgeprune prune`` uses for ``data``: distillation (alpha 0.7,
    T 4) from cached teacher logits, SGD + cosine from lr 0.01 over all ``epochs``, BN
    re-estimated first, collapsed epochs rolled back, the best epoch (or the start) kept."""
    return FinetuneConfig(epochs=epochs, threads=threads, batch_size=default_batch_size(len(data.train)),
                          seed=seed, progress=progress, patience=max(2, epochs),  # the cosine schedule runs out
                          device=device)


@dataclass
class FinetuneOutcome:
    """Accuracy of a pruned model as pruned, after BN re-estimation, and after fine-tuning."""

    pruned: Metrics
    recalibrated: Metrics
    finetuned: Metrics
    train: TrainResult | None

    def to_dict(self) -> dict:
        return {"pruned": self.pruned.to_dict(), "recalibrated": self.recalibrated.to_dict(),
                "finetuned": self.finetuned.to_dict(),
                "train": self.train.to_dict() if self.train else None}


def finetune_pruned(model: nn.Module, teacher: nn.Module, data: DataBundle, epochs: int = 3, seed: int = 0,
                    threads: int = 1, checkpoint: Path | None = None, key: str = "", split: str = "test",
                    progress: bool = False, device: str = "auto") -> FinetuneOutcome:
    """Fine-tune ``model`` in place with the pipeline's recipe, distilled from ``teacher``.

    The one function a comparison needs to give every pruned model the same treatment. With
    ``epochs=0`` the model only gets its BN statistics re-estimated (pruning leaves them
    describing channels that are gone). Accuracies are measured on ``split``, on ``device``;
    the model comes back on the CPU."""
    cfg = recipe(data, epochs, seed, threads, progress, device)
    loader = data.loader(split, cfg.batch_size)
    on = distributed.init(device).device
    try:
        model.to(on)
        pruned = evaluate(model, loader, data.num_classes)
        # the same batches train() re-estimates BN on first: doing it here too changes nothing
        recalibrate_bn(model, _train_loader(data, cfg, -1), cfg.bn_recalibration_batches)
        recal = evaluate(model, loader, data.num_classes)
        if epochs <= 0:
            return FinetuneOutcome(pruned, recal, recal, None)
        result = train(model, data, cfg, checkpoint, teacher=teacher, key=key)
        return FinetuneOutcome(pruned, recal, evaluate(model.to(on), loader, data.num_classes), result)
    finally:
        model.to("cpu")
