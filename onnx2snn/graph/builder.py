"""Small helpers to add standard-ONNX nodes to an onnx-graphsurgeon graph, opset-aware."""
from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs


class Builder:
    """Adds nodes named `<prefix>/<op>_<k>` so inserted subgraphs read well in Netron.

    The counter is per builder, so converting the same model twice gives identical files."""

    def __init__(self, graph: gs.Graph, opset: int, prefix: str):
        self.graph = graph
        self.opset = opset
        self.prefix = prefix
        self._ids = itertools.count()

    def _name(self, op: str) -> str:
        return f"{self.prefix}/{op}_{next(self._ids)}"

    def const(self, value, name: str | None = None) -> gs.Constant:
        return gs.Constant(name or self._name("const"), np.asarray(value))

    def op(self, op: str, inputs, attrs=None, dtype=np.float32, outputs=1, domain=None, name=None,
           out=None):
        name = name or self._name(op)
        outs = out if out is not None else [
            gs.Variable(f"{name}_out{i}" if outputs > 1 else f"{name}_out", dtype=dtype)
            for i in range(outputs)]
        node = gs.Node(op, name, attrs or {}, list(inputs), list(outs), domain=domain)
        self.graph.nodes.append(node)
        return outs[0] if outputs == 1 else outs

    def reduce(self, op: str, x, axes, keepdims: int = 0, dtype=np.float32):
        """Reduce* with `axes` (None = all), as attribute or input depending on the opset."""
        attrs = {"keepdims": keepdims}
        input_axes = self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13)
        if axes is None:
            return self.op(op, [x], attrs, dtype)
        if input_axes:
            return self.op(op, [x, self.const(np.asarray(axes, np.int64))], attrs, dtype)
        return self.op(op, [x], dict(attrs, axes=list(axes)), dtype)

    def reshape(self, x, shape, dtype=np.float32):
        shape = shape if isinstance(shape, gs.Tensor) else self.const(np.asarray(shape, np.int64))
        return self.op("Reshape", [x, shape], dtype=dtype)

    def shape_tail(self, x, start: int = 1):
        """Shape(x)[start:] as an int64 tensor."""
        return self.op("Shape", [x], {"start": start}, np.int64) if self.opset >= 15 else \
            self.op("Slice", [self.op("Shape", [x], dtype=np.int64),
                              self.const(np.array([start], np.int64)),
                              self.const(np.array([2 ** 62], np.int64))], dtype=np.int64)

    def concat(self, parts, axis=0, dtype=np.float32):
        return self.op("Concat", parts, {"axis": axis}, dtype)
