"""IF neurons from standard ONNX ops only (Add, Greater, Where, Sub; Scan over the steps), for
runtimes that cannot load custom ops. Same float32 operations in the same order as the C++
operator, so the outputs are identical.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.builder import Builder
from ..errors import UserError
from .timefold import theta_broadcast


class _Signed:
    """The constants of a signed neuron's firing rounds: -theta, 1, -1."""

    def __init__(self, name: str, theta_b: gs.Constant):
        self.neg = gs.Constant(f"{name}.neg_theta_b", (-np.asarray(theta_b.values)).astype(np.float32))
        self.one = gs.Constant(f"{name}.one", np.array(1, np.float32))
        self.minus_one = gs.Constant(f"{name}.minus_one", np.array(-1, np.float32))


def _round(prefix: str, m, v, theta_b, zero, signed: "_Signed | None", n):
    """One firing round: f <- theta if v > theta [else -theta if v < -theta and n > 0] else 0;
    v <- v - f [; n <- n + (1, -1 or 0)]   (nodes, f, v_new, n_new)."""
    tag = "" if m == 0 else str(m)
    fire = gs.Variable(f"{prefix}/fire{tag}", np.bool_)
    f = gs.Variable(f"{prefix}/{'s' if m == 0 else f'f{m}'}", np.float32)
    v_new = gs.Variable(f"{prefix}/v_new{tag}", np.float32)
    nodes = [gs.Node("Greater", f"{prefix}/threshold{tag}", inputs=[v, theta_b], outputs=[fire])]
    if signed is None:
        nodes.append(gs.Node("Where", f"{prefix}/spike{tag}", inputs=[fire, theta_b, zero], outputs=[f]))
    else:
        below = gs.Variable(f"{prefix}/below{tag}", np.bool_)
        owed = gs.Variable(f"{prefix}/owed{tag}", np.bool_)
        down = gs.Variable(f"{prefix}/down{tag}", np.bool_)
        neg = gs.Variable(f"{prefix}/negative{tag}", np.float32)
        step = gs.Variable(f"{prefix}/count_step{tag}", np.float32)
        down_step = gs.Variable(f"{prefix}/count_down{tag}", np.float32)
        n_new = gs.Variable(f"{prefix}/n_new{tag}", np.float32)
        nodes += [gs.Node("Less", f"{prefix}/below{tag}", inputs=[v, signed.neg], outputs=[below]),
                  gs.Node("Greater", f"{prefix}/owed{tag}", inputs=[n, zero], outputs=[owed]),
                  gs.Node("And", f"{prefix}/down{tag}", inputs=[below, owed], outputs=[down]),
                  gs.Node("Where", f"{prefix}/negative{tag}", inputs=[down, signed.neg, zero], outputs=[neg]),
                  gs.Node("Where", f"{prefix}/spike{tag}", inputs=[fire, theta_b, neg], outputs=[f]),
                  gs.Node("Where", f"{prefix}/count_down{tag}", inputs=[down, signed.minus_one, zero],
                          outputs=[down_step]),
                  gs.Node("Where", f"{prefix}/count_step{tag}", inputs=[fire, signed.one, down_step], outputs=[step]),
                  gs.Node("Add", f"{prefix}/count{tag}", inputs=[n, step], outputs=[n_new])]
        n = n_new
    nodes.append(gs.Node("Sub", f"{prefix}/reset{tag}", inputs=[v, f], outputs=[v_new]))
    return nodes, f, v_new, n


def _step(prefix: str, v_prev, x, theta_b, zero, max_spikes: int = 1, signed: "_Signed | None" = None,
          n_prev=None):
    """v <- v + x; then `max_spikes` firing rounds (_round), their spikes summed in order:
    (nodes, v_new, s, n_new); n (the net spike count) only when `signed`."""
    v = gs.Variable(f"{prefix}/v", np.float32)
    nodes = [gs.Node("Add", f"{prefix}/integrate", inputs=[v_prev, x], outputs=[v])]
    more, s, v_new, n = _round(prefix, 0, v, theta_b, zero, signed, n_prev)
    nodes += more
    for m in range(1, max_spikes):
        more, f_m, v_new, n = _round(prefix, m, v_new, theta_b, zero, signed, n)
        s_m = gs.Variable(f"{prefix}/s{m}", np.float32)
        nodes += more + [gs.Node("Add", f"{prefix}/burst{m}", inputs=[s, f_m], outputs=[s_m])]
        s = s_m
    return nodes, v_new, s, n


EXPLICIT_MAX = 16   # a loop body's K steps up to this many are written out, not scanned


def _given(node: gs.Node, i: int):
    """Input i of `node` when it is given (not absent or the empty name), else None."""
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


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
    v_in, v0_c, n_in = _given(node, 2), _given(node, 3), _given(node, 6)   # v0_c: initial potential per neuron
    spikes = node.outputs[0]
    v_out = node.outputs[1] if len(node.outputs) > 1 and node.outputs[1].name else None
    n_out = node.outputs[2] if len(node.outputs) > 2 and node.outputs[2].name else None
    theta_b = gs.Constant(f"{node.name}.theta_b",
                          theta_broadcast(node.inputs[1].values, int(node.attrs.get("axis", 1)), rank))
    zero = gs.Constant(f"{node.name}.zero", np.array(0, np.float32))
    signed = _Signed(node.name, theta_b) if int(node.attrs.get("signed", 0)) else None
    node.inputs.clear()
    node.outputs.clear()
    b.prefix = f"{node.name}/portable"
    start = b.op("Mul", [theta_b, b.const(v_init)])
    if v0_c is not None:
        sample = list(dims[1:]) if dims is not None and all(isinstance(d, int) for d in dims[1:]) else None
        if v0_c.values.size > 1 and sample is None:
            raise UserError(f"node '{node.name}': a per-neuron initial potential needs the model's static shapes")
        start = b.reshape(v0_c, sample if v0_c.values.size > 1 else [1] * max(rank - 1, 1))
    n0 = None if signed is None else (n_in if n_in is not None else zero)
    if steps == 1:
        v0 = v_in if v_in is not None else start
        nodes, v_new, s, n_new = _step(b.prefix, v0, x, theta_b, zero, burst, signed, n0)
        graph.nodes.extend(nodes)
        _finish(b, [(s, spikes), (v_new, v_out), (n_new, n_out)])
        return
    count = steps_const if steps_const is not None else b.const(np.array([steps], np.int64))
    per_step = b.op("Reshape", [x, b.concat([count, b.const(np.array([-1], np.int64)), b.shape_tail(x)],
                                            dtype=np.int64)])
    v0 = v_in if v_in is not None else b.op("Expand", [start, b.shape_tail(per_step)])
    if explicit:
        _explicit_steps(graph, b, node.name, steps, per_step, v0, theta_b, zero, x, (spikes, v_out, n_out), burst,
                        signed, n0)
        return
    v_prev = gs.Variable(f"{node.name}/scan/v_prev", np.float32)
    x_t = gs.Variable(f"{node.name}/scan/x_t", np.float32)
    n_prev = None if signed is None else gs.Variable(f"{node.name}/scan/n_prev", np.float32)
    nodes, v_new, s, n_new = _step(f"{node.name}/scan", v_prev, x_t, theta_b, zero, burst, signed, n_prev)
    states_in, states_out, initial = [v_prev], [v_new], [v0]
    finals = [v_out if v_out is not None else gs.Variable(f"{node.name}/v_final", np.float32)]
    if signed is not None:      # the net count: a second state (zero, or carried in)
        states_in.append(n_prev)
        states_out.append(n_new)
        initial.append(n0 if n_in is not None else b.op("Expand", [zero, b.shape_tail(per_step)]))
        finals.append(n_out if n_out is not None else gs.Variable(f"{node.name}/n_final", np.float32))
    for t in states_in + states_out + [x_t, s]:   # every runtime wants the Scan body's I/O typed and ranked
        t.shape = list(dims) if dims is not None else [None] * rank
    body = gs.Graph(nodes=nodes, inputs=states_in + [x_t], outputs=states_out + [s], name=f"{node.name}/scan_body",
                    opset=b.opset)
    stacked = gs.Variable(f"{node.name}/spikes_per_step", np.float32)
    graph.nodes.append(gs.Node("Scan", f"{node.name}/scan", {"body": body, "num_scan_inputs": 1},
                               inputs=initial + [per_step], outputs=finals + [stacked]))
    b.op("Reshape", [stacked, b.concat([b.const(np.array([-1], np.int64)), b.shape_tail(x)], dtype=np.int64)],
         out=[spikes])


def _finish(b: Builder, pairs) -> None:
    """Identity from each computed value to the node's output it stands for (outputs not asked: None)."""
    for value, out in pairs:
        if out is not None:
            b.op("Identity", [value], out=[out])


def _explicit_steps(graph, b: Builder, name: str, steps: int, per_step, v, theta_b, zero, x, outs, burst: int = 1,
                    signed: "_Signed | None" = None, n=None):
    """The K steps of one neuron written out: the same float32 operations as the Scan body.
    outs: (spikes, v_out or None, n_out or None)."""
    axis0 = b.const(np.array([0], np.int64))
    stacked = []
    for t in range(steps):
        b.prefix = f"{name}/portable/step{t}"
        x_t = b.op("Squeeze", [b.op("Slice", [per_step, b.const(np.array([t], np.int64)),
                                              b.const(np.array([t + 1], np.int64)), axis0]), axis0])
        nodes, v, s, n = _step(b.prefix, v, x_t, theta_b, zero, burst, signed, n)
        graph.nodes.extend(nodes)
        stacked.append(b.op("Unsqueeze", [s, axis0]))
    b.prefix = f"{name}/portable"
    spikes, v_out, n_out = outs
    b.op("Reshape", [b.concat(stacked, axis=0), b.concat([b.const(np.array([-1], np.int64)), b.shape_tail(x)],
                                                         dtype=np.int64)], out=[spikes])
    _finish(b, [(v, v_out), (n, n_out)])


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
