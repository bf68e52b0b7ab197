"""The preparation every graph form shares: neurons in place of the activations, MaxPools handled,
regions found, the ANN's batch dims freed; then the helpers that connect the time-invariant inputs
and the readout, and `finish`, which exports the model with its metadata.

Nodes upstream of the first neuron run once on the N samples; nodes between neurons run on the
steps; tensors that leave the spiking region are averaged over steps D+1..T, so everything after
it (the readout and any non-linear head) runs once on the averaged values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import costs as energy
from .._version import __version__
from ..graph.analyse import Analysis, Regions, analog_nodes, blocking_nodes, classify, describe, nonlinear_nodes
from ..graph.builder import Builder
from ..config import SNNConfig
from ..errors import UserError
from ..graph.onnx_io import export, set_metadata, shapes
from ..ops.neuron import DOMAIN, OPSET_VERSION
from ..calibration.thresholds import Thresholds
from .info import Provenance, SNNInfo
from .timefold import TimeFold, theta_broadcast

T_NAME = "onnx2snn.timesteps"   # the int64 [1] step count that time folding reshapes with
_FLOATS = (np.float16, np.float32, np.float64)


@dataclass
class Layer:
    """One converted neuron, for the report."""
    name: str
    source: str       # activation node it came from
    role: str         # "neuron", "after spiking max pool", "after pool (moved in front: ...)"
    channels: int
    theta: np.ndarray
    tensor: str = ""  # the ANN tensor this neuron's spikes stand for


@dataclass
class Prepared:
    """The graph after neuron placement and region analysis, handed to one graph form."""
    analysis: Analysis
    config: SNNConfig
    thresholds: Thresholds
    graph: gs.Graph
    b: Builder
    layers: list
    neurons: list                   # IFNeuron nodes
    regions: Regions
    ordered: list                   # spiking-region nodes and neurons, topological order
    costs: dict
    ranks: dict                     # neuron name -> rank of its input
    steps: gs.Constant              # T_NAME: steps per graph run, changed by the loop to K
    analog: list                    # names of the non-linear nodes between neurons: compensated, or
                                    # with --keep-analog run on each step's input
    batch_dim: object = None        # the ANN's batch dim: int, symbol (str) or None (unknown)
    typed: dict = field(default_factory=dict)   # tensor name -> shape kept at export (rank for runtimes)
    fold: TimeFold = field(init=False)

    def __post_init__(self):
        self.fold = TimeFold(self.b, self.steps)
        self.shapes = shapes(self.analysis.model)

    def state_dims(self, ann_tensor: str, rank: int | None = None):
        """[batch] + the ANN's static dims of one step's tensor (None where unknown): subgraph inputs
        and outputs carry these so that runtimes compiling graphs statically know every rank."""
        shape = self.shapes.get(ann_tensor)
        if shape is None:
            return None if rank is None else [self.batch_dim] + [None] * (rank - 1)
        return [self.batch_dim] + [d if isinstance(d, int) and d > 0 else None for d in shape[1:]]


BIAS_SUFFIX = "/bias_correction"   # the Add of a bias correction in front of a neuron


def _neuron(graph: gs.Graph, x, out, theta: np.ndarray, axis: int, name: str, config: SNNConfig,
            rank: int = 0, bias=None, v0=None) -> gs.Node:
    """An IFNeuron node; `bias`: per-channel input current, `v0`: initial potential per neuron of a
    sample (the corrections of correction.py)."""
    theta_c = gs.Constant(f"{name}.theta", np.asarray(theta, np.float32).reshape(-1))
    if bias is not None:   # the correction's constant input current, per channel (correction.py)
        biased = gs.Variable(f"{name}/corrected_current", np.float32)
        graph.nodes.append(gs.Node("Add", name + BIAS_SUFFIX,
                                   inputs=[x, gs.Constant(f"{name}.bias", theta_broadcast(bias, axis, rank))],
                                   outputs=[biased]))
        x = biased
    inputs = [x, theta_c]
    if v0 is not None:
        inputs += [gs.Variable.empty(), gs.Constant(f"{name}.v0", np.asarray(v0, np.float32).reshape(-1))]
    attrs = {"timesteps": config.timesteps, "axis": axis, "v_init": float(config.v_init)}
    if config.max_spikes > 1:
        attrs["max_spikes"] = config.max_spikes
    if config.signed:
        attrs["signed"] = 1
    node = gs.Node("IFNeuron", name, attrs, inputs, [out], domain=DOMAIN)
    graph.nodes.append(node)
    return node


def _place_neurons(graph: gs.Graph, acts, thresholds: Thresholds, config: SNNConfig) -> list:
    """Activations -> IFNeuron nodes; an activation's MaxPool consumers get their own neuron
    after the pool (max and clip commute per channel: pool the currents, then the neuron)."""
    layers = []
    for act in acts:
        theta = np.asarray(thresholds.values[act.name], np.float32).reshape(-1)
        if act.cap is not None:
            theta = np.minimum(theta, np.float32(act.cap))
        if config.max_spikes > 1:       # burst:K: K levels of θ/K in a step, the same range as one θ
            theta = (theta / np.float32(config.max_spikes)).astype(np.float32)
        x, y = act.input, act.output
        act.node.inputs.clear()
        act.node.outputs.clear()
        for pool in [c for c in list(y.outputs) if c.op == "MaxPool" and len(c.outputs) == 1]:
            pool.inputs[0] = x
            pooled_out = pool.outputs[0]
            current = gs.Variable(f"{pool.name}/pooled_current", x.dtype)
            pool.outputs = [current]
            name = f"{act.name}>{pool.name}"
            _neuron(graph, current, pooled_out, theta, act.axis, name, config, act.rank, thresholds.bias.get(name),
                    thresholds.potential.get(name))
            layers.append(Layer(name, act.name, "after pool", act.channels, theta, pooled_out.name))
        if y.outputs or y in graph.outputs:
            _neuron(graph, x, y, theta, act.axis, act.name, config, act.rank, thresholds.bias.get(act.name),
                    thresholds.potential.get(act.name))
            layers.append(Layer(act.name, act.name, "neuron", act.channels, theta, y.name))
    return layers


def _pool_role(pool: gs.Node, regions: Regions, config: SNNConfig) -> str:
    if id(pool) in regions.pre:
        return "after pool (moved in front: time-invariant input)"
    if config.maxpool == "move":
        return "after pool (moved in front, per step)"
    return "after spiking max pool"


def _costs(analysis: Analysis, graph: gs.Graph, regions: Regions, layers, compensated=(),
           compensation: bool = True) -> dict:
    """The figures of the energy estimate: the ANN's MACs, those run once before the first neuron,
    the fan-out of each neuron's spikes; with non-linear nodes between neurons their analog
    operations per step (with the compensation's own, unless --keep-analog runs them per step) and
    the share of the ANN's MACs that became spike-driven accumulates."""
    model = analysis.model
    macs = energy.layer_macs(model)
    fan = energy.fanouts(model, [l.tensor for l in layers])
    ann = energy.totals(model)
    pre = float(sum(macs[n.name][0] for n in graph.nodes if id(n) in regions.pre and n.name in macs))
    costs = {"ann_macs": ann, "largest_activation": energy.largest_activation(model), "pre_macs": pre,
             "fanout": {l.name: fan.get(l.tensor, 0.0) for l in layers}}
    if compensated:
        per_step, dense = energy.compensated_macs(model, compensated, compensation)
        costs["compensated_macs"] = per_step
        costs["spiking_fraction"] = max(0.0, (ann - pre - dense) / ann) if ann else 0.0
    return costs


def prepare(analysis: Analysis, thresholds: Thresholds | None, config: SNNConfig) -> Prepared:
    """Neurons in place of activations, MaxPools handled, regions checked; no time handling yet.
    `thresholds=None` uses placeholders (to check convertibility before calibrating)."""
    analysis.require_convertible(config.keep_analog)
    graph, acts = analysis.copy()
    thresholds = thresholds if thresholds is not None else Thresholds.placeholder(acts)
    thresholds.check_against(acts, "thresholds")
    layers = _place_neurons(graph, acts, thresholds, config)
    graph.cleanup().toposort()
    neurons = [n for n in graph.nodes if n.op == "IFNeuron"]
    names = {n.name for n in neurons}
    layers = [l for l in layers if l.name in names]
    regions = classify(graph, neurons)
    problems = blocking_nodes(nonlinear_nodes(graph, neurons, regions))
    if problems:
        raise UserError(f"cannot convert {len(problems)} node(s) between spiking layers: {describe(problems)}")
    varying = regions.spiking | {id(n) for n in neurons}
    ordered = [n for n in graph.nodes if id(n) in varying]
    _free_batch_dims(ordered, regions)
    pools = {n.name: n for n in graph.nodes if n.op == "MaxPool"}
    for layer in layers:
        pool = pools.get(layer.name[len(layer.source) + 1:]) if layer.role == "after pool" else None
        if pool is not None:
            layer.role = _pool_role(pool, regions, config)
    rank_of = {a.name: a.rank for a in acts}
    steps = gs.Constant(T_NAME, np.array([config.timesteps], np.int64))
    analog = [n.name for n in analog_nodes(graph, neurons, regions)]
    costs = _costs(analysis, graph, regions, layers, analog, not config.keep_analog)
    return Prepared(analysis, config, thresholds, graph, Builder(graph, analysis.opset, "onnx2snn"), layers,
                    neurons, regions, ordered, costs,
                    {l.name: rank_of[l.source] for l in layers}, steps, analog, _batch_dim(analysis.model))


def _batch_dim(model: onnx.ModelProto):
    """The first input's batch dim as the ANN declares it: a number, a symbol, or None."""
    init = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in init or not vi.type.tensor_type.shape.dim:
            continue
        d = vi.type.tensor_type.shape.dim[0]
        return d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
    return None


def _free_batch_dims(nodes, regions: Regions) -> None:
    """Reshapes in the spiking region with a fixed leading (batch) size get -1 there instead, so
    they also hold S*N rows (models exported with a fixed batch size, e.g. [1, -1] -> [-1, F])."""
    for node in nodes:
        if node.op != "Reshape" or id(node) not in regions.spiking:
            continue
        shape = node.inputs[1]
        if not isinstance(shape, gs.Constant):
            continue
        values = np.asarray(shape.values).copy()
        if values.ndim == 1 and values.size >= 1 and values[0] > 0 and -1 not in values[1:]:
            values[0] = -1
            node.inputs[1] = gs.Constant(f"{node.name}.free_batch_shape", values.astype(np.int64))


def _is_float(tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype).type in _FLOATS


def tile_pre_inputs(p: Prepared) -> None:
    """Time-invariant float tensors that feed the spiking region are repeated over the steps."""
    graph_inputs = {id(t) for t in p.graph.inputs}

    def from_pre(t) -> bool:
        if isinstance(t, gs.Constant) or not t.name or not _is_float(t):
            return False
        if not t.inputs:
            return id(t) in graph_inputs
        return id(t.inputs[0]) in p.regions.pre and t.inputs[0].op != "Constant"

    tiled = {}

    def tile(t):
        if t.name not in tiled:
            tiled[t.name] = p.fold.tile(t)
            if t.shape is not None:   # S*N rows: the folded batch is unknown, the rest static
                p.typed[tiled[t.name].name] = [None] + [d if isinstance(d, int) and d > 0 else None
                                                        for d in t.shape[1:]]
        return tiled[t.name]

    sizes = {}
    for node in list(p.ordered):
        for i, t in enumerate(list(node.inputs)):
            if from_pre(t):
                node.inputs[i] = tile(t)
            elif _computed_size(t, p.regions.pre):     # e.g. a Reshape's target from Shape(x): S*N rows
                node.inputs[i] = _size_of_steps(p, t, tile, sizes)


def _computed_size(t, pre: set) -> bool:
    """An integer tensor computed before the first neuron from some tensor's Shape (a Reshape's or
    an Expand's target that holds the batch size N)."""
    if isinstance(t, gs.Constant) or not t.name or not t.inputs or _is_float(t) or id(t.inputs[0]) not in pre:
        return False
    seen, stack = set(), [t.inputs[0]]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op == "Shape":
            return True
        stack.extend(x.inputs[0] for x in node.inputs if x.inputs and id(x.inputs[0]) in pre)
    return False


def _size_of_steps(p: Prepared, t, tile, memo: dict):
    """The same integer computation for the steps: its Shape nodes read the tiled (S*N-row) tensors,
    so a batch size N it holds becomes S*N. The nodes on its way are copied (the originals keep
    serving the work before the first neuron)."""
    if id(t) in memo:
        return memo[id(t)]
    node = t.inputs[0]
    if node.op == "Shape":
        ins = [tile(node.inputs[0])]
    else:
        ins = [_size_of_steps(p, x, tile, memo) if x.inputs and id(x.inputs[0]) in p.regions.pre
               and not isinstance(x, gs.Constant) else x for x in node.inputs]
    outs = [gs.Variable(f"{o.name}/steps", o.dtype) for o in node.outputs]
    p.graph.nodes.append(gs.Node(node.op, f"{node.name}/steps", dict(node.attrs), ins, outs, domain=node.domain))
    for o, c in zip(node.outputs, outs):
        memo[id(o)] = c
    return memo[id(t)]


def boundary(p: Prepared) -> list:
    """(tensor, post consumers, is graph output) for tensors leaving the spiking region."""
    out = []
    outputs = list(p.graph.outputs)
    for node in p.ordered:
        for t in node.outputs:
            post = [c for c in t.outputs if id(c) in p.regions.post]
            if post or t in outputs:
                out.append((t, post, t in outputs))
    return out


def steps_name(output: str) -> str:
    """The per-step tensor of a graph output that leaves the spiking region (the output itself is
    its average); a neuron whose spikes are a graph output is found under this name."""
    return f"{output}/steps"


def connect_readout(p: Prepared, t, post, is_output, mean_of) -> None:
    """Feed `mean_of(t, out)` (the averaged tensor) to the post region and/or the graph output."""
    if post:
        mean = mean_of(t, None)
        for c in post:
            for i, inp in enumerate(list(c.inputs)):
                if inp is t:
                    c.inputs[i] = mean
    if is_output:
        outputs = list(p.graph.outputs)
        original = gs.Variable(t.name, t.dtype, t.shape)
        t.name = steps_name(t.name)
        mean_of(t, original)
        outputs[outputs.index(t)] = original
        p.graph.outputs = outputs


def spiking_pools(p: Prepared) -> list:
    """The MaxPools fed by spikes that become spiking pools (none with --maxpool move)."""
    if p.config.maxpool == "move":
        return []
    return [n for n in p.ordered if n.op == "MaxPool" and id(n) in p.regions.spiking]


def describe_snn(p: Prepared, readouts: list, provenance: Provenance | None, early_exit: dict | None = None) -> SNNInfo:
    c = p.config
    axes = {n.name: n.attrs.get("axis", 1) for n in p.neurons}
    return SNNInfo(form=c.form, timesteps=c.timesteps, delay=int(c.delay), v_init=float(c.v_init),
                   maxpool=c.maxpool, portable=c.portable, method=p.thresholds.method,
                   portable_steps=c.portable_steps, spikes=c.spikes, signed=c.signed,
                   thresholds=p.thresholds.info, costs=p.costs,
                   neurons=[{"name": l.name, "source": l.source, "role": l.role, "tensor": l.tensor,
                             "rank": int(p.ranks.get(l.name, 0)), "axis": int(axes.get(l.name, 1))}
                            for l in p.layers],
                   readouts=readouts, chunk=c.chunk, early_exit=early_exit,
                   analog=p.analog if c.keep_analog else [], compensated=[] if c.keep_analog else p.analog,
                   provenance=provenance or Provenance())


def finish(p: Prepared, info: SNNInfo) -> onnx.ModelProto:
    """Export the rewritten graph with the ANN's exact inputs/outputs and the SNN's metadata."""
    graph = p.graph
    _forget_inner_shapes(graph)
    for name, t in graph.tensors().items():
        if name in p.typed and isinstance(t, gs.Variable):
            t.shape = p.typed[name]
    snn = export(graph, p.analysis.model, extra_opsets=[] if info.portable else [(DOMAIN, OPSET_VERSION)])
    _restore_io(snn, p.analysis.model)
    set_metadata(snn, info.to_metadata())
    snn.doc_string = (f"Spiking network (integrate-and-fire, {info.form}, T={info.timesteps}) converted by "
                      f"onnx2snn {__version__} with {info.method} thresholds; custom ops: "
                      f"{'none' if info.portable else DOMAIN}")
    return snn


def _forget_inner_shapes(graph: gs.Graph) -> None:
    """Inner shapes inferred for the ANN are wrong once time is folded into the batch."""
    keep = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Variable) and name not in keep:
            t.shape = None


def _restore_io(snn: onnx.ModelProto, ann: onnx.ModelProto) -> None:
    """Keep the ANN's input/output value infos exactly (names, shapes, dtypes): drop-in."""
    for dst, src in ((snn.graph.input, ann.graph.input), (snn.graph.output, ann.graph.output)):
        by_name = {v.name: v for v in src}
        for v in dst:
            if v.name in by_name:
                v.CopyFrom(by_name[v.name])
