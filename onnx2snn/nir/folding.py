"""Thresholds folded into the weights: the scale bookkeeping and the NIR nodes it emits.

Each tensor is a sum of Terms, NIR node outputs with a scale (ONNX value = scale * NIR value). A
layer picks its output scale (what is wanted downstream: θ in front of a neuron, θ·k² in front of
an average pool, 1 at a readout) and absorbs its input's scale into its weights; where scales must
meet and cannot, an nir.Scale converts them. A Folding mixin of export._Export.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .mapping import Op
from .refusals import refuse

RESET = "subtract"
FIRING = "v > v_threshold"      # neuron.py / if_neuron.cc: spike where v > theta


@dataclass
class Layer:
    """A Conv2d or Affine whose numbers are final only at the end: constant currents met later
    are added to its bias (in its own output units)."""
    name: str
    kind: str               # conv or affine
    weight: np.ndarray      # float64, folded
    bias: np.ndarray        # float64 [out], folded
    params: dict
    onnx_node: str


@dataclass
class Term:
    """Part of a tensor: the output of one NIR node; ONNX value = scale * NIR value (the tensor
    is the sum of its terms). `layer`: the layer this output comes from when nothing else reads
    it on the way (so a constant current may go into its bias)."""
    node: str
    scale: np.ndarray
    layer: Layer | None = None


class Folding:
    """Wanted scales (backwards over the Ops), then the NIR nodes (forwards)."""

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
                per = uniform_per_channel(d)
                if per is not None:
                    k = float(np.prod(op.params["kernel"]))
                    want(op.inputs[0], np.broadcast_to(as_channels(per * k, len(op.shape)), self.shapes[op.inputs[0]]))
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
            terms = [Term(t.node, t.scale) for t in terms]
        self.signals[tensor] = terms

    def _scaled(self, term: Term, factor: np.ndarray, why: str) -> str:
        """A node giving factor * the term's NIR value: the term itself when the factor is 1,
        else an nir.Scale (one per term and factor)."""
        if same_scale(factor, np.ones_like(factor)):
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
        if not terms:
            raise refuse(self._reader, "reads only zeros (a tensor multiplied by 0)", "remove the dead branch "
                         "from the ANN", False)
        common = terms[0].scale
        if (per_channel and uniform_per_channel(common) is None) or any(np.any((common == 0) & (t.scale != 0))
                                                                 for t in terms):
            common = np.ones_like(common)
        return [self._scaled(t, factor_to(t.scale, common), why) for t in terms], common

    def _emit(self, op: Op) -> None:
        self._reader = op.node
        getattr(self, f"_emit_{op.kind}")(op)

    def _emit_input(self, op):
        node = self.nir.Input(input_type={"input": np.array(op.shape)},
                              metadata={"onnx_tensor": op.params["source"]})
        name = self._add(op.params["source"], node, [])
        self.inputs.append({"node": name, "onnx_tensor": op.params["source"], "shape": list(op.shape)})
        self._set(op.output, [Term(name, np.ones(op.shape))])

    def _emit_zero(self, op):
        self._set(op.output, [])          # no term: nothing flows (a Concat only counts its channels)

    def _emit_identity(self, op):
        self._set(op.output, self.signals[op.inputs[0]])

    def _emit_add(self, op):
        terms = [Term(t.node, t.scale * sign, t.layer)
                 for x, sign in zip(op.inputs, op.params["signs"]) for t in self.signals[x]]
        self._set(op.output, terms)

    def _emit_scale(self, op):
        """A constant factor goes into the scale; where it is 0 the NIR value is zeroed too (a scale
        of 0 always means a NIR value of 0: the channels of silent neurons)."""
        factor = op.params["factor"]
        terms = self.signals[op.inputs[0]]
        if np.any(factor == 0):
            keep = (factor != 0).astype(np.float64)
            terms = [Term(self._scaled(t, keep, f"zero factor of {op.node.name}"), t.scale) for t in terms]
        self._set(op.output, [Term(t.node, t.scale * factor, t.layer) for t in terms])

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
            per = nir_value if layer.kind == "affine" else uniform_per_channel(nir_value)
            if per is None:
                continue
            layer.bias = layer.bias + per
            self._set(op.output, terms)
            return
        raise refuse(op.node, "a constant current with no layer in front to carry it as a bias (NIR has no "
                      "bias-only node)", "give the ANN's layer in front of it a bias instead", op.pre)

    def _emit_conv(self, op):
        p = op.params
        sources, s_in = self._merge(self.signals[op.inputs[0]], True, f"input scale of {op.node.name}")
        s_in = uniform_per_channel(s_in)
        weight = p["weight"]
        group_in = weight.shape[1]
        per_out = weight.shape[0] // p["groups"]
        in_channel = np.arange(weight.shape[0])[:, None] // per_out * group_in + np.arange(group_in)[None, :]
        s_out = self._out_scale(op)
        weight = weight * s_in[in_channel][:, :, None, None]
        layer = self._layer(op, "conv", weight, p["bias"], s_out, sources)
        self._set(op.output, [Term(layer.name, np.broadcast_to(as_channels(s_out, 3), op.shape).copy(), layer)])

    def _emit_affine(self, op):
        sources, s_in = self._merge(self.signals[op.inputs[0]], False, f"input scale of {op.node.name}")
        s_out = self._out_scale(op)
        layer = self._layer(op, "affine", op.params["weight"] * s_in[None, :], op.params["bias"], s_out, sources)
        self._set(op.output, [Term(layer.name, s_out.copy(), layer)])

    def _out_scale(self, op) -> np.ndarray:
        """Per output channel: the scale wanted downstream when it is one per channel, else 1."""
        wanted = self.wanted.get(op.output)
        per = None if wanted is None else uniform_per_channel(wanted)
        return np.ones(op.shape[0]) if per is None else per

    def _layer(self, op, kind, weight, bias, s_out, sources) -> Layer:
        """Rows divided by the output scale (0 where it is 0: a channel feeding a silent neuron)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(s_out != 0, 1.0 / s_out, 0.0)
        weight = weight * inv.reshape([-1] + [1] * (weight.ndim - 1))
        name = self._add(op.node.name or op.node.op_type, None, sources)
        params = {k: v for k, v in op.params.items() if k not in ("weight", "bias")}
        layer = Layer(name, kind, weight, bias * inv, params, op.node.name)
        self.layers.append(layer)
        return layer

    def _emit_pool(self, op):
        p = op.params
        sources, s_in = self._merge(self.signals[op.inputs[0]], True, f"input scale of {op.node.name}")
        node = self.nir.SumPool2d(kernel_size=np.array(p["kernel"]), stride=np.array(p["stride"]),
                                  padding=np.array(p["padding"]), metadata={"onnx_node": op.node.name})
        name = self._add(op.node.name or "pool", node, sources)
        s_out = uniform_per_channel(s_in) / float(np.prod(p["kernel"]))
        self._set(op.output, [Term(name, np.broadcast_to(as_channels(s_out, 3), op.shape).copy())])

    def _emit_flatten(self, op):
        sources, s_in = self._merge(self.signals[op.inputs[0]], False, f"input scale of {op.node.name}")
        in_shape = self.shapes[op.inputs[0]]
        node = self.nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1,
                                metadata={"onnx_node": op.node.name})
        name = self._add(op.node.name or "flatten", node, sources)
        self._set(op.output, [Term(name, s_in.reshape(op.shape))])

    def _emit_neuron(self, op):
        p = op.params
        theta = p["theta_full"].astype(np.float64)
        sources = [self._scaled(t, factor_to(t.scale, theta), f"threshold of {op.node.name}")
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
        self._set(op.output, [Term(name, theta.copy())])

    def _emit_output(self, op):
        steps = op.inputs[0]
        sources = [self._scaled(t, factor_to(t.scale, np.ones_like(t.scale)), f"readout of {steps} in ONNX units")
                   for t in self.signals[steps]]
        node = self.nir.Output(output_type={"output": np.array(op.shape)},
                               metadata={"onnx_steps": steps, "onnx_mean": op.output})
        self._add(f"readout.{steps}", node, sources)


def same_scale(a, b) -> bool:
    """Equal scales up to float64 rounding of their products and quotients."""
    return a.shape == b.shape and bool(np.all((a == 0) == (b == 0))) and np.allclose(a, b, rtol=1e-12, atol=0)


def factor_to(scale: np.ndarray, target: np.ndarray) -> np.ndarray:
    """What turns a term's NIR value into the ONNX value divided by `target`: scale / target; 0
    where the target is 0 (a silent neuron's channel), 1 where the term's scale is 0 (its NIR
    value is 0 there already)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(target != 0, scale / target, 0.0)
    return np.where(scale == 0, 1.0, factor)


def uniform_per_channel(scale: np.ndarray):
    """The one value per channel (axis 0) of a scale that is uniform over the other axes, or None."""
    if scale.ndim <= 1:
        return np.asarray(scale, np.float64).reshape(-1)
    flat = scale.reshape(scale.shape[0], -1)
    return flat[:, 0].astype(np.float64) if np.all(flat == flat[:, :1]) else None


def as_channels(per: np.ndarray, rank: int) -> np.ndarray:
    return per.reshape([-1] + [1] * (rank - 1))
