"""The same SNN built from SpikingJelly's parts, for timing beside onnx2snn's (tools/bench.py).

SpikingJelly (PyTorch) converts an ANN by putting, in place of each ReLU, a scaler by 1/theta, an
integrate-and-fire neuron with threshold 1 and reset by subtraction (IFNode(v_reset=None)) and a
scaler by theta (its ann2snn recipe). Here the ANN is the bench's ONNX file, run by a small
interpreter of its operators in torch, and theta comes from onnx2snn's LTB calibration: the same
network, thresholds and T, time folded into the batch for the stateless layers as SpikingJelly's
multi-step mode does. Needs torch and spikingjelly (`pip install --no-deps spikingjelly`).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def available() -> str | None:
    """None when torch and spikingjelly import, else why not."""
    try:
        import torch  # noqa: F401
        from spikingjelly.activation_based import neuron  # noqa: F401
    except Exception as err:   # noqa: BLE001 - any import failure means: not available
        return f"SpikingJelly timing skipped ({type(err).__name__}: {err})"
    return None


class SpikingJellySNN:
    """Callable on a [N, ...] batch: runs the ANN's graph in torch with each ReLU (or Clip from 0)
    replaced by SpikingJelly's IF neuron, for T steps; returns the outputs averaged over time."""

    def __init__(self, model: onnx.ModelProto, thresholds: dict, timesteps: int):
        import torch
        from spikingjelly.activation_based import neuron
        self.torch, self.T = torch, timesteps
        self.graph = model.graph
        self.values = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
        self.neurons, self.theta = {}, {}
        unknown = sorted({n.op_type for n in self.graph.node} - set(_OPS))
        if unknown:
            raise NotImplementedError(f"the SpikingJelly peer does not run {', '.join(unknown)} nodes")
        for node in self.graph.node:
            if node.op_type in ("Relu", "Clip"):
                theta = np.asarray(thresholds[node.name], np.float32).reshape(-1)
                self.theta[node.name] = torch.from_numpy(theta)
                self.neurons[node.name] = neuron.IFNode(v_threshold=1.0, v_reset=None, step_mode="m")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        from spikingjelly.activation_based import functional
        with torch.inference_mode():
            for cell in self.neurons.values():
                functional.reset_net(cell)
            env = dict(self.values)
            env[self.graph.input[0].name] = torch.from_numpy(np.concatenate([x] * self.T))   # [T*N, ...]
            for node in self.graph.node:
                outs = self._run(node, [env[i] if i else None for i in node.input])
                env.update(zip(node.output, outs))
            y = env[self.graph.output[0].name]
            return y.reshape(self.T, -1, *y.shape[1:]).mean(0).numpy()

    def _spike(self, name, x):
        theta = self.theta[name].reshape((-1,) + (1,) * (x.dim() - 2)) if self.theta[name].numel() > 1 else self.theta[name]
        seq = (x / theta).reshape(self.T, -1, *x.shape[1:])          # SpikingJelly's multi-step [T, N, ...]
        return (self.neurons[name](seq) * theta).reshape(x.shape)

    def _run(self, node, a):
        torch, F = self.torch, self.torch.nn.functional
        attrs = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        op = node.op_type
        if op in ("Relu", "Clip"):
            return [self._spike(node.name, a[0])]
        if op == "Constant":
            return [torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())]
        if op == "Conv":
            pads = attrs.get("pads", [0, 0, 0, 0])
            return [F.conv2d(a[0], a[1], a[2] if len(a) > 2 else None, attrs.get("strides", [1, 1]), pads[:2],
                             attrs.get("dilations", [1, 1]), attrs.get("group", 1))]
        if op == "BatchNormalization":
            return [F.batch_norm(a[0], a[3], a[4], a[1], a[2], False, 0.0, attrs.get("epsilon", 1e-5))]
        if op in ("Add", "Sub", "Mul", "Div"):
            return [{"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](a[0], a[1])]
        if op == "Slice":
            starts, ends = a[1].tolist(), a[2].tolist()
            axes = a[3].tolist() if len(a) > 3 and a[3] is not None else list(range(len(starts)))
            steps = a[4].tolist() if len(a) > 4 and a[4] is not None else [1] * len(starts)
            index = [slice(None)] * a[0].dim()
            for s, e, ax, st in zip(starts, ends, axes, steps):
                index[ax] = slice(s, min(e, a[0].shape[ax]), st)
            return [a[0][tuple(index)]]
        if op == "Concat":
            return [torch.cat(a, attrs["axis"])]
        if op == "ReduceMean":
            axes = attrs.get("axes", a[1].tolist() if len(a) > 1 else None)
            return [a[0].mean(dim=axes, keepdim=bool(attrs.get("keepdims", 1)))]
        if op == "GlobalAveragePool":
            return [a[0].mean(dim=(2, 3), keepdim=True)]
        if op == "MaxPool":
            pads = attrs.get("pads", [0, 0, 0, 0])
            return [F.max_pool2d(a[0], attrs["kernel_shape"], attrs.get("strides", attrs["kernel_shape"]), pads[:2])]
        if op == "Flatten":
            return [a[0].flatten(attrs.get("axis", 1))]
        if op == "Reshape":
            shape = [a[0].shape[i] if d == 0 else d for i, d in enumerate(a[1].tolist())]
            return [a[0].reshape(shape)]
        if op == "Gemm":
            w = a[1].t() if attrs.get("transB", 0) else a[1]
            y = a[0] @ w
            return [y + a[2] if len(a) > 2 and a[2] is not None else y]
        if op == "MatMul":
            return [a[0] @ a[1]]
        raise NotImplementedError(f"the SpikingJelly peer does not run {op} nodes ({node.name})")


_OPS = ("Relu", "Clip", "Constant", "Conv", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Slice", "Concat",
        "ReduceMean", "GlobalAveragePool", "MaxPool", "Flatten", "Reshape", "Gemm", "MatMul")
