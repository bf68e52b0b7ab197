"""The unrolled form: time folded into the batch axis, T*N rows through every spiking layer.

Each neuron is one IFNeuron node scanning its T steps in C++; the graph's size does not depend on
T, its memory grows with T. Portable: each neuron's T steps written out in standard ops (the
default: every runtime runs it, with a fixed or a symbolic batch; the graph grows with T), or a
Scan of them (--portable-steps scan).
"""
from __future__ import annotations

import onnx

from . import compensate
from .info import Provenance
from .portable import lower_neurons
from .prepare import Prepared, boundary, connect_readout, describe_snn, finish, spiking_pools, tile_pre_inputs


def build(p: Prepared, provenance: Provenance | None = None) -> onnx.ModelProto:
    tile_pre_inputs(p)
    compensate.apply(p)
    readouts = []

    def mean_of(x, out):
        mean = p.fold.mean_readout(x, p.config.delay, out)
        readouts.append({"steps": x.name, "mean": mean.name})
        return mean

    for t, post, is_output in boundary(p):
        connect_readout(p, t, post, is_output, mean_of)
    for node in spiking_pools(p):
        p.fold.spiking_pool(node, fused=not p.config.portable)
    if p.config.portable:
        lower_neurons(p.graph, p.b, p, explicit=p.config.portable_steps == "written")
    return finish(p, describe_snn(p, readouts, provenance))
