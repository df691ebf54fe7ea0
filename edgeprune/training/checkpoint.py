"""What survives an interrupted training: the state besides the weights (``TrainState``), and
the checkpoint file that holds both, written atomically and read with ``weights_only=True``.

Every tensor is saved on the CPU, whatever device trained it, so a checkpoint written on a GPU
resumes on a CPU (or another GPU) and vice versa; loading moves the tensors to the model's
device (``load_state_dict`` copies, and the optimiser casts its state to its parameters').
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from edgeprune.artifacts.onnxio import atomic_write
from edgeprune.errors import MACHINE_ERRORS
from edgeprune.training.metrics import Metrics

CHECKPOINT_FORMAT = 2  # 2: the recipe trains through dips (checkpoints of 1 resumed another rule)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val: dict
    lr: float
    seconds: float
    rolled_back: bool


@dataclass
class TrainState:
    """Everything a checkpoint holds besides model and optimiser weights."""
    epoch: int  # epochs completed
    best_state: dict
    best_val: Metrics
    history: list[EpochLog] = field(default_factory=list)
    lr_scale: float = 1.0
    no_improve: int = 0
    rollbacks: int = 0
    stopped_early: bool = False


def save_checkpoint(path: Path, key: str, model: nn.Module, opt, state: TrainState, config: dict,
                    scaler=None) -> None:
    """Only tensors (on the CPU) and primitives, so it loads with ``weights_only=True``."""
    payload = {
        "format": CHECKPOINT_FORMAT, "key": key, "epoch": state.epoch,
        "model": to_cpu(model.state_dict()), "optimizer": to_cpu(opt.state_dict()),
        "best_state": to_cpu(state.best_state), "best_val": state.best_val.to_dict(),
        "history": [asdict(h) for h in state.history], "lr_scale": state.lr_scale,
        "no_improve": state.no_improve, "rollbacks": state.rollbacks,
        "stopped_early": state.stopped_early, "config": config,
    }
    if scaler is not None:  # float16's loss scale: a resumed run starts from the same one
        payload["scaler"] = scaler.state_dict()
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path | None, key: str, model: nn.Module) -> dict | None:
    """The checkpoint's contents when ``path`` holds a readable one for ``key`` and this model;
    else None, with one line on stderr saying why when there was a file."""
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
    return ck


def restore(ck: dict, model: nn.Module, opt, scaler=None) -> TrainState:
    """Load a ``read_checkpoint`` result into ``model``, ``opt`` (and ``scaler``)."""
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    if scaler is not None and "scaler" in ck:
        scaler.load_state_dict(ck["scaler"])
    history = [EpochLog(**h) for h in ck["history"]]
    return TrainState(ck["epoch"], ck["best_state"], Metrics(**ck["best_val"]), history,
                      ck["lr_scale"], ck["no_improve"], ck["rollbacks"], ck["stopped_early"])


def to_cpu(obj):
    """``obj`` (nested dicts/lists of tensors, as state dicts are) with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def _fresh(path: Path, why: str) -> None:
    """Say that a checkpoint is not resumed, and why (it is overwritten as training goes)."""
    print(f"edgeprune: not resuming from {path}: {why}; training starts afresh", file=sys.stderr)
    return None


def _same_shapes(model: nn.Module, state: dict) -> bool:
    own = model.state_dict()
    return isinstance(state, dict) and own.keys() == state.keys() and all(
        tuple(own[k].shape) == tuple(state[k].shape) for k in own)
