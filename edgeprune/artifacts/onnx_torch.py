"""ONNX -> torch: the ONNX graph edgeprune exports, run as a torch module, node by node.

Why: every target is handed an ONNX file (``Target.compile(onnx_path)``), and the torch runtime
(``edgeprune.runtime.torch_aoti``) needs a torch program to give ``torch.export`` and
AOTInductor. Converting the file itself keeps a torch target "one module plus a registry line":
the profiler, the closed loop, the pipeline and ``check`` keep passing ONNX files, any ONNX
file (a baseline, a user's artifact) can be measured, and the ONNX node names survive, so the
per-layer profile names nodes exactly as ONNX Runtime's does and ``latency.profile.attribute``
maps them to modules unchanged. The op set is what torch's exporter emits for the CNNs edgeprune
prunes (BatchNorm is folded into Conv by the exporter in eval mode; BatchNormalization is
handled for files from elsewhere); any other op is a one-line UsageError naming it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeprune.errors import UsageError


def _attrs(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pads(pads, dims: int) -> tuple[list[int], bool]:
    """ONNX pads (begins..., ends...) as torch's symmetric padding when they are symmetric."""
    pads = list(pads or [0] * 2 * dims)
    begin, end = pads[:dims], pads[dims:]
    return begin, begin == end


def _spatial(x: torch.Tensor, a: dict, dims: int) -> tuple[torch.Tensor, list[int]]:
    """Apply asymmetric or auto padding explicitly; return (input, symmetric padding)."""
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UsageError(f"ONNX auto_pad={a['auto_pad']!r} is not supported by the torch runtime; "
                         "export with explicit pads (torch.onnx.export does)")
    begin, symmetric = _pads(a.get("pads"), dims)
    if symmetric:
        return x, begin
    end = list(a["pads"])[dims:]
    flat = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]
    return F.pad(x, flat), [0] * dims


def _conv(x, w, b=None, **a):
    dims = w.dim() - 2
    x, pad = _spatial(x, a, dims)
    fn = F.conv2d if dims == 2 else F.conv1d
    return fn(x, w, b, stride=a.get("strides", 1), padding=pad, dilation=a.get("dilations", 1), groups=a.get("group", 1))


def _maxpool(x, **a):
    k = list(a["kernel_shape"])
    x, pad = _spatial(x, a, len(k))
    return F.max_pool2d(x, k, a.get("strides", k), pad, a.get("dilations", 1), bool(a.get("ceil_mode", 0)))


def _avgpool(x, **a):
    k = list(a["kernel_shape"])
    x, pad = _spatial(x, a, len(k))
    return F.avg_pool2d(x, k, a.get("strides", k), pad, bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)))


def _gemm(a_, b_, c=None, **a):
    a_ = a_.t() if a.get("transA", 0) else a_
    b_ = b_.t() if a.get("transB", 0) else b_
    out = a.get("alpha", 1.0) * (a_ @ b_)
    return out if c is None else out + a.get("beta", 1.0) * c


def _clip(x, lo=None, hi=None, **a):
    lo = a.get("min", lo)
    hi = a.get("max", hi)
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return torch.clamp(x, lo, hi)


def _flatten(x, axis=1):
    return x.reshape(*x.shape[:axis], -1) if axis else x.reshape(1, -1)


def _reshape(x, shape, **a):
    dims = [int(s) for s in shape]
    dims = [x.shape[i] if d == 0 and not a.get("allowzero", 0) else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _reduce_mean(x, axes=None, **a):
    axes = a.get("axes", axes)
    return x.mean(dim=list(axes), keepdim=bool(a.get("keepdims", 1)))


def _batchnorm(x, scale, bias, mean, var, **a):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


OPS: dict[str, Callable] = {
    "Identity": lambda x: x,  # folded away when the graph is loaded
    "Conv": _conv,
    "Relu": F.relu,
    "Clip": _clip,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "HardSigmoid": lambda x, alpha=0.2, beta=0.5: torch.clamp(alpha * x + beta, 0.0, 1.0),
    "HardSwish": F.hardswish,
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Gemm": _gemm,
    "MatMul": torch.matmul,
    "Concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "Softmax": lambda x, axis=-1: torch.softmax(x, dim=axis),
    "Transpose": lambda x, perm=None: x.permute(*(perm or reversed(range(x.dim())))),
    "ReduceMean": _reduce_mean,
    "BatchNormalization": _batchnorm,
}
CONSTANT_INPUTS = {"Reshape": (1,), "ReduceMean": (1,), "Clip": (1, 2)}  # read as Python values at load


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module: initializers become buffers, nodes run in graph order.

    Inputs that ONNX passes as tensors but that are shapes or bounds (Reshape's shape, Clip's
    min/max) are read into Python values once here, so ``torch.export`` sees constants, not
    data-dependent reads. ``scope`` (set by the profiler) wraps each node in a context named
    after it; torch.export traces through the loop, so the exported program is the plain graph."""

    def __init__(self, onnx_model):
        super().__init__()
        from onnx import numpy_helper
        graph = onnx_model.graph
        values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        values.update({n.output[0]: numpy_helper.to_array(_attrs(n)["value"])
                       for n in graph.node if n.op_type == "Constant"})
        self.input_name = next(i.name for i in graph.input if i.name not in values)
        self.output_names = [o.name for o in graph.output]
        self.nodes: list[tuple[str, str, list[tuple[str, object]], str, dict]] = []
        buffers: dict[str, str] = {}
        alias: dict[str, str] = {}  # Identity outputs -> their input: no node, no work, no profile scope
        for k, node in enumerate(graph.node):
            if node.op_type == "Constant":
                continue
            if node.op_type == "Identity":
                alias[node.output[0]] = alias.get(node.input[0], node.input[0])
                if node.output[0] in self.output_names:
                    raise UsageError(f"the torch runtime cannot run a graph output made by Identity ({node.name})")
                continue
            if node.op_type not in OPS:
                raise UsageError(f"the torch runtime cannot run ONNX op {node.op_type} (node {node.name or k}); "
                                 f"it runs: {', '.join(sorted(OPS))}")
            args = []
            for pos, tensor in enumerate(node.input):
                tensor = alias.get(tensor, tensor)
                if not tensor:
                    args.append(("lit", None))
                elif tensor not in values:
                    args.append(("env", tensor))
                elif pos in CONSTANT_INPUTS.get(node.op_type, ()):
                    args.append(("lit", _literal(values[tensor])))
                else:
                    if tensor not in buffers:
                        buffers[tensor] = f"t{len(buffers)}"
                        self.register_buffer(buffers[tensor], torch.from_numpy(values[tensor].copy()))
                    args.append(("buf", buffers[tensor]))
            a = {key: (v.decode() if isinstance(v, bytes) else v) for key, v in _attrs(node).items()}
            self.nodes.append((node.name or f"{node.op_type}_{k}", node.op_type, args, node.output[0], a))
        self.scope: Callable[[str], contextlib.AbstractContextManager] | None = None

    def forward(self, x: torch.Tensor):
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for name, op, inputs, output, a in self.nodes:
            args = [env[v] if kind == "env" else getattr(self, v) if kind == "buf" else v for kind, v in inputs]
            while args and args[-1] is None:
                args.pop()
            with self.scope(name) if self.scope else contextlib.nullcontext():
                env[output] = OPS[op](*args, **a)
        outs = [env[o] for o in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _literal(value):
    """A constant input as a Python value: a scalar as a float, a vector as a list of ints."""
    return float(value) if value.ndim == 0 or value.size == 1 and value.dtype.kind == "f" else value.astype(int).tolist()


def input_shape(onnx_model, batch: int) -> tuple[int, ...]:
    """The graph input's shape, ``batch`` for a dynamic first dimension (1 for others)."""
    inits = {i.name for i in onnx_model.graph.initializer}
    graph_input = next(i for i in onnx_model.graph.input if i.name not in inits)
    dims = graph_input.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.dim_value > 0 else (batch if i == 0 else 1) for i, d in enumerate(dims))


def check_onnx(onnx_path: str | Path):
    """The loaded, checked ONNX model; an unreadable file is a one-line UsageError."""
    from edgeprune.artifacts.kind_onnx import check_onnx as check
    return check(onnx_path)


def load(onnx_path: str | Path) -> OnnxModule:
    """The ONNX file as an eval-mode torch module."""
    return OnnxModule(check_onnx(onnx_path)).eval()
