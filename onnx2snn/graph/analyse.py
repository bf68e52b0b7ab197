"""Analyse an ANN once: its ReLU-like activations, their channel axes, the graph's time regions and
every node that blocks conversion, with the reason.

Regions: `pre` nodes do not depend on any neuron and run once; `spiking` nodes depend on a neuron
and feed another one, so they run at every step and must be linear in the time-varying signal;
`post` nodes depend on a neuron but feed none and run once on averaged values.

`analyse(model)` imports the model into onnx-graphsurgeon and folds its constants once; every later
stage (probes, the rewrite, the convertibility check) works on `Analysis.copy()`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import onnx_io as M
from ..errors import UserError, param
from .onnx_io import constant_value
from .sites import compensable, find_sites, insert_sites

log = logging.getLogger(__name__)

# Ops that are linear (affine) in one time-varying input; for the listed ones only the inputs named
# here may vary over time (others must be time-invariant).
_LINEAR_ANY = {
    "Add", "Sub", "Sum", "Concat", "Identity", "Dropout", "Reshape", "Flatten", "Transpose",
    "Squeeze", "Unsqueeze", "Slice", "Pad", "Split", "Expand", "Tile", "AveragePool",
    "GlobalAveragePool", "MaxPool", "ReduceMean", "ReduceSum", "BatchNormalization", "Resize",
    "Upsample", "DepthToSpace", "SpaceToDepth", "Neg", "Shape", "Size", "Cast", "Constant",
    "ConstantOfShape", "Gather", "GatherElements",
}
_ONE_VARYING = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Mul", "Einsum"}
_FIRST_VARYING = {"Div"}
_SHAPE_PRESERVING = {"Add", "Sub", "Mul", "Div", "BatchNormalization", "Identity", "Dropout", "Neg",
                     "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Softplus", "Softsign", "Elu",
                     "Selu", "Celu", "PRelu", "Mish", "Exp", "Log", "Sqrt", "Abs", "Pow", "Reciprocal", "Sin", "Cos"}
_LAST_AXIS = ("LayerNormalization", "Softmax", "LogSoftmax")   # their `axis` (default -1) is the feature axis
_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Max")

NOT_LINEAR = "not linear in the spikes"
NOT_COMPENSABLE = " and not a float function of float inputs (expectation compensation cannot average it)"

# Normalisation by each sample's own statistics: not linear in the spikes; --freeze-norm makes them
# fixed affines (freeze/norms.py).
NORM_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")
# why a graph without a single activation cannot convert: `inspect` reports it, `convert` refuses with it
NO_ACTIVATION = ("no activation to convert: no ReLU-like op (Relu, Clip(0, c), LeakyRelu(0), Max(x, 0)) and no "
                 "non-linear op whose output feeds a weighted layer")


@dataclass(frozen=True)
class Activation:
    node: gs.Node
    kind: str              # "Relu", "Clip", "LeakyRelu" (alpha 0) or "Max" (with 0)
    axis: int              # channel axis (non-negative) of the activation tensor
    rank: int
    channels: int          # size of the channel axis, 0 when unknown
    cap: float | None      # Clip max (ReLU6): the threshold never exceeds it
    input_index: int = 0   # which input carries the signal (Max(0, x) has it second)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def input(self) -> gs.Tensor:
        return self.node.inputs[self.input_index]

    @property
    def output(self) -> gs.Tensor:
        return self.node.outputs[0]


@dataclass
class Regions:
    pre: set = field(default_factory=set)
    spiking: set = field(default_factory=set)
    post: set = field(default_factory=set)


def _clip_bounds(node: gs.Node):
    """(min, max) of a Clip node when both are constants (max may be absent), else None."""
    if "min" in node.attrs or "max" in node.attrs:
        return float(node.attrs.get("min", -np.inf)), node.attrs.get("max")
    lo = constant_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
    hi = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if lo is None:
        return None
    if len(node.inputs) > 2 and node.inputs[2].name and hi is None:
        return None
    return float(lo), (None if hi is None else float(hi))


def _zero_operand(node: gs.Node):
    """For Max(x, 0) / Max(0, x): the index of x, else None."""
    if len(node.inputs) != 2:
        return None
    for i in (0, 1):
        value = constant_value(node.inputs[1 - i])
        if value is not None and value.size == 1 and float(value.reshape(-1)[0]) == 0.0 \
                and constant_value(node.inputs[i]) is None:
            return i
    return None


def relu_input(node: gs.Node):
    """The index of the signal input when `node` computes max(x, 0) (possibly capped), else None:
    Relu; Clip(min 0[, max c > 0]); LeakyRelu with alpha 0; Max(x, 0)."""
    if node.op == "Relu":
        return 0
    if node.op == "Clip":
        bounds = _clip_bounds(node)
        ok = bounds is not None and bounds[0] == 0.0 and (bounds[1] is None or bounds[1] > 0)
        return 0 if ok else None
    if node.op == "LeakyRelu":
        return 0 if float(node.attrs.get("alpha", 0.01)) == 0.0 else None
    if node.op == "Max":
        return _zero_operand(node)
    return None


def is_relu_like(node: gs.Node) -> bool:
    return relu_input(node) is not None


def tensor_rank(tensor: gs.Tensor):
    return None if tensor.shape is None else len(tensor.shape)


def _producer_axis(tensor: gs.Tensor, rank: int):
    """(axis, transposes) where axis is the channel axis the producing layer gave, or None."""
    perms = []
    current = tensor
    for _ in range(64):
        if not current.inputs:
            return None, perms
        producer = current.inputs[0]
        if producer.op in ("Conv", "ConvTranspose"):
            return 1, perms
        if producer.op in ("Gemm", "MatMul"):
            return (tensor_rank(current) or rank) - 1, perms
        if producer.op in _LAST_AXIS:
            r = tensor_rank(current) or rank
            return int(producer.attrs.get("axis", -1)) % r, perms
        if producer.op == "Transpose":
            perms.append(list(producer.attrs.get("perm", [])))
        elif producer.op not in _SHAPE_PRESERVING and producer.op not in _ACTIVATIONS + ("Concat",):
            return None, perms
        varying = [t for t in producer.inputs if not isinstance(t, gs.Constant) and t.name]
        if not varying:
            return None, perms
        current = varying[0]
    return None, perms


def channel_axis(tensor: gs.Tensor, rank: int) -> int:
    """Channel axis of `tensor`, traced back to the op that made its channels.

    Conv outputs are NCHW (axis 1); Gemm/MatMul outputs have features on the last axis; a
    Transpose on the way permutes the axis. Without such a producer: axis 1 (NC..., or N x F).
    """
    axis, perms = _producer_axis(tensor, rank)
    if axis is None:
        return 1 if rank >= 2 else 0
    for perm in reversed(perms):
        if perm and axis in perm:
            axis = perm.index(axis)
    return axis


def find_activations(graph: gs.Graph) -> list:
    acts = []
    for node in graph.nodes:
        index = relu_input(node)
        if index is None:
            continue
        signal = node.inputs[index]
        rank = tensor_rank(node.outputs[0]) or tensor_rank(signal)
        if rank is None:
            raise UserError(f"node '{node.name}' ({node.op}): rank of its input is unknown; "
                            "export the model with static ranks")
        axis = channel_axis(signal, rank) if rank >= 2 else 0
        shape = node.outputs[0].shape or signal.shape
        dim = shape[axis] if shape is not None and axis < len(shape) else None
        channels = dim if isinstance(dim, (int, np.integer)) and dim > 0 else 0
        cap = _clip_bounds(node)[1] if node.op == "Clip" else None
        acts.append(Activation(node, node.op, axis, rank, int(channels), None if cap is None else float(cap), index))
    return acts


def _reachable(seeds, downstream: bool) -> set:
    """ids of the nodes reachable from `seeds` (excluded) following edges down- or upstream.

    A gs tensor's `outputs` are its consumers and `inputs` its producer; a node's `outputs` /
    `inputs` are tensors: the same two attribute names walk either direction."""
    step = "outputs" if downstream else "inputs"
    seen, stack = set(), [t for n in seeds for t in getattr(n, step)]
    while stack:
        for node in getattr(stack.pop(), step):
            if id(node) not in seen:
                seen.add(id(node))
                stack.extend(getattr(node, step))
    return seen


def classify(graph: gs.Graph, neurons) -> Regions:
    """Split the non-neuron nodes into pre / spiking / post regions (ids of nodes)."""
    neuron_ids = {id(n) for n in neurons}
    down = _reachable(neurons, downstream=True)
    up = _reachable(neurons, downstream=False)
    regions = Regions()
    for node in graph.nodes:
        if id(node) in neuron_ids:
            continue
        if id(node) not in down:
            regions.pre.add(id(node))
        elif id(node) in up:
            regions.spiking.add(id(node))
        else:
            regions.post.add(id(node))
    return regions


def time_varying(tensor: gs.Tensor, varying_ids: set) -> bool:
    return bool(tensor.inputs) and id(tensor.inputs[0]) in varying_ids


def nonlinear_nodes(graph: gs.Graph, neurons, regions: Regions) -> list:
    """(node, reason) for every spiking-region node that is not linear in the spikes."""
    varying = regions.spiking | {id(n) for n in neurons}
    problems = []
    for node in graph.nodes:
        if id(node) not in regions.spiking:
            continue
        inputs = [t for t in node.inputs if t.name]
        moving = [i for i, t in enumerate(inputs) if time_varying(t, varying)]
        reason = _nonlinearity(node, moving)
        if reason:
            problems.append((node, reason))
    return problems


def blocking_nodes(problems) -> list:
    """The non-linear nodes between neurons that no treatment converts (indices that vary over
    time, integer or random outputs, control flow): everything else is compensated."""
    return [(n, why + NOT_COMPENSABLE if why == NOT_LINEAR else why) for n, why in problems if not compensable(n)]


def analog_nodes(graph: gs.Graph, neurons, regions: Regions) -> list:
    """The spiking-region nodes evaluated with expectation compensation (snn/compensate.py) or,
    with --keep-analog, on each step's input."""
    return [n for n, _ in nonlinear_nodes(graph, neurons, regions) if compensable(n)]


def _nonlinearity(node: gs.Node, moving) -> str | None:
    if node.op in _LINEAR_ANY:
        if node.op in ("Gather", "GatherElements") and 0 not in moving:
            return "indices vary over time"
        return None
    if node.op in _ONE_VARYING:
        return "multiplies two time-varying tensors" if len(moving) > 1 else None
    if node.op in _FIRST_VARYING:
        return "divides by a time-varying tensor" if moving != [0] else None
    return NOT_LINEAR


def describe(problems) -> str:
    return ", ".join(f"{n.op} '{n.name}' ({why})" for n, why in problems)


@dataclass(frozen=True)
class Analysis:
    """One ANN, analysed once. `graph` is never modified: stages rewrite `copy()`."""
    model: onnx.ModelProto      # checked and shape-inferred
    graph: gs.Graph             # constants folded, every node named
    opset: int
    activations: tuple          # Activation, referring to nodes of `graph`
    regions: Regions            # with the activations standing in for neurons
    problems: tuple             # (node, reason) for the non-linear nodes between spiking layers
    sites: tuple = ()           # Site: non-ReLU activations given neurons (graph/sites.py)
    original: onnx.ModelProto | None = None    # the model before the sites were inserted (--freeze-norm)

    def __reduce__(self):      # to a cluster's worker: the model, analysed there again (check_shapes' counts kept)
        return _analysed, (self.model.SerializeToString(), {a.name: a.channels for a in self.activations})

    def copy(self):
        """(graph, activations): a fresh copy of the graph and the activations bound to its nodes."""
        graph = self.graph.copy()
        # onnx-graphsurgeon's exporter appends to `import_domains` in place: give each copy its own
        graph.import_domains = [onnx.helper.make_opsetid(o.domain, o.version) for o in self.model.opset_import]
        by_name = {n.name: n for n in graph.nodes}
        return graph, [replace(a, node=by_name[a.name]) for a in self.activations]

    def blocking(self, keep_analog: bool = False) -> list:
        """(node, reason) for the nodes that stop conversion (the same with --keep-analog, which
        only changes how the others run)."""
        return blocking_nodes(self.problems)

    def compensated(self) -> list:
        """The non-linear nodes between neurons that expectation compensation converts."""
        return [n for n, _ in self.problems if compensable(n)]

    def require_activations(self) -> None:
        """Refuse a graph with nothing to turn into neurons, in inspect's words, before any session runs."""
        if not self.activations:
            raise UserError(f"not convertible: {NO_ACTIVATION}")

    def require_convertible(self, keep_analog: bool = False) -> None:
        """Raise the user error that explains why this graph cannot become an SNN, if any."""
        self.require_activations()
        for act in self.activations:
            if act.input.dtype is not None and np.dtype(act.input.dtype) != np.float32:
                raise UserError(f"node '{act.name}': activations are {np.dtype(act.input.dtype)}; the IF "
                                "neuron runs in float32 (convert the model to float32 first)")
        blocking = self.blocking(keep_analog)
        if blocking:
            hint = ""
            if any(n.op in NORM_OPS for n, _ in blocking):
                hint += f"; {param('freeze_norm')} turns the normalisation layers into fixed per-channel affines"
            raise UserError(f"cannot convert {len(blocking)} node(s) between spiking layers: "
                            f"{describe(blocking)}{hint}")


def _name_nodes(graph: gs.Graph) -> None:
    """Give unnamed and duplicate-named nodes unique names (thresholds and reports are keyed by
    node name)."""
    taken = {n.name for n in graph.nodes if n.name}
    seen = set()
    for i, node in enumerate(graph.nodes):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        k, name = i, f"{node.op}_{i}"
        while name in taken:
            k += 1
            name = f"{node.op}_{k}"
        node.name = name
        taken.add(name)
        seen.add(name)


def analyse(model) -> Analysis:
    """Analyse a model (path or ModelProto): load, import and fold once, give the non-ReLU
    activations their spiking sites (graph/sites.py), find what converts."""
    proto = original = M.load_proto(model)
    graph = M.to_graph(proto)
    _name_nodes(graph)
    sites = tuple(find_sites(graph, is_relu_like))
    if sites:      # the ANN with Relu(y) - Relu(-y) at each site: the same outputs, new activations
        insert_sites(graph, sites)
        proto = M.infer_shapes(M.export(graph, proto))
        graph = M.to_graph(proto)
    acts = tuple(find_activations(graph))
    nodes = [a.node for a in acts]
    regions = classify(graph, nodes)
    problems = tuple(nonlinear_nodes(graph, nodes, regions))
    return Analysis(proto, graph, M.default_opset(proto), acts, regions, problems, sites, original)


def _analysed(model_bytes: bytes, channels: dict) -> Analysis:
    """Analysis.__reduce__: the analysis of the model, with the channel counts it had."""
    analysis = analyse(onnx.load_from_string(model_bytes))
    return replace(analysis, activations=tuple(replace(a, channels=channels.get(a.name, a.channels))
                                               for a in analysis.activations))


def as_analysis(model) -> Analysis:
    """An Analysis as it is, or the analysis of a ModelProto or path."""
    return model if isinstance(model, Analysis) else analyse(model)


def check_shapes(analysis: Analysis, feeds: dict, session) -> Analysis:
    """The activations' ranks and channel counts checked against what onnxruntime computes for
    `feeds` (a first batch): inferred shapes are trusted only once they match. A channel count
    inference could not give is filled in; a conflict is reported as a model problem.
    `session` builds an onnxruntime session from a ModelProto."""
    acts = [a for a in analysis.activations if a.input.name not in feeds]
    probe = onnx.ModelProto()
    probe.CopyFrom(analysis.model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(a.input.name, onnx.TensorProto.FLOAT, None)
                              for a in acts)
    # no session when every activation reads a model input (onnxruntime refuses a run with no outputs)
    values = dict(zip([a.input.name for a in acts], session(probe).run([a.input.name for a in acts], feeds))) \
        if acts else {}
    values.update({k: v for k, v in feeds.items()})
    checked = []
    for act in analysis.activations:
        value = values[act.input.name]
        if value.ndim != act.rank:
            raise UserError(f"node '{act.name}': the model declares rank {act.rank} for its input "
                            f"'{act.input.name}' but onnxruntime computes {list(value.shape)}; the "
                            "exported shapes are inconsistent (re-export the model)")
        channels = int(value.shape[act.axis]) if act.rank else 1
        if act.channels and act.channels != channels:
            log.warning("node '%s': shape inference gave %d channels on axis %d, onnxruntime computes %d; "
                        "using %d", act.name, act.channels, act.axis, channels, channels)
        checked.append(replace(act, channels=channels))
    return replace(analysis, activations=tuple(checked))
