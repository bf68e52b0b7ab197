"""Rewrite an ANN graph with thresholds into an unrolled SNN (time folded into the batch axis).

Every activation becomes an `IFNeuron` node of domain ai.onnx2snn. Nodes upstream of the first
neuron run once on the N samples and their outputs are repeated T times (time-major). Nodes between
neurons run on T*N rows. Tensors that leave the spiking region are averaged over steps D+1..T, so
everything after it (the readout and any non-linear head) runs once on the averaged values.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import __version__, energy
from .analyse import classify, describe, find_activations, nonlinear_nodes
from .build import Builder
from .errors import UserError
from .model import default_opset, export, infer_shapes, set_metadata, to_graph
from .ops import DOMAIN, OPSET_VERSION

log = logging.getLogger(__name__)

T_NAME = "onnx2snn.timesteps"
BIG = np.iinfo(np.int64).max
_FLOATS = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class SNNConfig:
    timesteps: int = 64
    delay: int | str = 0        # "auto": chosen from data by api.convert (see delay.py)
    v_init: float = 0.5
    maxpool: str = "spiking"   # "move": the paper's plain move (baseline; biased on spikes)
    form: str = "unrolled"     # or "loop"
    chunk: int = 1             # loop: steps per iteration (time-batched inside)
    portable: bool = False     # standard ONNX ops only (no custom domain)
    early_exit: bool = False   # loop: stop when the top-1 is stable
    exit_stable: int = 32      # ... unchanged for this many steps
    exit_margin: float = 2.0   # ... and its margin over the runner-up exceeds this (output units)
    exit_min_steps: int = 16   # ... never before this many steps

    def validate(self):
        if self.form not in ("unrolled", "loop"):
            raise UserError(f"--form {self.form}: expected unrolled or loop")
        if self.chunk < 1:
            raise UserError(f"--chunk {self.chunk}: must be >= 1")
        if self.form != "loop" and self.chunk != 1:
            raise UserError("--chunk needs --form loop")
        if self.early_exit and self.form != "loop":
            raise UserError("--early-exit needs --form loop")
        if self.maxpool not in ("spiking", "move"):
            raise UserError(f"--maxpool {self.maxpool}: expected spiking or move")
        if self.timesteps < 1:
            raise UserError(f"--timesteps {self.timesteps}: must be >= 1")
        if self.delay == "auto":
            return
        if not isinstance(self.delay, int) or not 0 <= self.delay < self.timesteps:
            raise UserError(f"--delay {self.delay}: must be 'auto' or an integer in [0, timesteps)")


@dataclass
class Layer:
    """One converted neuron, for the report."""
    name: str
    source: str       # activation node it came from
    role: str         # "neuron", "after pool (spiking max pool)", "after pool (pool moved in front)"
    channels: int
    theta: np.ndarray
    tensor: str = ""  # the ANN tensor this neuron's spikes stand for


def _is_float(tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype).type in _FLOATS


class _Rewriter:
    def __init__(self, graph: gs.Graph, opset: int, config: SNNConfig):
        self.graph, self.config = graph, config
        self.b = Builder(graph, opset, "onnx2snn")
        self.T = gs.Constant(T_NAME, np.array([config.timesteps], np.int64))
        self.readouts = []

    # ---- neurons -------------------------------------------------------------------------
    def neuron(self, x, out, theta: np.ndarray, axis: int, name: str) -> gs.Node:
        theta_c = gs.Constant(f"{name}.theta", np.asarray(theta, np.float32).reshape(-1))
        node = gs.Node("IFNeuron", name, {"timesteps": self.config.timesteps, "axis": axis,
                                          "v_init": float(self.config.v_init)},
                       [x, theta_c], [out], domain=DOMAIN)
        self.graph.nodes.append(node)
        return node

    # ---- time folding --------------------------------------------------------------------
    def tile(self, x):
        """[N, ...] -> [T*N, ...], the N rows repeated for each step (time-major)."""
        b = self.b
        b.prefix = f"{x.name}/repeat_steps"
        up = b.op("Unsqueeze", [x, b.const(np.array([0], np.int64))], dtype=x.dtype)
        full = b.concat([self.T, b.op("Shape", [x], dtype=np.int64)], dtype=np.int64)
        rep = b.op("Expand", [up, full], dtype=x.dtype)
        out = b.reshape(rep, b.concat([b.const(np.array([-1], np.int64)), b.shape_tail(x)], dtype=np.int64),
                        dtype=x.dtype)
        out.shape = None if x.shape is None else ["TN"] + list(x.shape[1:])
        return out

    def unfold(self, x, tail_of=None):
        """[T*N, ...] -> [T, N, ...]."""
        b = self.b
        tail = b.shape_tail(tail_of if tail_of is not None else x)
        return b.reshape(x, b.concat([self.T, b.const(np.array([-1], np.int64)), tail], dtype=np.int64),
                         dtype=x.dtype)

    def fold(self, x, like):
        b = self.b
        return b.reshape(x, b.concat([b.const(np.array([-1], np.int64)), b.shape_tail(like)],
                                     dtype=np.int64), dtype=x.dtype)

    def average(self, x, out=None):
        """Mean over steps D+1..T of a [T*N, ...] tensor -> [N, ...] (delayed evaluation)."""
        b = self.b
        b.prefix = f"{x.name}/readout"
        steps = self.unfold(x)
        if self.config.delay:
            steps = b.op("Slice", [steps, b.const(np.array([self.config.delay], np.int64)),
                                   b.const(np.array([BIG], np.int64)), b.const(np.array([0], np.int64))],
                         dtype=x.dtype)
        mean = b.reduce("ReduceMean", steps, [0], keepdims=0)
        if out is not None:
            node = mean.inputs[0]
            node.outputs = [out]
            mean = out
        mean.dtype = x.dtype
        self.readouts.append({"steps": x.name, "mean": mean.name})
        return mean

    def spiking_maxpool(self, node: gs.Node):
        """MaxPool on spike-driven input: pool the running sums of the currents and emit the
        step-to-step difference of the pooled maximum, so the input accumulated by step t is the
        window's largest accumulated current (converges to the ANN's max as T grows)."""
        b = self.b
        b.prefix = f"{node.name}/spiking"
        x, out = node.inputs[0], node.outputs[0]
        sums = b.op("CumSum", [self.unfold(x), b.const(np.array(0, np.int64))], dtype=np.float32)
        pooled = gs.Variable(f"{node.name}/pooled_sums", np.float32)
        node.inputs = [self.fold(sums, x)]
        node.outputs = [pooled]
        steps = self.unfold(pooled)
        first = b.op("Slice", [steps, b.const(np.array([0], np.int64)), b.const(np.array([1], np.int64)),
                               b.const(np.array([0], np.int64))])
        earlier = b.op("Slice", [steps, b.const(np.array([0], np.int64)), b.const(np.array([-1], np.int64)),
                                 b.const(np.array([0], np.int64))])
        shifted = b.concat([b.op("Mul", [first, b.const(np.float32(0))]), earlier], axis=0)
        diff = b.op("Sub", [steps, shifted])
        b.op("Reshape", [diff, b.concat([b.const(np.array([-1], np.int64)), b.shape_tail(pooled)],
                                        dtype=np.int64)], out=[out])


def _place_neurons(graph: gs.Graph, acts, thresholds, rw: _Rewriter):
    """Activations -> IFNeuron nodes; an activation's MaxPool consumers get their own neuron."""
    layers = []
    for act in acts:
        theta = np.asarray(thresholds.values[act.name], np.float32).reshape(-1)
        if act.cap is not None:
            theta = np.minimum(theta, np.float32(act.cap))
        x, y = act.input, act.output
        act.node.inputs.clear()
        act.node.outputs.clear()
        pools = [c for c in list(y.outputs) if c.op == "MaxPool" and len(c.outputs) == 1]
        for pool in pools:
            # max and clip commute per channel: pool the currents, then a neuron after the pool
            pool.inputs[0] = x
            pooled_out = pool.outputs[0]
            current = gs.Variable(f"{pool.name}/pooled_current", x.dtype)
            pool.outputs = [current]
            name = f"{act.name}>{pool.name}"
            rw.neuron(current, pooled_out, theta, act.axis, name)
            layers.append(Layer(name, act.name, "after pool", act.channels, theta, pooled_out.name))
        if y.outputs or y in graph.outputs:
            rw.neuron(x, y, theta, act.axis, act.name)
            layers.append(Layer(act.name, act.name, "neuron", act.channels, theta, y.name))
    return layers


@dataclass
class Prepared:
    """The graph after neuron placement and region analysis, shared by every graph form."""
    model: onnx.ModelProto          # the shape-inferred ANN
    graph: gs.Graph
    rw: "_Rewriter"
    layers: list
    neurons: list
    regions: object
    ordered: list                   # spiking-region nodes and neurons, topological order
    costs: dict
    ranks: dict                     # neuron name -> rank of its input
    thresholds: object              # the thresholds used (a placeholder when checking)


def prepare(model: onnx.ModelProto, thresholds, config: SNNConfig) -> Prepared:
    """Neurons in place of activations, MaxPools handled, regions checked; no time handling yet."""
    config.validate()
    model = infer_shapes(model)
    graph = to_graph(model)
    acts = find_activations(graph)
    if not acts:
        raise UserError("the model has no ReLU-like activation (Relu, or Clip with min 0) to convert")
    if thresholds is None:   # placeholder: checks convertibility without calibrating
        from .calibration import Thresholds
        thresholds = Thresholds({a.name: np.ones(max(1, a.channels), np.float32) for a in acts}, "check")
    thresholds.check_against(acts, "thresholds")
    for act in acts:
        if act.input.dtype is not None and np.dtype(act.input.dtype) != np.float32:
            raise UserError(f"node '{act.name}': activations are {np.dtype(act.input.dtype)}; the IF neuron "
                            "runs in float32 (convert the model to float32 first)")
    rw = _Rewriter(graph, default_opset(model), config)
    layers = _place_neurons(graph, acts, thresholds, rw)
    graph.cleanup().toposort()
    neurons = [n for n in graph.nodes if n.op == "IFNeuron"]
    layers = [l for l in layers if any(n.name == l.name for n in neurons)]
    regions = classify(graph, neurons)
    problems = nonlinear_nodes(graph, neurons, regions)
    if problems:
        raise UserError(f"cannot convert {len(problems)} node(s) between spiking layers: {describe(problems)}")
    varying = regions.spiking | {id(n) for n in neurons}
    ordered = [n for n in graph.nodes if id(n) in varying]
    _free_batch_dims(ordered, regions)
    macs = energy.layer_macs(model)
    fan = energy.fanouts(model, [l.tensor for l in layers])
    costs = {"ann_macs": energy.totals(model), "largest_activation": energy.largest_activation(model),
             "pre_macs": float(sum(macs[n.name][0] for n in graph.nodes
                                   if id(n) in regions.pre and n.name in macs)),
             "fanout": {l.name: fan.get(l.tensor, 0.0) for l in layers}}
    rank_of = {a.name: a.rank for a in acts}
    ranks = {l.name: rank_of[l.source] for l in layers}
    for node in graph.nodes:
        for layer in layers:
            if node.op == "MaxPool" and layer.name.endswith(">" + node.name):
                if id(node) in regions.pre:
                    layer.role = "after pool (moved in front: time-invariant input)"
                elif config.maxpool == "move":
                    layer.role = "after pool (moved in front, per step)"
                else:
                    layer.role = "after spiking max pool"
    return Prepared(model, graph, rw, layers, neurons, regions, ordered, costs, ranks, thresholds)


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
    for node in p.ordered:
        for i, t in enumerate(list(node.inputs)):
            if from_pre(t):
                if t.name not in tiled:
                    tiled[t.name] = p.rw.tile(t)
                node.inputs[i] = tiled[t.name]


def boundary(p: Prepared):
    """(tensor, post consumers, is graph output) for tensors leaving the spiking region."""
    out = []
    outputs = list(p.graph.outputs)
    for node in p.ordered:
        for t in node.outputs:
            post = [c for c in t.outputs if id(c) in p.regions.post]
            if post or t in outputs:
                out.append((t, post, t in outputs))
    return out


def connect_readout(p: Prepared, t, post, is_output, mean_of) -> None:
    """Feed `mean_of(t)` (the averaged tensor) to the post region / the graph output."""
    if post:
        mean = mean_of(t, None)
        for c in post:
            for i, inp in enumerate(list(c.inputs)):
                if inp is t:
                    c.inputs[i] = mean
    if is_output:
        outputs = list(p.graph.outputs)
        original = gs.Variable(t.name, t.dtype, t.shape)
        t.name = f"{t.name}/steps"
        mean_of(t, original)
        outputs[outputs.index(t)] = original
        p.graph.outputs = outputs


def spiking_pools(p: Prepared):
    if p.rw.config.maxpool == "move":
        return []
    return [n for n in p.ordered if n.op == "MaxPool" and id(n) in p.regions.spiking]


def finish(p: Prepared, thresholds, config: SNNConfig, form_meta: dict, metadata: dict | None):
    graph = p.graph
    _forget_inner_shapes(graph)
    snn = export(graph, p.model, extra_opsets=[] if config.portable else [(DOMAIN, OPSET_VERSION)])
    _restore_io(snn, p.model)
    meta = {
        "onnx2snn.version": __version__,
        "onnx2snn.timesteps": config.timesteps,
        "onnx2snn.delay": config.delay,
        "onnx2snn.v_init": config.v_init,
        "onnx2snn.maxpool": config.maxpool,
        "onnx2snn.portable": int(config.portable),
        "onnx2snn.method": thresholds.method,
        "onnx2snn.thresholds": json.dumps(thresholds.info, sort_keys=True),
        "onnx2snn.costs": json.dumps(p.costs),
        "onnx2snn.neurons": json.dumps([{"name": l.name, "source": l.source, "role": l.role, "tensor": l.tensor}
                                        for l in p.layers]),
    }
    meta.update(form_meta)
    meta.update(metadata or {})
    set_metadata(snn, meta)
    snn.doc_string = (f"Spiking network (integrate-and-fire, {form_meta.get('onnx2snn.form')}, T={config.timesteps}) "
                      f"converted by onnx2snn {__version__} with {thresholds.method} thresholds; "
                      f"custom ops: {'none' if config.portable else DOMAIN}")
    return snn


def to_snn(model: onnx.ModelProto, thresholds, config: SNNConfig, metadata: dict | None = None):
    """The SNN (ModelProto) in the configured form, and the list of converted layers."""
    if not isinstance(config.delay, int):
        raise UserError(f"--delay {config.delay}: resolve 'auto' with api.convert (or delay.choose_delay) first")
    if config.form == "loop":
        from .loop import to_loop
        return to_loop(model, thresholds, config, metadata)
    p = prepare(model, thresholds, config)
    tile_pre_inputs(p)
    for t, post, is_output in boundary(p):
        connect_readout(p, t, post, is_output, lambda x, out: p.rw.average(x, out))
    for node in spiking_pools(p):
        p.rw.spiking_maxpool(node)
    if config.portable:
        from .portable import lower_neurons
        lower_neurons(p.graph, p.rw.b, p.ranks, p.rw.T)
    snn = finish(p, p.thresholds, config, {"onnx2snn.form": "unrolled",
                                         "onnx2snn.readout": json.dumps(p.rw.readouts)}, metadata)
    return snn, p.layers


def _free_batch_dims(nodes, regions) -> None:
    """Reshapes in the spiking region with a fixed leading (batch) size get -1 there instead, so
    they also hold T*N rows (models exported with a fixed batch size, e.g. [1, -1] -> [-1, F])."""
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


def check_convertible(model: onnx.ModelProto, config: SNNConfig) -> None:
    """Fail before calibration if the graph cannot become an SNN of the configured form (runs the
    whole rewrite with placeholder thresholds)."""
    delay = 0 if config.delay == "auto" else config.delay
    to_snn(model, None, SNNConfig(**{**config.__dict__, "delay": delay, "timesteps": max(1, delay + 1), "chunk": 1}))


def _forget_inner_shapes(graph: gs.Graph):
    """Inner shapes inferred for the ANN are wrong once time is folded into the batch."""
    keep = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Variable) and name not in keep:
            t.shape = None


def _restore_io(snn: onnx.ModelProto, ann: onnx.ModelProto):
    """Keep the ANN's input/output value infos exactly (names, shapes, dtypes): drop-in."""
    for dst, src in ((snn.graph.input, ann.graph.input), (snn.graph.output, ann.graph.output)):
        by_name = {v.name: v for v in src}
        for v in dst:
            if v.name in by_name:
                v.CopyFrom(by_name[v.name])
