"""Torch-Pruning (DepGraph) as edgeprune's default pruning engine.

Its dependency graph also defines edgeprune's group names (``groups.analyse``), so its
``groups`` are the reference every other engine is checked against. Groups are cut one after
another; each group's channel scores are taken on the model as the groups before it left it
(the behaviour edgeprune always had, kept so stored runs prune to the same channels).
"""
from __future__ import annotations

import copy

import numpy as np
import torch.nn as nn

from edgeprune.errors import UsageError
from edgeprune.pruning.groups import LAYER_TYPES, ChannelGroup, analyse, iter_groups
from edgeprune.pruning.importance import criterion, group_scores


class TorchPruningEngine:
    name = "torch-pruning"

    def groups(self, model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, ChannelGroup]:
        layers = [n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
        def ordered(names):  # model order, as every engine lists them
            return sorted(set(names) & set(layers), key=layers.index)
        return {name: ChannelGroup(name, g.channels, ordered(g.producers), ordered(g.consumers))
                for name, g in analyse(model, input_shape).groups.items()}

    def prune_to_widths(self, model: nn.Module, input_shape: tuple[int, ...], widths: dict[str, int],
                        importance: str = "l1", inplace: bool = False) -> nn.Module:
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
