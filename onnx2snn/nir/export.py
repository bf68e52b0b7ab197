"""A converted SNN (onnx2snn's default unrolled form) as a NIR graph, up to its readout.

NIR (the Neuromorphic Intermediate Representation, PyPI `nir` 1.0.x) describes a network as nodes
(Conv2d, Affine, IF, SumPool2d, ...) joined by identity edges; the edges that meet at a node are
summed. The SNN's spiking region maps onto it one node per operation:

    Conv                          -> nir.Conv2d
    Gemm, MatMul (+ Add bias)     -> nir.Affine (nir.Linear when no bias is left)
    AveragePool, GlobalAveragePool -> nir.SumPool2d (the 1/k² goes into the next weights)
    Flatten, flattening Reshape   -> nir.Flatten (start_dim 0: NIR shapes have no batch axis)
    IFNeuron                      -> nir.IF (r = 1, v_threshold = 1, v_reset = 0, full shape)
    Add / Sub of two tensors      -> converging edges (a residual sum)
    Add / Sub of a constant       -> the bias of the layer producing the current
    Mul / Div by a constant, BatchNormalization -> the weights (and bias) of that layer
    the readout tensors           -> nir.Output

Thresholds folded. IFNeuron emits θ or 0 and resets by subtracting θ; nir.IF emits 1 or 0. Dividing
a neuron's potential by its per-channel θ gives the same spike train with threshold 1, so every
current into the neuron is divided by θ (its incoming weights and bias) and every spike leaving it
brings its θ into the weights of the layer it feeds. The bookkeeping is one scale per tensor
element: the ONNX value = scale * the NIR value. A layer picks its output scale (θ of the neuron it
feeds, θ·k² in front of a k x k average pool, 1 otherwise) and absorbs its input's scale into its
weights; where two scales must meet and cannot (a residual edge from another neuron, a readout of
spikes), an nir.Scale node converts them. Channels with θ = 0 never fire: their incoming weights,
bias and initial potential are 0.

Time. One NIR step is one step of the SNN; nir.IF with r = 1 integrates v[t] = v[t-1] + I[t], I[t]
being the sum of the edges converging on it computed from the same step's spikes (no synaptic
delay). NIR's IF resets to v_reset and has no initial state; the graph's and every IF's metadata
say "reset": "subtract", "firing": "v > v_threshold" (neuron.py: spike where v > θ) and carry "v0",
the initial potential in threshold units (v_init·θ/θ, or the correction's v0/θ).

Input coding. When every node before the first neuron is expressible, the graph input is the image
and it is fed unchanged at every step (direct coding: the first layers run at each step on the
same input, which gives the constant current onnx2snn computes once and repeats). Otherwise the
graph inputs are the tensors onnx2snn repeats over the steps and the nodes before them stay on the
host ("current" coding).

Readout. Each nir.Output is one tensor onnx2snn averages over steps D+1..T (in the ONNX tensor's
units: Scale nodes undo the folding); everything after it (heads, Softmax, ArgMax, ...) stays on
the host and is listed in info["host"].

Rounding. Folding changes float32 rounding: the SNN computes W·(θ_in·s) and compares v with θ,
the NIR graph computes (W·θ_in/θ)·s and compares v/θ with 1 (weights are folded in float64 and
rounded once). Both are exact when θ and the pooling factors are powers of two and the sums are
exactly representable (the tests' integer models); otherwise a potential within a few ulps of the
threshold can fire one step apart, which moves a readout by a spike's weight divided by T-D.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx

from .._version import __version__
from ..errors import InternalError, UserError, param
from ..snn.info import SNNInfo
from .folding import FIRING, RESET, Folding
from .mapping import Mapping
from .reading import OnnxView, Plan
from .refusals import WHERE, PreRefused

__all__ = ["FIRING", "RESET", "load_nir", "to_nir"]


def load_nir():
    """The `nir` module, or a UserError saying how to install it."""
    try:
        import nir
    except ImportError:
        raise UserError(f"{WHERE}: the NIR export needs the `nir` package (pip install nir==1.0.8)") from None
    return nir


def to_nir(snn: onnx.ModelProto):
    """(nir.NIRGraph, info) for a model converted by onnx2snn in the unrolled form.

    The graph runs from its input (the image, or the repeated current: info["input_coding"]) to the
    readout tensors; it is built with NIR's type check on. info: timesteps, delay, input_coding,
    inputs, readout, host (the nodes staying on the host, before or after the graph), neurons and
    the Scale nodes the folding needed. Raises UserError naming the node, the reason and the way
    forward for anything NIR cannot express."""
    nir = load_nir()
    info = SNNInfo.from_metadata(snn, WHERE)
    if info.looped:
        raise UserError(f"{WHERE}: the model is in the loop form; the NIR export reads the unrolled form: "
                        f"convert again with {param('form')} unrolled (the default)")
    if info.portable:
        raise UserError(f"{WHERE}: the model is portable (neurons lowered to standard ops); the NIR export "
                        f"reads IFNeuron nodes: convert again without {param('portable')}")
    graph = OnnxView(snn)
    plan = Plan(graph, info)
    try:
        export = _Export(nir, graph, info, plan, direct=True)
    except PreRefused as refusal:
        why = str(refusal)[len(WHERE) + 2:] if str(refusal).startswith(WHERE + ": ") else str(refusal)
        export = _Export(nir, graph, info, plan, direct=False, why=why)
    return export.result()


class _Export(Mapping, Folding):
    """Parses the region, propagates the scales each layer should emit, then builds the graph."""

    def __init__(self, nir, g: OnnxView, info: SNNInfo, plan: Plan, direct: bool, why: str = ""):
        self.nir, self.g, self.info, self.plan, self.direct = nir, g, info, plan, direct
        self.why = why
        self.shapes = {}
        self.nodes, self.edges, self.used = {}, [], set()
        self.signals, self.layers, self.scale_nodes, self._scale_cache = {}, [], [], {}
        self.neurons, self.inputs, self.zeros = {}, [], {}
        self.ops = _live(self._parse())
        self.consumers = Counter(t for op in self.ops for t in op.inputs)
        self.wanted = self._wanted_scales()
        for op in self.ops:
            try:
                self._emit(op)
            except UserError as err:
                if op.pre and not isinstance(err, PreRefused):
                    raise PreRefused(str(err)) from None
                raise

    # ---- the result ---------------------------------------------------------------------------
    def result(self):
        nir, info, plan, g = self.nir, self.info, self.plan, self.g
        for layer in self.layers:
            meta = {"onnx_node": layer.onnx_node}
            weight, bias = layer.weight.astype(np.float32), layer.bias.astype(np.float32)
            if layer.kind == "conv":
                p = layer.params
                node = nir.Conv2d(input_shape=p["input_shape"], weight=weight, stride=p["stride"],
                                  padding=p["padding"], dilation=p["dilation"], groups=p["groups"], bias=bias,
                                  metadata=meta)
            elif np.any(bias != 0):
                node = nir.Affine(weight=weight, bias=bias, metadata=meta)
            else:
                node = nir.Linear(weight=weight, metadata=meta)
            self.nodes[layer.name] = node
        translated = set(plan.spiking) | (set(plan.pre) if self.direct else set())
        host = []
        for i, node in enumerate(g.nodes):
            if i in translated or i in plan.plumbing or node.op_type == "Constant":
                continue
            host.append({"node": node.name, "op": node.op_type, "when": "after" if i in plan.after else "before"})
        readout = [{"output": name, "steps": n.metadata["onnx_steps"], "mean": n.metadata["onnx_mean"],
                    "averaged_steps": [info.delay + 1, info.timesteps],
                    "shape": [int(d) for d in n.output_type["output"]]}
                   for name, n in self.nodes.items() if isinstance(n, nir.Output)]
        coding = "direct" if self.direct else "current"
        meta = {
            "producer": f"onnx2snn {__version__}", "timesteps": int(info.timesteps), "delay": int(info.delay),
            "time": "discrete: one NIR step is one SNN step; IF (r=1) integrates v[t] = v[t-1] + I[t], I[t] the "
                    "sum of the edges converging on it from the same step (no synaptic delay)",
            "reset": RESET, "firing": FIRING,
            "initial_potential": "each IF's metadata 'v0' (threshold units): NIR's IF has no initial state",
            "thresholds": "folded into the weights (v_threshold = 1); each IF's metadata 'theta' has the "
                          "original per-channel thresholds",
            "input_coding": coding,
            "input_coding_note": ("the image is fed unchanged at every step" if self.direct else
                                  "the graph inputs are the currents onnx2snn repeats over the steps; the nodes "
                                  "before them run once per sample on the host (" + self.why + ")"),
            "readout": json.dumps(readout), "host": json.dumps(host),
        }
        try:
            graph = nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=meta, type_check=True)
            graph.check_types()
        except (ValueError, AssertionError, TypeError) as err:
            raise InternalError(f"{WHERE}: NIR's type check refused the exported graph ({err})") from None
        out = {"timesteps": int(info.timesteps), "delay": int(info.delay), "input_coding": coding,
               "host_inputs_reason": None if self.direct else self.why, "inputs": self.inputs,
               "readout": readout, "host": host, "neurons": self.neurons, "scale_nodes": self.scale_nodes,
               "reset": RESET, "firing": FIRING}
        return graph, out


def _live(ops: list) -> list:
    """The operations something reads (an input, a neuron and a readout always stay): a channel
    slice only multiplied by zero, say, leaves no node behind."""
    while True:
        read = Counter(t for op in ops for t in op.inputs)
        kept = [op for op in ops if op.kind in ("input", "neuron", "output") or read[op.output]]
        if len(kept) == len(ops):
            return ops
        ops = kept
