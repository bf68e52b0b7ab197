"""Replace activations with ReLUX probes whose per-channel statistics are reduced in the graph.

Per calibration batch a probe returns one small vector, never the activation: memory does not
depend on activation sizes times batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.analyse import Analysis, as_analysis
from ..graph.builder import Builder
from ..config import METHODS
from ..errors import UserError, param
from ..graph.onnx_io import export
from ..ops.neuron import DOMAIN, OPSET_VERSION

LR_INPUT = "onnx2snn.step"  # 2 * lr, fed each batch


@dataclass(frozen=True)
class Probe:
    name: str            # activation node name (key of the thresholds)
    theta_input: str     # graph input carrying the current threshold (broadcast shape)
    theta_shape: tuple   # (C,) per channel, (1,) layer-wise
    stat: str            # graph output: method statistic (see balancing.py)
    clip_error: str      # graph output: mean((x - theta)+), scalar ("" when not tracked)
    activity: str        # graph output: mean(relu(x)), scalar ("" when not tracked)
    channels: int
    axis: int
    cap: float | None


def _theta_shape(act, layerwise: bool) -> tuple:
    if layerwise:
        return (1,)
    if not act.channels:
        raise UserError(f"node '{act.name}': the size of its channel axis {act.axis} is unknown; "
                        "export the model with static channel dimensions")
    return (act.channels,)


def _ltb_probe(b: Builder, act, theta, layerwise: bool, step):
    """theta' = theta + 2 lr mean((x - theta) H(x - theta)); y = clip(x, 0, theta') (Bu et al.).

    One fused node of our operator library (ReLUXProbe): the statistics and the clip in two passes
    over the activation, so calibration costs about what the ANN's inference does."""
    inputs = [act.input, theta, step]
    if act.cap is not None:
        inputs.append(b.const(np.array(act.cap, np.float32)))
    out = act.output
    act.node.outputs.clear()
    grad, excess, activity = (gs.Variable(f"{act.name}/{n}", np.float32) for n in ("grad", "clip_error", "activity"))
    b.graph.nodes.append(gs.Node("ReLUXProbe", f"{act.name}/relux", {"axis": 0 if layerwise and act.rank == 0
                                                                     else act.axis},
                                 inputs, [out, grad, excess, activity], domain=DOMAIN))
    return grad, excess, activity


def _max_probe(b: Builder, act):
    return b.reduce("ReduceMax", act.input, None)


def _percentile_probe(b: Builder, act, percentile: float):
    """The batch's p-th percentile of positive activations: k-th largest, k = ceil((1-p) n_pos)."""
    flat = b.reshape(act.input, [-1])
    positive = b.op("Cast", [b.op("Greater", [flat, b.const(np.float32(0))], dtype=np.bool_)],
                    {"to": onnx.TensorProto.FLOAT})
    npos = b.reduce("ReduceSum", positive, None)
    tail = np.float32(1.0 - percentile / 100.0)
    k = b.op("Max", [b.op("Ceil", [b.op("Mul", [npos, b.const(tail)])]), b.const(np.float32(1))])
    k = b.reshape(b.op("Cast", [k], {"to": onnx.TensorProto.INT64}, np.int64), [1], np.int64)
    values = gs.Variable(f"{act.name}/probe/top_values", np.float32)
    b.op("TopK", [flat, k], {"largest": 1, "sorted": 1},
         out=[values, gs.Variable(f"{act.name}/probe/top_indices", np.int64)])
    last = b.op("Sub", [k, b.const(np.array([1], np.int64))], dtype=np.int64)
    return b.reshape(b.op("Gather", [values, last], {"axis": 0}), [])


def build(analysis: Analysis, method: str = "ltb", percentile: float = 99.9,
          keep_outputs: bool = False, expose_inputs: bool = False, outputs=()):
    """Calibration model and the list of probes.

    Its outputs are the probe statistics only (so the head after the last probe is pruned);
    `keep_outputs` also keeps the model's outputs, `expose_inputs` each activation's input, and
    `outputs` the named tensors of the probed (clipped) network (for tests, reports and debugging:
    they cost memory).
    """
    if method not in METHODS:
        raise UserError(f"{param('method')} {method}: unknown (choose from {', '.join(METHODS)})")
    analysis = as_analysis(analysis)
    analysis.require_activations()
    graph, acts = analysis.copy()
    model_outputs = list(graph.outputs) if keep_outputs else []
    named = graph.tensors()
    missing = [n for n in outputs if n not in named]
    if missing:
        raise UserError(f"tensor(s) {', '.join(missing)} are not in the model")
    exposed = ([a.input for a in acts] if expose_inputs else []) + [named[n] for n in outputs]
    b = Builder(graph, analysis.opset, "onnx2snn.probe")
    layerwise = method != "ltb"
    step = gs.Variable(LR_INPUT, np.float32, [])
    inputs = list(graph.inputs)
    stats, probes = [], []
    for act in acts:
        b.prefix = f"{act.name}/probe"
        shape = _theta_shape(act, layerwise)
        clip_err = activity = ""
        if method in ("ltb", "ltb-layer"):
            theta = gs.Variable(f"onnx2snn.theta:{act.name}", np.float32, list(shape))
            inputs.append(theta)
            stat, err, actv = _ltb_probe(b, act, theta, layerwise, step)
            stats += [err, actv]
            clip_err, activity = err.name, actv.name
        elif method == "max":
            theta = None
            stat = _max_probe(b, act)
        else:
            theta = None
            stat = _percentile_probe(b, act, percentile)
        stat.name = f"{act.name}/stat"
        stats.append(stat)
        probes.append(Probe(act.name, theta.name if theta is not None else "", shape, stat.name,
                            clip_err, activity, act.channels, act.axis, act.cap))
    if method in ("ltb", "ltb-layer"):
        inputs.append(step)
    graph.inputs = inputs
    graph.outputs = stats + model_outputs + exposed
    for t in stats + exposed:
        t.dtype = np.float32
    extra = [(DOMAIN, OPSET_VERSION)] if method in ("ltb", "ltb-layer") else []
    return export(graph, analysis.model, extra_opsets=extra), probes


def clipped(analysis: Analysis, thetas: dict, outputs):
    """(model, feeds): the ANN with every activation clipped at given thresholds — the network the
    SNN's rates approach — returning the named tensors. `thetas`: activation name -> theta (a
    missing one is 1); `feeds` holds the thresholds and step 0, to be added to the data's feeds.
    (A ReLUX probe with step 0 keeps theta and outputs clip(x, 0, theta).)"""
    model, probe_list = build(analysis, "ltb", outputs=outputs)
    feeds = {LR_INPUT: np.zeros((), np.float32)}
    for pr in probe_list:
        theta = np.asarray(thetas.get(pr.name, np.ones(1, np.float32)), np.float32).reshape(-1)
        feeds[pr.theta_input] = np.broadcast_to(theta, pr.theta_shape).astype(np.float32)
    return model, feeds
