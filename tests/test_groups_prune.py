"""Channel groups and layers (DepGraph), and physical pruning to per-group widths."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import INPUT_SHAPE

from edgeprune.errors import UsageError
from edgeprune.pruning.groups import analyse
from edgeprune.pruning.prune import prune_to_widths, widths_of
from edgeprune.training.models import build_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=10).eval()


@pytest.fixture(scope="module")
def mobilenet_v2():
    torch.manual_seed(0)
    return build_model("mobilenet_v2", num_classes=10).eval()


@pytest.fixture(scope="module")
def models(resnet18, mobilenet_v2):
    return {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}


def compute_modules(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_resnet18_has_12_groups(resnet18):
    s = analyse(resnet18, INPUT_SHAPE)
    assert len(s.groups) == 12
    assert s.full_widths()["conv1"] == 64
    assert sorted(s.full_widths().values()) == [64] * 3 + [128] * 3 + [256] * 3 + [512] * 3


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_every_conv_and_linear_is_a_layer(models, name):
    model = models[name]
    s = analyse(model, INPUT_SHAPE)
    assert set(s.layers) == compute_modules(model)
    for layer in s.layers.values():
        for g in (layer.in_group, layer.out_group):
            assert g is None or g in s.groups
        full = s.full_widths()
        c_in, c_out = layer.dims(full)
        if not layer.depthwise:
            assert (c_in, c_out) == (layer.in_channels, layer.out_channels), layer.name


def test_resnet18_layers_read_and_write_groups(resnet18):
    s = analyse(resnet18, INPUT_SHAPE)
    fc = s.layers["fc"]
    assert fc.out_group is None  # the logits are never pruned
    assert fc.in_group is not None
    stem = s.layers["conv1"]
    assert stem.in_group is None and stem.out_group == "conv1"  # image channels are fixed
    # a residual stage: both convs writing into it share the group
    assert s.layers["layer1.0.conv2"].out_group == s.layers["layer1.1.conv2"].out_group == "conv1"
    assert s.layers["layer1.0.conv2"].in_group == "layer1.0.conv1"
    assert set(s.layers["layer1.0.conv2"].axes) == {"layer1.0.conv1", "conv1"}


def test_mobilenet_v2_depthwise_layers_have_one_group(mobilenet_v2):
    s = analyse(mobilenet_v2, INPUT_SHAPE)
    dw = [l for l in s.layers.values() if l.depthwise]
    assert len(dw) == 17
    for layer in dw:
        assert layer.in_group is not None
        assert layer.in_group == layer.out_group, layer.name
        assert len(layer.axes) == 1
    assert s.layers["classifier.1"].out_group is None


def test_signature_depends_on_shapes_not_weights(resnet18):
    a = analyse(resnet18, INPUT_SHAPE).signature
    torch.manual_seed(1)
    other = build_model("resnet18", num_classes=10)
    assert analyse(other, INPUT_SHAPE).signature == a
    assert analyse(resnet18, (1, 3, 64, 64)).signature != a
    assert analyse(build_model("resnet18", num_classes=7), INPUT_SHAPE).signature != a


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_prune_to_half_widths(models, name):
    model = models[name]
    s = analyse(model, INPUT_SHAPE)
    half = {g: c // 2 for g, c in s.full_widths().items()}
    pruned = prune_to_widths(model, INPUT_SHAPE, half)
    assert widths_of(pruned, INPUT_SHAPE) == half
    assert n_params(pruned) < 0.5 * n_params(model)
    assert widths_of(model, INPUT_SHAPE) == s.full_widths()  # the original is untouched
    with torch.no_grad():
        x = torch.randn(INPUT_SHAPE)
        y = pruned.eval()(x)
    assert y.shape == model(x).shape == (1, 10)
    assert torch.isfinite(y).all()
    # group names survive pruning, so a table and widths keep referring to the same groups
    assert set(analyse(pruned, INPUT_SHAPE).groups) == set(s.groups)


def test_prune_inplace_modifies_the_model(tiny_model):
    s = analyse(tiny_model, INPUT_SHAPE)
    widths = {g: 8 for g in s.groups}
    out = prune_to_widths(tiny_model, INPUT_SHAPE, widths, inplace=True)
    assert out is tiny_model
    assert widths_of(tiny_model, INPUT_SHAPE) == widths


def test_partial_widths_leave_other_groups_whole(tiny_model):
    full = analyse(tiny_model, INPUT_SHAPE).full_widths()
    pruned = prune_to_widths(tiny_model, INPUT_SHAPE, {"conv1": 8})
    assert widths_of(pruned, INPUT_SHAPE) == {**full, "conv1": 8}


def test_pruning_keeps_the_most_important_filter():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()
    with torch.no_grad():
        net[0].weight[5].fill_(10.0)
        net[3].weight[11].fill_(-10.0)
    s = analyse(net, INPUT_SHAPE)
    assert s.full_widths() == {"0": 16, "3": 16}
    pruned = prune_to_widths(net, INPUT_SHAPE, {"0": 2, "3": 2})
    assert pruned[0].out_channels == 2 and pruned[3].out_channels == 2
    kept0 = pruned[0].weight.detach()
    assert any(torch.all(w == 10.0) for w in kept0), "the large first-layer filter was pruned"
    kept3 = pruned[3].weight.detach()
    assert any(torch.all(w == -10.0) for w in kept3), "the large second-layer filter was pruned"
    assert pruned[8].in_features == 2


def test_unknown_group_name_is_a_usage_error(tiny_model):
    with pytest.raises(UsageError, match="nope"):
        prune_to_widths(tiny_model, INPUT_SHAPE, {"nope": 4})


def test_zero_width_is_a_usage_error(tiny_model):
    with pytest.raises(UsageError, match="at least 1"):
        prune_to_widths(tiny_model, INPUT_SHAPE, {"conv1": 0})


def test_width_above_full_is_ignored(tiny_model):
    full = analyse(tiny_model, INPUT_SHAPE).full_widths()
    pruned = prune_to_widths(tiny_model, INPUT_SHAPE, {"conv1": 1000})
    assert widths_of(pruned, INPUT_SHAPE) == full
