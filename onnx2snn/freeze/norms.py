"""`--freeze-norm`: normalisation layers between spiking layers become fixed per-channel affines.

InstanceNormalization (GroupNorm as torch exports it: Reshape [N, G, -1] -> InstanceNormalization
-> Reshape -> Mul/Add), LayerNormalization and GroupNormalization divide by statistics of each
sample, which spike counts cannot carry: `(x - mu(x)) / sigma(x)` is not linear in x. Frozen, each
uses the means of mu and sigma = sqrt(var + eps) over the calibration samples instead:

    y = scale * (x - mu_bar) / sigma_bar + bias  =  a * x + b,   a = scale / sigma_bar,
                                                                b = bias - a * mu_bar

one constant per normalised group (per channel for InstanceNorm, per group for GroupNorm, per
position outside the normalised axes for LayerNorm), which is linear in the spikes. The statistics
come from the ANN on calibration data, reduced in the graph; the error each frozen layer adds is
measured on the same samples (its output in the frozen ANN against the ANN's, relative L2) and
reported with the ANN's output error.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import onnx_io as M
from .. import runtime
from ..graph.analyse import NORM_OPS
from ..graph.builder import Builder
from ..errors import UserError, param

log = logging.getLogger(__name__)

PREFIX = "onnx2snn.freeze"


@dataclass
class FrozenNorms:
    """What `freeze` did: per frozen node its statistics' shape and the error it adds."""
    layers: list = field(default_factory=list)   # dicts: name, op, groups, rel_error
    output_rel_error: float | None = None        # the frozen ANN's outputs against the ANN's
    samples: int = 0

    def to_json(self) -> dict:
        return {"layers": self.layers, "output_rel_error": self.output_rel_error, "samples": self.samples}


def _reduction(node: gs.Node, rank: int) -> tuple:
    """(axes the node normalises over, the shape that groups x for them, epsilon)."""
    eps = float(node.attrs.get("epsilon", 1e-5))
    if node.op == "InstanceNormalization":
        return list(range(2, rank)), None, eps
    if node.op == "LayerNormalization":
        axis = int(node.attrs.get("axis", -1)) % rank
        return list(range(axis, rank)), None, eps
    groups = int(node.attrs["num_groups"])          # GroupNormalization: x viewed as [N, G, -1]
    return [2], [0, groups, -1], eps


def candidates(problems) -> list:
    """The output tensors of the normalisation nodes among the nodes that block conversion (between
    spiking layers): the nodes are named by their output, which analysis and the file share."""
    return [n.outputs[0].name for n, _ in problems if n.op in NORM_OPS]


def _by_output(graph: gs.Graph) -> dict:
    return {n.outputs[0].name: n for n in graph.nodes if n.outputs}


def _check(node: gs.Node, rank: int | None) -> None:
    if rank is None or rank < 2:
        raise UserError(f"{param('freeze_norm')}: node '{node.name}' ({node.op}): the rank of its input is unknown; "
                        "re-export the model with shapes")
    if len([o for o in node.outputs if o.name]) > 1 and any(o.outputs for o in node.outputs[1:]):
        raise UserError(f"{param('freeze_norm')}: node '{node.name}' ({node.op}): its mean/inverse-deviation outputs "
                        f"are "
                        "used downstream; only the normalised output can be frozen")
    if node.op == "InstanceNormalization" and rank < 3:
        raise UserError(f"{param('freeze_norm')}: node '{node.name}': InstanceNormalization needs rank >= 3")


def _stats_model(model: onnx.ModelProto, names: list) -> tuple:
    """(model, outputs): the ANN also returning, per node, the batch means of mu and sigma."""
    graph = M.to_graph(model)
    nodes = _by_output(graph)
    b = Builder(graph, M.default_opset(model), PREFIX)
    shapes = M.shapes(model)
    outs = []
    for name in names:
        node = nodes[name]
        x = node.inputs[0]
        rank = len(shapes[x.name]) if shapes.get(x.name) is not None else None
        _check(node, rank)
        axes, view, eps = _reduction(node, rank)
        b.prefix = f"{PREFIX}/{node.name}"
        xv = b.reshape(x, view) if view else x
        mu = b.reduce("ReduceMean", xv, axes, keepdims=1)
        centred = b.op("Sub", [xv, mu])
        var = b.reduce("ReduceMean", b.op("Mul", [centred, centred]), axes, keepdims=1)
        sigma = b.op("Sqrt", [b.op("Add", [var, b.const(np.float32(eps))])])
        outs += [b.reduce("ReduceMean", mu, [0], keepdims=1), b.reduce("ReduceMean", sigma, [0], keepdims=1)]
    graph.outputs = outs
    return gs.export_onnx(graph.cleanup(), do_type_check=False), [o.name for o in outs]


def _measure(model: onnx.ModelProto, names: list, batches) -> dict:
    """name -> (mu_bar, sigma_bar) over every sample of `batches` (means weighted by batch size)."""
    stats, outs = _stats_model(model, names)
    sess = runtime.session(stats)
    inputs = {i.name for i in sess.get_inputs()}
    total, n = None, 0
    for feeds in batches:
        size = len(next(iter(feeds.values())))
        values = runtime.run_checked(sess, outs, {k: v for k, v in feeds.items() if k in inputs}, param("freeze_norm"))
        weighted = [v.astype(np.float64) * size for v in values]
        total = weighted if total is None else [a + w for a, w in zip(total, weighted)]
        n += size
    if not n:
        raise UserError(f"{param('freeze_norm')}: received no samples")
    means = [t / n for t in total]
    return {name: (means[2 * i], means[2 * i + 1]) for i, name in enumerate(names)}


def _affine(node: gs.Node, mu: np.ndarray, sigma: np.ndarray, rank: int, channels: int | None) -> tuple:
    """(a, b) with a * x + b the frozen node, shaped to broadcast over its input [N, ...]."""
    scale = np.asarray(node.inputs[1].values, np.float64) if len(node.inputs) > 1 and \
        isinstance(node.inputs[1], gs.Constant) else np.ones(1)
    bias = np.asarray(node.inputs[2].values, np.float64) if len(node.inputs) > 2 and \
        isinstance(node.inputs[2], gs.Constant) else np.zeros(1)
    if node.op == "InstanceNormalization":       # scale, bias [C]: channel axis 1
        shape = [-1] + [1] * (rank - 2)
        a = scale.reshape(shape) / sigma[0]
        return a, bias.reshape(shape) - a * mu[0]
    if node.op == "LayerNormalization":          # scale, bias shaped as the normalised dims
        a = scale / sigma[0]
        return a, bias - a * mu[0]
    groups = int(node.attrs["num_groups"])        # GroupNormalization: scale, bias per channel (opset 21)
    if not channels or channels % groups:         # or per group (opset 18)
        raise UserError(f"{param('freeze_norm')}: node '{node.name}': the channel count is unknown or not a multiple "
                        f"of "
                        f"num_groups={groups}")
    per_channel = lambda v: np.repeat(v.reshape(-1), channels // groups) if v.size == groups \
        else np.broadcast_to(v.reshape(-1), (channels,))    # noqa: E731
    shape = [-1] + [1] * (rank - 2)
    a = (per_channel(scale) / per_channel(sigma)).reshape(shape)
    return a, per_channel(bias).reshape(shape) - a * per_channel(mu).reshape(shape)


def _rewrite(model: onnx.ModelProto, stats: dict) -> onnx.ModelProto:
    """The model with each node of `stats` replaced by Mul(x, a) -> Add(., b)."""
    graph = M.to_graph(model)
    shapes = M.shapes(model)
    for out, node in _by_output(graph).items():
        if out not in stats:
            continue
        x, y = node.inputs[0], node.outputs[0]
        shape = shapes.get(x.name)
        rank = len(shape)
        channels = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else None
        a, b = _affine(node, *stats[out], rank, channels)
        scaled = gs.Variable(f"{node.name}/frozen_scaled", np.float32)
        node.outputs.clear()
        node.inputs.clear()
        graph.nodes.append(gs.Node("Mul", f"{node.name}/frozen_scale",
                                   inputs=[x, gs.Constant(f"{node.name}.frozen_a", a.astype(np.float32))],
                                   outputs=[scaled]))
        graph.nodes.append(gs.Node("Add", f"{node.name}/frozen_shift",
                                   inputs=[scaled, gs.Constant(f"{node.name}.frozen_b", b.astype(np.float32))],
                                   outputs=[y]))
    return M.checked(M.export(graph.cleanup().toposort(), model), param("freeze_norm"))


def _errors(ann: onnx.ModelProto, frozen: onnx.ModelProto, names: list, batches) -> tuple:
    """(per node: relative L2 error of its output in `frozen` against `ann`, the same for the outputs)."""
    tensors = list(names)
    finals = [o.name for o in ann.graph.output if o.type.HasField("tensor_type")]

    def with_outputs(model):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        del proto.graph.output[:]
        proto.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                                  for t in tensors + finals)
        return runtime.session(proto)

    sessions = [with_outputs(ann), with_outputs(frozen)]
    inputs = {i.name for i in sessions[0].get_inputs()}
    num = np.zeros(len(tensors) + len(finals))
    den = np.zeros_like(num)
    for feeds in batches:
        run = {k: v for k, v in feeds.items() if k in inputs}
        want, got = (s.run(tensors + finals, run) for s in sessions)
        for i, (w, g) in enumerate(zip(want, got)):
            num[i] += float(np.sum((g.astype(np.float64) - w) ** 2))
            den[i] += float(np.sum(w.astype(np.float64) ** 2))
    rel = np.sqrt(num / np.maximum(den, 1e-30))
    per_node = dict(zip(tensors, rel[:len(tensors)]))
    return per_node, (float(np.max(rel[len(tensors):])) if finals else None)


def freeze(model: onnx.ModelProto, names: list, batches) -> tuple:
    """(frozen model, FrozenNorms): the normalisation nodes whose outputs are `names` frozen to the
    statistics of the samples in `batches` (a list of feed dicts)."""
    if not names:
        return model, FrozenNorms()
    stats = _measure(model, names, batches)
    frozen = _rewrite(model, stats)
    per_node, out_err = _errors(model, frozen, names, batches)
    nodes = _by_output(M.to_graph(model))
    result = FrozenNorms(samples=sum(len(next(iter(f.values()))) for f in batches), output_rel_error=out_err)
    for name in names:
        node, mu = nodes[name], stats[name][0]
        result.layers.append({"name": node.name or name, "output": name, "op": node.op,
                              "statistics": int(np.size(mu)), "rel_error": round(float(per_node[name]), 6)})
        log.info("froze %s '%s' (%d statistics): relative error %.4g", node.op, node.name or name, np.size(mu),
                 per_node[name])
    return frozen, result
