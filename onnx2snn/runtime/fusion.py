"""The additions and time tiling in front of each neuron, fused into it (onnxruntime sessions).

In an SNN's graph each neuron may read a correction's constant current per channel (an Add of a
constant), a residual sum (an Add of two tensors) or a time-invariant input repeated for the T steps
(timefold.tile): each is a full pass over the neuron's T x N input before the neuron's own.
`fuse_inputs` folds them into IFNeuron (inputs bias and addend, attribute repeat_input), which adds
in the graph's order, so the spikes stay bit-identical. Files keep the standard graph:
`runtime.session` applies it to its in-memory copy.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .layout import static_shapes
from ..graph.onnx_io import all_graphs
from ..ops.neuron import DOMAIN


def fuse_inputs(model: onnx.ModelProto, shapes: dict | None = None) -> bool:
    """Fold each neuron's bias Add, residual Add and time tiling into it, in place. `shapes`:
    layout.static_shapes of the model, when the caller has them."""
    shapes = static_shapes(model) if shapes is None else shapes
    graphs = list(all_graphs(model.graph))
    inits = {i.name: i for g in graphs for i in g.initializer}
    changed = False
    producer = {o: n for g in graphs for n in g.node for o in n.output}   # names are unique across scopes
    for graph in graphs:
        fuser = _Fuser(graph, shapes, inits, producer, model.graph)
        for node in list(graph.node):
            if node.domain == DOMAIN and node.op_type == "IFNeuron" and fuser.fuse(node):
                changed = True
    for graph in graphs:
        _drop_dead(graph)
    return changed


class _Fuser:
    def __init__(self, graph, shapes, inits, producer, main):
        """`producer`: the node making each tensor in any graph of the model (a neuron in a Loop
        body may read a tiling made outside it); `main`: the model's graph."""
        self.graph, self.shapes, self.inits, self.producer = graph, shapes, inits, producer
        self.local = {o for n in graph.node for o in n.output}
        self.readers = {}
        for node in (n for g in all_graphs(main) for n in g.node):
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {o.name for g in all_graphs(main) for o in g.output}

    def _only_reader(self, tensor, node) -> bool:
        return tensor not in self.outputs and self.readers.get(tensor, []) == [node]

    def _source(self, node, op, same_graph=True):
        """The node of type `op` that produces `node`'s input x for it alone, or None."""
        src = self.producer.get(node.input[0])
        if src is not None and same_graph and node.input[0] not in self.local:
            return None
        if src is None or src.op_type != op or src.domain not in ("", "ai.onnx"):
            return None
        return src if self._only_reader(node.input[0], node) else None

    def fuse(self, neuron) -> bool:
        done = False
        inputs = list(neuron.input) + [""] * (6 - len(neuron.input))
        add = self._source(neuron, "Add")
        if add is not None and not inputs[5]:
            bias = self._channel_constant(add, neuron)
            if bias is not None:
                k, values = bias
                init = numpy_helper.from_array(values, neuron.name + "/fused_bias")
                self.graph.initializer.append(init)
                inputs[0], inputs[5] = add.input[1 - k], init.name
                self._reroute(neuron, add, inputs)
                done = True
        add = self._source(neuron, "Add")
        if add is not None and not inputs[4] and self._same_shapes(add.input):
            inputs[0], inputs[4] = add.input[0], add.input[1]
            self._reroute(neuron, add, inputs)
            done = True
        tiled = self._tiled_input(neuron)
        if tiled is not None and not inputs[4]:
            inputs[0] = tiled
            self._reroute(neuron, None, inputs)
            neuron.attribute.append(helper.make_attribute("repeat_input", 1))
            done = True
        return done

    def _reroute(self, neuron, removed, inputs):
        while inputs and not inputs[-1]:
            inputs.pop()
        old = neuron.input[0]
        neuron.ClearField("input")
        neuron.input.extend(inputs)
        self.readers[old] = [n for n in self.readers.get(old, []) if n is not neuron]
        for name in inputs:
            self.readers.setdefault(name, []).append(neuron)
        if removed is not None:      # an Add in this graph (_source checks it is the neuron's alone)
            self.graph.node.remove(removed)
            for name in removed.input:
                self.readers[name] = [n for n in self.readers.get(name, []) if n is not removed]

    def _channel_constant(self, add, neuron):
        """(index, per-channel values) of an Add input that is a constant varying only along the
        neuron's channel axis (a correction's bias), or None."""
        rank = len(self.shapes.get(add.output[0]) or [])
        axis = next((helper.get_attribute_value(a) for a in neuron.attribute if a.name == "axis"), 1)
        if rank < 2:
            return None
        axis = axis + rank if axis < 0 else axis
        for k, name in enumerate(add.input):
            if name not in self.inits or add.input[1 - k] in self.inits:
                continue
            value = numpy_helper.to_array(self.inits[name]).astype(np.float32)
            dims = (1,) * (rank - value.ndim) + value.shape
            if len(dims) != rank or any(d != 1 for i, d in enumerate(dims) if i != axis):
                continue
            return k, np.ascontiguousarray(value.reshape(-1))
        return None

    def _same_shapes(self, names) -> bool:
        shapes = [self.shapes.get(n) for n in names]
        return (all(s is not None and len(s) >= 2 and None not in s[1:] for s in shapes)
                and len({tuple(s[1:]) for s in shapes}) == 1 and len({len(s) for s in shapes}) == 1)

    def _tiled_input(self, neuron):
        """x when the neuron's input is Reshape(Expand(Unsqueeze(x, 0), [K] + shape(x))) with K its
        timesteps: the N rows of x repeated for each of the K steps (timefold.tile), else None."""
        steps = next((helper.get_attribute_value(a) for a in neuron.attribute if a.name == "timesteps"), None)
        reshape = self._source(neuron, "Reshape", same_graph=False)
        expand = self.producer.get(reshape.input[0]) if reshape is not None else None
        if expand is None or expand.op_type != "Expand":
            return None
        unsqueeze, concat = self.producer.get(expand.input[0]), self.producer.get(expand.input[1])
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or concat is None or concat.op_type != "Concat":
            return None
        x = unsqueeze.input[0]
        axes = (numpy_helper.to_array(self.inits[unsqueeze.input[1]]).tolist()
                if len(unsqueeze.input) > 1 and unsqueeze.input[1] in self.inits else None)
        shape_of = self.producer.get(concat.input[1]) if len(concat.input) == 2 else None
        first = concat.input[0]
        if (axes != [0] or shape_of is None or shape_of.op_type != "Shape" or shape_of.input[0] != x
                or first not in self.inits or numpy_helper.to_array(self.inits[first]).tolist() != [steps]):
            return None
        return x


def _drop_dead(graph):
    """Remove the tiling nodes nothing reads any more (in any graph nested in `graph`)."""
    while True:
        read = {o.name for o in graph.output} | {i for g in all_graphs(graph) for n in g.node for i in n.input}
        dead = [n for n in graph.node if n.op_type in ("Reshape", "Expand", "Unsqueeze", "Concat", "Shape")
                and n.domain in ("", "ai.onnx") and not any(o in read for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)
