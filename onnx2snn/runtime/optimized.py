"""The record of an optimized file: a converted model written as onnx2snn's sessions run it
(sessions.optimize, `onnx2snn optimize`), which gives the speed of the session rewrite to any
onnxruntime binding (C, C++, C#, Java, ...) that loads the operator library.

Two rewrites, recorded in the file's metadata (`onnx2snn.optimized`):
  * fused: each neuron's bias Add, residual Add and time tiling folded into it (fusion.py). Any
    onnxruntime that loads the library runs it, on any CPU.
  * blocked: onnxruntime's own optimization of the graph for this CPU (its NCHWc blocked layout,
    weights reordered for this CPU's vector width), with the neurons and probes working in that layout
    (layout.py). It suits the onnxruntime version and the channel block it was made with; onnx2snn's
    sessions refuse it elsewhere, naming both, and it should be loaded with graph optimizations
    disabled (onnxruntime may optimize it again; the outputs stay the same).
Outputs are bit-identical to the converted file's. The converted file stays the one to evaluate,
inspect, export to NIR and keep: an optimized file is a deployment artefact of one machine.
"""
from __future__ import annotations

import json
import platform

import onnx
import onnxruntime as ort

from . import layout
from ..errors import UserError

KEY = "onnx2snn.optimized"


def optimized_for(model: onnx.ModelProto) -> dict | None:
    """What an optimized file was made for ({"rewrites", "onnxruntime", "block", "machine"}), or None
    for a file as converted."""
    for prop in model.metadata_props:
        if prop.key == KEY:
            return json.loads(prop.value)
    return None


def target() -> dict:
    """This machine's onnxruntime version, channel block (0: no blocked layout) and architecture."""
    return {"onnxruntime": ort.__version__, "block": layout.block_size(), "machine": platform.machine()}


def check_target(model: onnx.ModelProto, name: str = "the model") -> dict | None:
    """The file's optimization record; a UserError when it was blocked for another onnxruntime or CPU."""
    made = optimized_for(model)
    if made and "blocked" in made.get("rewrites", ()):
        here = target()
        if any(made.get(k) != here[k] for k in here):
            raise UserError(f"{name}: optimized for onnxruntime {made.get('onnxruntime')} on {made.get('machine')} "
                            f"with {made.get('block')}-channel blocks; this is onnxruntime {here['onnxruntime']} on "
                            f"{here['machine']} with {here['block']}: optimize the converted file again here "
                            "(onnx2snn optimize), or run it as converted")
    return made


def record(graph: onnx.ModelProto, source: onnx.ModelProto, rewrites: list) -> onnx.ModelProto:
    """`graph` (the rewritten `source`) with `source`'s metadata and the rewrites recorded."""
    made = {"rewrites": list(rewrites)}
    if "blocked" in rewrites:
        made.update(target())
    have = {p.key for p in graph.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in have:
            graph.metadata_props.add(key=prop.key, value=prop.value)
    graph.metadata_props.add(key=KEY, value=json.dumps(made, sort_keys=True))
    graph.producer_name = "onnx2snn"
    return graph
