"""IF neurons from standard ONNX ops only (Add, Greater, Where, Sub; Scan over the steps), for
runtimes that cannot load custom ops. Same float32 operations in the same order as the C++
operator, so the outputs are identical.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import Builder
from .timefold import theta_broadcast


def _step(prefix: str, v_prev, x, theta_b, zero):
    """v <- v + x; s <- theta if v > theta else 0; v <- v - s   (nodes, v_new, s)."""
    v = gs.Variable(f"{prefix}/v", np.float32)
    fire = gs.Variable(f"{prefix}/fire", np.bool_)
    s = gs.Variable(f"{prefix}/s", np.float32)
    v_new = gs.Variable(f"{prefix}/v_new", np.float32)
    nodes = [gs.Node("Add", f"{prefix}/integrate", inputs=[v_prev, x], outputs=[v]),
             gs.Node("Greater", f"{prefix}/threshold", inputs=[v, theta_b], outputs=[fire]),
             gs.Node("Where", f"{prefix}/spike", inputs=[fire, theta_b, zero], outputs=[s]),
             gs.Node("Sub", f"{prefix}/reset", inputs=[v, s], outputs=[v_new])]
    return nodes, v_new, s


def lower_neuron(graph: gs.Graph, b: Builder, node: gs.Node, rank: int, steps_const=None) -> None:
    """`steps_const`: the graph's shared int64 [1] step-count constant (so eval can change T)."""
    steps = int(node.attrs["timesteps"])
    v_init = np.float32(node.attrs.get("v_init", 0.5))
    x = node.inputs[0]
    v_in = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    spikes = node.outputs[0]
    v_out = node.outputs[1] if len(node.outputs) > 1 else None
    theta_b = gs.Constant(f"{node.name}.theta_b",
                          theta_broadcast(node.inputs[1].values, int(node.attrs.get("axis", 1)), rank))
    zero = gs.Constant(f"{node.name}.zero", np.array(0, np.float32))
    node.inputs.clear()
    node.outputs.clear()
    b.prefix = f"{node.name}/portable"
    if steps == 1:
        v0 = v_in if v_in is not None else b.op("Mul", [theta_b, b.const(v_init)])
        nodes, v_new, s = _step(b.prefix, v0, x, theta_b, zero)
        graph.nodes.extend(nodes)
        b.op("Identity", [s], out=[spikes])
        if v_out is not None:
            b.op("Identity", [v_new], out=[v_out])
        return
    count = steps_const if steps_const is not None else b.const(np.array([steps], np.int64))
    per_step = b.op("Reshape", [x, b.concat([count, b.const(np.array([-1], np.int64)), b.shape_tail(x)],
                                            dtype=np.int64)])
    v0 = v_in if v_in is not None else b.op(
        "Expand", [b.op("Mul", [theta_b, b.const(v_init)]), b.shape_tail(per_step)])
    v_prev = gs.Variable(f"{node.name}/scan/v_prev", np.float32)
    x_t = gs.Variable(f"{node.name}/scan/x_t", np.float32)
    nodes, v_new, s = _step(f"{node.name}/scan", v_prev, x_t, theta_b, zero)
    for t in (v_prev, x_t, v_new, s):
        t.shape = [f"{node.name}_d{i}" for i in range(rank)]  # onnxruntime wants Scan outputs ranked
    body = gs.Graph(nodes=nodes, inputs=[v_prev, x_t], outputs=[v_new, s], name=f"{node.name}/scan_body",
                    opset=b.opset)
    v_final = v_out if v_out is not None else gs.Variable(f"{node.name}/v_final", np.float32)
    stacked = gs.Variable(f"{node.name}/spikes_per_step", np.float32)
    graph.nodes.append(gs.Node("Scan", f"{node.name}/scan", {"body": body, "num_scan_inputs": 1},
                               inputs=[v0, per_step], outputs=[v_final, stacked]))
    b.op("Reshape", [stacked, b.concat([b.const(np.array([-1], np.int64)), b.shape_tail(x)], dtype=np.int64)],
         out=[spikes])


def lower_neurons(graph: gs.Graph, b: Builder, ranks: dict, steps_const=None) -> None:
    """Replace every IFNeuron node of `graph` (not of its subgraphs) by standard ops."""
    saved = b.graph
    b.graph = graph
    for node in [n for n in graph.nodes if n.op == "IFNeuron"]:
        lower_neuron(graph, b, node, ranks[node.name], steps_const)
    b.graph = saved
