"""Physical pruning: remove channels so each group has the requested width.

The kept channels are the most important of each group; the model becomes smaller in
params, MACs and file size (the engine rewrites the layers), it is not masked. Which library
does the cutting is a ``PruningEngine`` (``engine.py``): Torch-Pruning by default, or NNI.
"""
from __future__ import annotations

import torch.nn as nn

from edgeprune.pruning.groups import iter_groups


def prune_to_widths(model: nn.Module, input_shape: tuple[int, ...], widths: dict[str, int],
                    importance: str = "l1", inplace: bool = False, engine: str | None = None) -> nn.Module:
    """Return ``model`` with every group named in ``widths`` cut to that many channels by
    ``engine`` (default ``torch-pruning``)."""
    from edgeprune.pruning.engine import get_engine
    return get_engine(engine).prune_to_widths(model, input_shape, widths, importance, inplace)


def widths_of(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Current width of every group of ``model`` (by edgeprune's group names, whichever engine
    pruned it)."""
    return {name: len(group[0].idxs) for name, group, _ in iter_groups(model, input_shape)}
