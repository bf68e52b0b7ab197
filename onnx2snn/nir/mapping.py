"""ONNX nodes as operations in NIR terms (Op): what each reads, computes and its per-sample
shape, before any folding. A Mapping mixin of export._Export (its state: g, info, plan, direct,
shapes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..ops.neuron import DOMAIN
from .reading import as_text, data_inputs, node_attrs
from .refusals import WAY_LINEAR, WHERE, PreRefused, check_compensation, check_expressible, refuse


@dataclass
class Op:
    """One operation of the exported region, its ONNX node parsed: what it reads and computes."""
    kind: str          # input identity conv affine add bias scale pool flatten neuron output
    node: object       # the ONNX NodeProto (None for inputs and outputs)
    inputs: list       # the time-varying tensors it reads
    output: str
    shape: tuple       # per-sample shape of the output
    params: dict = field(default_factory=dict)
    pre: bool = False  # before the first neuron: a refusal falls back to a host-side input


PARSERS = {"Identity": "_parse_identity", "Dropout": "_parse_identity", "Conv": "_parse_conv",
            "Gemm": "_parse_gemm", "MatMul": "_parse_matmul", "Add": "_parse_add", "Sub": "_parse_sub",
            "Mul": "_parse_mul", "Div": "_parse_div", "BatchNormalization": "_parse_batchnormalization",
            "AveragePool": "_parse_averagepool", "GlobalAveragePool": "_parse_globalaveragepool",
            "Flatten": "_parse_flatten", "Reshape": "_parse_reshape", "Slice": "_parse_slice",
            "Concat": "_parse_concat"}   # ONNX op -> _Export method


class Mapping:
    """Parses the exported region into Ops (one per node; BatchNormalization is two)."""

    def _parse(self) -> list:
        g, plan, ops = self.g, self.plan, []
        if self.direct:
            tensors = [t for i in plan.pre for t in data_inputs(g.nodes[i]) if t in g.inputs]
            tensors += [plan.tiles[t] for t in plan.entries if plan.tiles[t] in g.inputs]
            for name in dict.fromkeys(tensors):
                ops.append(self._entry(name, pre=True))
            for i in plan.pre:
                ops += self._parse_node(g.nodes[i], pre=True)
            for tile in plan.entries:
                source = plan.tiles[tile]
                self.shapes[tile] = self.shapes[source]
                ops.append(Op("identity", None, [source], tile, self.shapes[tile], pre=True))
        else:
            for tile in plan.entries:
                ops.append(self._entry(tile, source=plan.tiles[tile]))
        for i in plan.spiking:
            ops += self._parse_node(g.nodes[i])
        for steps, mean in plan.readouts:
            ops.append(Op("output", None, [steps], mean, self.shapes[steps]))
        return ops

    def _entry(self, tensor: str, source: str | None = None, pre: bool = False) -> Op:
        shape = self.g.shape(source or tensor)
        if shape is None:
            raise (PreRefused if pre else UserError)(
                f"{WHERE}: input '{source or tensor}' has no static shape; NIR types are static: export the "
                "ANN with fixed non-batch dims")
        self.shapes[tensor] = shape
        return Op("input", None, [], tensor, shape, {"source": source or tensor}, pre=pre)

    def _const(self, node, index: int):
        if index >= len(node.input) or not node.input[index]:
            return None
        return self.g.const.get(node.input[index])

    def _varying(self, node):
        return [t for t in data_inputs(node) if t and t not in self.g.const]

    def _parse_node(self, node, pre: bool = False) -> list:
        """The node as _Ops (most are one; BatchNormalization is a scale and a bias)."""
        op_type = node.op_type
        check_compensation(node, self.info.compensated, pre)
        check_expressible(node, self.info.analog, PARSERS, pre)
        if node.domain == DOMAIN and op_type == "IFNeuron":
            op = self._parse_neuron(node)
            self.shapes[op.output] = op.shape
            return [op]
        varying = self._varying(node)
        if not varying:
            raise refuse(node, "computes a constant inside the network", "fold constants in the ANN "
                          "(e.g. onnxsim) and convert again", pre)
        x = varying[0]
        if x not in self.shapes:
            raise refuse(node, f"reads '{x}', which the export did not reach", "convert the ANN again", pre)
        ops = getattr(self, PARSERS[op_type])(node, varying, self.shapes[x], pre)
        for op in ops:
            op.pre = pre
            self.shapes[op.output] = op.shape
            if op.kind == "zero":
                self.zeros[op.output] = True
        return ops

    def _parse_identity(self, node, varying, shape, pre):
        """Identity, and Dropout at inference (its mask unused)."""
        if any(t and t in self.g.consumers for t in node.output[1:]):
            raise refuse(node, "its mask output is used", WAY_LINEAR, pre)
        return [Op("identity", node, varying[:1], node.output[0], shape)]

    def _parse_neuron(self, node) -> Op:
        a = node_attrs(node)
        x = node.input[0]
        if len(node.input) > 4 or (len(node.input) > 2 and node.input[2]):
            raise refuse(node, "carries state or fused inputs (a session's in-memory graph)",
                          "export the model file as onnx2snn wrote it")
        if int(a.get("max_spikes", 1)) > 1:
            raise refuse(node, f"emits bursts of up to {int(a['max_spikes'])} spikes per step (--spikes burst); NIR's "
                         "IF emits one spike per step", "convert with --spikes binary to export to NIR")
        if int(a.get("signed", 0)):
            raise refuse(node, "sends negative spikes (--signed); NIR's IF has no negative spike and no spike count",
                         "convert without --signed to export to NIR")
        if int(a.get("timesteps", 0)) != self.info.timesteps:
            raise refuse(node, f"runs {a.get('timesteps')} steps, the model {self.info.timesteps}",
                          "convert the ANN again")
        if x not in self.shapes:
            raise refuse(node, f"reads '{x}', which the export did not reach", "convert the ANN again")
        shape = self.shapes[x]
        if self._const(node, 1) is None:
            raise refuse(node, "its thresholds are not a constant", "convert the ANN again")
        theta = np.asarray(self._const(node, 1), np.float32).reshape(-1)
        axis = int(a.get("axis", 1))
        axis = axis + len(shape) + 1 if axis < 0 else axis
        if theta.size > 1 and not (1 <= axis <= len(shape) and shape[axis - 1] == theta.size):
            raise refuse(node, f"has {theta.size} thresholds for shape {list(shape)} (axis {axis})",
                          "convert the ANN again")
        full = np.broadcast_to(theta.reshape([-1] + [1] * (len(shape) - axis)) if theta.size > 1 else theta,
                               shape).astype(np.float32)
        v0 = self._const(node, 3)
        if v0 is not None:
            v0 = np.asarray(v0, np.float32).reshape(-1)
            if v0.size not in (1, int(np.prod(shape))):
                raise refuse(node, f"v0 has {v0.size} values for shape {list(shape)}", "convert the ANN again")
            start = np.broadcast_to(v0.reshape(shape) if v0.size > 1 else v0.reshape(()), shape)
        else:
            start = np.float32(a.get("v_init", 0.5)) * full            # the neuron's v_init·θ, in float32
        source = next((n.get("source", "") for n in self.info.neurons if n.get("name") == node.name), "")
        params = {"theta": theta, "theta_full": full, "start": np.asarray(start, np.float32),
                  "axis": axis - 1, "source": source}
        return Op("neuron", node, [x], node.output[0], shape, params)

    def _parse_conv(self, node, varying, shape, pre):
        a = node_attrs(node)
        w, b = self._const(node, 1), self._const(node, 2)
        if w is None or len(varying) != 1:
            raise refuse(node, "its weights vary (not an initializer)", "export the ANN with constant weights", pre)
        if w.ndim != 4 or len(shape) != 3:
            raise refuse(node, f"a {w.ndim - 2}-D convolution; the export writes nir.Conv2d only",
                          "use 2-D convolutions", pre)
        if w.shape[2] != w.shape[3]:
            raise refuse(node, f"kernel {w.shape[2]}x{w.shape[3]} is not square: nir 1.0's Conv2d works out its "
                         "output shape from the kernel's height alone, so readers would get a wrong shape",
                         "use square kernels (pad a kernel to square with zero weights in the ANN)", pre)
        group = int(a.get("group", 1))
        strides = list(a.get("strides", [1, 1]))
        dilations = list(a.get("dilations", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto_pad = as_text(a.get("auto_pad", "NOTSET"))
        if auto_pad not in ("NOTSET", "VALID"):
            raise refuse(node, f"auto_pad {auto_pad}", "export the ANN with explicit pads", pre)
        if auto_pad == "VALID":
            pads = [0, 0, 0, 0]
        if pads[:2] != pads[2:]:
            raise refuse(node, f"asymmetric pads {pads} (NIR's Conv2d pads both sides alike)",
                          "pad symmetrically in the ANN", pre)
        if shape[0] != w.shape[1] * group:
            raise refuse(node, f"expects {w.shape[1] * group} channels, gets {shape[0]}", "check the ANN", pre)
        out = [(shape[1 + i] + 2 * pads[i] - dilations[i] * (w.shape[2 + i] - 1) - 1) // strides[i] + 1
               for i in range(2)]
        bias = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64).reshape(-1)
        params = {"weight": np.asarray(w, np.float64), "bias": bias, "stride": tuple(strides),
                  "padding": tuple(pads[:2]), "dilation": tuple(dilations), "groups": group,
                  "input_shape": tuple(shape[1:])}
        return [Op("conv", node, varying, node.output[0], (w.shape[0], *out), params)]

    def _parse_gemm(self, node, varying, shape, pre):
        a = node_attrs(node)
        w, c = self._const(node, 1), self._const(node, 2)
        if w is None or len(varying) != 1 or node.input[0] != varying[0]:
            raise refuse(node, "its weights vary (not an initializer)", "export the ANN with constant weights", pre)
        if int(a.get("transA", 0)) or len(shape) != 1:
            raise refuse(node, "reads a transposed or non-vector input", "flatten before the layer", pre)
        w = np.asarray(w, np.float64) * float(a.get("alpha", 1.0))
        w = w if int(a.get("transB", 0)) else w.T
        if w.shape[1] != shape[0]:
            raise refuse(node, f"expects {w.shape[1]} features, gets {shape[0]}", "check the ANN", pre)
        bias = np.zeros(w.shape[0])
        if c is not None:
            bias = self._per_sample(node, np.asarray(c, np.float64) * float(a.get("beta", 1.0)), (w.shape[0],), pre)
        return [Op("affine", node, varying, node.output[0], (w.shape[0],), {"weight": w, "bias": bias})]

    def _parse_matmul(self, node, varying, shape, pre):
        w = self._const(node, 1)
        if w is None or len(varying) != 1 or node.input[0] != varying[0] or w.ndim != 2 or len(shape) != 1:
            raise refuse(node, "not a vector times a constant matrix", "use Gemm/MatMul with constant weights "
                          "on flattened features", pre)
        if w.shape[0] != shape[0]:
            raise refuse(node, f"expects {w.shape[0]} features, gets {shape[0]}", "check the ANN", pre)
        w = np.asarray(w, np.float64).T
        return [Op("affine", node, varying, node.output[0], (w.shape[0],),
                    {"weight": w, "bias": np.zeros(w.shape[0])})]

    def _per_sample(self, node, value, shape, pre):
        """A constant operand broadcast to one sample's shape (its batch axis, if any, of size 1)."""
        value = np.asarray(value, np.float64)
        try:
            full = np.broadcast_to(value, (1,) + tuple(shape)) if value.ndim > len(shape) else \
                np.broadcast_to(value, tuple(shape))
        except ValueError:
            raise refuse(node, f"a constant of shape {list(value.shape)} does not fit {list(shape)}",
                          "check the ANN", pre) from None
        return np.array(full.reshape(shape), np.float64)

    def _elementwise(self, node, varying, shape, pre):
        """(the constant operand or None, position of the varying one) of Add/Sub/Mul/Div."""
        if len(varying) == 2:
            if self.shapes.get(varying[1]) != shape:
                raise refuse(node, f"adds tensors of shapes {list(shape)} and {list(self.shapes.get(varying[1]))}",
                              "add tensors of one shape", pre)
            return None, 0
        first = node.input[0] == varying[0]
        other = self.g.const.get(node.input[1 if first else 0])
        if other is None:
            raise refuse(node, "an operand is neither constant nor reached", "convert the ANN again", pre)
        return self._per_sample(node, other, shape, pre), 0 if first else 1

    def _parse_add(self, node, varying, shape, pre, sign=1.0):
        const, position = self._elementwise(node, varying, shape, pre)
        if const is None:
            return [Op("add", node, varying, node.output[0], shape, {"signs": [1.0, sign]})]
        if sign < 0 and position == 1:
            raise refuse(node, "subtracts a time-varying tensor from a constant", "write it as an Add of a "
                          "negated layer in the ANN", pre)
        return [Op("bias", node, varying, node.output[0], shape, {"value": sign * const})]

    def _parse_sub(self, node, varying, shape, pre):
        return self._parse_add(node, varying, shape, pre, sign=-1.0)

    def _parse_mul(self, node, varying, shape, pre, invert=False):
        if len(varying) == 2:
            raise refuse(node, "multiplies two time-varying tensors", "convert an ANN whose layers are linear "
                          "between activations", pre)
        const, position = self._elementwise(node, varying, shape, pre)
        if invert and position == 1:
            raise refuse(node, "divides by a time-varying tensor", "convert an ANN whose layers are linear "
                          "between activations", pre)
        with np.errstate(divide="ignore"):
            factor = 1.0 / const if invert else const
        if not np.all(np.isfinite(factor)):
            raise refuse(node, "divides by zero", "check the ANN", pre)
        if not invert and not np.any(factor):
            # x * 0: zeros of x's shape (e.g. the zero channels a ResNet's option-A shortcut
            # concatenates); only a Concat may read them (what it reads from them is nothing)
            return [Op("zero", node, [], node.output[0], shape)]
        return [Op("scale", node, varying, node.output[0], shape, {"factor": factor})]

    def _parse_div(self, node, varying, shape, pre):
        return self._parse_mul(node, varying, shape, pre, invert=True)

    def _parse_batchnormalization(self, node, varying, shape, pre):
        consts = [self._const(node, i) for i in range(1, 5)]
        if any(c is None for c in consts) or len(shape) < 1:
            raise refuse(node, "its statistics are not constants (training mode?)", "export the ANN in "
                          "inference mode", pre)
        gamma, beta, mean, var = (np.asarray(c, np.float64).reshape(-1) for c in consts)
        eps = float(node_attrs(node).get("epsilon", 1e-5))
        a = gamma / np.sqrt(var + eps)
        channel = [shape[0]] + [1] * (len(shape) - 1)
        scaled = f"{node.output[0]}#scaled"
        return [Op("scale", node, varying, scaled, shape,
                    {"factor": np.broadcast_to(a.reshape(channel), shape).astype(np.float64)}),
                Op("bias", node, [scaled], node.output[0], shape,
                    {"value": np.broadcast_to((beta - mean * a).reshape(channel), shape).astype(np.float64)})]

    def _parse_averagepool(self, node, varying, shape, pre):
        a = node_attrs(node)
        kernel = list(a.get("kernel_shape", []))
        strides = list(a.get("strides", [1] * len(kernel)))
        pads = list(a.get("pads", [0] * 2 * len(kernel)))
        if len(kernel) != 2 or len(shape) != 3:
            raise refuse(node, "not a 2-D pool", "use 2-D average pooling", pre)
        if as_text(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID") or int(a.get("ceil_mode", 0)) \
                or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise refuse(node, "auto_pad, ceil_mode or dilations", "pool with explicit pads, floor mode", pre)
        if pads[:2] != pads[2:] or (any(pads) and not int(a.get("count_include_pad", 0))):
            raise refuse(node, "padded windows divide by fewer than k² (count_include_pad = 0) or pads are "
                          "asymmetric, so the pool is not one sum scaled by 1/k²", "pool without padding", pre)
        out = [(shape[1 + i] + 2 * pads[i] - kernel[i]) // strides[i] + 1 for i in range(2)]
        return [Op("pool", node, varying, node.output[0], (shape[0], *out),
                    {"kernel": tuple(kernel), "stride": tuple(strides), "padding": tuple(pads[:2])})]

    def _parse_globalaveragepool(self, node, varying, shape, pre):
        if len(shape) != 3:
            raise refuse(node, "not a 2-D pool", "use 2-D average pooling", pre)
        return [Op("pool", node, varying, node.output[0], (shape[0], 1, 1),
                    {"kernel": tuple(shape[1:]), "stride": tuple(shape[1:]), "padding": (0, 0)})]

    def _parse_flatten(self, node, varying, shape, pre):
        axis = int(node_attrs(node).get("axis", 1))
        if axis not in (1, 1 - (len(shape) + 1)):
            raise refuse(node, f"flattens from axis {axis} (with the batch)", "flatten from axis 1", pre)
        return [self._flat(node, varying, shape)]

    def _flat(self, node, varying, shape) -> Op:
        size = (int(np.prod(shape)),)
        return Op("identity" if len(shape) == 1 else "flatten", node, varying, node.output[0], size)

    def _parse_reshape(self, node, varying, shape, pre):
        target = self._const(node, 1)
        if target is None:
            raise refuse(node, "its shape is computed, not constant", "export the ANN with a constant shape "
                          "(or a Flatten)", pre)
        target = [int(d) for d in np.asarray(target).reshape(-1)]
        count = int(np.prod(shape))
        rest = [shape[i - 1] if d == 0 and 0 < i <= len(shape) else d for i, d in enumerate(target)][1:]
        if target and target[0] != -1 and -1 in rest:
            known = int(np.prod([d for d in rest if d != -1]))
            rest = [count // known if d == -1 else d for d in rest]
        if int(np.prod(rest)) != count or any(d < 1 for d in rest):
            raise refuse(node, f"reshapes {list(shape)} to {target} across the batch", "reshape per sample", pre)
        if tuple(rest) == tuple(shape):
            return [Op("identity", node, varying, node.output[0], shape)]
        if len(rest) == 1:
            return [self._flat(node, varying, shape)]
        raise refuse(node, f"reshapes {list(shape)} to {list(rest)}; NIR 1.0 only flattens",
                      "flatten instead (or keep the shape)", pre)

    def _parse_slice(self, node, varying, shape, pre):
        """A per-sample Slice as a fixed linear layer: channels start:end (step 1) by a selection
        matrix, spatial axes from 0 with step k as the stride of a 1x1 nir.Conv2d (a 1-D tensor:
        an nir.Linear picking the features)."""
        consts = [self._const(node, i) for i in range(1, 5)]
        if consts[0] is None or consts[1] is None or any(c is None for i, c in enumerate(consts[2:], 3)
                                                        if i < len(node.input) and node.input[i]):
            raise refuse(node, "its bounds are computed, not constant", "export the ANN with constant slices", pre)
        starts, ends = (np.asarray(c, np.int64).reshape(-1) for c in consts[:2])
        axes = np.arange(len(starts)) if consts[2] is None else np.asarray(consts[2], np.int64).reshape(-1)
        steps = np.ones(len(starts), np.int64) if consts[3] is None else np.asarray(consts[3], np.int64).reshape(-1)
        rank = len(shape) + 1
        picks = [np.arange(d) for d in shape]         # per-sample axis -> the indices kept
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis = int(axis) + rank if axis < 0 else int(axis)
            if axis == 0:
                raise refuse(node, "slices the batch axis", "slice per sample", pre)
            if step < 1:
                raise refuse(node, f"step {step} (reversed slices)", "slice forwards", pre)
            picks[axis - 1] = picks[axis - 1][slice(int(start), int(end), int(step))]
        sizes = [len(p) for p in picks]
        if min(sizes) < 1:
            raise refuse(node, "keeps nothing", "check the ANN", pre)
        if len(shape) == 1:
            weight = np.eye(shape[0])[picks[0]]
            return [Op("affine", node, varying, node.output[0], (sizes[0],),
                       {"weight": weight, "bias": np.zeros(sizes[0]), "fixed": True})]
        if len(shape) != 3:
            raise refuse(node, f"slices a tensor of shape {list(shape)}; the export writes 2-D maps and vectors",
                         "slice 4-D (NCHW) or 2-D tensors", pre)
        stride = []
        for axis in (1, 2):
            p = picks[axis]
            k = int(p[1] - p[0]) if len(p) > 1 else max(shape[axis], 1)
            if p[0] != 0 or np.any(p != np.arange(len(p)) * k) or (shape[axis] + k - 1) // k != len(p):
                raise refuse(node, f"keeps rows/columns {p[:4].tolist()}... of {shape[axis]}: NIR expresses a "
                             "spatial slice only as a strided 1x1 convolution from index 0 to the end",
                             "subsample with a strided convolution or pooling in the ANN", pre)
            stride.append(k)
        weight = np.eye(shape[0])[picks[0]][:, :, None, None]
        params = {"weight": weight, "bias": np.zeros(sizes[0]), "stride": tuple(stride), "padding": (0, 0),
                  "dilation": (1, 1), "groups": 1, "input_shape": tuple(shape[1:]), "fixed": True}
        return [Op("conv", node, varying, node.output[0], tuple(sizes), params)]

    def _parse_concat(self, node, varying, shape, pre):
        """Concat on the channel (or feature) axis as a sum: each input placed at its offset by a
        fixed 1x1 nir.Conv2d (nir.Linear for vectors) and the parts meeting at the next node;
        inputs that are zeros (x * 0) only take their channels."""
        axis = int(node_attrs(node).get("axis", 0))
        rank = len(shape) + 1
        axis = axis + rank if axis < 0 else axis
        if axis != 1:
            raise refuse(node, f"concatenates on axis {axis}; NIR adds converging edges, so only the channel "
                         "axis (1) can be rebuilt from channel placements", "concatenate channels", pre)
        parts = list(node.input)
        if any(t in self.g.const for t in parts):
            raise refuse(node, "concatenates a constant", "fold constants in the ANN", pre)
        shapes = [self.shapes.get(t) for t in parts]
        if any(s is None for s in shapes) or any(tuple(s[1:]) != tuple(shape[1:]) for s in shapes):
            raise refuse(node, f"concatenates tensors of shapes {[list(s) if s else None for s in shapes]}",
                         "concatenate maps of one size", pre)
        total = sum(s[0] for s in shapes)
        out_shape = (total, *shape[1:])
        ops, offset, summed = [], 0, []
        for i, (t, s) in enumerate(zip(parts, shapes)):
            if self.zeros.get(t):
                offset += s[0]
                continue
            weight = np.zeros((total, s[0]))
            weight[offset:offset + s[0]] = np.eye(s[0])
            placed = f"{node.output[0]}#part{i}"
            if len(shape) == 1:
                ops.append(Op("affine", node, [t], placed, out_shape,
                              {"weight": weight, "bias": np.zeros(total), "fixed": True}))
            else:
                ops.append(Op("conv", node, [t], placed, out_shape,
                              {"weight": weight[:, :, None, None], "bias": np.zeros(total), "stride": (1, 1),
                               "padding": (0, 0), "dilation": (1, 1), "groups": 1,
                               "input_shape": tuple(shape[1:]), "fixed": True}))
            summed.append(placed)
            offset += s[0]
        if not summed:
            raise refuse(node, "concatenates only zeros", "check the ANN", pre)
        if len(summed) == 1:
            ops.append(Op("identity", node, summed, node.output[0], out_shape))
        else:
            ops.append(Op("add", node, summed, node.output[0], out_shape, {"signs": [1.0] * len(summed)}))
        return ops
