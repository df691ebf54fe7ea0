"""A Session resolves and validates everything a command needs (target, model, data, table)
before any output is written, so bad input fails fast with one line and leaves nothing."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch.nn as nn

from edgeprune.errors import UsageError
from edgeprune.latency.profile import ProfileConfig, build_table, table_conditions
from edgeprune.latency.table import LatencyTable, TableMismatch
from edgeprune.pruning.groups import Structure, analyse
from edgeprune.runtime import Target, get_target
from edgeprune.runtime.spec import TargetSpec, load_spec
from edgeprune.search.knapsack import SearchConfig

DEFAULT_INPUT_SIZE = 32


@dataclass
class SessionConfig:
    model: str
    target: str = "ort-cpu"
    input_size: int | None = None
    weights: str | None = None
    data: str | None = None            # None: no data (measure/profile/search)
    data_root: str | None = None
    num_classes: int = 10              # used when there is no data
    train_samples: int | None = None
    val_samples: int | None = None
    test_samples: int | None = None
    baseline_epochs: int = 3           # trains a baseline when no weights and not pretrained
    importance: str = "l1"
    table: str | None = None
    profiles_dir: str = "profiles"
    allow_table_mismatch: bool = False
    reprofile: bool = False
    landings: bool = True              # correct the table with the loop's readings kept beside it
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    train_threads: int = 1            # 2 threads on a shared 2-core box is erratic (FACTS.md)
    device: str = "auto"              # where training runs (training.distributed.resolve_device)
    progress: bool = True


class Session:
    def __init__(self, cfg, spec, target, model, data, input_shape, structure):
        self.cfg: SessionConfig = cfg
        self.spec: TargetSpec = spec
        self.target: Target = target
        self.model: nn.Module = model
        self.data = data
        self.input_shape: tuple[int, ...] = input_shape
        self._structure: Structure | None = structure
        self.trained = cfg.weights is not None

    @classmethod
    def open(cls, cfg: SessionConfig) -> "Session":
        import torch

        from edgeprune.pruning.importance import CRITERIA
        from edgeprune.training.models import (
            build_model,
            check_input_size,
            input_channels,
            is_pretrained,
            load_weights,
        )
        if cfg.importance not in CRITERIA:  # else refused only after a profile has been written
            from edgeprune.errors import unknown
            raise unknown("importance criterion", cfg.importance, CRITERIA)
        if cfg.table and Path(cfg.table).is_dir():  # else profiling fails at the very end, writing it
            raise UsageError(f"latency table {cfg.table} is a directory; name a .json file")
        spec = load_spec(cfg.target)
        target = get_target(spec)
        # idle torch threads spin after each op and would steal the core latency runs on
        torch.set_num_threads(cfg.train_threads)
        size = cfg.input_size or spec.input_size or DEFAULT_INPUT_SIZE
        cfg = replace(cfg, input_size=size)
        data = _load_data(cfg) if cfg.data else None
        num_classes = data.num_classes if data else cfg.num_classes
        model = build_model(cfg.model, num_classes=num_classes)
        if cfg.weights:
            load_weights(model, cfg.weights)
        channels = input_channels(model)
        check_input_size(model, size, channels)
        if data is not None and data.train.tensors[0].shape[1] != channels:
            data = _match_channels(data, channels)
        shape = (spec.batch, channels, size, size)
        s = cls(cfg, spec, target, model.eval(), data, shape, None)
        s.trained = bool(cfg.weights) or is_pretrained(cfg.model) and num_classes == 1000
        return s

    @property
    def structure(self) -> Structure:
        """The model's channel groups and layers, analysed on first use: measuring needs no
        dependency graph, so an architecture Torch-Pruning cannot trace still measures."""
        if self._structure is None:
            self._structure = analyse(self.model, self.input_shape)
        return self._structure

    def scoring_device(self):
        """Where the accuracy search scores its candidates: the training device (``--device``),
        so a GPU host scores on its GPU, as it trains there."""
        from edgeprune.training.distributed import resolve_device
        return resolve_device(self.cfg.device)

    def ensure_trained(self, checkpoint: Path) -> None:
        """Train a baseline first when the model has no trained weights (resumable)."""
        if self.trained or self.cfg.baseline_epochs <= 0 or self.data is None:
            return
        from edgeprune.training.distributed import init
        from edgeprune.training.finetune import FinetuneConfig, train
        from edgeprune.training.models import save_weights
        ft = FinetuneConfig(epochs=self.cfg.baseline_epochs, threads=self.cfg.train_threads, lr=0.05,
                            batch_size=self.batch_size, progress=self.cfg.progress,
                            patience=self.cfg.baseline_epochs, device=self.cfg.device)
        train(self.model, self.data, ft, checkpoint, key=f"baseline:{self.cfg.model}:{self.cfg.input_size}")
        if init(self.cfg.device).is_main:  # under torchrun rank 0 alone writes
            save_weights(self.model, checkpoint.with_name("baseline.pt"))
        self.model.eval()
        self.trained = True

    @property
    def batch_size(self) -> int:
        """The fine-tune recipe's batch size for this data (``finetune.default_batch_size``)."""
        from edgeprune.training.finetune import default_batch_size
        return default_batch_size(len(self.data.train)) if self.data else 128

    @property
    def table_path(self) -> Path:
        if self.cfg.table:
            return Path(self.cfg.table)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.cfg.model)
        return Path(self.cfg.profiles_dir) / self.spec.name / f"{slug}-{self.cfg.input_size}px.json"

    def table(self) -> LatencyTable:
        """The stored table when it matches this target and model, else a freshly profiled one."""
        table = self._stored_table() or build_table(self.model, self.target, self.input_shape, self.table_path,
                                                    self.cfg.model, self.cfg.profile)
        if self.cfg.landings:
            table.attach_landings()
        return table

    def _stored_table(self) -> LatencyTable | None:
        expect = table_conditions(self.target, self.structure)
        path = self.table_path
        if path.exists() and not self.cfg.reprofile:
            try:
                return LatencyTable.load(path, expect, self.cfg.allow_table_mismatch)
            except TableMismatch as e:
                if self.cfg.table:  # asked for this file explicitly: say so, don't overwrite it
                    raise
                print(f"edgeprune: {e}; profiling again", file=sys.stderr)
        if self.cfg.table and not path.exists() and self.cfg.allow_table_mismatch:
            raise UsageError(f"latency table {path} does not exist")
        return None

    def pruned(self, widths: dict[str, int], weights: str | Path | None = None) -> nn.Module:
        """The session's model pruned to ``widths``, with the pruned model's trained ``weights``
        (a prune run's model.pt)."""
        from edgeprune.pruning.prune import prune_to_widths
        from edgeprune.training.models import load_weights
        model = prune_to_widths(self.model, self.input_shape, widths)
        return load_weights(model, weights) if weights else model

    def scores(self, model: nn.Module | None = None) -> dict[str, np.ndarray]:
        from edgeprune.pruning.importance import importances
        return importances(model or self.model, self.input_shape, self.cfg.importance)

    def widths(self, model: nn.Module) -> dict[str, int]:
        from edgeprune.pruning.prune import widths_of
        return widths_of(model, self.input_shape)

    def search_config(self, base: SearchConfig) -> SearchConfig:
        """``base`` with --protect names (modules or groups) resolved to group names."""
        if not base.protect:
            return base
        groups = self.structure.groups_of(base.protect) | (set(base.protect) & set(self.structure.groups))
        unknown = [p for p in base.protect if not self.structure.groups_of([p]) and p not in self.structure.groups]
        if unknown:
            from edgeprune.errors import suggest
            names = list(self.structure.layers) + list(self.structure.groups)
            raise UsageError(f"--protect {unknown[0]!r} matches no prunable layer{suggest(unknown[0], names)}")
        return replace(base, protect=sorted(groups))


def _load_data(cfg: SessionConfig):
    from edgeprune.training.data import DataConfig, load_data
    return load_data(DataConfig(name=cfg.data, root=cfg.data_root, input_size=cfg.input_size,
                                in_channels=3, train_samples=cfg.train_samples,
                                val_samples=cfg.val_samples, test_samples=cfg.test_samples))


def _match_channels(data, channels: int):
    """Give the data the model's input channel count (grey -> RGB was done at load)."""
    from torch.utils.data import TensorDataset
    def fix(ds):
        x, y = ds.tensors
        x = x[:, :channels] if x.shape[1] > channels else x.repeat(1, channels // x.shape[1], 1, 1)
        return TensorDataset(x, y)
    return replace(data, train=fix(data.train), val=fix(data.val), test=fix(data.test))
