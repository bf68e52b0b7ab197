"""onnxruntime's blocked channel layout for the onnx2snn operators (CPU sessions).

onnxruntime's CPU provider runs convolutions and pools in a blocked channel layout (NCHWc: the
channels in blocks of MLAS's block size for this CPU, 8 or 16, innermost) and converts a tensor back
to NCHW before an operator it does not know — IFNeuron, ReLUXProbe — and forward again after it: two
full copies of every neuron's or probe's tensor. `blocked` lets onnxruntime optimize the graph for
this machine, then has the neurons and probes read and write the blocked layout themselves
(attributes channel_block and channels) and drops the copies between them:

    Conv -> ReorderOutput -> IFNeuron -> ReorderInput -> Conv   becomes   Conv -> IFNeuron -> Conv

and a residual Add feeding a neuron runs on the blocked tensors too. The copies dropped are exact,
so the outputs stay bit-identical. The result holds weights reordered for this CPU's block size and
is only for this machine (as any model onnxruntime saves at its highest optimization level), so it
is never written to a file: `runtime.session` makes it in memory when the session is created.
"""
from __future__ import annotations

import copy
import functools
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..graph.onnx_io import all_graphs, onnxruntime_logging, subgraphs
from ..ops.neuron import DOMAIN, STATES

NCHWC = "com.microsoft.nchwc"
_OURS = ("IFNeuron", "ReLUXProbe", "SpikingMaxPool")
_MAX_BYTES = 1 << 30      # larger models keep onnxruntime's own layout (no in-memory copy)


@functools.lru_cache(maxsize=None)
def block_size() -> int:
    """MLAS's channel block on this CPU, read from how onnxruntime lays out a one-filter Conv
    (its filter is padded to one block); 0 when onnxruntime does not use the blocked layout."""
    w = numpy_helper.from_array(np.ones((1, 8, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "probe",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    optimized = _optimize(model.SerializeToString(), None)
    sizes = [init.dims[0] for node in optimized.graph.node if node.domain == NCHWC and node.op_type == "Conv"
             for init in optimized.graph.initializer if init.name == node.input[1]]
    return int(sizes[0]) if sizes else 0


def _optimize(model_bytes: bytes, library: str | None) -> onnx.ModelProto:
    """The graph onnxruntime runs on this CPU (all optimizations, the NCHWc layout included)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = onnxruntime_logging()
    if library:
        opts.register_custom_ops_library(library)
    with tempfile.TemporaryDirectory(prefix="onnx2snn-layout-") as tmp:
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


def blocked(model: onnx.ModelProto, library: str, shapes: dict | None = None) -> onnx.ModelProto | None:
    """`model` as onnxruntime optimizes it for this CPU, with the neurons and probes working in the
    blocked layout; None when nothing would change (no blocked layout here, no neuron next to a
    convolution, or a model too large to copy in memory)."""
    b = block_size()
    if not b or model.ByteSize() > _MAX_BYTES:
        return None
    shapes = static_shapes(model) if shapes is None else shapes
    try:
        optimized = _optimize(model.SerializeToString(), library)
    except Exception:   # noqa: BLE001 - the caller's own session reports what is wrong
        return None
    _unique_names(optimized.graph)
    if not _Rewrite(b, shapes).graph(optimized.graph):
        return None
    for graph in all_graphs(optimized.graph):
        _depth_first_order(graph)
    return optimized


def _depth_first_order(graph: onnx.GraphProto) -> None:
    """Reorder the nodes so that each runs as soon after its inputs' producers as possible (a
    topological order taking the most recently readied node first). onnxruntime's saved graph lists
    nodes in its own order, which can leave an evaluation graph's side branches (spike counts off
    every neuron) for the end and every neuron's T*N rows alive until then; sessions with
    priority-based execution follow this order."""
    produced = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    waiting = [0] * len(graph.node)
    readers = [[] for _ in graph.node]
    for i, node in enumerate(graph.node):
        inner = {name for sub in subgraphs(node) for g in all_graphs(sub) for n in g.node for name in n.input}
        sources = {produced[name] for name in set(node.input) | inner if name in produced and produced[name] != i}
        waiting[i] = len(sources)
        for j in sources:
            readers[j].append(i)
    ready = [i for i in reversed(range(len(graph.node))) if waiting[i] == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in reversed(readers[i]):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(order) != len(graph.node):
        return        # not a DAG as listed (should not happen): keep onnxruntime's order
    nodes = [graph.node[i] for i in order]
    graph.ClearField("node")
    graph.node.extend(nodes)


def _unique_names(main: onnx.GraphProto) -> None:
    """onnxruntime names what it adds (reorder_token_0, reorder, ...) per graph, so a Loop body
    can define a name its outer graph defines too, and the saved model fails onnxruntime's own
    single-assignment check: a body's clashing definitions are renamed within the body."""
    seen = set()
    for index, graph in enumerate(all_graphs(main)):
        defined = ({n for node in graph.node for n in node.output if n} | {i.name for i in graph.initializer}
                   | {i.name for i in graph.input})
        clash = {name: f"{name}@{index}" for name in defined & seen} if index else {}
        if clash:
            for node in (n for g in all_graphs(graph) for n in g.node):
                node.input[:] = [clash.get(n, n) for n in node.input]
            for node in graph.node:
                node.output[:] = [clash.get(n, n) for n in node.output]
            for item in list(graph.initializer) + list(graph.input) + list(graph.output) + list(graph.value_info):
                item.name = clash.get(item.name, item.name)
        seen |= {clash.get(n, n) for n in defined}


def static_shapes(model: onnx.ModelProto) -> dict:
    """Shapes of the model's tensors (every graph; None for unknown dims) from ONNX shape inference,
    with IFNeuron and ReLUXProbe read as Identity (their outputs have their input's shape apart from
    the batch) and EventConv as Conv."""
    shadow = copy.deepcopy(model)
    for node in (n for g in all_graphs(shadow.graph) for n in g.node):
        if node.domain == DOMAIN and node.op_type == "EventConv":
            node.op_type, node.domain = "Conv", ""
        elif node.domain == DOMAIN:
            node.op_type, node.domain = "Identity", ""
            del node.input[1:], node.output[1:], node.attribute[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(shadow, data_prop=True)
    except Exception:   # noqa: BLE001 - without shapes only the Add rule is skipped
        return {}
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for g in all_graphs(inferred.graph) for v in list(g.value_info) + list(g.output) + list(g.input)}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _reorderable(channels: int) -> bool:
    """Whether onnxruntime's ReorderInput takes a tensor of `channels` channels (it needs a
    multiple of 4)."""
    return channels % 4 == 0


class _Rewrite:
    """One pass over a graph in its (topological) order; see the module docstring."""

    def __init__(self, block: int, shapes: dict):
        self.b, self.shapes = block, shapes
        self.changed = False
        self.carried = {}          # in a Loop body: carried state input -> (index, matching body output)
        self.blocked_states = {}   # in a Loop body: index of a state now kept blocked -> channels

    def graph(self, graph: onnx.GraphProto, outer: dict | None = None) -> bool:
        """`outer`: the blocked copies known in the enclosing graph (visible in a Loop body)."""
        self.inits = {i.name: i for i in graph.initializer}
        equiv = dict(outer or {})   # NCHW tensor -> (the same tensor blocked, real channel count)
        rename = {}    # a dropped ReorderInput's output -> the blocked tensor it equals
        self.users = users = self._users(graph)
        kept = []
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
            if node.op_type == "Loop" and node.domain in ("", "ai.onnx"):
                self._rename_inside(subgraphs(node)[0], rename)
                kept += self._loop(node, equiv)
                self.users, self.inits = users, {i.name: i for i in graph.initializer}
                continue
            for sub in subgraphs(node):
                self._rename_inside(sub, rename)
                self.graph(sub)
                self.inits = {i.name: i for i in graph.initializer}
                self.users = users
            if node.domain == NCHWC and node.op_type == "ReorderOutput" and not _attr(node, "channels_last", 0):
                equiv[node.output[0]] = (node.input[0], int(_attr(node, "channels")))
            elif (node.domain == NCHWC and node.op_type == "ReorderInput" and node.input[0] in equiv
                  and not _attr(node, "channels_last", 0) and node.output[0] not in self._outputs(graph)):
                rename[node.output[0]] = equiv[node.input[0]][0]
                self.changed = True
                continue
            elif node.domain == DOMAIN and node.op_type in _OURS and self._neuron_fits(node, equiv, graph):
                kept += self._blocked_op(node, equiv, graph)
                continue
            elif node.op_type == "Add" and node.domain == "" and self._add_fits(node, equiv, users):
                kept += self._blocked_add(node, equiv)
                continue
            kept.append(node)
        graph.ClearField("node")
        graph.node.extend(kept)
        self._drop_unused_reorders(graph)
        return self.changed

    # ---- rules ---------------------------------------------------------------------------------
    def _rank4(self, name) -> bool:
        shape = self.shapes.get(name)
        return shape is not None and len(shape) == 4

    def _neuron_fits(self, node, equiv, graph) -> bool:
        x = node.input[0]
        if x not in equiv or not self._rank4(x) or _attr(node, "axis", 1) not in (1, -3):
            return False
        pairs = [(node.input[i] if len(node.input) > i else "", node.output[o] if len(node.output) > o else "")
                 for i, o in STATES.get(node.op_type, [])]
        pairs = [pair for pair in pairs if any(pair)]
        if pairs and not all(self._state_fits(a, b, equiv[x][1], node, dry=True) for a, b in pairs):
            return False
        if node.op_type == "IFNeuron" and len(node.input) > 3 and node.input[3] and node.input[3] not in self.inits:
            if not _reorderable(equiv[x][1]):       # a computed v0 (the correction graph) is reordered in the graph
                return False
        if node.op_type == "IFNeuron" and len(node.input) > 4 and node.input[4] and node.input[4] not in equiv \
                and not _reorderable(equiv[x][1]):      # a fused residual sum that would need a ReorderInput
            return False
        for a, b in pairs:
            self._state_fits(a, b, equiv[x][1], node)
        return True

    def _state_fits(self, state_in, state_out, channels, node, dry=False) -> bool:
        """A membrane state carried by the enclosing Loop from this neuron's v_out to its v_in and
        read by nothing else can stay blocked across iterations (with no padding channels, so that its
        declared shape holds); the Loop then blocks its initial value (see _loop)."""
        k, body_out = self.carried.get(state_in, (None, None))
        if k is None or body_out != state_out or channels % self.b or self.users.get(state_in) != [node]:
            return False
        if not dry:
            self.blocked_states[k] = channels
        return True

    def _loop(self, loop, equiv) -> list:
        """Rewrites a Loop's body; the states its neurons keep blocked get their initial value
        blocked before the Loop and their final value back to NCHW after it."""
        body = subgraphs(loop)[0]
        n_carried = len(loop.input) - 2
        saved = (self.carried, self.blocked_states)
        self.carried = {body.input[2 + k].name: (k, body.output[1 + k].name) for k in range(n_carried)}
        self.blocked_states = {}
        self.graph(body, equiv)
        blocked, (self.carried, self.blocked_states) = self.blocked_states, saved
        # states with one initial value (onnxruntime merges equal zeros) share its blocked copy
        before, after, made = [], [], {}
        for k, channels in sorted(blocked.items()):
            initial = loop.input[2 + k]
            before += self._ensure_blocked(initial, channels, made)
            loop.input[2 + k] = initial + "/blocked"
            final = loop.output[k]
            loop.output[k] = final + "/blocked"
            after.append(self._to_plain(loop.output[k], final, channels))
        return before + [loop] + after

    def _blocked_op(self, node, equiv, graph) -> list:
        x_blocked, channels = equiv[node.input[0]]
        out = node.output[0]
        node.input[0] = x_blocked
        made = []
        if node.op_type == "IFNeuron" and len(node.input) > 4 and node.input[4]:   # a fused residual sum
            made += self._ensure_blocked(node.input[4], channels, equiv)
            node.input[4] = equiv[node.input[4]][0]
        if node.op_type == "IFNeuron" and len(node.input) > 3 and node.input[3] in self.inits:
            node.input[3] = self._blocked_v0(node.input[3], channels, out, graph)
        elif node.op_type == "IFNeuron" and len(node.input) > 3 and node.input[3]:
            made += self._blocked_v0_nodes(node, channels, out, graph)
        node.attribute.append(helper.make_attribute("channel_block", self.b))
        if node.op_type != "SpikingMaxPool":
            node.attribute.append(helper.make_attribute("channels", channels))
        node.output[0] = out + "/blocked"
        equiv[out] = (node.output[0], channels)
        self.changed = True
        return made + [node, self._to_plain(node.output[0], out, channels)]

    @staticmethod
    def _ensure_blocked(name, channels, equiv) -> list:
        """[] if `name` has a blocked copy already, else the ReorderInput making it."""
        if name in equiv:
            return []
        blocked_name = name + "/blocked"
        equiv[name] = (blocked_name, channels)
        return [helper.make_node("ReorderInput", [name], [blocked_name], domain=NCHWC, name=blocked_name + "/reorder",
                                 channels_last=0)]

    @staticmethod
    def _blocked_v0_nodes(node, channels, out, graph) -> list:
        """Nodes putting a computed per-neuron initial potential ([C*H*W], NCHW order) in the blocked
        order, as _blocked_v0 does for a constant one (ReorderInput zero-fills padding channels). It
        is viewed as [1, C, H*W, 1]: the blocked order of [C, H, W] and of [C, H*W, 1] is the same."""
        shape = numpy_helper.from_array(np.array([1, channels, -1, 1], np.int64), out + "/v0_shape")
        flat = numpy_helper.from_array(np.array([-1], np.int64), out + "/v0_flat")
        graph.initializer.extend([shape, flat])
        v0, made = node.input[3], out + "/v0_blocked"
        node.input[3] = made
        return [helper.make_node("Reshape", [v0, shape.name], [out + "/v0_nchw"], name=out + "/v0_nchw"),
                helper.make_node("ReorderInput", [out + "/v0_nchw"], [made + "_4d"], domain=NCHWC,
                                 name=made + "/reorder", channels_last=0),
                helper.make_node("Reshape", [made + "_4d", flat.name], [made], name=made)]

    def _blocked_v0(self, name, channels, out, graph) -> str:
        """The per-neuron initial potential in the blocked order, zero on padding channels."""
        v0 = numpy_helper.to_array(self.inits[name]).reshape(-1)
        if v0.size == 1:
            return name
        padded = -(-channels // self.b) * self.b
        spatial = v0.size // channels
        grid = np.zeros((padded, spatial), np.float32)
        grid[:channels] = v0.reshape(channels, spatial)
        blocked_v0 = grid.reshape(padded // self.b, self.b, spatial).transpose(0, 2, 1).reshape(-1)
        init = numpy_helper.from_array(np.ascontiguousarray(blocked_v0), out + "/v0_blocked")
        graph.initializer.append(init)
        self.inits[init.name] = init
        return init.name

    def _add_fits(self, node, equiv, users) -> bool:
        if len(node.input) != 2 or not any(i in equiv for i in node.input):
            return False
        shapes = [self.shapes.get(i) for i in node.input]
        if not all(s is not None and len(s) == 4 and None not in s[1:] for s in shapes) or shapes[0][1:] != shapes[1][1:]:
            return False
        channels = {equiv[i][1] for i in node.input if i in equiv}
        if len(channels) != 1 or shapes[0][1] not in channels:
            return False
        if not all(i in equiv or _reorderable(shapes[0][1]) for i in node.input):
            return False
        # worth it when what reads the sum takes the blocked layout (else two copies replace one)
        return any(u.domain == DOMAIN and u.op_type in _OURS or u.op_type == "ReorderInput"
                   for u in users.get(node.output[0], []))

    def _blocked_add(self, node, equiv) -> list:
        channels = next(equiv[i][1] for i in node.input if i in equiv)
        made = []
        for k, name in enumerate(node.input):
            made += self._ensure_blocked(name, channels, equiv)
            node.input[k] = equiv[name][0]
        out = node.output[0]
        node.output[0] = out + "/blocked"
        equiv[out] = (node.output[0], channels)
        self.changed = True
        return made + [node, self._to_plain(node.output[0], out, channels)]

    @staticmethod
    def _to_plain(blocked_name, name, channels):
        """NCHW copy for readers that need it; dropped later when nothing reads it."""
        return helper.make_node("ReorderOutput", [blocked_name], [name], domain=NCHWC, name=name + "/plain",
                                channels=channels, channels_last=0)

    # ---- bookkeeping ---------------------------------------------------------------------------
    @staticmethod
    def _outputs(graph) -> set:
        return {o.name for o in graph.output}

    @staticmethod
    def _users(graph) -> dict:
        users = {}
        for node in graph.node:
            for name in node.input:
                users.setdefault(name, []).append(node)
        return users

    @staticmethod
    def _rename_inside(graph, rename):
        for node in (n for g in all_graphs(graph) for n in g.node):
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]

    @staticmethod
    def _drop_unused_reorders(graph):
        read = {o.name for o in graph.output} | {i for g in all_graphs(graph) for n in g.node for i in n.input}
        keep = [n for n in graph.node
                if not (n.domain == NCHWC and n.op_type == "ReorderOutput" and n.output[0] not in read)]
        graph.ClearField("node")
        graph.node.extend(keep)
