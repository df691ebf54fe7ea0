"""A deterministic fake runtime for unit tests of the profiler, table, search and CLI.

Its cost is an analytic function of each Conv/Gemm's shape (MACs plus a per-channel memory
term, channels rounded up to multiples of 8 like SIMD kernels do). It proves nothing about a
real device and is never used as evidence that one works.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from edgeprune.runtime.base import Compiled, NodeTime, Target, example_input

NS_PER_MAC = 0.02
NS_PER_OUTPUT = 0.5
NODE_OVERHEAD_MS = 0.002
RUN_OVERHEAD_MS = 0.05


class FakeCompiled(Compiled):
    def __init__(self, model, shape):
        self.model = model
        self.example = example_input(shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((x.shape[0], 1), np.float32)


class FakeTarget(Target):
    runtime = "fake"
    package = "onnx"

    def runtime_version(self) -> str:
        return "fake-1"

    def compile(self, onnx_path) -> FakeCompiled:
        import onnx
        model = onnx.load(str(onnx_path))
        dims = model.graph.input[0].type.tensor_type.shape.dim
        shape = tuple(self.spec.batch if i == 0 else d.dim_value for i, d in enumerate(dims))
        return FakeCompiled(model, shape)

    def layer_times(self, onnx_path, runs: int = 10) -> list[NodeTime]:
        import onnx
        model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                  for v in list(model.graph.value_info) + list(model.graph.output)}
        inits = {i.name: list(i.dims) for i in model.graph.initializer}
        out = []
        for node in model.graph.node:
            out_shape = shapes.get(node.output[0], [])
            elems = math.prod(_round8(d, i) for i, d in enumerate(out_shape)) if out_shape else 0
            ms = NODE_OVERHEAD_MS + elems * NS_PER_OUTPUT * 1e-6
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
                w = inits[node.input[1]]
                per_out = math.prod(w[1:]) if node.op_type == "Conv" else w[1]
                if node.op_type == "Conv":
                    per_out = _ceil8(w[1]) * math.prod(w[2:])
                ms += elems * per_out * NS_PER_MAC * 1e-6
            out.append(NodeTime(node.name, node.op_type, ms))
        return out

    def measure_many(self, onnx_paths, timing=None):
        from edgeprune.runtime.timing import Latency
        return [Latency.from_samples([RUN_OVERHEAD_MS + sum(t.ms for t in self.layer_times(p))] * 5)
                for p in onnx_paths]


    def measure_alternating(self, path_a, path_b, timing=None):
        """Constant blocks of each model's analytic latency, in the real protocol's shape."""
        from edgeprune.runtime.timing import Alternation
        a, b = self.measure_many([path_a, path_b], timing)
        windows = (timing.windows if timing else 3)
        rounds = tuple(tuple((a.median_ms, b.median_ms) for _ in range(5)) for _ in range(windows))
        return Alternation(rounds, tuple(replace(x, window_medians_ms=(x.median_ms,) * windows) for x in (a, b)))

def _ceil8(c: int) -> int:
    return 8 * math.ceil(c / 8)


def _round8(d: int, axis: int) -> int:
    return _ceil8(d) if axis == 1 else max(d, 1)
