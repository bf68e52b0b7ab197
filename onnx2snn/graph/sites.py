"""Spiking sites for activations that are not ReLU-like (GELU, SiLU, HardSwish, LayerNorm outputs,
attention outputs, ...), inserted into the ANN before it is analysed.

A non-linear node whose output reaches a weighted layer (Conv, Gemm, MatMul with constant weights)
through linear ops only is a spiking site: its output is rewritten as

    y  ->  Relu(y) - Relu(-y)        (signed: the op's range has negative values)
    y  ->  Relu(y)                   (the op's range is non-negative: Sigmoid, Softmax, ...)

which is y exactly, so the ANN is unchanged. The Relus are ordinary activations for everything
after this: they are probed and calibrated, and become IF neurons, a pair of them for a signed
site (one for the positive and one for the negative part, each with its own thresholds). So the
linear layers keep receiving spikes, and the non-linear ops between neurons are evaluated with
expectation compensation (snn/compensate.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .onnx_io import constant_value

# ops linear in their one time-varying input that a site's output may pass through to reach a weight
_PASS = {
    "Add", "Sub", "Sum", "Concat", "Identity", "Dropout", "Reshape", "Flatten", "Transpose", "Squeeze",
    "Unsqueeze", "Slice", "Pad", "Split", "Expand", "Tile", "AveragePool", "GlobalAveragePool", "MaxPool",
    "ReduceMean", "ReduceSum", "BatchNormalization", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth",
    "Neg", "Gather", "Mul", "Div",
}
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"}
# linear in each time-varying input (no site: spikes pass them unchanged)
_LINEAR = _PASS - {"Mul", "Div"} | {"Shape", "Size", "Cast", "Constant", "ConstantOfShape", "GatherElements"}
# non-linear ops whose outputs are never negative: one neuron suffices
NON_NEGATIVE = {"Sigmoid", "HardSigmoid", "Softmax", "Exp", "Sqrt", "Softplus", "Abs"}
# ops that are never sites (no float function of the inputs to compensate)
_NOT_ELEMENTWISE = {"ArgMax", "ArgMin", "TopK", "NonMaxSuppression", "NonZero", "Loop", "Scan", "If",
                    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Where",
                    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Range", "OneHot", "Shape", "Size"}

POSITIVE, NEGATIVE, SIGNED = "/spikes+", "/spikes-", "/signed"


@dataclass(frozen=True)
class Site:
    node: str         # the non-linear node whose output spikes
    op: str
    tensor: str       # its output
    signed: bool      # a pair of neurons (positive and negative part)


def varying_inputs(node: gs.Node) -> list:
    return [t for t in node.inputs if t.name and constant_value(t) is None and not isinstance(t, gs.Constant)]


def _is_float(t: gs.Tensor) -> bool:
    return t.dtype is None or np.dtype(t.dtype).kind == "f"


def is_nonlinear(node: gs.Node, relu_like) -> bool:
    """A node that is not linear in its varying inputs and computes floats from floats."""
    if relu_like(node) or node.op in _LINEAR or node.op in _NOT_ELEMENTWISE or (node.domain or "") not in ("", "ai.onnx"):
        return False
    if not node.outputs or not all(_is_float(t) for t in node.outputs):
        return False
    moving = varying_inputs(node)
    if not moving or not all(_is_float(t) for t in moving):
        return False
    if node.op in _WEIGHTED or node.op == "Mul":
        return len(moving) > 1
    if node.op == "Div":
        return len(moving) > 1 or moving[0] is not node.inputs[0]
    return True


def _reaches_weights(tensor: gs.Tensor) -> bool:
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        for consumer in t.outputs:
            if id(consumer) in seen:
                continue
            seen.add(id(consumer))
            moving = varying_inputs(consumer)
            if consumer.op in _WEIGHTED and len(moving) == 1:
                return True
            if consumer.op in _PASS and (consumer.op not in ("Mul", "Div") or len(moving) == 1):
                if consumer.op == "Div" and moving and moving[0] is not consumer.inputs[0]:
                    continue
                stack.extend(consumer.outputs)
    return False


def find_sites(graph: gs.Graph, relu_like) -> list:
    """The non-linear nodes whose outputs become spikes (see the module's docstring)."""
    sites = []
    outputs = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        if not is_nonlinear(node, relu_like) or len(node.outputs) != 1:
            continue
        y = node.outputs[0]
        if id(y) in outputs or any(relu_like(c) for c in y.outputs) or not _reaches_weights(y):
            continue
        sites.append(Site(node.name, node.op, y.name, node.op not in NON_NEGATIVE))
    return sites


def insert_sites(graph: gs.Graph, sites) -> None:
    """Rewrite each site's output y as Relu(y) [- Relu(-y)] (the same values) for its readers, in
    place; y keeps its name (the node's output, as in the ANN)."""
    by_name = {n.name: n for n in graph.nodes}
    for site in sites:
        y = by_name[site.node].outputs[0]
        readers = list(y.outputs)
        if not site.signed:
            spikes = gs.Variable(f"{y.name}/spikes", y.dtype, y.shape)
            graph.nodes.append(gs.Node("Relu", site.node + POSITIVE, inputs=[y], outputs=[spikes]))
        else:
            pos = gs.Variable(f"{y.name}/positive", y.dtype, y.shape)
            neg_in = gs.Variable(f"{y.name}/negated", y.dtype, y.shape)
            neg = gs.Variable(f"{y.name}/negative", y.dtype, y.shape)
            spikes = gs.Variable(f"{y.name}/spikes", y.dtype, y.shape)
            graph.nodes += [gs.Node("Relu", site.node + POSITIVE, inputs=[y], outputs=[pos]),
                            gs.Node("Neg", site.node + "/negate", inputs=[y], outputs=[neg_in]),
                            gs.Node("Relu", site.node + NEGATIVE, inputs=[neg_in], outputs=[neg]),
                            gs.Node("Sub", site.node + SIGNED, inputs=[pos, neg], outputs=[spikes])]
        for reader in readers:
            reader.inputs = [spikes if t is y else t for t in reader.inputs]
    graph.toposort()


def compensable(node: gs.Node) -> bool:
    """A node between neurons that expectation compensation evaluates: a float function of float
    inputs in the standard domain (not control flow, indices, comparisons or random numbers)."""
    if node.op in _NOT_ELEMENTWISE or (node.domain or "") not in ("", "ai.onnx") or node.op in ("Gather", "GatherElements"):
        return False
    moving = varying_inputs(node)
    return bool(node.outputs) and all(_is_float(t) for t in node.outputs) and all(_is_float(t) for t in moving)
