"""One rank of test_distributed's two-process runs, started by torchrun: trains tiny_resnet on
a digits subset on the CPU (gloo), in its own directory ``OUT/rank<RANK>`` so the test can see
which ranks wrote what. ``setup()`` is shared with the test's single-process runs.

The BatchNorm-free run is interrupted in its second epoch and resumed (from the checkpoint rank 0
wrote, through the same process group): its result must still equal one process's."""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from edgeprune.training import finetune
from edgeprune.training.data import DataConfig, load_data
from edgeprune.training.finetune import FinetuneConfig, train
from edgeprune.training.models import build_model, save_weights


def data():
    return load_data(DataConfig(input_size=16, train_samples=512, val_samples=256, test_samples=64))


def setup(kind: str, epochs: int = 2):
    """(model, teacher, config) of a run, the same on every rank and in the single-process run.

    ``plain``: a CNN without BatchNorm distilled from another: DDP must match one process to
    float rounding. ``bn``: tiny_resnet, whose BatchNorm normalises each rank's half batch."""
    torch.manual_seed(0)
    cfg = FinetuneConfig(epochs=epochs, lr=0.05, batch_size=32, patience=epochs, threads=1,
                         progress=False, device="cpu")
    if kind == "bn":
        return build_model("tiny_resnet", num_classes=10), None, cfg
    model, teacher = plain_cnn(), plain_cnn()  # an untrained teacher: alpha 0.3 leaves CE to learn from
    return model, teacher, replace(cfg, lr=0.1, kd_alpha=0.3)


def plain_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def main(out: str) -> None:
    rank = int(os.environ["RANK"])
    work = Path(out) / f"rank{rank}"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    bundle = data()
    model, teacher, cfg = setup("plain")
    with interrupted_in_second_epoch():
        train(model, bundle, cfg, checkpoint=Path("plain.ckpt"), key="plain", teacher=teacher)
    model, teacher, cfg = setup("plain")  # a new process would start from scratch, as here
    result = train(model, bundle, cfg, checkpoint=Path("plain.ckpt"), key="plain", teacher=teacher)
    finish(model, result, rank, "plain")
    model, _, cfg = setup("bn")
    result = train(model, bundle, cfg, checkpoint=Path("bn.ckpt"), key="bn")
    finish(model, result, rank, "bn")


@contextmanager
def interrupted_in_second_epoch():
    """Ctrl-C on every rank at the second epoch's validation (the third: the start is the first),
    after epoch 1's checkpoint was written and before epoch 2's; the error is swallowed here."""
    real, calls = finetune._evaluate, []  # called on every rank (evaluate on rank 0 alone)

    def evaluate(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)
    finetune._evaluate = evaluate
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        finetune._evaluate = real
    assert len(calls) == 3, "not interrupted"


def finish(model, result, rank: int, kind: str) -> None:
    assert all(p.device.type == "cpu" for p in model.parameters())
    if rank == 0:  # what a command does with train()'s result: rank 0 alone writes it
        save_weights(model, f"weights-{kind}.pt")
        Path(f"result-{kind}.json").write_text(json.dumps(result.to_dict()))


if __name__ == "__main__":
    main(sys.argv[1])
