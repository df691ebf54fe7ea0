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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeprune.artifacts.onnxio import atomic_write
from edgeprune.errors import MACHINE_ERRORS, UsageError
from edgeprune.training.data import DataBundle
from edgeprune.training.metrics import Metrics, evaluate

CHECKPOINT_FORMAT = 2  # 2: the recipe trains through dips (checkpoints of 1 resumed another rule)


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


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val: dict
    lr: float
    seconds: float
    rolled_back: bool


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


@dataclass
class _State:
    """Everything a checkpoint holds besides model and optimiser weights."""
    epoch: int  # epochs completed
    best_state: dict
    best_val: Metrics
    history: list[EpochLog] = field(default_factory=list)
    lr_scale: float = 1.0
    no_improve: int = 0
    rollbacks: int = 0
    stopped_early: bool = False


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


def train(model: nn.Module, data: DataBundle, cfg: FinetuneConfig, checkpoint: Path | None = None,
          teacher: nn.Module | None = None, key: str = "") -> TrainResult:
    """Train ``model`` in place; on return it holds the weights with the best val accuracy.

    The starting weights count as a candidate, so fine-tuning never returns a model worse on
    validation than the one it was given. An epoch that lowers val accuracy is rolled back
    and the LR halved from then on.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    was_training = model.training
    teacher_training = teacher.training if teacher is not None else False
    try:
        return _train(model, data, cfg, Path(checkpoint) if checkpoint else None, teacher, key)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
        if teacher is not None:
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


def _train(model, data, cfg, checkpoint, teacher, key) -> TrainResult:
    device = _device(model)
    if teacher is not None and len(data.train.tensors) == 2:
        data = with_teacher_logits(data, teacher)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    val_loader = data.loader("val", cfg.batch_size)
    state = _resume(checkpoint, key, model, opt)
    resumed_from = state.epoch if state else 0
    if state is None:
        if teacher is not None:
            recalibrate_bn(model, _train_loader(data, cfg, -1), cfg.bn_recalibration_batches)
        state = _State(0, _clone(model.state_dict()), evaluate(model, val_loader, data.num_classes))
    if teacher is not None:
        teacher.eval()  # frozen: its logits are computed under no_grad
    with _progress(cfg) as bar:
        while state.epoch < cfg.epochs and not state.stopped_early:
            epoch = state.epoch
            torch.manual_seed(cfg.seed + epoch)  # dropout & friends: same draws when resumed
            loader = _train_loader(data, cfg, epoch)
            start = time.perf_counter()
            lr0 = _lr(cfg, state.lr_scale, epoch * len(loader), len(loader))
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader)) if bar else None
            loss = _run_epoch(model, loader, opt, cfg, state, teacher, device, (bar, task))
            val = evaluate(model, val_loader, data.num_classes)
            if bar:
                bar.update(task, description=f"epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} "
                                             f"val {val.accuracy:.1%}")
            rolled = _accept_or_roll_back(model, opt, val, state, cfg)
            state.history.append(EpochLog(epoch + 1, loss, val.to_dict(), lr0,
                                          time.perf_counter() - start, rolled))
            state.epoch += 1
            if checkpoint is not None:
                _save_checkpoint(checkpoint, key, model, opt, state, cfg)
    model.load_state_dict(state.best_state)
    return TrainResult(state.best_val, state.history, len(state.history), state.stopped_early,
                       resumed_from, state.rollbacks)


def _train_loader(data: DataBundle, cfg: FinetuneConfig, epoch: int):
    """Shuffled by (seed, epoch) so a resumed epoch sees the same batches."""
    return data.loader("train", cfg.batch_size, shuffle=True, seed=cfg.seed + 1000 + epoch,
                       drop_last=True)


def _lr(cfg: FinetuneConfig, scale: float, step: int, steps_per_epoch: int) -> float:
    total = max(1, cfg.epochs * steps_per_epoch)
    return cfg.lr * scale * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _run_epoch(model, loader, opt, cfg, state, teacher, device, progress) -> float:
    """One pass over the training set; returns the mean loss (stops early on a NaN/inf loss)."""
    model.train()
    bar, task = progress
    total, count = 0.0, 0
    for step, batch in enumerate(loader):
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, state.lr_scale, state.epoch * len(loader) + step, len(loader))
        x, y = batch[0].to(device), batch[1].to(device)
        logits = model(x)
        if teacher is None:
            loss = F.cross_entropy(logits, y)
        else:
            if len(batch) > 2:  # cached (with_teacher_logits)
                t_logits = batch[2].to(device)
            else:
                with torch.no_grad():
                    t_logits = teacher(x)
            if t_logits.shape != logits.shape:
                raise UsageError(f"teacher outputs {list(t_logits.shape)}, student {list(logits.shape)}")
            loss = distillation_loss(logits, t_logits, y, cfg.kd_alpha, cfg.kd_temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(y)
        count += len(y)
        if bar:
            last = state.history[-1].val["accuracy"] if state.history else state.best_val.accuracy
            bar.update(task, advance=1, description=(
                f"epoch {state.epoch + 1}/{cfg.epochs} loss {total / count:.4f} val {last:.1%}"))
        if not math.isfinite(loss.item()):
            break  # diverged: the roll-back restores the best weights
    return total / count if count else float("nan")


def _accept_or_roll_back(model, opt, val: Metrics, state: _State, cfg: FinetuneConfig) -> bool:
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


def _save_checkpoint(path: Path, key: str, model, opt, state: _State, cfg: FinetuneConfig) -> None:
    """Only tensors and primitives, so it loads with ``weights_only=True``; written atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT, "key": key, "epoch": state.epoch,
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "best_state": state.best_state, "best_val": state.best_val.to_dict(),
        "history": [asdict(h) for h in state.history], "lr_scale": state.lr_scale,
        "no_improve": state.no_improve, "rollbacks": state.rollbacks,
        "stopped_early": state.stopped_early, "config": asdict(cfg),
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def _resume(path: Path | None, key: str, model: nn.Module, opt) -> _State | None:
    """The saved state when ``path`` holds a readable checkpoint for ``key`` and this model."""
    if path is None or not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file raises any type from the unpickler
        if isinstance(e, MACHINE_ERRORS):
            raise
        return _fresh(path, f"it is unreadable ({type(e).__name__})")
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        return _fresh(path, "it is not an edgeprune fine-tune checkpoint")
    if ck.get("key") != key:
        return _fresh(path, "it belongs to another job (other widths, epochs or data)")
    if not (_same_shapes(model, ck["model"]) and _same_shapes(model, ck["best_state"])):
        return _fresh(path, "its model has other shapes")  # never load half a state
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    history = [EpochLog(**h) for h in ck["history"]]
    return _State(ck["epoch"], ck["best_state"], Metrics(**ck["best_val"]), history,
                  ck["lr_scale"], ck["no_improve"], ck["rollbacks"], ck["stopped_early"])


def _fresh(path: Path, why: str) -> None:
    """Say that a checkpoint is not resumed, and why (it is overwritten as training goes)."""
    print(f"edgeprune: not resuming from {path}: {why}; training starts afresh", file=sys.stderr)
    return None


def _same_shapes(model: nn.Module, state: dict) -> bool:
    own = model.state_dict()
    return isinstance(state, dict) and own.keys() == state.keys() and all(
        tuple(own[k].shape) == tuple(state[k].shape) for k in own)


def _clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _progress:
    """A rich progress display on an interactive stderr, else a no-op (None)."""

    def __init__(self, cfg: FinetuneConfig):
        self.enabled = cfg.progress and sys.stderr.isatty()
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


def recipe(data: DataBundle, epochs: int, seed: int = 0, threads: int = 1, progress: bool = False) -> FinetuneConfig:
    """The fine-tune configuration ``edgeprune prune`` uses for ``data``: distillation (alpha 0.7,
    T 4) from cached teacher logits, SGD + cosine from lr 0.01 over all ``epochs``, BN
    re-estimated first, collapsed epochs rolled back, the best epoch (or the start) kept."""
    return FinetuneConfig(epochs=epochs, threads=threads, batch_size=default_batch_size(len(data.train)),
                          seed=seed, progress=progress, patience=max(2, epochs))  # the cosine schedule runs out


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
                    progress: bool = False) -> FinetuneOutcome:
    """Fine-tune ``model`` in place with the pipeline's recipe, distilled from ``teacher``.

    The one function a comparison needs to give every pruned model the same treatment. With
    ``epochs=0`` the model only gets its BN statistics re-estimated (pruning leaves them
    describing channels that are gone). Accuracies are measured on ``split``."""
    cfg = recipe(data, epochs, seed, threads, progress)
    loader = data.loader(split, cfg.batch_size)
    pruned = evaluate(model, loader, data.num_classes)
    # the same batches train() re-estimates BN on first: doing it here too changes nothing
    recalibrate_bn(model, _train_loader(data, cfg, -1), cfg.bn_recalibration_batches)
    recal = evaluate(model, loader, data.num_classes)
    if epochs <= 0:
        return FinetuneOutcome(pruned, recal, recal, None)
    result = train(model, data, cfg, checkpoint, teacher=teacher, key=key)
    return FinetuneOutcome(pruned, recal, evaluate(model, loader, data.num_classes), result)
