"""The pruning engine as a protocol: which channels are coupled, and physical removal to widths.

Why a protocol: edgeprune's tables, plans, reports and run manifests speak of *channel groups by
name*, never of a pruning library. Torch-Pruning (DepGraph) is the default engine; NNI is the
second, because users compare with the tools they already use. Whichever engine runs, the group
names are edgeprune's (``groups.analyse``: a group is named after its DepGraph root module, the
names every stored table is keyed by): an engine finds its own coupling of layers and maps it
onto those names, and must give the same names and channel counts for the same model.

Which channels a group keeps is decided by edgeprune's importance criteria (``importance.py``),
by name, for every engine: the search ranks and scores candidates with them, so the final model
keeps the channels the plan was made for (issue 9), whichever library cuts them.

Engines are imported only when asked for, so ``import edgeprune`` never imports NNI.
"""
from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import torch.nn as nn

from edgeprune.errors import UsageError
from edgeprune.pruning.groups import ChannelGroup

DEFAULT_ENGINE = "torch-pruning"
# name -> "module:class"; the module is imported on first use
ENGINES = {
    "torch-pruning": "edgeprune.pruning.tp_engine:TorchPruningEngine",
    "nni": "edgeprune.pruning.nni_engine:NNIEngine",
}


@runtime_checkable
class PruningEngine(Protocol):
    """What edgeprune needs from a pruning library."""

    name: str

    def groups(self, model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, ChannelGroup]:
        """Coupled channel groups by edgeprune's group name; ``producers`` are the Conv/Linear
        layers whose output channels are the group's channels (for the input ``input_shape``)."""
        ...

    def prune_to_widths(self, model: nn.Module, input_shape: tuple[int, ...], widths: dict[str, int],
                        importance: str = "l1", inplace: bool = False) -> nn.Module:
        """``model`` (a copy unless ``inplace``, in eval mode) with each group named in ``widths``
        physically cut to that many channels, keeping the channels ``importance`` ranks highest; a group not
        named, or asked for at least its width, stays whole. Raises UsageError naming the group
        when a width is below 1, a name is unknown, or the engine cannot produce the width."""
        ...


def engine_names() -> list[str]:
    return list(ENGINES)


def get_engine(name: str | None = None) -> PruningEngine:
    """The engine called ``name`` (default ``torch-pruning``). An unknown name is one UsageError
    line listing the known ones; an engine whose package is missing raises MissingBackend (a
    UsageError carrying the ``pip install 'edgeprune[...]'`` hint) here, before any work."""
    name = name or DEFAULT_ENGINE
    if name not in ENGINES:
        raise UsageError(f"unknown pruning engine {name!r}; known engines: {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)()
