"""A NumPy discrete-time simulation of a NIR graph exported by to_nir (the oracle the tests hold
the export to: its readout must equal onnxruntime's run of the SNN).

Each step runs every node once in topological order; a node's input is the float32 sum of the
outputs of the nodes with an edge into it at the same step (NIR sums converging edges; there is
no synaptic delay), an Input node's output is the given input at every step. nir.IF integrates
v <- v + r * I, fires where the metadata's firing condition holds ("v > v_threshold", or
"v >= v_threshold"), then resets by subtracting v_threshold ("subtract", what onnx2snn's neuron
does) or to v_reset (NIR's own reset); it starts from its metadata's "v0" (0 without one). The
graph's metadata gives the defaults of reset and firing; an IF's own metadata overrides them.

The arithmetic is float32 in the order of onnx2snn's neuron (neuron.py), so with the exported
weights the spike trains are those of the SNN wherever the folding of the thresholds is exact
(see export.py, "Rounding"). Recurrent edges (cycles) are not simulated.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..errors import UserError
from .export import FIRING, RESET, load_nir

_WHERE = "run_nir"


def run_nir(graph, inputs, T: int | None = None, D: int | None = None) -> dict:
    """Simulate `graph` for T steps on `inputs` ([N, ...] for a graph with one Input, or a dict
    Input name -> [N, ...]) and average its outputs over steps D+1..T.

    T and D default to the graph's metadata ("timesteps", "delay"). Returns {"readout": {Output
    name: float32 [N, ...]}, "spike_counts": {IF name: int64 [N, ...] spikes over all T steps},
    "timesteps": T, "delay": D}."""
    nir = load_nir()
    meta = graph.metadata or {}
    T = int(meta["timesteps"]) if T is None else int(T)
    D = int(meta.get("delay", 0)) if D is None else int(D)
    if T < 1 or not 0 <= D < T:
        raise UserError(f"{_WHERE}: need T >= 1 and 0 <= D < T (got T={T}, D={D})")
    feeds = _feeds(graph, nir, inputs)
    n = next(iter(feeds.values())).shape[0]
    order = node_order(graph)
    sources = defaultdict(list)
    for src, dst in graph.edges:
        sources[dst].append(src)
    neurons = {name: _Neuron(name, node, meta, n) for name, node in graph.nodes.items() if isinstance(node, nir.IF)}
    outputs = [name for name, node in graph.nodes.items() if isinstance(node, nir.Output)]
    sums = {name: None for name in outputs}
    for t in range(T):
        values = {}
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                values[name] = feeds[name]
                continue
            if not sources[name]:
                raise UserError(f"{_WHERE}: node '{name}' has no input edge")
            x = values[sources[name][0]]
            for src in sources[name][1:]:
                x = x + values[src]
            values[name] = neurons[name].step(x) if name in neurons else _apply(nir, name, node, x)
        if t >= D:
            for name in outputs:
                sums[name] = values[name].copy() if sums[name] is None else sums[name] + values[name]
    steps = np.float32(T - D)
    return {"readout": {name: (s / steps).astype(np.float32) for name, s in sums.items()},
            "spike_counts": {name: neuron.count for name, neuron in neurons.items()},
            "timesteps": T, "delay": D}


def _feeds(graph, nir, inputs) -> dict:
    names = [name for name, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if not names:
        raise UserError(f"{_WHERE}: the graph has no Input node")
    if not isinstance(inputs, dict):
        if len(names) != 1:
            raise UserError(f"{_WHERE}: the graph has {len(names)} inputs ({', '.join(names)}); pass a dict")
        inputs = {names[0]: inputs}
    missing = [name for name in names if name not in inputs]
    if missing:
        raise UserError(f"{_WHERE}: no data for input(s) {', '.join(missing)}")
    feeds = {}
    for name in names:
        x = np.asarray(inputs[name], np.float32)
        want = tuple(int(d) for d in graph.nodes[name].input_type["input"])
        if x.shape[1:] != want:
            raise UserError(f"{_WHERE}: input '{name}' has shape {list(x.shape)}, expected "
                            f"[N, {', '.join(map(str, want))}]")
        feeds[name] = x
    if len({x.shape[0] for x in feeds.values()}) != 1:
        raise UserError(f"{_WHERE}: the inputs have different numbers of samples")
    return feeds


def node_order(graph, where: str = _WHERE, why: str = "recurrent edges are not simulated") -> list:
    """The nodes of a NIR graph in topological order (Kahn's algorithm, ties in the graph's node
    order); a cycle is refused as `where: ... (why)`."""
    indegree = {name: 0 for name in graph.nodes}
    after = defaultdict(list)
    for src, dst in graph.edges:
        indegree[dst] += 1
        after[src].append(dst)
    ready = [name for name in graph.nodes if indegree[name] == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for nxt in after[name]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(graph.nodes):
        raise UserError(f"{where}: the graph has a cycle ({why})")
    return order


class _Neuron:
    """One nir.IF's state over the steps: potential, spike count, reset and firing rule."""

    def __init__(self, name, node, graph_meta: dict, n: int):
        meta = node.metadata or {}
        self.reset = _text(meta.get("reset", graph_meta.get("reset", "zero")))
        firing = _text(meta.get("firing", graph_meta.get("firing", FIRING)))
        if self.reset not in (RESET, "zero", "to v_reset") or firing not in (FIRING, "v >= v_threshold"):
            raise UserError(f"{_WHERE}: IF '{name}': unknown reset '{self.reset}' or firing '{firing}'")
        self.inclusive = firing == "v >= v_threshold"
        self.r = np.asarray(node.r, np.float32)
        self.threshold = np.asarray(node.v_threshold, np.float32)
        self.v_reset = np.asarray(node.v_reset, np.float32)
        shape = self.threshold.shape
        v0 = np.asarray(meta.get("v0", np.zeros(shape)), np.float32)
        self.v = np.broadcast_to(v0, (n,) + shape).astype(np.float32).copy()
        self.count = np.zeros((n,) + shape, np.int64)
        self.unit_r = bool(np.all(self.r == 1))

    def step(self, x: np.ndarray) -> np.ndarray:
        self.v = self.v + (x if self.unit_r else self.r * x)
        fired = self.v >= self.threshold if self.inclusive else self.v > self.threshold
        if self.reset == RESET:
            self.v = np.where(fired, self.v - self.threshold, self.v).astype(np.float32)
        else:
            self.v = np.where(fired, self.v_reset, self.v).astype(np.float32)
        self.count += fired
        return fired.astype(np.float32)


def _apply(nir, name, node, x):
    """One step of a stateless node on x [N, ...]."""
    if isinstance(node, nir.Output):
        return x
    if isinstance(node, nir.Affine):
        return (x @ np.asarray(node.weight, np.float32).T + np.asarray(node.bias, np.float32)).astype(np.float32)
    if isinstance(node, nir.Linear):
        return (x @ np.asarray(node.weight, np.float32).T).astype(np.float32)
    if isinstance(node, nir.Scale):
        return (x * np.asarray(node.scale, np.float32)).astype(np.float32)
    if isinstance(node, nir.Conv2d):
        return _conv2d(x, node)
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        return _pool(x, node, average=isinstance(node, nir.AvgPool2d))
    if isinstance(node, nir.Flatten):
        start, end = int(node.start_dim), int(node.end_dim)
        rank = x.ndim - 1
        end = end + rank if end < 0 else end
        return x.reshape(x.shape[:1 + start] + (-1,) + x.shape[2 + end:])
    raise UserError(f"{_WHERE}: node '{name}' ({type(node).__name__}) is not simulated here")


def _pair(value) -> tuple:
    v = np.asarray(value).reshape(-1)
    return (int(v[0]), int(v[0])) if v.size == 1 else (int(v[0]), int(v[1]))


def _conv2d(x, node):
    w = np.asarray(node.weight, np.float32)
    out_c, group_in, kh, kw = w.shape
    sh, sw = _pair(node.stride)
    dh, dw = _pair(node.dilation)
    groups = int(node.groups)
    if isinstance(node.padding, str):
        if node.padding == "valid":
            pads = ((0, 0), (0, 0))
        else:   # "same" (stride 1): PyTorch's split, the extra row/column at the end
            th, tw = dh * (kh - 1), dw * (kw - 1)
            pads = ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
    else:
        ph, pw = _pair(node.padding)
        pads = ((ph, ph), (pw, pw))
    xp = np.pad(x, ((0, 0), (0, 0)) + pads)
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    per_group = out_c // groups
    out = np.empty((x.shape[0], out_c, oh, ow), np.float32)
    for g in range(groups):
        xs = xp[:, g * group_in:(g + 1) * group_in]
        cols = np.stack([np.stack([xs[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                                   for j in range(kw)], axis=2) for i in range(kh)], axis=2)   # [N, C, kh, kw, oh, ow]
        wg = w[g * per_group:(g + 1) * per_group]
        summed = np.tensordot(cols, wg, axes=([1, 2, 3], [1, 2, 3]))      # [N, oh, ow, out channels of g]
        out[:, g * per_group:(g + 1) * per_group] = summed.transpose(0, 3, 1, 2)
    return out + np.asarray(node.bias, np.float32).reshape(1, -1, 1, 1)


def _pool(x, node, average: bool):
    kh, kw = _pair(node.kernel_size)
    sh, sw = _pair(node.stride)
    ph, pw = _pair(node.padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (xp.shape[2] - kh) // sh + 1
    ow = (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], x.shape[1], oh, ow), np.float32)
    for i in range(kh):
        for j in range(kw):
            out = out + xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
    return out / np.float32(kh * kw) if average else out


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)
