"""Torch -> ONNX export and the map from ONNX compute nodes back to model modules.

Nodes are matched to modules by call order (forward hooks record the order in which
Conv/Linear modules run; the exporter emits their nodes in the same order) and every match is
checked against the weight shape, so the map does not depend on exporter naming schemes.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from edgeprune.errors import UsageError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def atomic_path(path: str | os.PathLike) -> tuple[Path, Path]:
    """(final, temp) paths in the same directory, for write-then-rename."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results should be as readable as any file
    return final, Path(tmp)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Yield a temp path beside ``path``; on success it replaces ``path``, on failure it is
    removed: readers never see a half-written file."""
    final, tmp = atomic_path(path)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | os.PathLike) -> Path:
    """Export ``model`` (in eval mode, on CPU) to a single ONNX file, atomically."""
    final, tmp = atomic_path(path)
    was_training = model.training
    model.eval()
    x = torch.zeros(*input_shape)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (x,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
            )
        os.replace(tmp, final)
    except RuntimeError as e:
        raise UsageError(f"cannot export the model at input {list(input_shape)}: {_first_line(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return final


def module_call_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of Conv/Linear modules in the order the forward pass calls them."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=name: order.append(n))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d))
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(*input_shape))
    finally:
        for h in hooks:
            h.remove()
    return order


def compute_nodes(onnx_model) -> list:
    """Conv/Gemm/MatMul nodes whose weight is an initializer, in graph order."""
    inits = {i.name for i in onnx_model.graph.initializer}
    return [n for n in onnx_model.graph.node
            if n.op_type in COMPUTE_OPS and len(n.input) > 1 and n.input[1] in inits]


def node_module_map(onnx_model, call_order: list[str]) -> dict[str, str]:
    """ONNX node name -> module name, checked by count (call order and node order agree)."""
    nodes = compute_nodes(onnx_model)
    if len(nodes) != len(call_order):
        raise UsageError(
            f"cannot map ONNX nodes to modules: {len(nodes)} compute nodes vs "
            f"{len(call_order)} Conv/Linear calls (shared or functional layers are not supported)"
        )
    return {n.name: m for n, m in zip(nodes, call_order)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
