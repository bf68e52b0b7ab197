"""IF neurons from standard ONNX ops only (Add, Greater, Where, Sub; Scan over the steps), for
runtimes that cannot load custom ops. Same float32 operations in the same order as the C++
operator, so the outputs are identical.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import Builder
from ..errors import UserError
from .timefold import theta_broadcast


def _step(prefix: str, v_prev, x, theta_b, zero, max_spikes: int = 1):
    """v <- v + x; s <- theta if v > theta else 0; v <- v - s   (nodes, v_new, s); with bursts the
    firing repeats up to `max_spikes` times: f <- theta if v > theta else 0; v <- v - f; s <- s + f."""
    v = gs.Variable(f"{prefix}/v", np.float32)
    fire = gs.Variable(f"{prefix}/fire", np.bool_)
    s = gs.Variable(f"{prefix}/s", np.float32)
    v_new = gs.Variable(f"{prefix}/v_new", np.float32)
    nodes = [gs.Node("Add", f"{prefix}/integrate", inputs=[v_prev, x], outputs=[v]),
             gs.Node("Greater", f"{prefix}/threshold", inputs=[v, theta_b], outputs=[fire]),
             gs.Node("Where", f"{prefix}/spike", inputs=[fire, theta_b, zero], outputs=[s]),
             gs.Node("Sub", f"{prefix}/reset", inputs=[v, s], outputs=[v_new])]
    for m in range(1, max_spikes):
        fire_m = gs.Variable(f"{prefix}/fire{m}", np.bool_)
        f_m = gs.Variable(f"{prefix}/f{m}", np.float32)
        v_m = gs.Variable(f"{prefix}/v_new{m}", np.float32)
        s_m = gs.Variable(f"{prefix}/s{m}", np.float32)
        nodes += [gs.Node("Greater", f"{prefix}/threshold{m}", inputs=[v_new, theta_b], outputs=[fire_m]),
                  gs.Node("Where", f"{prefix}/spike{m}", inputs=[fire_m, theta_b, zero], outputs=[f_m]),
                  gs.Node("Sub", f"{prefix}/reset{m}", inputs=[v_new, f_m], outputs=[v_m]),
                  gs.Node("Add", f"{prefix}/burst{m}", inputs=[s, f_m], outputs=[s_m])]
        v_new, s = v_m, s_m
    return nodes, v_new, s


EXPLICIT_MAX = 16   # a loop body's K steps up to this many are written out, not scanned


def lower_neuron(graph: gs.Graph, b: Builder, node: gs.Node, rank: int, steps_const=None, dims=None,
                 explicit: bool = False) -> None:
    """`steps_const`: the graph's shared int64 [1] step-count constant (so eval can change T);
    `dims`: one step's shape ([batch] + static dims) for the Scan body's inputs and outputs;
    `explicit`: write the steps out one after another instead of a Scan (a loop body's fixed K:
    runtimes such as tract run nested Scans poorly)."""
    steps = int(node.attrs["timesteps"])
    v_init = np.float32(node.attrs.get("v_init", 0.5))
    burst = int(node.attrs.get("max_spikes", 1))
    x = node.inputs[0]
    v_in = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    v0_c = node.inputs[3] if len(node.inputs) > 3 else None      # initial potential per neuron of a sample
    spikes = node.outputs[0]
    v_out = node.outputs[1] if len(node.outputs) > 1 else None
    theta_b = gs.Constant(f"{node.name}.theta_b",
                          theta_broadcast(node.inputs[1].values, int(node.attrs.get("axis", 1)), rank))
    zero = gs.Constant(f"{node.name}.zero", np.array(0, np.float32))
    node.inputs.clear()
    node.outputs.clear()
    b.prefix = f"{node.name}/portable"
    start = b.op("Mul", [theta_b, b.const(v_init)])
    if v0_c is not None:
        sample = list(dims[1:]) if dims is not None and all(isinstance(d, int) for d in dims[1:]) else None
        if v0_c.values.size > 1 and sample is None:
            raise UserError(f"node '{node.name}': a per-neuron initial potential needs the model's static shapes")
        start = b.reshape(v0_c, sample if v0_c.values.size > 1 else [1] * max(rank - 1, 1))
    if steps == 1:
        v0 = v_in if v_in is not None else start
        nodes, v_new, s = _step(b.prefix, v0, x, theta_b, zero, burst)
        graph.nodes.extend(nodes)
        b.op("Identity", [s], out=[spikes])
        if v_out is not None:
            b.op("Identity", [v_new], out=[v_out])
        return
    count = steps_const if steps_const is not None else b.const(np.array([steps], np.int64))
    per_step = b.op("Reshape", [x, b.concat([count, b.const(np.array([-1], np.int64)), b.shape_tail(x)],
                                            dtype=np.int64)])
    v0 = v_in if v_in is not None else b.op("Expand", [start, b.shape_tail(per_step)])
    if explicit:
        _explicit_steps(graph, b, node.name, steps, per_step, v0, theta_b, zero, x, spikes, v_out, burst)
        return
    v_prev = gs.Variable(f"{node.name}/scan/v_prev", np.float32)
    x_t = gs.Variable(f"{node.name}/scan/x_t", np.float32)
    nodes, v_new, s = _step(f"{node.name}/scan", v_prev, x_t, theta_b, zero, burst)
    for t in (v_prev, x_t, v_new, s):   # every runtime wants the Scan body's I/O typed and ranked
        t.shape = list(dims) if dims is not None else [None] * rank
    body = gs.Graph(nodes=nodes, inputs=[v_prev, x_t], outputs=[v_new, s], name=f"{node.name}/scan_body",
                    opset=b.opset)
    v_final = v_out if v_out is not None else gs.Variable(f"{node.name}/v_final", np.float32)
    stacked = gs.Variable(f"{node.name}/spikes_per_step", np.float32)
    graph.nodes.append(gs.Node("Scan", f"{node.name}/scan", {"body": body, "num_scan_inputs": 1},
                               inputs=[v0, per_step], outputs=[v_final, stacked]))
    b.op("Reshape", [stacked, b.concat([b.const(np.array([-1], np.int64)), b.shape_tail(x)], dtype=np.int64)],
         out=[spikes])


def _explicit_steps(graph, b: Builder, name: str, steps: int, per_step, v, theta_b, zero, x, spikes, v_out,
                    burst: int = 1):
    """The K steps of one neuron written out: the same float32 operations as the Scan body."""
    axis0 = b.const(np.array([0], np.int64))
    stacked = []
    for t in range(steps):
        b.prefix = f"{name}/portable/step{t}"
        x_t = b.op("Squeeze", [b.op("Slice", [per_step, b.const(np.array([t], np.int64)),
                                              b.const(np.array([t + 1], np.int64)), axis0]), axis0])
        nodes, v, s = _step(b.prefix, v, x_t, theta_b, zero, burst)
        graph.nodes.extend(nodes)
        stacked.append(b.op("Unsqueeze", [s, axis0]))
    b.prefix = f"{name}/portable"
    b.op("Reshape", [b.concat(stacked, axis=0), b.concat([b.const(np.array([-1], np.int64)), b.shape_tail(x)],
                                                         dtype=np.int64)], out=[spikes])
    if v_out is not None:
        b.op("Identity", [v], out=[v_out])


def lower_neurons(graph: gs.Graph, b: Builder, p, explicit: bool = False) -> None:
    """Replace every IFNeuron node of `graph` (not of its subgraphs) by standard ops (`p`: the
    Prepared graph: ranks, one step's dims per neuron and the shared step-count constant)."""
    saved = b.graph
    b.graph = graph
    tensors = {l.name: l.tensor for l in p.layers}
    for node in [n for n in graph.nodes if n.op == "IFNeuron"]:
        rank = p.ranks[node.name]
        lower_neuron(graph, b, node, rank, p.steps, p.state_dims(tensors.get(node.name, ""), rank), explicit)
    b.graph = saved
