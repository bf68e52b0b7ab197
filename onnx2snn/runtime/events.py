"""Event-driven convolutions after the neurons (an option of onnxruntime sessions).

A neuron fires in a small fraction of its steps (12-14% of a bench ResNet-32's or VGG-7's neuron
steps at T=32), so a convolution reading spikes needs only that fraction of a dense convolution's
multiply-adds. `event_convs` swaps each 2-D Conv reading an IFNeuron's spikes, with at least
`min_filters` filters per group, for the operator library's EventConv (custom_ops/event_conv.cc),
which walks the non-zero inputs only. Its sums run in their own order (exact where the sums are,
e.g. integer data). On the bench CPU (AVX-512, where onnxruntime's dense kernels run near their
peak) it is at par with dense convolutions at these firing rates, so sessions leave it off unless
asked (`runtime.session(..., event_convs=True)`); tools/bench.py measures both.
"""
from __future__ import annotations

import onnx
from onnx import helper

from ..graph.onnx_io import all_graphs
from ..ops.neuron import DOMAIN

MIN_FILTERS = 64
_CONV_ATTRS = ("strides", "pads", "dilations", "group")


def event_convs(model: onnx.ModelProto, min_filters: int = MIN_FILTERS) -> bool:
    """Every 2-D Conv with `min_filters` filters per group or more whose input is an IFNeuron's
    spikes becomes EventConv, in place; whether anything changed."""
    graphs = list(all_graphs(model.graph))
    constants = {i.name: list(i.dims) for g in graphs for i in g.initializer}
    spikes = {n.output[0] for g in graphs for n in g.node if n.domain == DOMAIN and n.op_type == "IFNeuron"}
    changed = False
    for node in (n for g in graphs for n in g.node):
        if _event_conv_fits(node, spikes, constants, min_filters):
            kept = [a for a in node.attribute if a.name in _CONV_ATTRS]
            node.op_type, node.domain = "EventConv", DOMAIN
            node.ClearField("attribute")
            node.attribute.extend(kept)
            changed = True
    return changed


def _event_conv_fits(node, spikes, constants, min_filters) -> bool:
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[0] not in spikes:
        return False
    dims = constants.get(node.input[1], []) if len(node.input) > 1 else []
    if len(dims) != 4:
        return False      # a filter computed in the graph, or not 2-D
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":
        return False
    return dims[0] // attrs.get("group", 1) >= min_filters
