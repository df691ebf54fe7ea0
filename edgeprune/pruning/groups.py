"""The model's prunable structure: channel groups (DepGraph) and the layers whose cost they set.

A ``ChannelGroup`` is a set of channels that must be pruned together (a residual stage, a
depthwise conv and its expansion). Each Conv/Linear ``Layer`` reads its input width from one
group (or a fixed size) and writes its output width to another, so a width per group decides
every layer's (c_in, c_out) — the quantities a latency table is keyed by.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from edgeprune.artifacts.onnxio import module_call_order
from edgeprune.errors import MACHINE_ERRORS, UsageError

LAYER_TYPES = (nn.Conv2d, nn.Linear)


@dataclass
class ChannelGroup:
    name: str
    channels: int
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)


@dataclass
class Layer:
    name: str
    in_channels: int
    out_channels: int
    in_group: str | None
    out_group: str | None
    depthwise: bool = False
    kernel: int = 1   # kernel area (kh*kw): weights = c_in*c_out*kernel (c_out*kernel if depthwise)

    @property
    def axes(self) -> list[str]:
        """The groups this layer's cost depends on (0, 1 or 2)."""
        axes = [g for g in (self.in_group, self.out_group) if g is not None]
        return list(dict.fromkeys(axes))

    def dims(self, widths: dict[str, int]) -> tuple[int, int]:
        c_in = widths[self.in_group] if self.in_group else self.in_channels
        c_out = widths[self.out_group] if self.out_group else self.out_channels
        return c_in, c_out


@dataclass
class Structure:
    groups: dict[str, ChannelGroup]
    layers: dict[str, Layer]
    input_shape: tuple[int, ...]
    signature: str

    def full_widths(self) -> dict[str, int]:
        return {g.name: g.channels for g in self.groups.values()}

    def groups_of(self, module_names: list[str]) -> set[str]:
        """Groups that contain any of the named modules (or modules under them)."""
        def hit(m: str) -> bool:
            return any(m == n or m.startswith(n + ".") for n in module_names)
        return {g.name for g in self.groups.values() if any(hit(m) for m in g.producers + g.consumers)}

    def layers_touching(self, group: str) -> list[Layer]:
        return [l for l in self.layers.values() if group in (l.in_group, l.out_group)]

    def to_dict(self) -> dict:
        return {"groups": {k: asdict(v) for k, v in self.groups.items()},
                "layers": {k: asdict(v) for k, v in self.layers.items()},
                "input_shape": list(self.input_shape), "signature": self.signature}


def output_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[nn.Module]:
    """The layer producing the logits: never pruned (its width is the number of classes)."""
    order = module_call_order(model, input_shape)
    modules = dict(model.named_modules())
    return [modules[order[-1]]] if order else []


def dependency_graph(model: nn.Module, input_shape: tuple[int, ...]):
    import torch_pruning as tp
    model.eval()
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(*input_shape))


def iter_groups(model: nn.Module, input_shape: tuple[int, ...], dg=None):
    """(name, tp.Group) pairs; a group is named after its root module."""
    dg = dg or dependency_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    ignored = output_layers(model, input_shape)
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=LAYER_TYPES):
        yield names[group[0].dep.target.module], group, dg


def analyse(model: nn.Module, input_shape: tuple[int, ...]) -> Structure:
    """Groups and layers of ``model`` for an input of ``input_shape`` (N, C, H, W); one clear
    line (UsageError) when the dependency graph cannot be built for this architecture
    (shufflenet_v2 raised a ZeroDivisionError deep inside Torch-Pruning)."""
    _refuse_attention(model)
    try:
        return _analyse(model, input_shape)
    except Exception as e:
        if isinstance(e, MACHINE_ERRORS):
            raise
        import traceback
        frame = traceback.extract_tb(e.__traceback__)[-1]
        raise UsageError(f"cannot find the channel groups of this {type(model).__name__}: Torch-Pruning's dependency "
                         f"graph failed with {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                         f"(in {frame.name}, {Path(frame.filename).name}:{frame.lineno}); this architecture cannot "
                         f"be pruned here, though `edgeprune measure` still measures it") from None


def _refuse_attention(model: nn.Module) -> None:
    """Attention layers are not channel groups edgeprune can cut, and Torch-Pruning's graph of
    them does not end here: on swin_t it recursed for over 3 minutes (issue 10) before any
    answer. Say so at once, naming the first such layer."""
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention"):
            raise UsageError(f"cannot prune this {type(model).__name__}: it has attention layers ({type(m).__name__} "
                             f"at {name}), and edgeprune prunes convolutional channel groups only; "
                             f"`edgeprune measure` still measures it")


def _analyse(model: nn.Module, input_shape: tuple[int, ...]) -> Structure:
    names = {m: n for n, m in model.named_modules()}
    layers = {n: _layer(n, m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    order = module_call_order(model, input_shape)
    layers = {n: layers[n] for n in order if n in layers}
    groups: dict[str, ChannelGroup] = {}
    for gname, group, dg in iter_groups(model, input_shape):
        cg = ChannelGroup(gname, len(group[0].idxs))
        for dep, _ in group:
            module = dep.target.module
            mname = names.get(module)
            if mname is None:
                continue
            if dg.is_out_channel_pruning_fn(dep.handler):
                cg.producers.append(mname)
                if mname in layers:
                    layers[mname].out_group = gname
                    if layers[mname].depthwise:
                        layers[mname].in_group = gname
            elif dg.is_in_channel_pruning_fn(dep.handler):
                cg.consumers.append(mname)
                if mname in layers and not layers[mname].depthwise:
                    layers[mname].in_group = gname
        groups[gname] = cg
    return Structure(groups, layers, tuple(input_shape), _signature(layers, input_shape))


def _layer(name: str, m: nn.Module) -> Layer:
    if isinstance(m, nn.Conv2d):
        dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        return Layer(name, m.in_channels, m.out_channels, None, None, dw, m.kernel_size[0] * m.kernel_size[1])
    return Layer(name, m.in_features, m.out_features, None, None)


def _signature(layers: dict[str, Layer], input_shape) -> str:
    """Hash of the architecture as latency sees it (shapes, not weights)."""
    blob = json.dumps([list(input_shape)] + [[l.name, l.in_channels, l.out_channels, l.depthwise]
                                             for l in layers.values()])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
