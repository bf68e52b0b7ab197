"""Operation counts for the energy estimate (Bu et al.): MACs of the ANN, SOPs of the SNN.

SOPs = spikes x fan-out, where a spike's fan-out is the number of synaptic operations it drives in
the next weighted layer(s), estimated from the ANN's shapes as MACs(layer) / inputs(layer).
"""
from __future__ import annotations

import numpy as np
import onnx

from .onnx_io import shapes


_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_PASS = {"Reshape", "Flatten", "Concat", "Add", "Sub", "Sum", "MaxPool", "AveragePool",
         "GlobalAveragePool", "Slice", "Pad", "Mul", "Div", "Transpose", "Squeeze", "Unsqueeze",
         "Identity", "Dropout", "BatchNormalization", "ReduceMean", "Split", "Resize", "Neg"}


def _per_sample(shape):
    if not shape or any(d is None or d <= 0 for d in shape[1:]):
        return None
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def layer_macs(model: onnx.ModelProto) -> dict:
    """node name -> (MACs per sample, input elements per sample) for weighted layers."""
    known = shapes(model)
    macs = {}
    for node in model.graph.node:
        if node.op_type not in _WEIGHTED or len(node.input) < 2:
            continue
        out = _per_sample(known.get(node.output[0]))
        inp = _per_sample(known.get(node.input[0]))
        w = known.get(node.input[1])
        if out is None or inp is None or not w:
            continue
        if node.op_type == "ConvTranspose":
            # weights [C_in, C_out / groups, k...]: every input element meets (C_out / groups) * k
            # weights (outputs cropped by padding are counted: they are computed)
            macs[node.name] = (inp * int(np.prod(w[1:])), inp)
            continue
        if node.op_type == "Conv":
            per_out = int(np.prod(w[1:]))            # (C_in / groups) * kernel
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            per_out = w[1] if trans_b else w[0]
        else:
            per_out = w[-2] if len(w) >= 2 else w[0]
        macs[node.name] = (out * per_out, inp)
    return macs


def fanouts(model: onnx.ModelProto, tensors) -> dict:
    """tensor name -> synaptic operations one spike on it drives (average over positions)."""
    macs = layer_macs(model)
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    result = {}
    for start in tensors:
        total, seen, stack = 0.0, set(), [start]
        while stack:
            name = stack.pop()
            for node in consumers.get(name, []):
                if node.name in seen:
                    continue
                seen.add(node.name)
                if node.op_type in _WEIGHTED and node.name in macs:
                    m, inp = macs[node.name]
                    total += m / inp
                elif node.op_type in _PASS:
                    stack.extend(node.output)
        result[start] = total
    return result


def totals(model: onnx.ModelProto) -> float:
    return float(sum(m for m, _ in layer_macs(model).values()))


def largest_activation(model: onnx.ModelProto) -> int:
    """Elements per sample of the largest intermediate tensor (sizes the simulation batches)."""
    sizes = [_per_sample(shape) for name, shape in shapes(model).items()]
    return max([n for n in sizes if n] or [1])


# operations per output element of a compensated op (transcendentals count as one; a softmax is an
# exp, a sum and a division; a normalisation a mean, a variance, a root, a division and the affine)
_OPS_PER_ELEMENT = {"Softmax": 3, "LogSoftmax": 4, "LayerNormalization": 6, "InstanceNormalization": 6,
                    "GroupNormalization": 6}
# the compensation itself: running sum and division at each input element, scale and difference at
# each output element
_ENTRY, _EXIT = 2, 2


def compensated_macs(model: onnx.ModelProto, nodes, compensation: bool = True) -> tuple:
    """(analog operations per sample and step of the compensated nodes `nodes` (names), the MACs
    of the weighted layers among them): products of two spike-driven tensors (Q·Kᵀ, A·V) count as
    the MACs of a MatMul, element-wise ops one per element (_OPS_PER_ELEMENT for the others), and the
    compensation's running means and differences at each node's inputs and outputs, counted as if
    every node were compensated alone (an upper bound: a group shares them); without
    `compensation` (--keep-analog) only the ops themselves."""
    known = shapes(model)
    weighted = layer_macs(model)
    names = set(nodes)
    total, dense = 0.0, 0.0
    for node in model.graph.node:
        if node.name not in names:
            continue
        out = sum(_per_sample(known.get(o)) or 0 for o in node.output if o)
        inp = sum(_per_sample(known.get(i)) or 0 for i in node.input if i and i in known)
        if node.name in weighted:
            total += weighted[node.name][0]
            dense += weighted[node.name][0]
        else:
            total += out * _OPS_PER_ELEMENT.get(node.op_type, 1)
        if compensation:
            total += _ENTRY * inp + _EXIT * out
    return float(total), float(dense)
