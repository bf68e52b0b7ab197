"""ONNX graphs built directly with onnx.helper for tests that need exact control."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make(nodes, inits, in_shape, out_name="out", out_shape=None, opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32) if v.dtype.kind == "f" else v, k)
         for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def spiking_pool_model(channels=3, mixed=False):
    """input -> Relu -> Conv1x1(identity) -> Relu -> MaxPool 2x2 -> out (pool fed by spikes).
    mixed: the 1x1 conv is 2·identity minus the next channel, so the pool's currents rise and fall."""
    eye = np.eye(channels, dtype=np.float32)
    if mixed:
        eye = 2 * eye - np.roll(eye, 1, axis=1)
    eye = eye.reshape(channels, channels, 1, 1)
    nodes = [
        helper.make_node("Relu", ["input"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["out"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    return make(nodes, {"w": eye}, ["N", channels, 4, 4], out_shape=["N", channels, 2, 2])


def stem_pool_model(seed=0, integer=False):
    """input -> Conv -> Relu -> MaxPool -> Conv -> Relu -> GAP -> Flatten -> Gemm (time-invariant pool)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(4, 2, 3, 3))
    w2 = rng.normal(size=(6, 4, 1, 1))
    w3 = rng.normal(size=(5, 6))
    if integer:  # exactly representable sums: every form and the NumPy simulation agree exactly
        w1, w2, w3 = np.round(w1 * 2), np.round(w2 * 2), np.round(w3 * 2)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3"], ["out"], name="fc", transB=1),
    ]
    return make(nodes, {"w1": w1, "w2": w2, "w3": w3}, ["N", 2, 6, 6], out_shape=["N", 5])


def nonlinear_middle_model():
    """Relu -> Sigmoid -> Conv -> Relu: the Sigmoid sits between spiking layers."""
    w = np.ones((2, 2, 1, 1), np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c0"], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Sigmoid", ["r0"], ["s"], name="squash"),
        helper.make_node("Conv", ["s", "w"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["out"], name="relu1"),
    ]
    return make(nodes, {"w": w}, ["N", 2, 3, 3], out_shape=["N", 2, 3, 3])



def residual_stem() -> list:
    """conv1 -> relu1 -> conv2 (+ relu1: identity skip) -> relu2, padded 3x3 convolutions; weights w1, w2."""
    return [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a2"], name="skip"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
    ]

def residual_integer_model(seed=0, channels=4):
    """Conv-Relu-Conv-Add(skip)-Relu-MaxPool-GAP-Gemm with small integer weights: every sum in every
    form is exactly representable, so all forms must agree bit for bit."""
    rng = np.random.default_rng(seed)
    w1 = rng.integers(-2, 3, size=(channels, 2, 3, 3))
    w2 = rng.integers(-2, 3, size=(channels, channels, 3, 3))
    w3 = rng.integers(-2, 3, size=(3, channels))
    nodes = residual_stem() + [
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3"], ["out"], name="fc", transB=1),
    ]
    return make(nodes, {"w1": w1.astype(np.float32), "w2": w2.astype(np.float32), "w3": w3.astype(np.float32)},
                ["N", 2, 4, 4], out_shape=["N", 3])


def fixed_batch_mlp():
    """Batch fixed to 1 and a Reshape to [1, 8] between two spiking layers (some exporters do this)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Reshape", ["r1", "shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2"], ["g"], name="fc1", transB=1),
        helper.make_node("Relu", ["g"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "w3"], ["out"], name="fc2", transB=1),
    ]
    return make(nodes, {"w1": rng.normal(size=(2, 2, 1, 1)), "shape": np.array([1, 8], np.int64),
                        "w2": rng.normal(size=(5, 8)), "w3": rng.normal(size=(3, 5))},
                [1, 2, 2, 2], out_shape=[1, 3])


def nhwc_model():
    """Keras-style NHWC: Transpose -> Conv -> Transpose back -> Relu (channels on axis 3) -> ..."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c1"], ["c1_nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["c1_nhwc"], ["r1"], name="relu1"),
        helper.make_node("Transpose", ["r1"], ["r1_nchw"], name="to_nchw2", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["r1_nchw", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["out"], name="flatten"),
    ]
    return make(nodes, {"w1": rng.normal(size=(5, 3, 3, 3)), "w2": rng.normal(size=(4, 5, 1, 1))},
                ["N", 6, 6, 3], out_shape=["N", 4])


def unet_like_model():
    """Relu feeding both a MaxPool (down path) and a skip connection (U-Net style)."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),              # spike-driven, two consumers
        helper.make_node("MaxPool", ["r1"], ["p1"], name="down", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Resize", ["r2", "", "scales"], ["u2"], name="up", mode="nearest"),
        helper.make_node("Concat", ["u2", "r1"], ["cat"], name="skip", axis=1),
        helper.make_node("Conv", ["cat", "w3"], ["out"], name="head"),
    ]
    return make(nodes, {"w0": rng.normal(size=(3, 1, 3, 3)), "w1": rng.normal(size=(3, 3, 3, 3)) * 0.5,
                        "w2": rng.normal(size=(4, 3, 3, 3)) * 0.5, "w3": rng.normal(size=(2, 7, 1, 1)),
                        "scales": np.array([1, 1, 2, 2], np.float32)},
                ["N", 1, 8, 8], out_shape=["N", 2, 8, 8])


def deep_chain_model(depth=12, features=16, classes=5, seed=0):
    """input -> depth x (Gemm with random mixed-sign weights and biases -> Relu) -> Gemm readout.
    Spikes from inputs that cancel arrive unevenly at first: the readout has a start-up transient."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], {}, "input"
    for i in range(depth):
        inits[f"w{i}"] = rng.normal(size=(features, features)) * np.sqrt(2.0 / features)
        inits[f"b{i}"] = rng.normal(size=(features,)) * 0.1
        nodes += [helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"], name=f"gemm{i}"),
                  helper.make_node("Relu", [f"g{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    inits["wout"] = rng.normal(size=(features, classes))
    nodes.append(helper.make_node("Gemm", [x, "wout"], ["out"], name="readout"))
    return make(nodes, inits, ["N", features], out_shape=["N", classes])


def exact_runtime_model():
    """(model, thresholds, input) for the runtime conformance tests:
    Conv-ReLU-Conv-Clip(0,6)-MaxPool(spiking)-Conv-Add(skip)-ReLU-MaxPool(spiking)-GAP-Gemm with
    integer weights and inputs and power-of-two thresholds: every sum is exactly representable."""
    from onnx2snn import Thresholds
    from onnx2snn.graph.analyse import analyse
    rng = np.random.default_rng(0)
    w = lambda *s: rng.integers(-2, 3, size=s).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "p1"], ["s2"], name="skip"),
             helper.make_node("Relu", ["s2"], ["r2"], name="relu2"),
             helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf"], ["logits"], name="fc", transB=1)]
    inits = {"w0": w(4, 3, 3, 3), "w1": w(4, 4, 3, 3), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
             "w2": w(4, 4, 3, 3), "wf": w(5, 4)}
    graph = helper.make_graph(nodes, "exact", [helper.make_tensor_value_info("input", 1, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", 1, ["N", 5])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    acts = analyse(model).activations
    th = Thresholds({a.name: (2.0 ** rng.integers(0, 3, size=a.channels)).astype(np.float32) for a in acts}, "manual")
    x = rng.integers(-2, 4, size=(6, 3, 8, 8)).astype(np.float32)
    return model, th, x


def channel_last_model(weights: dict, channels: int):
    """NHWC residual CNN (see models.digits_channel_last): input [N, 8, 8, 1] -> logits [N, 10]."""
    to_nchw, to_nhwc = [0, 3, 1, 2], [0, 2, 3, 1]
    nodes = [
        helper.make_node("Transpose", ["input"], ["x_nchw"], name="in_to_nchw", perm=to_nchw),
        helper.make_node("Conv", ["x_nchw", "c1.weight", "c1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c1"], ["c1_nhwc"], name="conv1_to_nhwc", perm=to_nhwc),
        helper.make_node("Relu", ["c1_nhwc"], ["r1"], name="relu1"),
        helper.make_node("Transpose", ["r1"], ["r1_nchw"], name="relu1_to_nchw", perm=to_nchw),
        helper.make_node("Conv", ["r1_nchw", "c2.weight", "c2.bias"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c2"], ["c2_nhwc"], name="conv2_to_nhwc", perm=to_nhwc),
        helper.make_node("Add", ["c2_nhwc", "r1"], ["skip"], name="residual"),
        helper.make_node("Relu", ["skip"], ["r2"], name="relu2"),
        helper.make_node("Transpose", ["r2"], ["r2_nchw"], name="relu2_to_nchw", perm=to_nchw),
        helper.make_node("MaxPool", ["r2_nchw"], ["p2"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Transpose", ["p2"], ["p2_nhwc"], name="pool_to_nhwc", perm=to_nhwc),
        helper.make_node("Reshape", ["p2_nhwc", "flat"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc1.w"], ["m1"], name="fc1"),
        helper.make_node("Add", ["m1", "fc1.bias"], ["d1"], name="fc1_bias"),
        helper.make_node("Relu", ["d1"], ["r3"], name="relu3"),
        helper.make_node("MatMul", ["r3", "fc2.w"], ["m2"], name="fc2"),
        helper.make_node("Add", ["m2", "fc2.bias"], ["out"], name="fc2_bias"),
    ]
    inits = {k: weights[k] for k in ("c1.weight", "c1.bias", "c2.weight", "c2.bias", "fc1.bias", "fc2.bias")}
    inits.update({"fc1.w": weights["fc1.weight"].T, "fc2.w": weights["fc2.weight"].T,
                  "flat": np.array([-1, 16 * channels], np.int64)})
    return make(nodes, inits, ["N", 8, 8, 1], out_shape=["N", 10])


def spike_levels(snn, x, t):
    """{neuron: (its spike levels n of each step's n·θ [T*N, ...], the eval graph's spike counts per
    step)} of the unrolled SNN `snn` on input x at T = t, in one run (θ = 0 channels: level 0)."""
    from onnx2snn import runtime
    from onnx2snn.snn import simulate
    from onnx2snn.snn.info import SNNInfo
    info = SNNInfo.from_metadata(snn)
    model, counts, _ = simulate.unrolled_steps(snn, info, t)
    tensors = {n["name"]: n["tensor"] for n in info.neurons}
    model.graph.output.extend(helper.make_tensor_value_info(tensors[name], TensorProto.FLOAT, None)
                              for name, _ in counts)
    names = [c for _, c in counts] + [tensors[name] for name, _ in counts]
    values = dict(zip(names, runtime.session(model).run(names, {"input": x})))
    thetas = simulate.neuron_thresholds(snn, info)
    out = {}
    for name, count in counts:
        spikes, theta = values[tensors[name]], thetas[name]
        safe = np.where(theta > 0, theta, 1).reshape([1, -1] + [1] * (spikes.ndim - 2))
        out[name] = (np.round(spikes / safe), values[count])
    return out
