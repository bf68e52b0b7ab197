"""The NIR graph cut into Speck layers: a weight node, the IF it feeds (a residual skip from the
same source folded into its kernel), where its events come from and the pooling on the way to
the layers they go to."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..simulate import node_order
from .limits import WHERE
from .report import SpeckLayer


def pair(value) -> tuple:
    v = np.asarray(value).reshape(-1)
    return (int(v[0]), int(v[0])) if v.size == 1 else (int(v[0]), int(v[1]))


def type_name(node) -> str:
    return type(node).__name__


class SpeckGraph:
    def __init__(self, nir, graph):
        self.nir, self.g = nir, graph
        self.preds, self.succs = defaultdict(list), defaultdict(list)
        for src, dst in graph.edges:
            self.preds[dst].append(src)
            self.succs[src].append(dst)
        self.order = node_order(graph, WHERE, "Speck layers are feed-forward")

    def node(self, name):
        return self.g.nodes[name]

    def is_(self, name, *types) -> bool:
        return isinstance(self.g.nodes[name], types)

    def weight_types(self):
        return (self.nir.Conv2d, self.nir.Affine, self.nir.Linear)

    def through_flatten_back(self, name) -> str:
        """The node behind a chain of Flatten nodes (sinabs ignores Flatten)."""
        while self.is_(name, self.nir.Flatten) and len(self.preds[name]) == 1:
            name = self.preds[name][0]
        return name

    def spatial_input(self, weight: str) -> tuple:
        """(C, H, W) a weight layer reads: a Conv2d's input; an Affine's flattened map, or (N, 1, 1)."""
        node = self.node(weight)
        shape = tuple(int(d) for d in node.input_type["input"])
        if isinstance(node, self.nir.Conv2d):
            return shape
        preds = self.preds[weight]
        if len(preds) == 1 and self.is_(preds[0], self.nir.Flatten):
            inner = tuple(int(d) for d in self.node(preds[0]).input_type["input"])
            if len(inner) == 3:
                return inner
            if len(inner) == 2:
                return (1,) + inner
        return (int(np.prod(shape)), 1, 1)


def new_layer(G, index, weight, neuron) -> SpeckLayer:
    nir, node = G.nir, G.node(weight)
    in_shape = G.spatial_input(weight)
    if isinstance(node, nir.Conv2d):
        kind, kernel = "conv", tuple(int(d) for d in node.weight.shape[2:])
        stride, padding = pair(node.stride), (pair(node.padding) if not isinstance(node.padding, str)
                                               else node.padding)
        out = tuple(int(d) for d in G.node(neuron).output_type["output"])
    else:
        kind, kernel, stride, padding = "linear", tuple(in_shape[1:]), (1, 1), (0, 0)
        out = (int(node.weight.shape[0]), 1, 1)
    return SpeckLayer(index=index, op=type_name(node), weight=weight, neuron=neuron, kind=kind, kernel=kernel,
                      stride=stride, padding=padding, in_shape=in_shape, neuron_shape=out, out_shape=out, sources=[],
                      destinations=[])


def weight_of(G, name) -> np.ndarray:
    return np.asarray(G.node(name).weight, np.float64)


def bias_of(G, name) -> np.ndarray:
    node = G.node(name)
    out = node.weight.shape[0]
    bias = getattr(node, "bias", None)
    return np.zeros(out) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (out,)).copy()


def skip_fold(G, weight, neuron, others):
    """A residual skip into `neuron`: IF <- weight + Scale(c) <- u. When u is also what `weight`
    reads, the sum is one layer: c goes onto the kernel's centre tap (a 'same' convolution with
    stride 1 and as many channels in as out) or the diagonal (an Affine). Returns (fold, None) or
    (None, reason)."""
    nir = G.nir
    node = G.node(weight)
    if len(others) != 1 or not G.is_(others[0], nir.Scale) or len(G.preds[others[0]]) != 1:
        what = ", ".join(f"{type_name(G.node(o))} '{o}'" for o in others)
        return None, (f"IF '{neuron}': sums {type_name(node)} '{weight}' and {what}; a Speck core integrates only its "
                      "own weight layer's output (sinabs merges spike inputs in front of a weight layer only)")
    scale_name = others[0]
    skip_from = G.preds[scale_name][0]
    reads = [G.through_flatten_back(p) for p in G.preds[weight]]
    base = (f"Scale '{scale_name}' (the residual skip from '{skip_from}' into IF '{neuron}', its threshold ratio)")
    if reads != [skip_from]:
        return None, (f"{base}: '{weight}' reads {', '.join(repr(r) for r in reads)}, not '{skip_from}', so the skip "
                      "bypasses a weight layer; a Speck core applies one kernel to every event it receives, and "
                      "NIR's sum of two currents into one IF has no core (route the skip through its own "
                      "convolution in the ANN, or run this block on the host)")
    c = np.asarray(G.node(scale_name).scale, np.float64)
    shape = tuple(int(d) for d in G.node(neuron).output_type["output"])
    c = np.broadcast_to(c, shape)
    w = weight_of(G, weight)
    if isinstance(node, nir.Conv2d):
        flat = c.reshape(shape[0], -1)
        kh, kw = w.shape[2:]
        pads = pair(node.padding) if not isinstance(node.padding, str) else None
        ok = (np.all(flat == flat[:, :1]) and int(node.groups) == 1 and pair(node.stride) == (1, 1)
              and pair(node.dilation) == (1, 1) and kh % 2 == 1 and kw % 2 == 1
              and pads == ((kh - 1) // 2, (kw - 1) // 2) and w.shape[0] == w.shape[1])
        if not ok:
            return None, (f"{base}: cannot join '{weight}'s kernel (needs a per-channel factor and a 'same' "
                          "convolution: odd kernel, padding k//2, stride 1, no groups, as many channels in as out); "
                          "a Speck core applies one kernel to every event it receives")
        w = w.copy()
        idx = np.arange(w.shape[0])
        w[idx, idx, kh // 2, kw // 2] += flat[:, 0]
        where = "the kernel's centre tap"
    else:
        if w.shape[0] != w.shape[1] or len(shape) != 1 or G.preds[weight] != [skip_from]:
            return None, (f"{base}: cannot join '{weight}'s weights (needs as many inputs as outputs); a Speck core "
                          "applies one weight matrix to every event it receives")
        w = w.copy()
        w[np.arange(w.shape[0]), np.arange(w.shape[0])] += c.reshape(-1)
        where = "the weight matrix's diagonal"
    return {"weight": w, "note": f"{base} folded into '{weight}' ({where}): same source, one kernel"}, None


def back_to_input(G, name):
    """(Input node, [Scale nodes on the way]) when `name` is the graph input seen through Scale and
    Flatten nodes, else None."""
    nir, via = G.nir, []
    while G.is_(name, nir.Scale, nir.Flatten) and len(G.preds[name]) == 1:
        if G.is_(name, nir.Scale):
            via.append(name)
        name = G.preds[name][0]
    return (name, via) if G.is_(name, nir.Input) else None


def find_sources(G, layer, by_neuron, host_neurons):
    nir = G.nir
    reads = [G.through_flatten_back(p) for p in G.preds[layer.weight]]
    kinds = []
    for r in reads:
        pools, at = [], r
        while G.is_(at, nir.SumPool2d) and len(G.preds[at]) == 1:
            pools.append(at)
            at = G.preds[at][0]
        if G.is_(at, nir.Input):
            layer.sources.append("input")
            kinds.append("input")
        elif at in by_neuron:
            layer.sources.append(by_neuron[at].weight)
            kinds.append("spikes")
        elif at in host_neurons:
            layer.sources.append(f"host:{at}")
            kinds.append("spikes")
        else:
            layer.problems.append(f"{type_name(G.node(layer.weight))} '{layer.weight}': reads {type_name(G.node(r))} '{r}', "
                                  "not the spikes of a Speck layer (nor the input)"
                                  + ("; a Scale of spikes has no core: events carry no weight"
                                     if G.is_(r, nir.Scale) else ""))
            kinds.append("other")
    if len(reads) > 1:
        shapes = {tuple(int(d) for d in G.node(r).output_type["output"]) for r in reads}
        if "input" in kinds:
            layer.problems.append(f"{type_name(G.node(layer.weight))} '{layer.weight}': sums the graph input with "
                                  "spikes; Speck merges spike inputs only")
        elif len(shapes) > 1:
            layer.problems.append(f"{type_name(G.node(layer.weight))} '{layer.weight}': merges inputs of shapes "
                                  f"{sorted(shapes)}; sinabs merges inputs of one shape only (nir_graph_extractor)")
        else:
            layer.notes.append(f"merges the spikes of {', '.join(repr(r) for r in reads)} in front of its kernel "
                               "(sinabs Merge: a core sums the events of its sources)")


def find_destinations(G, layer, by_weight, folded, host):
    """Walk from the layer's IF: pools, Flattens, next weight layers, readouts."""
    nir = G.nir
    chip = []

    def walk(name, pools):
        for nxt in G.succs[name]:
            node = G.node(nxt)
            if nxt in folded:
                continue                               # the skip is part of the next layer's kernel
            if isinstance(node, nir.SumPool2d):
                if leads_to_output_only(G, nxt):
                    host.append(f"readout: SumPool2d '{nxt}' of layer {layer.index}'s spikes runs on the host "
                                "(sinabs does not pool a layer's exit events)")
                    continue
                if nxt not in layer.pools:
                    layer.pools.append(nxt)
                walk(nxt, pools + [nxt])
            elif isinstance(node, nir.Flatten):
                walk(nxt, pools)
            elif nxt in by_weight:
                chip.append({"layer": nxt, "pools": list(pools)})
            elif isinstance(node, (nir.Output, nir.Scale)) and leads_to_output_only(G, nxt):
                if isinstance(node, nir.Scale):
                    host.append(f"readout: Scale '{nxt}' (back to ONNX units, θ) multiplies layer {layer.index}'s "
                                f"spike counts ('{layer.neuron}') on the host; the chip sends the layer's events out")
                else:
                    host.append(f"readout: '{nxt}' counts layer {layer.index}'s events ('{layer.neuron}') on the host")
    walk(layer.neuron, [])
    for d in chip:
        kernels = [pair(G.node(p).kernel_size) for p in d["pools"]]
        d["pooling"] = (int(np.prod([k[0] for k in kernels])), int(np.prod([k[1] for k in kernels])))
    layer.destinations = chip
    if chip:
        c, h, w = layer.neuron_shape
        ph, pw = chip[0]["pooling"]
        layer.out_shape = (c, h // ph, w // pw)


def leads_to_output_only(G, name) -> bool:
    nir, todo, seen = G.nir, [name], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        node = G.node(n)
        if isinstance(node, nir.Output):
            continue
        if not isinstance(node, (nir.Scale, nir.SumPool2d, nir.Flatten)) or not G.succs[n]:
            return False
        todo.extend(G.succs[n])
    return True
