"""A converted SNN (onnx2snn's default unrolled form) as a NIR graph, up to its readout.

NIR (the Neuromorphic Intermediate Representation, PyPI `nir` 1.0.x) describes a network as nodes
(Conv2d, Affine, IF, SumPool2d, ...) joined by identity edges; the edges that meet at a node are
summed. The SNN's spiking region maps onto it one node per operation:

    Conv                          -> nir.Conv2d
    Gemm, MatMul (+ Add bias)     -> nir.Affine (nir.Linear when no bias is left)
    AveragePool, GlobalAveragePool -> nir.SumPool2d (the 1/k² goes into the next weights)
    Flatten, flattening Reshape   -> nir.Flatten (start_dim 0: NIR shapes have no batch axis)
    IFNeuron                      -> nir.IF (r = 1, v_threshold = 1, v_reset = 0, full shape)
    Add / Sub of two tensors      -> converging edges (a residual sum)
    Add / Sub of a constant       -> the bias of the layer producing the current
    Mul / Div by a constant, BatchNormalization -> the weights (and bias) of that layer
    the readout tensors           -> nir.Output

Thresholds folded. IFNeuron emits θ or 0 and resets by subtracting θ; nir.IF emits 1 or 0. Dividing
a neuron's potential by its per-channel θ gives the same spike train with threshold 1, so every
current into the neuron is divided by θ (its incoming weights and bias) and every spike leaving it
brings its θ into the weights of the layer it feeds. The bookkeeping is one scale per tensor
element: the ONNX value = scale * the NIR value. A layer picks its output scale (θ of the neuron it
feeds, θ·k² in front of a k x k average pool, 1 otherwise) and absorbs its input's scale into its
weights; where two scales must meet and cannot (a residual edge from another neuron, a readout of
spikes), an nir.Scale node converts them. Channels with θ = 0 never fire: their incoming weights,
bias and initial potential are 0.

Time. One NIR step is one step of the SNN; nir.IF with r = 1 integrates v[t] = v[t-1] + I[t], I[t]
being the sum of the edges converging on it computed from the same step's spikes (no synaptic
delay). NIR's IF resets to v_reset and has no initial state; the graph's and every IF's metadata
say "reset": "subtract", "firing": "v > v_threshold" (neuron.py: spike where v > θ) and carry "v0",
the initial potential in threshold units (v_init·θ/θ, or the correction's v0/θ).

Input coding. When every node before the first neuron is expressible, the graph input is the image
and it is fed unchanged at every step (direct coding: the first layers run at each step on the
same input, which gives the constant current onnx2snn computes once and repeats). Otherwise the
graph inputs are the tensors onnx2snn repeats over the steps and the nodes before them stay on the
host ("current" coding).

Readout. Each nir.Output is one tensor onnx2snn averages over steps D+1..T (in the ONNX tensor's
units: Scale nodes undo the folding); everything after it (heads, Softmax, ArgMax, ...) stays on
the host and is listed in info["host"].

Rounding. Folding changes float32 rounding: the SNN computes W·(θ_in·s) and compares v with θ,
the NIR graph computes (W·θ_in/θ)·s and compares v/θ with 1 (weights are folded in float64 and
rounded once). Both are exact when θ and the pooling factors are powers of two and the sums are
exactly representable (the tests' integer models); otherwise a potential within a few ulps of the
threshold can fire one step apart, which moves a readout by a spike's weight divided by T-D.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .._version import __version__
from ..errors import InternalError, UserError
from ..neuron import DOMAIN
from ..snn.info import SNNInfo
from ..snn.prepare import T_NAME

RESET = "subtract"
FIRING = "v > v_threshold"      # neuron.py / if_neuron.cc: spike where v > theta
_WHERE = "to_nir"


def load_nir():
    """The `nir` module, or a UserError saying how to install it."""
    try:
        import nir
    except ImportError:
        raise UserError(f"{_WHERE}: the NIR export needs the `nir` package (pip install nir==1.0.8)") from None
    return nir


def to_nir(snn: onnx.ModelProto):
    """(nir.NIRGraph, info) for a model converted by onnx2snn in the unrolled form.

    The graph runs from its input (the image, or the repeated current: info["input_coding"]) to the
    readout tensors; it is built with NIR's type check on. info: timesteps, delay, input_coding,
    inputs, readout, host (the nodes staying on the host, before or after the graph), neurons and
    the Scale nodes the folding needed. Raises UserError naming the node, the reason and the way
    forward for anything NIR cannot express."""
    nir = load_nir()
    info = SNNInfo.from_metadata(snn, _WHERE)
    if info.looped:
        raise UserError(f"{_WHERE}: the model is in the loop form; the NIR export reads the unrolled form: "
                        "convert again with --form unrolled (the default)")
    if info.portable:
        raise UserError(f"{_WHERE}: the model is portable (neurons lowered to standard ops); the NIR export "
                        "reads IFNeuron nodes: convert again without --portable")
    graph = _Onnx(snn)
    plan = _Plan(graph, info)
    try:
        export = _Export(nir, graph, info, plan, direct=True)
    except _PreRefused as refusal:
        why = str(refusal)[len(_WHERE) + 2:] if str(refusal).startswith(_WHERE + ": ") else str(refusal)
        export = _Export(nir, graph, info, plan, direct=False, why=why)
    return export.result()


class _PreRefused(UserError):
    """A node before the first neuron has no NIR form: that part stays on the host."""


def _refuse(node, reason: str, way: str, pre: bool = False) -> UserError:
    cls = _PreRefused if pre else UserError
    return cls(f"{_WHERE}: {node.op_type} '{node.name}': {reason}; {way}")


# ---- the ONNX side -------------------------------------------------------------------------------

class _Onnx:
    """Lookups over the SNN's graph: producers, consumers, constants, inferred shapes."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.producer, self.consumers = {}, defaultdict(list)
        for i, node in enumerate(self.nodes):
            for t in node.output:
                if t:
                    self.producer[t] = i
            for t in node.input:
                if t:
                    self.consumers[t].append(i)
        self.const = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_attr(node)
                if value is not None:
                    self.const[node.output[0]] = value
        self.inputs = {v.name: v for v in model.graph.input if v.name not in self.const}
        self._inferred = None

    def node_of(self, tensor: str):
        i = self.producer.get(tensor)
        return None if i is None else self.nodes[i]

    def ancestors(self, tensors, stop=(), data_only: bool = True) -> set:
        """Indices of the nodes computing `tensors`, not looking past the tensors in `stop`;
        `data_only` skips the shape inputs of Reshape and the constant inputs of neurons."""
        stop, seen, done = set(stop), set(), set()
        todo = [t for t in tensors]
        while todo:
            t = todo.pop()
            if not t or t in done or t in stop or t in self.const:
                continue
            done.add(t)
            i = self.producer.get(t)
            if i is None or i in seen:
                continue
            seen.add(i)
            node = self.nodes[i]
            todo.extend(node.input[:1] if data_only and node.op_type in ("Reshape", "IFNeuron") else node.input)
        return seen

    def descendants(self, tensors) -> set:
        seen, todo = set(), list(tensors)
        while todo:
            for i in self.consumers.get(todo.pop(), []):
                if i not in seen:
                    seen.add(i)
                    todo.extend(t for t in self.nodes[i].output if t)
        return seen

    def shape(self, tensor: str):
        """Per-sample static shape of a tensor (graph input or ONNX-inferred), or None."""
        if tensor in self.inputs:
            dims = self.inputs[tensor].type.tensor_type.shape.dim
        else:
            if self._inferred is None:
                try:
                    inferred = onnx.shape_inference.infer_shapes(self.model)
                    self._inferred = {v.name: v for v in inferred.graph.value_info}
                except Exception:   # noqa: BLE001 - inference is a convenience here; None says unknown
                    self._inferred = {}
            if tensor not in self._inferred:
                return None
            dims = self._inferred[tensor].type.tensor_type.shape.dim
        out = [d.dim_value if d.HasField("dim_value") else 0 for d in dims][1:]
        return tuple(out) if dims and all(d > 0 for d in out) else None


def _constant_attr(node):
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.float32(a.f)
        if a.name == "value_floats":
            return np.asarray(a.floats, np.float32)
        if a.name == "value_int":
            return np.int64(a.i)
        if a.name == "value_ints":
            return np.asarray(a.ints, np.int64)
    return None


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


class _Plan:
    """Where the SNN's parts are: the repeated inputs (tiles), the readouts, the spiking region,
    the region before it, the time-folding plumbing and what is left to the host."""

    def __init__(self, g: _Onnx, info: SNNInfo):
        self.tiles = {}                                  # tile output -> repeated (time-invariant) tensor
        for node in g.nodes:
            source = _tile_source(g, node)
            if source is not None:
                self.tiles[node.output[0]] = source
        self.readouts = []
        for r in info.readouts:
            steps, mean = r.get("steps"), r.get("mean")
            if steps not in g.producer or mean not in g.producer:
                raise UserError(f"{_WHERE}: the readout of '{steps}' is not in the graph (damaged metadata)")
            self.readouts.append((steps, mean))
        if not self.readouts:
            raise UserError(f"{_WHERE}: the model has no readout in its metadata; convert it again")
        steps = [s for s, _ in self.readouts]
        self.spiking = sorted(g.ancestors(steps, stop=self.tiles))
        reached = {t for i in self.spiking for t in _data_inputs(g.nodes[i]) if t and t not in g.const}
        loose = sorted(t for t in reached if t not in g.producer and t not in self.tiles)
        if loose:
            raise UserError(f"{_WHERE}: '{loose[0]}' enters the spiking region without being repeated over the "
                            "steps: not onnx2snn's unrolled form; convert the ANN again")
        self.entries = sorted({t for t in reached if t in self.tiles})
        self.pre = sorted(g.ancestors([self.tiles[t] for t in self.entries]))
        plumbing = set()
        for tile in self.entries:
            plumbing |= g.ancestors([tile], stop=[self.tiles[tile]], data_only=False)
        for s, mean in self.readouts:
            plumbing |= g.ancestors([mean], stop=[s], data_only=False)
        self.plumbing = plumbing
        self.after = g.descendants([mean for _, mean in self.readouts])


def _data_inputs(node):
    return node.input[:1] if node.op_type in ("Reshape", "IFNeuron") else node.input


def _tile_source(g: _Onnx, node):
    """The tensor TimeFold.tile repeats into this Reshape's output (Unsqueeze -> Expand to
    [T, N, ...] -> Reshape [T*N, ...]), or None."""
    if node.op_type != "Reshape":
        return None
    expand = g.node_of(node.input[0])
    if expand is None or expand.op_type != "Expand":
        return None
    unsqueeze, shape = g.node_of(expand.input[0]), g.node_of(expand.input[1])
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or shape is None or shape.op_type != "Concat":
        return None
    return unsqueeze.input[0] if shape.input and shape.input[0] == T_NAME else None


# ---- operations in NIR terms ---------------------------------------------------------------------

@dataclass
class _Op:
    """One operation of the exported region, its ONNX node parsed: what it reads and computes."""
    kind: str          # input identity conv affine add bias scale pool flatten neuron output
    node: object       # the ONNX NodeProto (None for inputs and outputs)
    inputs: list       # the time-varying tensors it reads
    output: str
    shape: tuple       # per-sample shape of the output
    params: dict = field(default_factory=dict)
    pre: bool = False  # before the first neuron: a refusal falls back to a host-side input


@dataclass
class _Layer:
    """A Conv2d or Affine whose numbers are final only at the end: constant currents met later
    are added to its bias (in its own output units)."""
    name: str
    kind: str               # conv or affine
    weight: np.ndarray      # float64, folded
    bias: np.ndarray        # float64 [out], folded
    params: dict
    onnx_node: str


@dataclass
class _Term:
    """Part of a tensor: the output of one NIR node; ONNX value = scale * NIR value (the tensor
    is the sum of its terms). `layer`: the layer this output comes from when nothing else reads
    it on the way (so a constant current may go into its bias)."""
    node: str
    scale: np.ndarray
    layer: _Layer | None = None


_PARSERS = {"Identity": "_parse_identity", "Dropout": "_parse_identity", "Conv": "_parse_conv",
            "Gemm": "_parse_gemm", "MatMul": "_parse_matmul", "Add": "_parse_add", "Sub": "_parse_sub",
            "Mul": "_parse_mul", "Div": "_parse_div", "BatchNormalization": "_parse_batchnormalization",
            "AveragePool": "_parse_averagepool", "GlobalAveragePool": "_parse_globalaveragepool",
            "Flatten": "_parse_flatten", "Reshape": "_parse_reshape"}   # ONNX op -> _Export method
_WAY_LINEAR = "NIR 1.0 expresses Conv, Gemm/MatMul, average pooling, Flatten and sums between neurons"


class _Export:
    """Parses the region, propagates the scales each layer should emit, then builds the graph."""

    def __init__(self, nir, g: _Onnx, info: SNNInfo, plan: _Plan, direct: bool, why: str = ""):
        self.nir, self.g, self.info, self.plan, self.direct = nir, g, info, plan, direct
        self.why = why
        self.shapes = {}
        self.nodes, self.edges, self.used = {}, [], set()
        self.signals, self.layers, self.scale_nodes, self._scale_cache = {}, [], [], {}
        self.neurons, self.inputs = {}, []
        self.ops = self._parse()
        self.consumers = Counter(t for op in self.ops for t in op.inputs)
        self.wanted = self._wanted_scales()
        for op in self.ops:
            try:
                self._emit(op)
            except UserError as err:
                if op.pre and not isinstance(err, _PreRefused):
                    raise _PreRefused(str(err)) from None
                raise

    # ---- parsing ------------------------------------------------------------------------------
    def _parse(self) -> list:
        g, plan, ops = self.g, self.plan, []
        if self.direct:
            tensors = [t for i in plan.pre for t in _data_inputs(g.nodes[i]) if t in g.inputs]
            tensors += [plan.tiles[t] for t in plan.entries if plan.tiles[t] in g.inputs]
            for name in dict.fromkeys(tensors):
                ops.append(self._entry(name, pre=True))
            for i in plan.pre:
                ops += self._parse_node(g.nodes[i], pre=True)
            for tile in plan.entries:
                source = plan.tiles[tile]
                self.shapes[tile] = self.shapes[source]
                ops.append(_Op("identity", None, [source], tile, self.shapes[tile], pre=True))
        else:
            for tile in plan.entries:
                ops.append(self._entry(tile, source=plan.tiles[tile]))
        for i in plan.spiking:
            ops += self._parse_node(g.nodes[i])
        for steps, mean in plan.readouts:
            ops.append(_Op("output", None, [steps], mean, self.shapes[steps]))
        return ops

    def _entry(self, tensor: str, source: str | None = None, pre: bool = False) -> _Op:
        shape = self.g.shape(source or tensor)
        if shape is None:
            raise (_PreRefused if pre else UserError)(
                f"{_WHERE}: input '{source or tensor}' has no static shape; NIR types are static: export the "
                "ANN with fixed non-batch dims")
        self.shapes[tensor] = shape
        return _Op("input", None, [], tensor, shape, {"source": source or tensor}, pre=pre)

    def _const(self, node, index: int):
        if index >= len(node.input) or not node.input[index]:
            return None
        return self.g.const.get(node.input[index])

    def _varying(self, node):
        return [t for t in _data_inputs(node) if t and t not in self.g.const]

    def _parse_node(self, node, pre: bool = False) -> list:
        """The node as _Ops (most are one; BatchNormalization is a scale and a bias)."""
        op_type = node.op_type
        if node.name in self.info.analog:
            raise _refuse(node, "kept analog (--keep-analog): it runs on each step's input without spiking and "
                          "NIR has no such node", "convert without --keep-analog (replace the op by ReLU in the ANN)",
                          pre)
        if node.domain == DOMAIN and op_type == "SpikingMaxPool":
            raise _refuse(node, "a max pool driven by spikes (onnx2snn's spiking max pool) has no NIR form "
                          "(NIR 1.0 has no max pool)", "train the ANN with average pooling, or swap the MaxPool "
                          "for an AveragePool, and convert again", pre)
        if node.domain == DOMAIN and op_type == "IFNeuron":
            op = self._parse_neuron(node)
            self.shapes[op.output] = op.shape
            return [op]
        if node.domain not in ("", "ai.onnx"):
            raise _refuse(node, f"operator of domain '{node.domain}' has no NIR form", _WAY_LINEAR, pre)
        if op_type == "MaxPool":
            raise _refuse(node, "NIR 1.0 has no max pool", "train the ANN with average pooling, or swap the "
                          "MaxPool for an AveragePool, and convert again", pre)
        if op_type == "Concat":
            raise _refuse(node, "NIR has no concatenation (the edges meeting at a node are summed, not stacked)",
                          "restructure the ANN so that branches are summed (e.g. a convolution per branch, "
                          "added) instead of concatenated", pre)
        if op_type == "Transpose":
            raise _refuse(node, "NIR tensors are channel-first and have no transpose", "export the ANN in NCHW "
                          "layout (e.g. tf2onnx --inputs-as-nchw) and convert again", pre)
        if op_type not in _PARSERS:
            raise _refuse(node, "no NIR 1.0 node expresses it", _WAY_LINEAR, pre)
        varying = self._varying(node)
        if not varying:
            raise _refuse(node, "computes a constant inside the network", "fold constants in the ANN "
                          "(e.g. onnxsim) and convert again", pre)
        x = varying[0]
        if x not in self.shapes:
            raise _refuse(node, f"reads '{x}', which the export did not reach", "convert the ANN again", pre)
        ops = getattr(self, _PARSERS[op_type])(node, varying, self.shapes[x], pre)
        for op in ops:
            op.pre = pre
            self.shapes[op.output] = op.shape
        return ops

    def _parse_identity(self, node, varying, shape, pre):
        """Identity, and Dropout at inference (its mask unused)."""
        if any(t and t in self.g.consumers for t in node.output[1:]):
            raise _refuse(node, "its mask output is used", _WAY_LINEAR, pre)
        return [_Op("identity", node, varying[:1], node.output[0], shape)]

    def _parse_neuron(self, node) -> _Op:
        a = _attrs(node)
        x = node.input[0]
        if len(node.input) > 4 or (len(node.input) > 2 and node.input[2]):
            raise _refuse(node, "carries state or fused inputs (a session's in-memory graph)",
                          "export the model file as onnx2snn wrote it")
        if int(a.get("timesteps", 0)) != self.info.timesteps:
            raise _refuse(node, f"runs {a.get('timesteps')} steps, the model {self.info.timesteps}",
                          "convert the ANN again")
        if x not in self.shapes:
            raise _refuse(node, f"reads '{x}', which the export did not reach", "convert the ANN again")
        shape = self.shapes[x]
        if self._const(node, 1) is None:
            raise _refuse(node, "its thresholds are not a constant", "convert the ANN again")
        theta = np.asarray(self._const(node, 1), np.float32).reshape(-1)
        axis = int(a.get("axis", 1))
        axis = axis + len(shape) + 1 if axis < 0 else axis
        if theta.size > 1 and not (1 <= axis <= len(shape) and shape[axis - 1] == theta.size):
            raise _refuse(node, f"has {theta.size} thresholds for shape {list(shape)} (axis {axis})",
                          "convert the ANN again")
        full = np.broadcast_to(theta.reshape([-1] + [1] * (len(shape) - axis)) if theta.size > 1 else theta,
                               shape).astype(np.float32)
        v0 = self._const(node, 3)
        if v0 is not None:
            v0 = np.asarray(v0, np.float32).reshape(-1)
            if v0.size not in (1, int(np.prod(shape))):
                raise _refuse(node, f"v0 has {v0.size} values for shape {list(shape)}", "convert the ANN again")
            start = np.broadcast_to(v0.reshape(shape) if v0.size > 1 else v0.reshape(()), shape)
        else:
            start = np.float32(a.get("v_init", 0.5)) * full            # the neuron's v_init·θ, in float32
        source = next((n.get("source", "") for n in self.info.neurons if n.get("name") == node.name), "")
        params = {"theta": theta, "theta_full": full, "start": np.asarray(start, np.float32),
                  "axis": axis - 1, "source": source}
        return _Op("neuron", node, [x], node.output[0], shape, params)

    def _parse_conv(self, node, varying, shape, pre):
        a = _attrs(node)
        w, b = self._const(node, 1), self._const(node, 2)
        if w is None or len(varying) != 1:
            raise _refuse(node, "its weights vary (not an initializer)", "export the ANN with constant weights", pre)
        if w.ndim != 4 or len(shape) != 3:
            raise _refuse(node, f"a {w.ndim - 2}-D convolution; the export writes nir.Conv2d only",
                          "use 2-D convolutions", pre)
        group = int(a.get("group", 1))
        strides = list(a.get("strides", [1, 1]))
        dilations = list(a.get("dilations", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto_pad = _text(a.get("auto_pad", "NOTSET"))
        if auto_pad not in ("NOTSET", "VALID"):
            raise _refuse(node, f"auto_pad {auto_pad}", "export the ANN with explicit pads", pre)
        if auto_pad == "VALID":
            pads = [0, 0, 0, 0]
        if pads[:2] != pads[2:]:
            raise _refuse(node, f"asymmetric pads {pads} (NIR's Conv2d pads both sides alike)",
                          "pad symmetrically in the ANN", pre)
        if shape[0] != w.shape[1] * group:
            raise _refuse(node, f"expects {w.shape[1] * group} channels, gets {shape[0]}", "check the ANN", pre)
        out = [(shape[1 + i] + 2 * pads[i] - dilations[i] * (w.shape[2 + i] - 1) - 1) // strides[i] + 1
               for i in range(2)]
        bias = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64).reshape(-1)
        params = {"weight": np.asarray(w, np.float64), "bias": bias, "stride": tuple(strides),
                  "padding": tuple(pads[:2]), "dilation": tuple(dilations), "groups": group,
                  "input_shape": tuple(shape[1:])}
        return [_Op("conv", node, varying, node.output[0], (w.shape[0], *out), params)]

    def _parse_gemm(self, node, varying, shape, pre):
        a = _attrs(node)
        w, c = self._const(node, 1), self._const(node, 2)
        if w is None or len(varying) != 1 or node.input[0] != varying[0]:
            raise _refuse(node, "its weights vary (not an initializer)", "export the ANN with constant weights", pre)
        if int(a.get("transA", 0)) or len(shape) != 1:
            raise _refuse(node, "reads a transposed or non-vector input", "flatten before the layer", pre)
        w = np.asarray(w, np.float64) * float(a.get("alpha", 1.0))
        w = w if int(a.get("transB", 0)) else w.T
        if w.shape[1] != shape[0]:
            raise _refuse(node, f"expects {w.shape[1]} features, gets {shape[0]}", "check the ANN", pre)
        bias = np.zeros(w.shape[0])
        if c is not None:
            bias = self._per_sample(node, np.asarray(c, np.float64) * float(a.get("beta", 1.0)), (w.shape[0],), pre)
        return [_Op("affine", node, varying, node.output[0], (w.shape[0],), {"weight": w, "bias": bias})]

    def _parse_matmul(self, node, varying, shape, pre):
        w = self._const(node, 1)
        if w is None or len(varying) != 1 or node.input[0] != varying[0] or w.ndim != 2 or len(shape) != 1:
            raise _refuse(node, "not a vector times a constant matrix", "use Gemm/MatMul with constant weights "
                          "on flattened features", pre)
        if w.shape[0] != shape[0]:
            raise _refuse(node, f"expects {w.shape[0]} features, gets {shape[0]}", "check the ANN", pre)
        w = np.asarray(w, np.float64).T
        return [_Op("affine", node, varying, node.output[0], (w.shape[0],),
                    {"weight": w, "bias": np.zeros(w.shape[0])})]

    def _per_sample(self, node, value, shape, pre):
        """A constant operand broadcast to one sample's shape (its batch axis, if any, of size 1)."""
        value = np.asarray(value, np.float64)
        try:
            full = np.broadcast_to(value, (1,) + tuple(shape)) if value.ndim > len(shape) else \
                np.broadcast_to(value, tuple(shape))
        except ValueError:
            raise _refuse(node, f"a constant of shape {list(value.shape)} does not fit {list(shape)}",
                          "check the ANN", pre) from None
        return np.array(full.reshape(shape), np.float64)

    def _elementwise(self, node, varying, shape, pre):
        """(the constant operand or None, position of the varying one) of Add/Sub/Mul/Div."""
        if len(varying) == 2:
            if self.shapes.get(varying[1]) != shape:
                raise _refuse(node, f"adds tensors of shapes {list(shape)} and {list(self.shapes.get(varying[1]))}",
                              "add tensors of one shape", pre)
            return None, 0
        first = node.input[0] == varying[0]
        other = self.g.const.get(node.input[1 if first else 0])
        if other is None:
            raise _refuse(node, "an operand is neither constant nor reached", "convert the ANN again", pre)
        return self._per_sample(node, other, shape, pre), 0 if first else 1

    def _parse_add(self, node, varying, shape, pre, sign=1.0):
        const, position = self._elementwise(node, varying, shape, pre)
        if const is None:
            return [_Op("add", node, varying, node.output[0], shape, {"signs": [1.0, sign]})]
        if sign < 0 and position == 1:
            raise _refuse(node, "subtracts a time-varying tensor from a constant", "write it as an Add of a "
                          "negated layer in the ANN", pre)
        return [_Op("bias", node, varying, node.output[0], shape, {"value": sign * const})]

    def _parse_sub(self, node, varying, shape, pre):
        return self._parse_add(node, varying, shape, pre, sign=-1.0)

    def _parse_mul(self, node, varying, shape, pre, invert=False):
        if len(varying) == 2:
            raise _refuse(node, "multiplies two time-varying tensors", "convert an ANN whose layers are linear "
                          "between activations", pre)
        const, position = self._elementwise(node, varying, shape, pre)
        if invert and position == 1:
            raise _refuse(node, "divides by a time-varying tensor", "convert an ANN whose layers are linear "
                          "between activations", pre)
        with np.errstate(divide="ignore"):
            factor = 1.0 / const if invert else const
        if not np.all(np.isfinite(factor)):
            raise _refuse(node, "divides by zero", "check the ANN", pre)
        return [_Op("scale", node, varying, node.output[0], shape, {"factor": factor})]

    def _parse_div(self, node, varying, shape, pre):
        return self._parse_mul(node, varying, shape, pre, invert=True)

    def _parse_batchnormalization(self, node, varying, shape, pre):
        consts = [self._const(node, i) for i in range(1, 5)]
        if any(c is None for c in consts) or len(shape) < 1:
            raise _refuse(node, "its statistics are not constants (training mode?)", "export the ANN in "
                          "inference mode", pre)
        gamma, beta, mean, var = (np.asarray(c, np.float64).reshape(-1) for c in consts)
        eps = float(_attrs(node).get("epsilon", 1e-5))
        a = gamma / np.sqrt(var + eps)
        channel = [shape[0]] + [1] * (len(shape) - 1)
        scaled = f"{node.output[0]}#scaled"
        return [_Op("scale", node, varying, scaled, shape,
                    {"factor": np.broadcast_to(a.reshape(channel), shape).astype(np.float64)}),
                _Op("bias", node, [scaled], node.output[0], shape,
                    {"value": np.broadcast_to((beta - mean * a).reshape(channel), shape).astype(np.float64)})]

    def _parse_averagepool(self, node, varying, shape, pre):
        a = _attrs(node)
        kernel = list(a.get("kernel_shape", []))
        strides = list(a.get("strides", [1] * len(kernel)))
        pads = list(a.get("pads", [0] * 2 * len(kernel)))
        if len(kernel) != 2 or len(shape) != 3:
            raise _refuse(node, "not a 2-D pool", "use 2-D average pooling", pre)
        if _text(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID") or int(a.get("ceil_mode", 0)) \
                or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _refuse(node, "auto_pad, ceil_mode or dilations", "pool with explicit pads, floor mode", pre)
        if pads[:2] != pads[2:] or (any(pads) and not int(a.get("count_include_pad", 0))):
            raise _refuse(node, "padded windows divide by fewer than k² (count_include_pad = 0) or pads are "
                          "asymmetric, so the pool is not one sum scaled by 1/k²", "pool without padding", pre)
        out = [(shape[1 + i] + 2 * pads[i] - kernel[i]) // strides[i] + 1 for i in range(2)]
        return [_Op("pool", node, varying, node.output[0], (shape[0], *out),
                    {"kernel": tuple(kernel), "stride": tuple(strides), "padding": tuple(pads[:2])})]

    def _parse_globalaveragepool(self, node, varying, shape, pre):
        if len(shape) != 3:
            raise _refuse(node, "not a 2-D pool", "use 2-D average pooling", pre)
        return [_Op("pool", node, varying, node.output[0], (shape[0], 1, 1),
                    {"kernel": tuple(shape[1:]), "stride": tuple(shape[1:]), "padding": (0, 0)})]

    def _parse_flatten(self, node, varying, shape, pre):
        axis = int(_attrs(node).get("axis", 1))
        if axis not in (1, 1 - (len(shape) + 1)):
            raise _refuse(node, f"flattens from axis {axis} (with the batch)", "flatten from axis 1", pre)
        return [self._flat(node, varying, shape)]

    def _flat(self, node, varying, shape) -> _Op:
        size = (int(np.prod(shape)),)
        return _Op("identity" if len(shape) == 1 else "flatten", node, varying, node.output[0], size)

    def _parse_reshape(self, node, varying, shape, pre):
        target = self._const(node, 1)
        if target is None:
            raise _refuse(node, "its shape is computed, not constant", "export the ANN with a constant shape "
                          "(or a Flatten)", pre)
        target = [int(d) for d in np.asarray(target).reshape(-1)]
        count = int(np.prod(shape))
        rest = [shape[i - 1] if d == 0 and 0 < i <= len(shape) else d for i, d in enumerate(target)][1:]
        if target and target[0] != -1 and -1 in rest:
            known = int(np.prod([d for d in rest if d != -1]))
            rest = [count // known if d == -1 else d for d in rest]
        if int(np.prod(rest)) != count or any(d < 1 for d in rest):
            raise _refuse(node, f"reshapes {list(shape)} to {target} across the batch", "reshape per sample", pre)
        if tuple(rest) == tuple(shape):
            return [_Op("identity", node, varying, node.output[0], shape)]
        if len(rest) == 1:
            return [self._flat(node, varying, shape)]
        raise _refuse(node, f"reshapes {list(shape)} to {list(rest)}; NIR 1.0 only flattens",
                      "flatten instead (or keep the shape)", pre)

    # ---- the scale each tensor should have (backwards) ----------------------------------------
    def _wanted_scales(self) -> dict:
        """tensor -> the scale its producer should give it: θ in front of a neuron, 1 at a readout,
        carried back through sums, pools, reshapes and constant factors. Only through tensors read
        once: a layer whose output has other readers keeps scale 1."""
        wanted = {}

        def want(t, scale):
            if self.consumers[t] == 1 and t not in wanted:
                wanted[t] = np.asarray(scale, np.float64)

        for op in reversed(self.ops):
            if op.kind == "neuron":
                want(op.inputs[0], op.params["theta_full"])
            elif op.kind == "output":
                want(op.inputs[0], np.ones(op.shape))
            d = wanted.get(op.output)
            if d is None:
                continue
            if op.kind in ("identity", "bias"):
                want(op.inputs[0], d)
            elif op.kind == "add":
                for t, sign in zip(op.inputs, op.params["signs"]):
                    want(t, d * sign)
            elif op.kind == "scale" and np.all(op.params["factor"] != 0):
                want(op.inputs[0], d / op.params["factor"])
            elif op.kind == "flatten":
                want(op.inputs[0], d.reshape(self.shapes[op.inputs[0]]))
            elif op.kind == "pool":
                per = _per_channel(d)
                if per is not None:
                    k = float(np.prod(op.params["kernel"]))
                    want(op.inputs[0], np.broadcast_to(_channels(per * k, len(op.shape)), self.shapes[op.inputs[0]]))
        return wanted

    # ---- building the NIR graph (forwards) ----------------------------------------------------
    def _name(self, base: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", base).strip("_.") or "node"
        unique, k = name, 1
        while unique in self.used:
            k += 1
            unique = f"{name}_{k}"
        self.used.add(unique)
        return unique

    def _add(self, base: str, node, sources) -> str:
        name = self._name(base)
        self.nodes[name] = node
        self.edges.extend((s, name) for s in sources)
        return name

    def _set(self, tensor: str, terms) -> None:
        """The tensor's terms; read more than once, none of them can take a bias any more."""
        if self.consumers[tensor] != 1:
            terms = [_Term(t.node, t.scale) for t in terms]
        self.signals[tensor] = terms

    def _scaled(self, term: _Term, factor: np.ndarray, why: str) -> str:
        """A node giving factor * the term's NIR value: the term itself when the factor is 1,
        else an nir.Scale (one per term and factor)."""
        if _same(factor, np.ones_like(factor)):
            return term.node
        key = (term.node, factor.astype(np.float32).tobytes())
        if key not in self._scale_cache:
            node = self.nir.Scale(scale=factor.astype(np.float32), metadata={"purpose": why})
            self._scale_cache[key] = self._add(f"{term.node}.scale", node, [term.node])
            self.scale_nodes.append({"node": self._scale_cache[key], "after": term.node, "purpose": why})
        return self._scale_cache[key]

    def _merge(self, terms, per_channel: bool, why: str):
        """(NIR sources, common scale): the terms brought to one scale, per channel if asked
        (what a layer or pool can absorb): the first term's when it suits them all, else 1."""
        common = terms[0].scale
        if (per_channel and _per_channel(common) is None) or any(np.any((common == 0) & (t.scale != 0))
                                                                 for t in terms):
            common = np.ones_like(common)
        return [self._scaled(t, _factor(t.scale, common), why) for t in terms], common

    def _emit(self, op: _Op) -> None:
        getattr(self, f"_emit_{op.kind}")(op)

    def _emit_input(self, op):
        node = self.nir.Input(input_type={"input": np.array(op.shape)},
                              metadata={"onnx_tensor": op.params["source"]})
        name = self._add(op.params["source"], node, [])
        self.inputs.append({"node": name, "onnx_tensor": op.params["source"], "shape": list(op.shape)})
        self._set(op.output, [_Term(name, np.ones(op.shape))])

    def _emit_identity(self, op):
        self._set(op.output, self.signals[op.inputs[0]])

    def _emit_add(self, op):
        terms = [_Term(t.node, t.scale * sign, t.layer)
                 for x, sign in zip(op.inputs, op.params["signs"]) for t in self.signals[x]]
        self._set(op.output, terms)

    def _emit_scale(self, op):
        """A constant factor goes into the scale; where it is 0 the NIR value is zeroed too (a scale
        of 0 always means a NIR value of 0: the channels of silent neurons)."""
        factor = op.params["factor"]
        terms = self.signals[op.inputs[0]]
        if np.any(factor == 0):
            keep = (factor != 0).astype(np.float64)
            terms = [_Term(self._scaled(t, keep, f"zero factor of {op.node.name}"), t.scale) for t in terms]
        self._set(op.output, [_Term(t.node, t.scale * factor, t.layer) for t in terms])

    def _emit_bias(self, op):
        """A constant current: into the bias of a layer whose output only this tensor carries."""
        terms = self.signals[op.inputs[0]]
        value = op.params["value"]
        for term in terms:
            layer = term.layer
            if layer is None:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                nir_value = np.where(term.scale != 0, value / term.scale, 0.0)
            per = nir_value if layer.kind == "affine" else _per_channel(nir_value)
            if per is None:
                continue
            layer.bias = layer.bias + per
            self._set(op.output, terms)
            return
        raise _refuse(op.node, "a constant current with no layer in front to carry it as a bias (NIR has no "
                      "bias-only node)", "give the ANN's layer in front of it a bias instead", op.pre)

    def _emit_conv(self, op):
        p = op.params
        sources, s_in = self._merge(self.signals[op.inputs[0]], True, f"input scale of {op.node.name}")
        s_in = _per_channel(s_in)
        weight = p["weight"]
        group_in = weight.shape[1]
        per_out = weight.shape[0] // p["groups"]
        in_channel = np.arange(weight.shape[0])[:, None] // per_out * group_in + np.arange(group_in)[None, :]
        s_out = self._out_scale(op)
        weight = weight * s_in[in_channel][:, :, None, None]
        layer = self._layer(op, "conv", weight, p["bias"], s_out, sources)
        self._set(op.output, [_Term(layer.name, np.broadcast_to(_channels(s_out, 3), op.shape).copy(), layer)])

    def _emit_affine(self, op):
        sources, s_in = self._merge(self.signals[op.inputs[0]], False, f"input scale of {op.node.name}")
        s_out = self._out_scale(op)
        layer = self._layer(op, "affine", op.params["weight"] * s_in[None, :], op.params["bias"], s_out, sources)
        self._set(op.output, [_Term(layer.name, s_out.copy(), layer)])

    def _out_scale(self, op) -> np.ndarray:
        """Per output channel: the scale wanted downstream when it is one per channel, else 1."""
        wanted = self.wanted.get(op.output)
        per = None if wanted is None else _per_channel(wanted)
        return np.ones(op.shape[0]) if per is None else per

    def _layer(self, op, kind, weight, bias, s_out, sources) -> _Layer:
        """Rows divided by the output scale (0 where it is 0: a channel feeding a silent neuron)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(s_out != 0, 1.0 / s_out, 0.0)
        weight = weight * inv.reshape([-1] + [1] * (weight.ndim - 1))
        name = self._add(op.node.name or op.node.op_type, None, sources)
        params = {k: v for k, v in op.params.items() if k not in ("weight", "bias")}
        layer = _Layer(name, kind, weight, bias * inv, params, op.node.name)
        self.layers.append(layer)
        return layer

    def _emit_pool(self, op):
        p = op.params
        sources, s_in = self._merge(self.signals[op.inputs[0]], True, f"input scale of {op.node.name}")
        node = self.nir.SumPool2d(kernel_size=np.array(p["kernel"]), stride=np.array(p["stride"]),
                                  padding=np.array(p["padding"]), metadata={"onnx_node": op.node.name})
        name = self._add(op.node.name or "pool", node, sources)
        s_out = _per_channel(s_in) / float(np.prod(p["kernel"]))
        self._set(op.output, [_Term(name, np.broadcast_to(_channels(s_out, 3), op.shape).copy())])

    def _emit_flatten(self, op):
        sources, s_in = self._merge(self.signals[op.inputs[0]], False, f"input scale of {op.node.name}")
        in_shape = self.shapes[op.inputs[0]]
        node = self.nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1,
                                metadata={"onnx_node": op.node.name})
        name = self._add(op.node.name or "flatten", node, sources)
        self._set(op.output, [_Term(name, s_in.reshape(op.shape))])

    def _emit_neuron(self, op):
        p = op.params
        theta = p["theta_full"].astype(np.float64)
        sources = [self._scaled(t, _factor(t.scale, theta), f"threshold of {op.node.name}")
                   for t in self.signals[op.inputs[0]]]
        with np.errstate(divide="ignore", invalid="ignore"):
            v0 = np.where(p["theta_full"] != 0, p["start"] / p["theta_full"], np.float32(0)).astype(np.float32)
        meta = {"onnx_node": op.node.name, "source": p["source"], "reset": RESET, "firing": FIRING, "v0": v0,
                "theta": p["theta"], "channel_axis": p["axis"]}
        node = self.nir.IF(r=np.ones(op.shape, np.float32), v_threshold=np.ones(op.shape, np.float32),
                           v_reset=np.zeros(op.shape, np.float32), metadata=meta)
        name = self._add(op.node.name, node, sources)
        self.neurons[name] = {"onnx_node": op.node.name, "source": p["source"], "shape": list(op.shape),
                              "inputs": len(sources)}
        self._set(op.output, [_Term(name, theta.copy())])

    def _emit_output(self, op):
        steps = op.inputs[0]
        sources = [self._scaled(t, _factor(t.scale, np.ones_like(t.scale)), f"readout of {steps} in ONNX units")
                   for t in self.signals[steps]]
        node = self.nir.Output(output_type={"output": np.array(op.shape)},
                               metadata={"onnx_steps": steps, "onnx_mean": op.output})
        self._add(f"readout.{steps}", node, sources)

    # ---- the result ---------------------------------------------------------------------------
    def result(self):
        nir, info, plan, g = self.nir, self.info, self.plan, self.g
        for layer in self.layers:
            meta = {"onnx_node": layer.onnx_node}
            weight, bias = layer.weight.astype(np.float32), layer.bias.astype(np.float32)
            if layer.kind == "conv":
                p = layer.params
                node = nir.Conv2d(input_shape=p["input_shape"], weight=weight, stride=p["stride"],
                                  padding=p["padding"], dilation=p["dilation"], groups=p["groups"], bias=bias,
                                  metadata=meta)
            elif np.any(bias != 0):
                node = nir.Affine(weight=weight, bias=bias, metadata=meta)
            else:
                node = nir.Linear(weight=weight, metadata=meta)
            self.nodes[layer.name] = node
        translated = set(plan.spiking) | (set(plan.pre) if self.direct else set())
        host = []
        for i, node in enumerate(g.nodes):
            if i in translated or i in plan.plumbing or node.op_type == "Constant":
                continue
            host.append({"node": node.name, "op": node.op_type, "when": "after" if i in plan.after else "before"})
        readout = [{"output": name, "steps": n.metadata["onnx_steps"], "mean": n.metadata["onnx_mean"],
                    "averaged_steps": [info.delay + 1, info.timesteps],
                    "shape": [int(d) for d in n.output_type["output"]]}
                   for name, n in self.nodes.items() if isinstance(n, nir.Output)]
        coding = "direct" if self.direct else "current"
        meta = {
            "producer": f"onnx2snn {__version__}", "timesteps": int(info.timesteps), "delay": int(info.delay),
            "time": "discrete: one NIR step is one SNN step; IF (r=1) integrates v[t] = v[t-1] + I[t], I[t] the "
                    "sum of the edges converging on it from the same step (no synaptic delay)",
            "reset": RESET, "firing": FIRING,
            "initial_potential": "each IF's metadata 'v0' (threshold units): NIR's IF has no initial state",
            "thresholds": "folded into the weights (v_threshold = 1); each IF's metadata 'theta' has the "
                          "original per-channel thresholds",
            "input_coding": coding,
            "input_coding_note": ("the image is fed unchanged at every step" if self.direct else
                                  "the graph inputs are the currents onnx2snn repeats over the steps; the nodes "
                                  "before them run once per sample on the host (" + self.why + ")"),
            "readout": json.dumps(readout), "host": json.dumps(host),
        }
        try:
            graph = nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=meta, type_check=True)
            graph.check_types()
        except (ValueError, AssertionError, TypeError) as err:
            raise InternalError(f"{_WHERE}: NIR's type check refused the exported graph ({err})") from None
        out = {"timesteps": int(info.timesteps), "delay": int(info.delay), "input_coding": coding,
               "host_inputs_reason": None if self.direct else self.why, "inputs": self.inputs,
               "readout": readout, "host": host, "neurons": self.neurons, "scale_nodes": self.scale_nodes,
               "reset": RESET, "firing": FIRING}
        return graph, out


def _same(a, b) -> bool:
    """Equal scales up to float64 rounding of their products and quotients."""
    return a.shape == b.shape and bool(np.all((a == 0) == (b == 0))) and np.allclose(a, b, rtol=1e-12, atol=0)


def _factor(scale: np.ndarray, target: np.ndarray) -> np.ndarray:
    """What turns a term's NIR value into the ONNX value divided by `target`: scale / target; 0
    where the target is 0 (a silent neuron's channel), 1 where the term's scale is 0 (its NIR
    value is 0 there already)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(target != 0, scale / target, 0.0)
    return np.where(scale == 0, 1.0, factor)


def _per_channel(scale: np.ndarray):
    """The one value per channel (axis 0) of a scale that is uniform over the other axes, or None."""
    if scale.ndim <= 1:
        return np.asarray(scale, np.float64).reshape(-1)
    flat = scale.reshape(scale.shape[0], -1)
    return flat[:, 0].astype(np.float64) if np.all(flat == flat[:, :1]) else None


def _channels(per: np.ndarray, rank: int) -> np.ndarray:
    return per.reshape([-1] + [1] * (rank - 1))
