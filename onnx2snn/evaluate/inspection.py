"""`onnx2snn inspect MODEL`: what conversion will do, without data and without calibrating.

The activations found (kind, channel axis, channels, cap), how each MaxPool fed by an activation
is handled, the pre / spiking / post regions, every node that blocks conversion with its reason,
and the model's inputs with the preprocessing flags they call for.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..graph import onnx_io as M
from ..graph.sites import NEGATIVE, POSITIVE
from ..graph.analyse import NO_ACTIVATION, NORM_OPS, Analysis, analog_nodes, analyse
from ..data import model_inputs


def _input_hint(shape, dtype) -> str:
    if np.dtype(dtype).kind in "iub":
        return "integer input: give integer arrays (.npy/.npz or --data-loader)"
    if shape is not None and len(shape) == 4:
        nhwc = shape[3] in (1, 3) and shape[1] not in (1, 3)
        c, h, w = (shape[3], shape[1], shape[2]) if nhwc else (shape[1], shape[2], shape[3])
        size = f"{h}x{w}" if h and w else "any size (pass --size H,W)"
        if c not in (1, 3):
            return f"{c}-channel 4-D arrays: give .npy/.npz files (keyed by input name) or --data-loader FILE.py:FN"
        return (f"images, {'NHWC' if nhwc else 'NCHW'}, {c or '?'} channel(s), {size}: an image folder works; "
                "pass --mean/--std of the training preprocessing (on the [0,1] scale)")
    return "arrays: give .npy/.npz files (keyed by input name) or --data-loader FILE.py:FN"


def _pools(analysis: Analysis) -> list:
    """How each MaxPool that consumes an activation will be handled."""
    out = []
    graph_inputs = {id(t) for t in analysis.graph.inputs}
    for act in analysis.activations:
        src = act.input
        constant_input = (not src.inputs and id(src) in graph_inputs) or \
            (bool(src.inputs) and id(src.inputs[0]) in analysis.regions.pre)
        for pool in [c for c in act.output.outputs if c.op == "MaxPool"]:
            how = ("moved in front of the neuron (its input does not vary over time: exact)" if constant_input
                   else "spiking max pool (pools running sums of the currents; converges to the ANN's max)")
            out.append({"name": pool.name, "after": act.name, "handling": how})
    return out


def inspect_model(path, keep_analog: bool = False, freeze_norm: bool = False, nir: bool = False) -> dict:
    """The inspection of the model at `path` as a JSON-ready dict; `convertible` says the verdict
    (with `freeze_norm`, normalisation layers between spiking layers count as frozen: listed under
    "frozen", not blocking)."""
    model = M.load(path)
    analysis = analyse(model)
    names = lambda ids: [n.name for n in analysis.graph.nodes if id(n) in ids]  # noqa: E731
    neurons = [a.node for a in analysis.activations]
    analog = [n.name for n in analog_nodes(analysis.graph, neurons, analysis.regions)]
    ops = {n.name: n.op for n in analysis.graph.nodes}
    blocking = analysis.blocking(keep_analog)
    frozen = [n.name for n, _ in analysis.problems if freeze_norm and n.op in NORM_OPS]
    blocking = [(n, why) for n, why in blocking if n.name not in frozen]
    analog = [n for n in analog if n not in frozen]
    dtype_ok = all(a.input.dtype is None or np.dtype(a.input.dtype) == np.float32 for a in analysis.activations)
    report = {
        "model": str(path),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opset": M.default_opset(model),
        "inputs": [{"name": i.name, "dtype": str(i.dtype),
                    "shape": ["N" if d is None else d for d in i.shape] if i.shape else None,
                    "data": _input_hint(i.shape, i.dtype)} for i in model_inputs(model)],
        "outputs": [{"name": o.name, "type": _type(o)} for o in model.graph.output],
        "activations": [{"name": a.name, "kind": a.kind, "axis": a.axis, "channels": a.channels or None,
                         "cap": a.cap} for a in analysis.activations],
        "maxpools": _pools(analysis),
        "regions": {"pre": names(analysis.regions.pre), "spiking": names(analysis.regions.spiking),
                    "post": names(analysis.regions.post)},
        "sites": [{"node": site.node, "op": site.op, "tensor": site.tensor, "signed": site.signed,
                   "neurons": [site.node + POSITIVE] + ([site.node + NEGATIVE] if site.signed else [])}
                  for site in analysis.sites],
        "compensated": [] if keep_analog else [{"node": n, "op": ops[n]} for n in analog],
        "analog": analog if keep_analog else [],
        "frozen": frozen,
        "blocking": [{"node": n.name, "op": n.op, "reason": why, "keep_analog_helps": n.name in analog,
                      "freeze_norm_helps": n.op in NORM_OPS} for n, why in blocking]
        + ([] if analysis.activations else [{"node": None, "op": None, "keep_analog_helps": False,
                                             "freeze_norm_helps": False,
                                             "reason": NO_ACTIVATION}])
        + ([] if dtype_ok else [{"node": None, "op": None, "keep_analog_helps": False, "freeze_norm_helps": False,
                                 "reason": "activations are not float32 (convert the model to float32)"}]),
        "convertible": bool(analysis.activations) and not blocking and dtype_ok,
    }
    if nir:
        if not report["convertible"]:
            report["nir"] = {"exportable": False, "reason": "the model does not convert (above)", "input_coding": None,
                             "host": []}
        elif frozen:
            report["nir"] = {"exportable": False, "input_coding": None, "host": [],
                             "reason": "not judged: the --freeze-norm layers are fixed from calibration data; "
                                       "convert, then run export-nir"}
        else:
            from ..nir.files import verdict
            report["nir"] = verdict(analysis, keep_analog)
    return report


def _type(vi: onnx.ValueInfoProto) -> str:
    if vi.type.HasField("tensor_type"):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        return f"tensor({onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)}) {dims}"
    return "not a tensor (" + vi.type.WhichOneof("value") + ")"
