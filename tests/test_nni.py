"""NNI 3.0 engine for the uniform L1 baseline: real channel removal, residual-consistent widths,
L1 ranking, the input model untouched, and the torch 2.14 fixes scoped to the call."""
from __future__ import annotations

import copy
import inspect
import sys

import pytest
import torch
import torch.nn as nn
from torch.fx import Node

from edgeprune.errors import UsageError
from edgeprune.pruning import nni_engine
from edgeprune.pruning.nni_engine import nni_uniform
from edgeprune.training.models import build_model

SHAPE = (1, 3, 32, 32)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def kept(orig: nn.Conv2d, pruned: nn.Conv2d, keep_in: list[int]) -> list[int]:
    """Indices of ``orig``'s filters that ``pruned`` kept, found by exact weight match."""
    rows = {r.numpy().tobytes(): i for i, r in enumerate(orig.weight.detach()[:, keep_in])}
    found = [rows.get(r.numpy().tobytes()) for r in pruned.weight.detach()]
    assert None not in found, "a pruned filter is not a slice of an original one"
    return sorted(found)


def residual_trace(orig: nn.Module, pruned: nn.Module) -> dict[str, list[int]]:
    """Kept output channels of every conv of a BasicBlock ResNet, checking residual consistency."""
    out = {"conv1": kept(orig.conv1, pruned.conv1, list(range(orig.conv1.in_channels)))}
    stream = out["conv1"]
    blocks = [(n, m) for n, m in orig.named_modules() if type(m).__name__ == "BasicBlock"]
    mods = dict(pruned.named_modules())
    for name, block in blocks:
        p = mods[name]
        out[f"{name}.conv1"] = k1 = kept(block.conv1, p.conv1, stream)
        out[f"{name}.conv2"] = k2 = kept(block.conv2, p.conv2, k1)
        if block.downsample is not None:
            out[f"{name}.downsample.0"] = kd = kept(block.downsample[0], p.downsample[0], stream)
            assert kd == k2, f"{name}: residual branches kept different channels"
        else:
            assert k2 == stream, f"{name}: residual add kept different channels"
        stream = k2
    assert torch.equal(pruned.fc.weight, orig.fc.weight[:, stream])
    return out


@pytest.fixture(scope="module", params=["resnet18", "tiny_resnet"])
def pruned_pair(request):
    torch.manual_seed(0)
    model = build_model(request.param, num_classes=10).eval()
    before = copy.deepcopy(model.state_dict())
    return request.param, model, before, nni_uniform(model, SHAPE, 0.5)


def test_prune_halves_every_conv_and_runs(pruned_pair):
    name, model, _, pruned = pruned_pair
    widths, original = conv_widths(pruned), conv_widths(model)
    assert widths == {n: c // 2 for n, c in original.items()}
    assert all(w % 8 == 0 for w in widths.values())
    assert pruned.fc.out_features == 10 and pruned.fc.in_features == model.fc.in_features // 2
    assert pruned(torch.rand(2, *SHAPE[1:])).shape == (2, 10)
    ratio = n_params(pruned) / n_params(model)  # halving both sides of a conv leaves ~1/4
    assert 0.22 < ratio < 0.30, ratio


def test_pruned_model_equals_the_masked_original(pruned_pair):
    """Same outputs as the original with the dropped filters zeroed: the channels NNI removed
    are exactly the masked ones, and residual-tied convs share one mask."""
    _, model, _, pruned = pruned_pair
    keep = residual_trace(model, pruned)
    masked = copy.deepcopy(model)
    mods = dict(masked.named_modules())
    with torch.no_grad():
        for conv, idx in keep.items():
            drop = torch.ones(mods[conv].out_channels, dtype=torch.bool)
            drop[idx] = False
            mods[conv].weight[drop] = 0  # fresh BN (mean 0, bias 0) keeps zero channels zero
    x = torch.rand(2, *SHAPE[1:])
    torch.testing.assert_close(pruned.eval()(x), masked.eval()(x), rtol=1e-4, atol=1e-5)


def test_unconstrained_convs_keep_the_largest_l1_filters(pruned_pair):
    _, model, _, pruned = pruned_pair
    keep = residual_trace(model, pruned)
    mods = dict(model.named_modules())
    for conv in [c for c in keep if c.endswith(".conv1")]:  # first conv of a block: no group
        l1 = mods[conv].weight.detach().abs().flatten(1).sum(1)
        assert keep[conv] == sorted(l1.topk(len(keep[conv])).indices.tolist()), conv


def test_input_model_untouched(pruned_pair):
    name, model, before, pruned = pruned_pair
    assert conv_widths(model) == conv_widths(build_model(name, num_classes=10))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert pruned is not model and not model.training and not pruned.training


def test_round_to_and_nni_native_widths():
    model = build_model("tiny_resnet", num_classes=10).train()
    rng = torch.get_rng_state()
    aligned = nni_uniform(model, SHAPE, 0.3)  # keep 0.7: 16 -> 8 (11.2 rounded), 32 -> 24
    assert torch.equal(rng, torch.get_rng_state()), "the caller's RNG stream moved"
    assert set(conv_widths(aligned).values()) == {8, 24}
    native = nni_uniform(model, SHAPE, 0.3, round_to=1)  # NNI prunes int(c * 0.3)
    assert set(conv_widths(native).values()) == {16 - 4, 32 - 9}
    assert aligned.training and native.training and model.training
    assert conv_widths(nni_uniform(model, SHAPE, 0.0)) == conv_widths(model)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_ratio_is_a_usage_error(ratio):
    with pytest.raises(UsageError, match="ratio"):
        nni_uniform(build_model("tiny_resnet"), SHAPE, ratio)


def test_missing_nni_gives_install_hint(monkeypatch):
    for mod in [m for m in sys.modules if m == "nni" or m.startswith("nni.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "nni", None)  # import nni -> ImportError
    with pytest.raises(UsageError, match=r"pip install 'edgeprune\[nni\]'"):
        nni_uniform(build_model("tiny_resnet"), SHAPE, 0.5)


def originals():
    ct = nni_engine._tracer_module()
    return ct.ConcreteTracer.default_autowrap_leaf_function, ct.node_is_impure_wrapper


def test_patches_are_undone_after_the_call_and_after_an_error():
    leaf, impure = originals()
    nni_uniform(build_model("tiny_resnet"), SHAPE, 0.5)
    assert originals()[0] is leaf and originals()[1] is impure
    with pytest.raises(RuntimeError, match="boom"), nni_engine.torch_compat():
        assert originals()[0] is not leaf and originals()[1] is not impure
        raise RuntimeError("boom")
    assert originals()[0] is leaf and originals()[1] is impure


def trace_tiny():
    from nni.common.concrete_trace_utils import concrete_trace
    with nni_engine.quiet_nni():
        return concrete_trace(build_model("tiny_resnet").eval(), (torch.rand(*SHAPE),))


def test_each_fix_is_needed_on_this_torch():
    """Each fix alone is not enough where torch has the change it works around."""
    leaf, _ = originals()
    needs_leaf_fix = any(getattr(f, "__module__", "") is None for f in leaf)
    needs_impure_fix = "impure_random" in inspect.signature(Node.is_impure).parameters
    if needs_leaf_fix:
        with nni_engine.is_impure_fix(), pytest.raises(AttributeError, match="startswith"):
            trace_tiny()
    if needs_impure_fix:
        with nni_engine.leaf_function_fix(), pytest.raises(TypeError, match="positional argument"):
            trace_tiny()
    with nni_engine.torch_compat():
        assert trace_tiny() is not None
    if torch.__version__ >= "2.14":  # TorchVersion compares as a version, not as a string
        assert needs_leaf_fix and needs_impure_fix
