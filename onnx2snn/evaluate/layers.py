"""Where a per-layer error enters: for each neuron of a converted model, the kind of layer that
feeds it (a depthwise, pointwise or k x k convolution, a dense layer; across a residual add; capped
like ReLU6; a spiking site of a non-ReLU op) and the neurons upstream of that layer, read from the
ANN's analysis. The report (`eval --report`) turns them into each layer's error added over its
inputs' and a summary by kind.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.sites import NEGATIVE, POSITIVE, varying_inputs

_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _conv_kind(node: gs.Node) -> str:
    w = node.inputs[1] if len(node.inputs) > 1 else None
    shape = list(w.shape) if w is not None and w.shape is not None else []
    kernel = list(node.attrs.get("kernel_shape", shape[2:]))
    group = int(node.attrs.get("group", 1))
    if group > 1 and len(shape) > 1 and shape[1] == 1:
        return "depthwise"
    if kernel and all(k == 1 for k in kernel):
        return "pointwise 1x1"
    return "conv " + "x".join(str(k) for k in kernel) if kernel else "conv"


def _sums_inputs(t: gs.Tensor, outputs: set) -> bool:
    """Whether t is, short of the neurons upstream, a sum of two varying tensors (a residual add)."""
    for _ in range(256):
        if not t.inputs or id(t) in outputs:
            return False
        node = t.inputs[0]
        moving = varying_inputs(node)
        if node.op in ("Add", "Sum") and len(moving) > 1:
            return True
        if node.op in _WEIGHTED or not moving:
            return False
        t = moving[0]
    return False


def _layer(x: gs.Tensor, outputs: set) -> tuple:
    """(kind of the weighted layer that produces x, whether a residual add lies between it and the
    neurons: after the layer, as in ResNets, or before it, as in MobileNetV2's blocks)."""
    residual, t = False, x
    for _ in range(256):
        if not t.inputs or id(t) in outputs:
            return "no weighted layer", residual
        node = t.inputs[0]
        if node.op in _WEIGHTED:
            moving = varying_inputs(node)
            residual = residual or bool(moving and _sums_inputs(moving[0], outputs))
            return (_conv_kind(node) if node.op == "Conv" else "dense"), residual
        moving = varying_inputs(node)
        if not moving:
            return "no weighted layer", residual
        if node.op in ("Add", "Sum") and len(moving) > 1:
            residual = True
            moving = [m for m in moving if not (m.inputs and id(m) in outputs)] or moving
        t = moving[0]
    return "no weighted layer", residual


def _upstream(x: gs.Tensor, outputs: dict) -> set:
    """The activations whose outputs reach x without crossing another activation."""
    found, seen, stack = set(), set(), [x]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if id(t) in outputs:
            found.add(outputs[id(t)])
            continue
        if t.inputs:
            stack.extend(i for i in t.inputs[0].inputs if i.name and not isinstance(i, gs.Constant))
    return found


def describe(analysis, neurons: list) -> dict:
    """neuron name -> {"kind", "upstream"}: the layer kind that feeds it ("depthwise", "pointwise
    1x1", "conv 3x3", "dense", with " + residual add" and " capped at c"; "site of <op> (+ or -)"
    for the neurons of a non-ReLU op) and the names of the neurons upstream of it."""
    acts = {a.name: a for a in analysis.activations}
    outputs = {id(a.output): a.name for a in analysis.activations}
    by_source = {}
    for n in neurons:
        by_source.setdefault(n["source"], []).append(n["name"])
    sites = {s.node: s.op for s in getattr(analysis, "sites", ())}
    out = {}
    for n in neurons:
        act = acts.get(n["source"])
        if act is None:
            continue
        kind, residual = _layer(act.input, set(outputs))
        for suffix, sign in ((POSITIVE, "+"), (NEGATIVE, "-")):
            base = act.name[:-len(suffix)]
            if act.name.endswith(suffix) and base in sites:
                kind = f"site of {sites[base]} ({sign}), after {kind}"
        if residual:
            kind += " + residual add"
        if act.cap is not None:
            kind += f" capped at {act.cap:g}"
        upstream = sorted(u for a in _upstream(act.input, outputs) for u in by_source.get(a, []))
        out[n["name"]] = {"kind": kind, "upstream": upstream}
    return out


def error_added(rows: list) -> None:
    """Each row (the report's per-layer rows, with "kind" and "upstream") gets "error_added": its
    rate error less the largest of its upstream neurons' (None without rate errors)."""
    errors = {r["name"]: r.get("rate_error") for r in rows}
    for r in rows:
        own = r.get("rate_error")
        ups = [errors[u] for u in r.get("upstream", []) if errors.get(u) is not None]
        r["error_added"] = None if own is None else float(own - (max(ups) if ups else 0.0))


def by_kind(rows: list) -> list:
    """(kind, layers, mean rate error, mean error added) per kind (with "+ residual add", without the
    cap), the kind that adds most first."""
    groups = {}
    for r in rows:
        if r.get("rate_error") is None or not r.get("kind"):
            continue
        kind = r["kind"].split(" capped")[0]
        groups.setdefault(kind, []).append(r)
    out = [(k, len(v), float(np.mean([r["rate_error"] for r in v])),
            float(np.mean([r["error_added"] for r in v if r.get("error_added") is not None] or [0.0])))
           for k, v in groups.items()]
    return sorted(out, key=lambda g: -g[3])
