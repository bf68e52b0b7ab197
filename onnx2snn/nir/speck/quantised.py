"""quantise_speck: the exported graph with each Speck layer's integers, for nir.write and run_nir."""
from __future__ import annotations

import copy
import json

import numpy as np

from ...errors import UserError
from ..export import load_nir
from .limits import WHERE
from .report import SpeckReport


def quantise_speck(graph, report: SpeckReport):
    """A copy of `graph` with each Speck layer's integers: weights and biases (8-bit), threshold and
    initial potentials (16-bit), all scaled by the layer's factor and stored as float32 holding
    integers; folded skip Scales removed (their factor is in the kernel). Nodes outside layers keep
    their values. The spike trains are those of the integer network, so run_nir simulates it."""
    nir = load_nir()
    q = report._quantised
    folded = q.get("_folded", {})
    nodes, edges = {}, []
    rescale = q.get("_rescale", {})
    for name, node in graph.nodes.items():
        if name in folded:
            continue
        node = copy.deepcopy(node)
        if name in rescale and name not in q:
            factor, neuron = rescale[name]
            meta = dict(node.metadata or {}, speck_scale=factor,
                        speck_note=f"not mappable: scaled by IF '{neuron}''s factor to keep its sum")
            if isinstance(node, nir.Scale):
                node = nir.Scale(scale=(np.asarray(node.scale, np.float64) * factor).astype(np.float32), metadata=meta)
            elif isinstance(node, (nir.Conv2d, nir.Affine, nir.Linear)):
                node = copy.deepcopy(node)
                node.weight = (np.asarray(node.weight, np.float64) * factor).astype(np.float32)
                if getattr(node, "bias", None) is not None:
                    node.bias = (np.asarray(node.bias, np.float64) * factor).astype(np.float32)
                node.metadata = meta
        if name in q and isinstance(node, (nir.Conv2d, nir.Affine, nir.Linear)):
            p = q[name]
            meta = dict(node.metadata or {}, speck_scale=p["scale"])
            if isinstance(node, nir.Conv2d):
                node = nir.Conv2d(input_shape=node.input_shape, weight=p["weight"].astype(np.float32),
                                  stride=node.stride, padding=node.padding, dilation=node.dilation,
                                  groups=node.groups, bias=p["bias"].astype(np.float32), metadata=meta)
            elif isinstance(node, nir.Linear) and not np.any(p["bias"]):
                node = nir.Linear(weight=p["weight"].astype(np.float32), metadata=meta)
            else:
                node = nir.Affine(weight=p["weight"].astype(np.float32), bias=p["bias"].astype(np.float32),
                                  metadata=meta)
        elif name in q and isinstance(node, nir.IF):
            p = q[name]
            shape = np.asarray(node.v_threshold).shape
            meta = dict(node.metadata or {}, v0=p["v0"].astype(np.float32), speck_scale=p["scale"],
                        threshold_int=int(p["threshold"]))
            node = nir.IF(r=np.asarray(node.r, np.float32), v_threshold=np.full(shape, p["threshold"], np.float32),
                          v_reset=np.zeros(shape, np.float32), metadata=meta)
        nodes[name] = node
    edges = [(s, d) for s, d in graph.edges if s not in folded and d not in folded]
    meta = dict(graph.metadata or {})
    meta["speck"] = json.dumps({"fits": report.fits, "quantisation": "8-bit weights and biases, 16-bit thresholds "
                                "and potentials, one integer scale per layer (integer = scale x folded value; each "
                                "weight node and IF has 'speck_scale')",
                                "layers": [{"nodes": L.nodes, "scale": L.scale, "threshold": L.threshold}
                                           for L in report.layers]})
    try:
        out = nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=True)
    except (ValueError, AssertionError, TypeError) as err:
        raise UserError(f"{WHERE}: NIR's type check refused the quantised graph ({err})") from None
    return out
