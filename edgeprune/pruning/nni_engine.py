"""NNI 3.0 as edgeprune's second pruning engine (``--engine nni``), and the *uniform L1* baseline
(``L1NormPruner`` + ``ModelSpeedup``).

Why: users compare edgeprune with what the common tools produce, and NNI is one of them. NNI 3.0
(2023) predates torch 2.14; its torch.fx-based tracer fails there in two places (FACTS.md). Both
fixes are monkeypatches held only during one call (``torch_compat``): importing edgeprune never
changes NNI or torch for anyone else.

NNI has no channel-alignment option (its ``align`` config key aligns a bias mask to its weight
mask), so ``round_to`` is applied here: each conv gets the sparse ratio that leaves
``round_to * round(keep * c / round_to)`` channels, the rule of edgeprune's Torch-Pruning uniform
baseline. Residual-tied convs share one mask through NNI's dependency groups (without them NNI
left odd widths such as 227 in tied layers, which ran slower).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import torch
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from edgeprune.errors import MissingBackend, UsageError
from edgeprune.pruning.groups import LAYER_TYPES, ChannelGroup, analyse, output_layers

NNI_LOGGERS = ("nni", "Shape Dependency")  # NNI logs every module replacement at INFO
SPEEDUP_LOG = logging.Logger("edgeprune.nni_speedup", logging.ERROR)


def _tracer_module():
    import nni.common.concrete_trace_utils.concrete_tracer as ct
    return ct


@contextlib.contextmanager
def leaf_function_fix():
    """Fix 1: ``ConcreteTracer.default_autowrap_leaf_function`` lists torch builtins to wrap; on
    torch 2.14 ``TensorBase._make_subclass``, ``_make_wrapper_subclass``, ``_dtensor__new__`` and
    ``unique_dim`` have ``__module__ = None`` and ``ConcreteTracer.trace`` fails on
    ``func.__module__.startswith`` (AttributeError). They build tensor subclasses, which a CNN's
    forward never calls, so a copy of the dict without them stands in while the block runs."""
    tracer = _tracer_module().ConcreteTracer
    leaf = tracer.default_autowrap_leaf_function
    tracer.default_autowrap_leaf_function = {
        f: v for f, v in leaf.items() if getattr(f, "__module__", "") is not None}
    try:
        yield
    finally:
        tracer.default_autowrap_leaf_function = leaf


@contextlib.contextmanager
def is_impure_fix():
    """Fix 2: ``concrete_trace`` swaps ``Node.is_impure`` for ``node_is_impure_wrapper(node)``
    during dead-code elimination, but torch 2.14's ``Graph.eliminate_dead_code`` calls
    ``node.is_impure(impure_random)`` (TypeError: 2 positional arguments). The module global is
    replaced by a wrapper that accepts and ignores the flag (NNI's old behaviour)."""
    ct = _tracer_module()
    impure = ct.node_is_impure_wrapper
    ct.node_is_impure_wrapper = lambda node, impure_random=True: impure(node)
    try:
        yield
    finally:
        ct.node_is_impure_wrapper = impure


@contextlib.contextmanager
def torch_compat():
    """Both fixes NNI 3.0's tracer needs on torch 2.14, held only while the block runs."""
    with leaf_function_fix(), is_impure_fix():
        yield


@contextlib.contextmanager
def quiet_nni():
    """Hide NNI's noise: a line per module at INFO (hundreds for a ResNet), a ``print`` per
    dependency set on stdout, an expected 'both dim0 and dim1 masks' warning per conv pair, and
    torch deprecation warnings from its imports. Errors still show (ModelSpeedup forces its own
    logger to INFO unless given one, hence ``SPEEDUP_LOG``: detached, errors only)."""
    loggers = [logging.getLogger(n) for n in NNI_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def sparse_ratio(channels: int, ratio: float, round_to: int) -> float:
    """The NNI ``sparse_ratio`` that prunes a ``channels``-wide conv to the rounded keep width.

    NNI prunes ``int(channels * sparse_ratio)`` channels; asking for ``pruned + 0.5`` channels
    makes that floor exact despite float error.
    """
    if round_to <= 1:
        return ratio
    keep = min(channels, max(round_to, round_to * round((1 - ratio) * channels / round_to)))
    return 0.0 if keep >= channels else (channels - keep + 0.5) / channels


def nni_uniform(model: nn.Module, input_shape: tuple[int, ...], ratio: float,
                round_to: int = 8) -> nn.Module:
    """A deep copy of ``model`` with ``ratio`` of every Conv2d's output channels removed by NNI.

    L1-norm filter ranking, dependency-aware (convs tied by residual adds share one mask), then
    ``ModelSpeedup`` so the channels are really gone. The logits layer is never pruned. ``model``
    itself is left untouched. ``round_to=1`` gives NNI's own widths (``int(c * ratio)`` pruned).
    """
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"ratio must be in [0, 1), got {ratio}")
    try:
        with quiet_nni():
            from nni.common.concrete_trace_utils import concrete_trace
            from nni.compression.pruning import L1NormPruner
            from nni.compression.speedup import ModelSpeedup
            from nni.compression.speedup.dependency import (
                auto_set_denpendency_group_ids,
            )
    except ImportError as e:  # message: "... install it with: pip install 'edgeprune[nni]'"
        raise MissingBackend("nni", "nni", what="the NNI uniform baseline") from e

    pruned = copy.deepcopy(model)
    training = pruned.training
    pruned.eval()
    skip = {id(m) for m in output_layers(pruned, input_shape)}
    config = [{"op_names": [name], "sparse_ratio": sparse_ratio(m.out_channels, ratio, round_to)}
              for name, m in pruned.named_modules()
              if isinstance(m, nn.Conv2d) and id(m) not in skip]
    config = [c for c in config if c["sparse_ratio"] > 0]
    if not config:
        return pruned.train(training)
    # fork_rng: NNI draws random inputs, the caller's seeded RNG stream must not move.
    # No torch.no_grad: ModelSpeedup infers the masks of other layers from gradients.
    with quiet_nni(), torch_compat(), torch.random.fork_rng(devices=[]):
        dummy = torch.rand(*input_shape)
        graph = concrete_trace(pruned, (dummy,))
        # shapes first: without them NNI's dependency search stops at every add, so a chain of
        # residual blocks (ResNet-18's layer1) splits into groups of two and widths come out odd
        ShapeProp(graph).propagate(dummy)
        config = auto_set_denpendency_group_ids(graph, config)
        pruner = L1NormPruner(pruned, config)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        ModelSpeedup(pruned, dummy, masks, graph_module=graph, logger=SPEEDUP_LOG).speedup_model()
    return pruned.train(training)


class NNIEngine:
    """The ``PruningEngine`` on NNI: NNI's own channel-dependency analysis couples the layers,
    edgeprune's importance criterion picks the channels (one mask per group, shared by all its
    layers), and ``ModelSpeedup`` removes them and propagates the cut to BatchNorms and consumers.

    NNI's groups are named by edgeprune's structure (``groups.analyse``) through their layers:
    a set of layers NNI couples must be exactly one of edgeprune's groups, else the model cannot
    be pruned with this engine (UsageError naming the group). Unlike Torch-Pruning, which scores
    each group after the cuts before it, all groups here are scored on the unpruned model, so
    the two keep the same channels whenever a group's scores do not depend on the others' cuts
    (one group cut, or criteria on the producers alone)."""

    name = "nni"

    def __init__(self):
        _import_nni()

    def groups(self, model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, ChannelGroup]:
        model = copy.deepcopy(model).eval()
        return self._groups(model, input_shape, _trace(model, input_shape))

    def prune_to_widths(self, model: nn.Module, input_shape: tuple[int, ...], widths: dict[str, int],
                        importance: str = "l1", inplace: bool = False) -> nn.Module:
        from edgeprune.pruning.importance import channel_scores
        from edgeprune.pruning.prune import widths_of
        ModelSpeedup = _import_nni()
        model = model if inplace else copy.deepcopy(model)
        model.eval()  # as Torch-Pruning leaves it
        reference = analyse(model, input_shape).groups
        unknown = set(widths) - set(reference)
        if unknown:
            raise UsageError(f"unknown channel groups for this model: {', '.join(sorted(unknown))}")
        for name, want in widths.items():
            if want < 1:
                raise UsageError(f"group {name}: width must be at least 1, got {want}")
        cut = {g: w for g, w in widths.items() if w < reference[g].channels}
        if not cut:
            return model
        graph = _trace(model, input_shape)
        groups = self._groups(model, input_shape, graph, reference)
        for name in cut:
            if name not in groups:
                raise UsageError(f"the nni engine cannot prune group {name}: NNI's dependency analysis does not "
                                 "find its layers as one channel group (use --engine torch-pruning)")
        scores = channel_scores(model, input_shape, importance)
        modules = dict(model.named_modules())
        masks = {}
        for name, want in cut.items():
            drop = torch.as_tensor(sorted(int(i) for i in scores[name].argsort()[: groups[name].channels - want]))
            for layer in groups[name].producers:  # every coupled layer gets the group's one mask
                masks[layer] = {k: _mask(getattr(modules[layer], k), drop) for k in ("weight", "bias")
                                if getattr(modules[layer], k, None) is not None}
        # fork_rng: NNI draws random inputs, the caller's seeded RNG stream must not move.
        # No torch.no_grad: ModelSpeedup infers the masks of other layers from gradients.
        with quiet_nni(), torch_compat(), torch.random.fork_rng(devices=[]):
            ModelSpeedup(model, torch.rand(*input_shape), masks, graph_module=graph,
                         logger=SPEEDUP_LOG).speedup_model()
        got, expect = widths_of(model, input_shape), {**{g: c.channels for g, c in reference.items()}, **cut}
        wrong = [g for g in expect if got.get(g) != expect[g]]
        if wrong:
            g = wrong[0]
            raise UsageError(f"the nni engine left group {g} at {got.get(g)} channels, not {expect[g]} "
                             f"({len(wrong)} group(s) wrong; use --engine torch-pruning)")
        return model

    @staticmethod
    def _groups(model: nn.Module, input_shape: tuple[int, ...], graph,
                reference: dict[str, ChannelGroup] | None = None) -> dict[str, ChannelGroup]:
        """NNI's coupled layer sets, named after the edgeprune group with the same layers."""
        from nni.compression.speedup.dependency import build_channel_dependency
        reference = reference if reference is not None else analyse(model, input_shape).groups
        layers = {n: m for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
        logits = {id(m) for m in output_layers(model, input_shape)}
        with quiet_nni(), torch_compat():
            tied = [{n.target for n in s if n.target in layers} for s in build_channel_dependency(graph)]
        seen = set().union(*tied) if tied else set()
        sets = [s for s in tied if s] + [{n} for n in layers if n not in seen]
        by_layers = {frozenset(p for p in g.producers if p in layers): name for name, g in reference.items()}
        out = {}
        for s in sets:
            if any(id(layers[n]) in logits for n in s):
                continue  # the logits are never pruned
            name = by_layers.get(frozenset(s))
            if name is None:
                overlap = sorted(g for k, g in by_layers.items() if k & s)
                if not overlap:
                    continue  # layers edgeprune does not prune
                raise UsageError(f"the nni engine couples {', '.join(sorted(s))} differently from edgeprune's "
                                 f"channel group {overlap[0]}; prune this model with --engine torch-pruning")
            widths = {_out_channels(layers[n]) for n in s}
            if len(widths) != 1:
                raise UsageError(f"the nni engine couples layers of different widths in group {name}")
            out[name] = ChannelGroup(name, widths.pop(), sorted(s, key=list(layers).index))
        return {name: out[name] for name in reference if name in out}  # edgeprune's order


def _import_nni():
    """NNI's ModelSpeedup, or MissingBackend with the install hint."""
    try:
        with quiet_nni():
            from nni.compression.speedup import ModelSpeedup
    except ImportError as e:  # message: "... install it with: pip install 'edgeprune[nni]'"
        raise MissingBackend("nni", "nni", what="--engine nni") from e
    return ModelSpeedup


def _trace(model: nn.Module, input_shape: tuple[int, ...]):
    """NNI's torch.fx trace of ``model`` with shapes (its dependency search needs them)."""
    from nni.common.concrete_trace_utils import concrete_trace
    with quiet_nni(), torch_compat(), torch.random.fork_rng(devices=[]):
        dummy = torch.rand(*input_shape)
        graph = concrete_trace(model, (dummy,))
        ShapeProp(graph).propagate(dummy)
    return graph


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def _mask(param: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(param)
    mask[drop] = 0
    return mask
