"""Per-channel importance of each group, pluggable by name.

Scores are normalised to mean 1 within a group, so "importance kept" is comparable across
groups of different sizes; the search trades it against milliseconds saved.
"""
from __future__ import annotations

import numpy as np
import torch.nn as nn

from .errors import unknown

CRITERIA = {
    "l1": ("GroupMagnitudeImportance", {"p": 1}),
    "l2": ("GroupMagnitudeImportance", {"p": 2}),
    "bn_scale": ("BNScaleImportance", {}),
    "fpgm": ("FPGMImportance", {}),
    "lamp": ("LAMPImportance", {}),
    "random": ("RandomImportance", {}),
}


def criterion(name: str = "l1"):
    """A Torch-Pruning importance object for ``name`` (l1, l2, bn_scale, fpgm, lamp, random)."""
    import torch_pruning as tp
    if name not in CRITERIA:
        raise unknown("importance criterion", name, CRITERIA)
    cls, kwargs = CRITERIA[name]
    return getattr(tp.importance, cls)(**kwargs)


def group_scores(imp, group) -> np.ndarray:
    """Per-channel scores of one tp.Group, mean-normalised, in channel order."""
    s = imp(group)
    s = np.zeros(len(group[0].idxs)) if s is None else s.detach().double().cpu().numpy()
    s = np.nan_to_num(np.abs(s))
    mean = s.mean()
    return s / mean if mean > 0 else np.ones_like(s)


def importances(model: nn.Module, input_shape: tuple[int, ...], name: str = "l1") -> dict[str, np.ndarray]:
    """Group name -> scores sorted high to low (what keeping the top-k of a group retains)."""
    from .groups import iter_groups
    imp = criterion(name)
    return {g: np.sort(group_scores(imp, group))[::-1].copy()
            for g, group, _ in iter_groups(model, input_shape)}
