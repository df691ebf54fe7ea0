"""Physical pruning: remove channels so each group has the requested width.

The kept channels are the most important of each group; the model becomes smaller in
params, MACs and file size (Torch-Pruning rewrites the layers), it is not masked.
"""
from __future__ import annotations

import copy

import numpy as np
import torch.nn as nn

from edgeprune.errors import UsageError
from edgeprune.pruning.groups import iter_groups
from edgeprune.pruning.importance import criterion, group_scores


def prune_to_widths(model: nn.Module, input_shape: tuple[int, ...], widths: dict[str, int],
                    importance: str = "l1", inplace: bool = False) -> nn.Module:
    """Return ``model`` with every group named in ``widths`` cut to that many channels."""
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    imp = criterion(importance)
    seen = set()
    for name, group, dg in iter_groups(model, input_shape):
        seen.add(name)
        want = widths.get(name)
        have = len(group[0].idxs)
        if want is None or want >= have:
            continue
        if want < 1:
            raise UsageError(f"group {name}: width must be at least 1, got {want}")
        scores = group_scores(imp, group)
        if scores is None:  # the criterion cannot rank this group (importances() says so)
            scores = np.ones(have)
        drop = sorted(int(i) for i in scores.argsort()[: have - want])
        dep = group[0].dep
        dg.get_pruning_group(dep.target.module, dep.handler, drop).prune()
    missing = set(widths) - seen
    if missing:
        raise UsageError(f"unknown channel groups for this model: {', '.join(sorted(missing))}")
    return model


def widths_of(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Current width of every group of ``model``."""
    return {name: len(group[0].idxs) for name, group, _ in iter_groups(model, input_shape)}
