"""Classification metrics from a confusion matrix, so pruned and unpruned models are compared on
more than top-1 accuracy (pruning often hurts a few classes badly while accuracy barely moves).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Metrics:
    accuracy: float
    precision: float
    recall: float
    f1: float
    n: int
    loss: float

    def to_dict(self) -> dict:
        return asdict(self)


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """cm[t, p] = number of samples of true class t predicted as p."""
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def from_confusion(cm: torch.Tensor, loss: float = float("nan")) -> Metrics:
    """Accuracy and macro precision/recall/F1; classes never seen nor predicted are skipped.

    A class with no predictions has precision 0 (and one never present has recall 0), as in
    scikit-learn's ``zero_division=0``, so a model that ignores a class is penalised.
    """
    cm = cm.double()
    tp = cm.diag()
    true = cm.sum(1)
    pred = cm.sum(0)
    n = int(cm.sum().item())
    present = (true + pred) > 0
    precision = torch.where(pred > 0, tp / pred.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(true > 0, tp / true.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))

    def macro(v: torch.Tensor) -> float:
        return float(v[present].mean().item()) if present.any() else 0.0

    return Metrics(
        accuracy=float(tp.sum().item() / n) if n else 0.0,
        precision=macro(precision), recall=macro(recall), f1=macro(f1), n=n, loss=float(loss),
    )


def evaluate(model: nn.Module, loader, num_classes: int) -> Metrics:
    """Metrics of ``model`` over ``loader`` in eval mode; the caller's train/eval mode is kept."""
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    cm = None
    loss_sum, n = 0.0, 0
    model.eval()
    try:
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                logits = model(x)
                k = max(num_classes, logits.shape[1])  # a wider head may predict extra classes
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                n += len(y)
                part = confusion_matrix(y.cpu(), logits.argmax(1).cpu(), k)
                cm = part if cm is None else _add(cm, part)
    finally:
        model.train(was_training)
    if cm is None:
        cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    return from_confusion(cm, loss_sum / n if n else float("nan"))


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape == b.shape:
        return a + b
    k = max(a.shape[0], b.shape[0])
    out = torch.zeros(k, k, dtype=a.dtype)
    out[: a.shape[0], : a.shape[0]] += a
    out[: b.shape[0], : b.shape[0]] += b
    return out
