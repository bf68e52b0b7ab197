"""The SNN's ONNX graph as the NIR export reads it: lookups (producers, consumers, constants,
per-sample shapes) and the plan of its parts: the repeated inputs, the region before the first
neuron, the spiking region, the readouts, the time-folding plumbing and what stays on the host."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UserError
from ..snn.info import SNNInfo
from ..snn.prepare import T_NAME
from .refusals import WHERE


class OnnxView:
    """Lookups over the SNN's graph: producers, consumers, constants, inferred shapes."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.producer, self.consumers = {}, defaultdict(list)
        for i, node in enumerate(self.nodes):
            for t in node.output:
                if t:
                    self.producer[t] = i
            for t in node.input:
                if t:
                    self.consumers[t].append(i)
        self.const = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = constant_attr(node)
                if value is not None:
                    self.const[node.output[0]] = value
        self.inputs = {v.name: v for v in model.graph.input if v.name not in self.const}
        self._inferred = None

    def node_of(self, tensor: str):
        i = self.producer.get(tensor)
        return None if i is None else self.nodes[i]

    def ancestors(self, tensors, stop=(), data_only: bool = True) -> set:
        """Indices of the nodes computing `tensors`, not looking past the tensors in `stop`;
        `data_only` skips the shape inputs of Reshape and the constant inputs of neurons."""
        stop, seen, done = set(stop), set(), set()
        todo = [t for t in tensors]
        while todo:
            t = todo.pop()
            if not t or t in done or t in stop or t in self.const:
                continue
            done.add(t)
            i = self.producer.get(t)
            if i is None or i in seen:
                continue
            seen.add(i)
            node = self.nodes[i]
            todo.extend(node.input[:1] if data_only and node.op_type in ("Reshape", "IFNeuron") else node.input)
        return seen

    def descendants(self, tensors) -> set:
        seen, todo = set(), list(tensors)
        while todo:
            for i in self.consumers.get(todo.pop(), []):
                if i not in seen:
                    seen.add(i)
                    todo.extend(t for t in self.nodes[i].output if t)
        return seen

    def shape(self, tensor: str):
        """Per-sample static shape of a tensor (graph input or ONNX-inferred), or None."""
        if tensor in self.inputs:
            dims = self.inputs[tensor].type.tensor_type.shape.dim
        else:
            if self._inferred is None:
                try:
                    inferred = onnx.shape_inference.infer_shapes(self.model)
                    self._inferred = {v.name: v for v in inferred.graph.value_info}
                except Exception:   # noqa: BLE001 - inference is a convenience here; None says unknown
                    self._inferred = {}
            if tensor not in self._inferred:
                return None
            dims = self._inferred[tensor].type.tensor_type.shape.dim
        out = [d.dim_value if d.HasField("dim_value") else 0 for d in dims][1:]
        return tuple(out) if dims and all(d > 0 for d in out) else None


def constant_attr(node):
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.float32(a.f)
        if a.name == "value_floats":
            return np.asarray(a.floats, np.float32)
        if a.name == "value_int":
            return np.int64(a.i)
        if a.name == "value_ints":
            return np.asarray(a.ints, np.int64)
    return None


def node_attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def as_text(value):
    return value.decode() if isinstance(value, bytes) else value


class Plan:
    """Where the SNN's parts are: the repeated inputs (tiles), the readouts, the spiking region,
    the region before it, the time-folding plumbing and what is left to the host."""

    def __init__(self, g: OnnxView, info: SNNInfo):
        self.tiles = {}                                  # tile output -> repeated (time-invariant) tensor
        for node in g.nodes:
            source = tile_source(g, node)
            if source is not None:
                self.tiles[node.output[0]] = source
        self.readouts = []
        for r in info.readouts:
            steps, mean = r.get("steps"), r.get("mean")
            if steps not in g.producer or mean not in g.producer:
                raise UserError(f"{WHERE}: the readout of '{steps}' is not in the graph (damaged metadata)")
            self.readouts.append((steps, mean))
        if not self.readouts:
            raise UserError(f"{WHERE}: the model has no readout in its metadata; convert it again")
        steps = [s for s, _ in self.readouts]
        self.spiking = sorted(g.ancestors(steps, stop=self.tiles))
        reached = {t for i in self.spiking for t in data_inputs(g.nodes[i]) if t and t not in g.const}
        loose = sorted(t for t in reached if t not in g.producer and t not in self.tiles)
        if loose:
            raise UserError(f"{WHERE}: '{loose[0]}' enters the spiking region without being repeated over the "
                            "steps: not onnx2snn's unrolled form; convert the ANN again")
        self.entries = sorted({t for t in reached if t in self.tiles})
        self.pre = sorted(g.ancestors([self.tiles[t] for t in self.entries]))
        plumbing = set()
        for tile in self.entries:
            plumbing |= g.ancestors([tile], stop=[self.tiles[tile]], data_only=False)
        for s, mean in self.readouts:
            plumbing |= g.ancestors([mean], stop=[s], data_only=False)
        self.plumbing = plumbing
        self.after = g.descendants([mean for _, mean in self.readouts])


def data_inputs(node):
    return node.input[:1] if node.op_type in ("Reshape", "IFNeuron") else node.input


def tile_source(g: OnnxView, node):
    """The tensor TimeFold.tile repeats into this Reshape's output (Unsqueeze -> Expand to
    [T, N, ...] -> Reshape [T*N, ...]), or None."""
    if node.op_type != "Reshape":
        return None
    expand = g.node_of(node.input[0])
    if expand is None or expand.op_type != "Expand":
        return None
    unsqueeze, shape = g.node_of(expand.input[0]), g.node_of(expand.input[1])
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or shape is None or shape.op_type != "Concat":
        return None
    return unsqueeze.input[0] if shape.input and shape.input[0] == T_NAME else None
