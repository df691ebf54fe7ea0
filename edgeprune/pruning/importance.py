"""Per-channel importance of each group, pluggable by name.

Scores are normalised to mean 1 within a group, so "importance kept" is comparable across
groups of different sizes; the search trades it against milliseconds saved.
"""
from __future__ import annotations

import sys

import numpy as np
import torch.nn as nn

from edgeprune.errors import unknown

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


def group_scores(imp, group) -> np.ndarray | None:
    """Per-channel scores of one tp.Group, mean-normalised, in channel order; None when the
    criterion cannot score it (bn_scale on a group without BatchNorm, all-zero weights)."""
    s = imp(group)
    if s is None:
        return None
    s = np.nan_to_num(np.abs(s.detach().double().cpu().numpy()))
    mean = s.mean()
    return s / mean if mean > 0 else None


def channel_scores(model: nn.Module, input_shape: tuple[int, ...], name: str = "l1",
                   unscored: list[str] | None = None) -> dict[str, np.ndarray]:
    """Group name -> scores in channel order, all taken on ``model`` as it is. A group the
    criterion cannot score gets equal scores (and its name appended to ``unscored``). Engines
    other than Torch-Pruning choose the channels to keep from these, so every engine keeps what
    edgeprune's criterion ranks highest."""
    from edgeprune.pruning.groups import iter_groups
    imp = criterion(name)
    out = {}
    for g, group, _ in iter_groups(model, input_shape):
        s = group_scores(imp, group)
        if s is None:
            if unscored is not None:
                unscored.append(g)
            s = np.ones(len(group[0].idxs))
        out[g] = s
    return out


def importances(model: nn.Module, input_shape: tuple[int, ...], name: str = "l1") -> dict[str, np.ndarray]:
    """Group name -> scores sorted high to low (what keeping the top-k of a group retains).

    A group the criterion cannot score counts all its channels equally, and a line on stderr
    says which groups those are (the search then cuts them by latency alone)."""
    unscored: list[str] = []
    out = {g: np.sort(s)[::-1].copy() for g, s in channel_scores(model, input_shape, name, unscored).items()}
    if unscored:
        print(f"edgeprune: importance {name!r} cannot score {len(unscored)} group(s) ({', '.join(unscored[:4])}"
              f"{', ...' if len(unscored) > 4 else ''}); their channels count equally", file=sys.stderr)
    return out
