"""Looped SNN: one ONNX Loop (or, for runtimes without Loop, a Scan over the iteration indices)
over time whose body is the network for K steps (K = --chunk).

Membrane potentials, the spiking max pools' running sums and the readout's accumulated sums are
loop-carried values, so memory does not depend on T. Work before the first neuron runs once
outside the loop. T not divisible by K runs ceil(T/K) iterations and masks steps >= T out of the
readout, so the outputs equal those of exactly T steps. With early exit the loop stops once the
readout's top-1 has been stable for S steps with a margin above m (never before a minimum), and
the model also outputs the number of steps it used.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UserError, param
from ..graph.onnx_io import shapes, symbolic_shapes
from . import compensate
from .info import Provenance
from .portable import EXPLICIT_MAX, lower_neurons
from .prepare import (
    BIAS_SUFFIX,
    Prepared,
    boundary,
    connect_readout,
    describe_snn,
    finish,
    spiking_pools,
    tile_pre_inputs)
from .timefold import TimeFold, theta_broadcast

log = logging.getLogger(__name__)

TRIP_NAME = "onnx2snn.loop_iterations"
STEPS_NAME = "onnx2snn.loop_timesteps"
DELAY_NAME = "onnx2snn.loop_delay"              # D inside the body; DELAY_NAME + "/readout" after the Loop
STEPS_OUTPUT = "onnx2snn_steps"


class _LoopBuilder:
    def __init__(self, p: Prepared):
        self.p, self.config = p, p.config
        self.b = p.b
        self.shapes = shapes(p.analysis.model)
        self.carried = []   # (initial value outside, body input, body output, final value outside)
        self.K = p.config.chunk
        self._one = None
        self.symbols = symbolic_shapes(p.analysis.model)
        first = p.graph.inputs[0]
        self.b.prefix = "onnx2snn.loop/batch"
        self.batch = self.b.op("Slice", [self.b.op("Shape", [first], dtype=np.int64),
                                         self.b.const(np.array([0], np.int64)),
                                         self.b.const(np.array([1], np.int64))], dtype=np.int64)

    # ---- shapes of one step's state -------------------------------------------------------
    def measured(self, tensor: gs.Tensor):
        """The tensor's shape in the ANN run on one sample (or None): how many rows a sample has
        when the batch holds more than samples (windows, heads folded into it)."""
        name = tensor.name
        if name not in self.symbols:
            for consumer in tensor.outputs:
                if consumer.op == "IFNeuron" or (consumer.op == "Add" and consumer.name.endswith(BIAS_SUFFIX)):
                    return self.measured(consumer.outputs[0])
        shape = self.symbols.get(name)
        if shape and shape[0] == self.p.batch_dim and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return [1] + shape[1:]          # batch first, as declared: no need to run the ANN
        if self._one is None:
            self._one = _one_sample_shapes(self.p)
        return self._one.get(name)

    def ann_shape(self, tensor: gs.Tensor):
        if tensor.name in self.shapes:
            return self.shapes[tensor.name]
        for consumer in tensor.outputs:
            if consumer.op == "IFNeuron" and consumer.outputs[0].name in self.shapes:
                return self.shapes[consumer.outputs[0].name]
            if consumer.op == "Add" and consumer.name.endswith(BIAS_SUFFIX):   # a corrected current
                return self.ann_shape(consumer.outputs[0])
        return None

    def state_shape(self, tensor: gs.Tensor):
        shape = self.ann_shape(tensor)
        if shape is None or any(d is None or d <= 0 for d in shape[1:]):
            raise UserError(f"{param('form')} loop needs static shapes (besides the batch) for tensor "
                            f"'{tensor.name}', got {shape}; export the model with fixed sizes")
        one = self.measured(tensor)
        rows = self.batch
        if one is not None and len(one) == len(shape) and one[0] > 1:     # k rows per sample
            rows = self.b.op("Mul", [self.batch, self.b.const(np.array([one[0]], np.int64))], dtype=np.int64)
        return self.b.concat([rows, self.b.const(np.array(shape[1:], np.int64))], dtype=np.int64), len(shape)

    def carry(self, name: str, initial, dtype=np.float32, dims=None):
        """A loop-carried value: [initial outside, body input, body output, final outside, dims]."""
        body_in = gs.Variable(f"{name}/in", dtype)
        final = gs.Variable(f"{name}/final", dtype)
        entry = [initial, body_in, None, final, dims]
        self.carried.append(entry)
        return entry

    def dims(self, tensor: gs.Tensor):
        """[batch] + static dims of one step's `tensor` (see Prepared.state_dims)."""
        shape = self.ann_shape(tensor)
        return None if shape is None else [self.p.batch_dim] + list(shape[1:])

    def zeros(self, tensor):
        shape, _ = self.state_shape(tensor)
        return self.b.op("ConstantOfShape", [shape],
                         {"value": gs.Constant("zero", np.zeros(1, np.float32))})


def _one_sample_shapes(p: Prepared) -> dict:
    """The shapes of the spiking region's tensors when the ANN runs on one sample (zeros, or
    uniform [0, 1) for float inputs): {} when its inputs have other free dims or the run fails."""
    from .. import runtime
    model = p.analysis.model
    init = {i.name for i in model.graph.initializer}
    feeds = {}
    rng = np.random.default_rng(0)
    for vi in model.graph.input:
        if vi.name in init:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if not dims or any(d is None for d in dims[1:]):
            return {}
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = [1] + dims[1:]
        feeds[vi.name] = rng.uniform(0, 1, shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
    names = {t.name for n in p.ordered for t in list(n.inputs) + list(n.outputs) if t.name}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    wanted = sorted(n for n in names if n in types)
    if not wanted:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, types[n], None) for n in wanted)
    try:
        values = runtime.session(probe).run(wanted, feeds)
    except Exception as err:  # noqa: BLE001 - a measurement only: the shapes inference gave are used instead
        log.debug("one-sample run of the ANN for the loop's state shapes failed: %s", err)
        return {}
    return {n: list(v.shape) for n, v in zip(wanted, values)}


def _neuron_states(lb: _LoopBuilder):
    b = lb.b
    for n in lb.p.neurons:
        n.attrs["timesteps"] = lb.K
        b.prefix = f"{n.name}/v0"
        theta_b = gs.Constant(f"{n.name}.theta_v0",
                              theta_broadcast(n.inputs[1].values, int(n.attrs["axis"]), lb.p.ranks[n.name]))
        state_shape, _ = lb.state_shape(n.outputs[0])
        if len(n.inputs) > 3:     # a corrected initial potential per neuron of a sample (correction.py)
            sample = lb.ann_shape(n.outputs[0])[1:]
            start = b.reshape(n.inputs[3], sample if n.inputs[3].values.size > 1 else [1] * len(sample))
        else:
            start = b.op("Mul", [theta_b, b.const(np.float32(n.attrs["v_init"]))])
        v0 = b.op("Expand", [start, state_shape])
        entry = lb.carry(f"{n.name}/v", v0, dims=lb.dims(n.outputs[0]))
        v_out = gs.Variable(f"{n.name}/v_out", np.float32)
        n.inputs = n.inputs[:2] + [entry[1]]
        n.outputs.append(v_out)
        entry[2] = v_out
        if int(n.attrs.get("signed", 0)):       # the net spike count, from zero: IFNeuron's input 6, output 2
            b.prefix = f"{n.name}/n0"
            count = lb.carry(f"{n.name}/n", lb.zeros(n.outputs[0]), dims=lb.dims(n.outputs[0]))
            count[2] = gs.Variable(f"{n.name}/n_out", np.float32)
            n.inputs += [gs.Variable.empty()] * 3 + [count[1]]
            n.outputs.append(count[2])


def _pool_states(lb: _LoopBuilder):
    """Zero initial running sums (pool input) and pooled maxima (pool output) per spiking pool."""
    pools = []
    for node in spiking_pools(lb.p):
        lb.b.prefix = f"{node.name}/state0"
        sums = lb.carry(f"{node.name}/sums", lb.zeros(node.inputs[0]), dims=lb.dims(node.inputs[0]))
        peak = lb.carry(f"{node.name}/peak", lb.zeros(node.outputs[0]), dims=lb.dims(node.outputs[0]))
        pools.append((node, sums, peak))
    return pools


def _compensation_states(lb: _LoopBuilder, iteration) -> None:
    """Expectation compensation in the body, its running sums and last values carried ([P, 1,
    N*rest] per tensor, compensate.Compensation, from zero)."""
    entries = {}
    batch_dim = lb.p.batch_dim
    symbols = symbolic_shapes(lb.p.analysis.model)

    def state(kind, tensor, lead):
        lb.b.prefix = f"{tensor.name}/{kind}_state0"
        one = lb.measured(tensor)       # one sample's elements: the state is [P, 1, N * elements / P]
        if one is None:
            shape = symbols.get(tensor.name)
            axis = compensate.batch_axis(shape, batch_dim)
            rest = [d for i, d in enumerate(shape or []) if i != axis]
            if shape and all(isinstance(d, (int, np.integer)) and d > 0 for d in rest) and shape[axis] == batch_dim:
                one = [1] + rest
        if one is not None:
            size = lb.b.op("Mul", [lb.batch, lb.b.const(np.array([int(np.prod(one)) // lead], np.int64))],
                           dtype=np.int64)
        else:   # not measurable: zeros that broadcast on the first iteration (onnxruntime's Loop only)
            if lb.config.loop_op == "scan":
                raise UserError(f"{param('loop_op')} scan needs the size of tensor '{tensor.name}' (compensated) for "
                                f"one sample, which neither its shape {shape} nor a run of the ANN gives; use "
                                f"{param('loop_op')} loop or {param('form')} unrolled")
            size = lb.b.const(np.array([1], np.int64))
        zeros = lb.b.op("ConstantOfShape", [lb.b.concat([lb.b.const(np.array([lead, 1], np.int64)), size],
                                                         dtype=np.int64)],
                        {"value": gs.Constant("zero", np.zeros(1, np.float32))})
        entry = lb.carry(f"{tensor.name}/{kind}", zeros, dims=[lead, 1, None])
        entries[(kind, tensor.name)] = entry
        return entry[1]

    def carried(kind, tensor, value):
        entries[(kind, tensor.name)][2] = value

    compensate.apply(lb.p, iteration, state, carried)


def build(p: Prepared, provenance: Provenance | None = None) -> onnx.ModelProto:
    graph, b, config = p.graph, p.b, p.config
    K, T, D = config.chunk, config.timesteps, config.delay
    iterations = math.ceil(T / K)
    p.steps.values = np.array([K], np.int64)     # unfold/tile inside the body use K rows per sample
    p.steps.name = "onnx2snn.chunk_steps"
    lb = _LoopBuilder(p)
    tile_pre_inputs(p)                            # time-invariant inputs repeated K times, once
    _neuron_states(lb)
    pools = _pool_states(lb)
    iteration = gs.Variable("onnx2snn.iteration", np.int64, [])
    _compensation_states(lb, iteration)
    leaving = boundary(p)
    accs = []
    for t, post, is_output in leaving:
        b.prefix = f"{t.name}/acc0"
        accs.append(lb.carry(f"{t.name}/acc", lb.zeros(t), dims=lb.dims(t)))
    steps_entry = lb.carry("onnx2snn.steps", b.const(np.array(0, np.int64)), np.int64, dims=[])
    ee = _early_exit_states(lb, config) if config.early_exit else None

    # ---- body ---------------------------------------------------------------------------------
    marker = len(graph.nodes)
    cond_in = gs.Variable("onnx2snn.cond_in", np.bool_, [])
    for node, sums, peak in pools:
        sums[2], peak[2] = p.fold.spiking_pool(node, (sums[1], peak[1]), fused=not config.portable)
    weight, done, delay_in = _step_window(b, iteration, K, T, D)
    # steps done only grows; reading the carried count keeps every state input in use (tract drops
    # unused Scan states and then miscounts them)
    done = b.op("Max", [steps_entry[1], done], dtype=np.int64)
    steps_entry[2] = done
    for (t, _, _), acc in zip(leaving, accs):
        acc[2] = p.fold.accumulate_readout(t, acc[1], weight, lb.state_shape(t)[1])
    if ee is not None:
        cond_out = _early_exit_body(lb, config, leaving, accs, done, ee, delay_in)
    elif config.loop_op == "loop":
        cond_out = b.op("Identity", [cond_in], dtype=np.bool_)
    else:
        cond_out = None
    _close_loop(p, lb, marker, iteration, cond_in, cond_out, iterations)
    return _after_loop(p, leaving, accs, steps_entry, provenance)


def _step_window(b, iteration, K: int, T: int, D: int) -> tuple:
    """(weight of each of the iteration's K steps in the readout: 1 for steps D..T-1, else 0; steps
    done by the end of the iteration, at most T; the delay, a named constant evaluation can set)."""
    b.prefix = "onnx2snn.loop/steps"
    t_total = gs.Constant(STEPS_NAME, np.array(T, np.int64))
    start = b.op("Mul", [iteration, b.const(np.array(K, np.int64))], dtype=np.int64)
    step_idx = b.op("Add", [start, b.const(np.arange(K, dtype=np.int64))], dtype=np.int64)
    delay_in = gs.Constant(DELAY_NAME, np.array(D, np.int64))       # named: evaluation sets other delays
    counted = b.op("And", [b.op("GreaterOrEqual", [step_idx, delay_in], dtype=np.bool_),
                           b.op("Less", [step_idx, t_total], dtype=np.bool_)], dtype=np.bool_)
    weight = b.op("Cast", [counted], {"to": onnx.TensorProto.FLOAT})
    done = b.op("Min", [b.op("Add", [start, b.const(np.array(K, np.int64))], dtype=np.int64), t_total],
                dtype=np.int64)
    return weight, done, delay_in


def _close_loop(p: Prepared, lb, marker: int, iteration, cond_in, cond_out, iterations: int) -> None:
    """The nodes made since `marker` become the body of a Loop (or a Scan) over the iterations."""
    graph, b, config = p.graph, p.b, p.config
    K = config.chunk
    if config.portable:
        lower_neurons(graph, b, p, explicit=K <= EXPLICIT_MAX or p.config.portable_steps == "written")
    inside = {id(n) for n in p.ordered} | {id(n) for n in graph.nodes[marker:]}
    body_nodes = [n for n in graph.nodes if id(n) in inside and (n.inputs or n.outputs)]
    graph.nodes = [n for n in graph.nodes if id(n) not in inside]
    for e in lb.carried:
        e[2].dtype = e[2].dtype or e[1].dtype
    scan = config.loop_op == "scan"
    carried_in, carried_out = [e[1] for e in lb.carried], [e[2] for e in lb.carried]
    body = gs.Graph(nodes=body_nodes, name="onnx2snn.time_step",
                    inputs=carried_in + [iteration] if scan else [iteration, cond_in] + carried_in,
                    outputs=carried_out if scan else [cond_out] + carried_out, opset=b.opset)
    for t in body.tensors().values():
        if isinstance(t, gs.Variable):
            t.shape = None   # ANN shapes do not hold for K steps folded into the batch
    # ... but every body input and output has its dtype and full rank (static runtimes need them)
    iteration.shape, cond_in.shape = [], []
    for e in lb.carried:
        e[1].shape = e[2].shape = e[4]
        p.typed[e[3].name] = e[4]
    trip = gs.Constant(TRIP_NAME, np.array(iterations, np.int64))
    if scan:   # a Scan over the iteration indices carries the same state (runtimes without Loop)
        b.prefix = "onnx2snn.scan"
        indices = b.op("Range", [b.const(np.array(0, np.int64)), trip, b.const(np.array(1, np.int64))],
                       dtype=np.int64)
        graph.nodes.append(gs.Node("Scan", "onnx2snn.time_loop", {"body": body, "num_scan_inputs": 1},
                                   inputs=[e[0] for e in lb.carried] + [indices],
                                   outputs=[e[3] for e in lb.carried]))
    else:
        graph.nodes.append(gs.Node("Loop", "onnx2snn.time_loop", {"body": body},
                                   inputs=[trip, gs.Constant("onnx2snn.loop_cond", np.array(True))]
                                   + [e[0] for e in lb.carried], outputs=[e[3] for e in lb.carried]))


def _after_loop(p: Prepared, leaving, accs, steps_entry, provenance) -> onnx.ModelProto:
    """After the loop: the averages feed the head; the model described in its metadata."""
    graph, b, config = p.graph, p.b, p.config
    D = config.delay
    b.prefix = "onnx2snn.readout"
    count = TimeFold.averaged_steps(b, steps_entry[3], gs.Constant(DELAY_NAME + "/readout", np.array(D, np.int64)))
    readouts = []
    for (t, post, is_output), acc in zip(leaving, accs):
        def mean_of(x, out, acc=acc):
            mean = b.op("Div", [acc[3], count], out=[out] if out is not None else None)
            readouts.append({"acc": acc[2].name, "mean": mean.name})   # lets eval read every T
            return mean
        connect_readout(p, t, post, is_output, mean_of)
    if config.early_exit:
        graph.outputs = list(graph.outputs) + [_steps_output(b, steps_entry[3])]
    rule = {"stable_steps": config.exit_stable, "margin": config.exit_margin,
            "min_steps": config.exit_min_steps} if config.early_exit else None
    snn = finish(p, describe_snn(p, readouts, provenance, rule))
    if config.early_exit:
        snn.graph.output[-1].CopyFrom(onnx.helper.make_tensor_value_info(STEPS_OUTPUT, onnx.TensorProto.INT64, []))
    return snn


def _steps_output(b, steps):
    out = gs.Variable(STEPS_OUTPUT, np.int64, [])
    b.op("Identity", [steps], out=[out])
    return out


def _early_exit_states(lb: _LoopBuilder, config):
    b = lb.b
    b.prefix = "onnx2snn.early_exit/init"
    minus_one = b.op("ConstantOfShape", [lb.batch], {"value": gs.Constant("m1", np.array([-1], np.int64))},
                     dtype=np.int64)
    zeros = b.op("ConstantOfShape", [lb.batch], {"value": gs.Constant("z", np.array([0], np.int64))},
                 dtype=np.int64)
    batch = [lb.p.batch_dim]
    return (lb.carry("onnx2snn.top1", minus_one, np.int64, dims=batch),
            lb.carry("onnx2snn.stable", zeros, np.int64, dims=batch))


def _clone_head(lb: _LoopBuilder, leaving, current):
    """Copy the post-region nodes that compute the first score output, reading the running means."""
    p = lb.p
    scores = [t for t in p.graph.outputs if t.dtype is not None and np.dtype(t.dtype).kind == "f"
              and t.shape is not None and len(t.shape) >= 2]
    if not scores:
        raise UserError(f"{param('early_exit')} needs an output of class scores (a float tensor of rank >= 2)")
    target = scores[0]
    memo = {id(t): m for (t, _, _), m in zip(leaving, current)}
    if id(target) in memo:
        return memo[id(target)]
    post = [n for n in p.graph.nodes if id(n) in p.regions.post]
    for node in post:
        ins = [memo.get(id(t), t) for t in node.inputs]
        outs = []
        for t in node.outputs:
            clone = gs.Variable(f"{t.name}/early_exit", t.dtype)
            memo[id(t)] = clone
            outs.append(clone)
        p.graph.nodes.append(gs.Node(node.op, f"{node.name}/early_exit", dict(node.attrs), ins, outs,
                                     domain=node.domain))
    if id(target) not in memo:
        raise UserError(f"{param('early_exit')}: the model's first output does not depend on the spiking layers")
    return memo[id(target)]


def _early_exit_body(lb: _LoopBuilder, config, leaving, accs, done, ee, delay):
    b = lb.b
    b.prefix = "onnx2snn.early_exit"
    count = TimeFold.averaged_steps(b, done, delay)
    current = [b.op("Div", [acc[2], count]) for acc in accs]
    head = _clone_head(lb, leaving, current)
    b.prefix = "onnx2snn.early_exit"
    top1 = b.op("ArgMax", [head], {"axis": -1, "keepdims": 0}, dtype=np.int64)
    values = gs.Variable("onnx2snn.early_exit/top2", np.float32)
    b.op("TopK", [head, b.const(np.array([2], np.int64))], {"axis": -1},
         out=[values, gs.Variable("onnx2snn.early_exit/top2_idx", np.int64)])
    pick = lambda i: b.op("Gather", [values, b.const(np.array(i, np.int64))], {"axis": -1})
    margin = b.op("Sub", [pick(0), pick(1)])
    top1_entry, stable_entry = ee
    same = b.op("Equal", [top1, top1_entry[1]], dtype=np.bool_)
    stable = b.op("Where", [same, b.op("Add", [stable_entry[1], b.const(np.array(lb.K, np.int64))],
                                       dtype=np.int64), b.const(np.array(0, np.int64))], dtype=np.int64)
    top1_entry[2], stable_entry[2] = top1, stable
    ok = b.op("And", [b.op("GreaterOrEqual", [stable, b.const(np.array(config.exit_stable, np.int64))],
                           dtype=np.bool_),
                      b.op("Greater", [margin, b.const(np.float32(config.exit_margin))], dtype=np.bool_)],
              dtype=np.bool_)
    as_int = b.op("Cast", [ok], {"to": onnx.TensorProto.INT32}, dtype=np.int32)
    all_ok = b.op("Cast", [b.op("ReduceMin", [as_int], {"keepdims": 0}, dtype=np.int32)],
                  {"to": onnx.TensorProto.BOOL}, dtype=np.bool_)
    early = b.op("GreaterOrEqual", [done, b.const(np.array(config.exit_min_steps, np.int64))], dtype=np.bool_)
    stop = b.op("And", [all_ok, early], dtype=np.bool_)
    return b.op("Not", [stop], dtype=np.bool_)
