"""Expectation compensation (snn/compensate.py) of each kind of non-linear op between neurons, held
to its NumPy reference (ops.reference.compensated), in every graph form and in evaluation slices."""
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tools.fixtures import graphs
from onnx2snn import CalibConfig, SNNConfig, runtime, to_snn
from onnx2snn.calibration.balancing import calibrate
from onnx2snn.graph.analyse import analyse
from onnx2snn.ops import reference
from onnx2snn.snn.info import SNNInfo

F = 4                      # features of the spiking tensors a and b
_erf = np.vectorize(math.erf, otypes=[np.float32])


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layer_norm(x, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * GAMMA + BETA


GAMMA = np.linspace(0.5, 1.5, F).astype(np.float32)
BETA = np.linspace(-0.2, 0.2, F).astype(np.float32)
HALF, ONE, EPS = (np.array(v, np.float32) for v in (0.5, 1.0, 1e-5))
SQRT2 = np.array(math.sqrt(2.0), np.float32)
TWO = np.array(2.0, np.float32)

# name: (nodes computing "y" from the spikes "a" (and "b"), extra initializers, NumPy f(a[, b]), opset[,
# (the tensor that spikes when it is not y: the last non-linear node's output, its f)])
CASES = {
    "gelu_erf": ([helper.make_node("Div", ["a", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["a", "half"], ["m"]),
                  helper.make_node("Mul", ["m", "e1"], ["y"])], {"sqrt2": SQRT2, "one": ONE, "half": HALF},
                 lambda a: a * 0.5 * (1 + _erf(a / SQRT2)), 17),
    "silu": ([helper.make_node("Sigmoid", ["a"], ["s"]), helper.make_node("Mul", ["a", "s"], ["y"])], {},
             lambda a: a / (1 + np.exp(-a)), 17),
    "tanh": ([helper.make_node("Tanh", ["a"], ["y"])], {}, np.tanh, 17),
    "hardswish": ([helper.make_node("HardSwish", ["a"], ["y"])], {},
                  lambda a: a * np.clip(a / 6 + 0.5, 0, 1), 17),
    "hardsigmoid": ([helper.make_node("HardSigmoid", ["a"], ["y"], alpha=0.2, beta=0.5)], {},
                    lambda a: np.clip(0.2 * a + 0.5, 0, 1), 17),
    "exp": ([helper.make_node("Exp", ["a"], ["y"])], {}, np.exp, 17),
    "sqrt": ([helper.make_node("Sqrt", ["a"], ["y"])], {}, np.sqrt, 17),
    "div": ([helper.make_node("Add", ["b", "one"], ["b1"]), helper.make_node("Div", ["a", "b1"], ["y"])],
            {"one": ONE}, lambda a, b: a / (b + 1), 17),
    "softmax": ([helper.make_node("Softmax", ["a"], ["y"], axis=-1)], {}, _softmax, 17),
    "layernorm": ([helper.make_node("LayerNormalization", ["a", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)],
                  {"gamma": GAMMA, "beta": BETA}, _layer_norm, 17),
    "layernorm_decomposed": ([
        helper.make_node("ReduceMean", ["a"], ["mu"], axes=[-1]), helper.make_node("Sub", ["a", "mu"], ["c"]),
        helper.make_node("Pow", ["c", "two"], ["c2"]), helper.make_node("ReduceMean", ["c2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["c", "sd"], ["n"]), helper.make_node("Mul", ["n", "gamma"], ["g"]),
        helper.make_node("Add", ["g", "beta"], ["y"])],
        {"two": TWO, "eps": EPS, "gamma": GAMMA, "beta": BETA}, _layer_norm, 17,
        ("n", lambda a: (_layer_norm(a) - BETA) / GAMMA)),     # the spikes stand for the normalised value
    "product": ([helper.make_node("Mul", ["a", "b"], ["y"])], {}, lambda a, b: a * b, 17),
    "matmul": ([helper.make_node("Reshape", ["a", "square"], ["q"]), helper.make_node("Reshape", ["b", "square"], ["k"]),
                helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
                helper.make_node("MatMul", ["q", "kt"], ["qk"]), helper.make_node("Reshape", ["qk", "flat"], ["y"])],
               {"square": np.array([-1, 2, 2], np.int64), "flat": np.array([-1, F], np.int64)},
               lambda a, b: (a.reshape(-1, 2, 2) @ b.reshape(-1, 2, 2).transpose(0, 2, 1)).reshape(-1, F), 11,
               ("qk", lambda a, b: a.reshape(-1, 2, 2) @ b.reshape(-1, 2, 2).transpose(0, 2, 1))),
}


TWO_INPUTS = {"div", "product", "matmul"}


def _model(name):
    """input -> Gemm -> Relu (a), Gemm -> Relu (b) -> the op(s) -> y -> Gemm -> Relu -> out (b is
    pruned where the op reads only a)."""
    ops, extra, _, opset = CASES[name][:4]
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["input", "wa"], ["ga"], name="fc_a"),
             helper.make_node("Relu", ["ga"], ["a"], name="relu_a"),
             helper.make_node("Gemm", ["input", "wb"], ["gb"], name="fc_b"),
             helper.make_node("Relu", ["gb"], ["b"], name="relu_b")]
    nodes += [helper.make_node(n.op_type, list(n.input), list(n.output), name=f"op{i}",
                               **{a.name: helper.get_attribute_value(a) for a in n.attribute}) for i, n in enumerate(ops)]
    nodes += [helper.make_node("Gemm", ["y", "wc"], ["gc"], name="fc_c"),
              helper.make_node("Relu", ["gc"], ["out"], name="relu_c")]
    inits = {"wa": rng.normal(size=(3, F)), "wb": rng.normal(size=(3, F)), "wc": rng.normal(size=(F, 2)), **extra}
    return graphs.make(nodes, inits, ["N", 3], out_shape=["N", 2], opset=opset)


def _with_outputs(snn, names):
    model = onnx.ModelProto()
    model.CopyFrom(snn)
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return model


@pytest.mark.parametrize("name", list(CASES))
def test_each_compensated_op_matches_the_numpy_reference(name):
    model = _model(name)
    a = analyse(model)
    assert a.blocking() == [] and a.compensated(), name
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    th = calibrate(model, [{"input": x}], CalibConfig(method="max"))
    T = 12
    snn, _ = to_snn(model, th, SNNConfig(timesteps=T))
    info = SNNInfo.from_metadata(snn)
    assert set(info.compensated) >= {n.name for n in a.compensated()}
    site, f = CASES[name][4] if len(CASES[name]) > 4 else ("y", CASES[name][2])
    assert [x.tensor for x in a.sites] == [site]
    names = (["a", "b"] if name in TWO_INPUTS else ["a"]) + [site]
    *args, y = runtime.session(_with_outputs(snn, names)).run(names, {"input": x[:5]})
    want = reference.compensated(f, args, T)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-5 * scale * T)
    # the outputs over t steps sum to t·f(mean of the inputs over t steps)
    steps = y.reshape(T, 5, -1)
    means = [s.reshape(T, 5, -1)[:7].mean(0) for s in args]
    np.testing.assert_allclose(steps[:7].sum(0), 7 * np.asarray(f(*means)).reshape(5, -1), rtol=1e-4, atol=1e-4 * scale)


def test_sites_and_their_signs():
    """Where the neurons go: after the last non-linear node before a weighted layer; one neuron for
    an op whose range is non-negative, a pair (positive and negative part) otherwise."""
    signs = {name: [(x.op, x.signed) for x in analyse(_model(name)).sites] for name in CASES}
    assert signs["softmax"] == [("Softmax", False)] and signs["exp"] == [("Exp", False)]
    assert signs["tanh"] == [("Tanh", True)] and signs["layernorm"] == [("LayerNormalization", True)]
    assert signs["layernorm_decomposed"] == [("Div", True)] and signs["silu"] == [("Mul", True)]


@pytest.mark.parametrize("name", ["silu", "softmax", "layernorm_decomposed", "matmul"])
def test_every_form_gives_the_same_outputs(name):
    """Unrolled (custom ops and portable), looped (chunk dividing T or not, Loop or Scan): the
    running sums and last values are carried state in the loop."""
    model = _model(name)
    x = np.random.default_rng(2).normal(size=(64, 3)).astype(np.float32)
    th = calibrate(model, [{"input": x}], CalibConfig(method="max"))
    base = runtime.session(to_snn(model, th, SNNConfig(timesteps=10))[0]).run(None, {"input": x[:6]})[0]
    for kw in (dict(portable=True), dict(form="loop", chunk=5), dict(form="loop", chunk=3),
               dict(form="loop", chunk=4, portable=True), dict(form="loop", chunk=3, loop_op="scan")):
        snn, _ = to_snn(model, th, SNNConfig(timesteps=10, **kw))
        got = runtime.session(snn).run(None, {"input": x[:6]})[0]
        np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-5, err_msg=str(kw))


def test_evaluation_in_slices_carries_the_compensation_state():
    """T steps run as several runs of fewer steps (simulate.carried_states) give the outputs of one run."""
    from onnx2snn.snn import simulate
    model = _model("layernorm")
    x = np.random.default_rng(3).normal(size=(64, 3)).astype(np.float32)
    th = calibrate(model, [{"input": x}], CalibConfig(method="max"))
    snn, _ = to_snn(model, th, SNNConfig(timesteps=12))
    info = SNNInfo.from_metadata(snn)
    whole, _, _ = simulate.unrolled_steps(snn, info, 12, spike_counts=False)
    steps = info.readouts[0]["steps"]
    want = runtime.session(whole).run([steps], {"input": x[:4]})[0]
    part, _, _ = simulate.unrolled_steps(snn, info, 4, spike_counts=False)
    first, later, pairs = simulate.carried_states(part)
    assert any(name.startswith("onnx2snn.compensation/") for name, _ in pairs)
    s1, s2 = runtime.session(first), runtime.session(later)
    outs = [o for _, o in pairs]
    values = s1.run([steps] + outs, {"input": x[:4]})
    got = [values[0]]
    for _ in range(2):
        values = s2.run([steps] + outs, {"input": x[:4], **{i: v for (i, _), v in zip(pairs, values[1:])}})
        got.append(values[0])
    np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-5, atol=1e-5)


def test_keep_analog_evaluates_the_op_on_each_step_instead():
    model = _model("tanh")
    x = np.random.default_rng(4).normal(size=(64, 3)).astype(np.float32)
    th = calibrate(model, [{"input": x}], CalibConfig(method="max"))
    snn, _ = to_snn(model, th, SNNConfig(timesteps=8, keep_analog=True))
    spikes_a, y = runtime.session(_with_outputs(snn, ["a", "y"])).run(["a", "y"], {"input": x[:3]})
    np.testing.assert_allclose(y, np.tanh(spikes_a), rtol=1e-5, atol=1e-6)


def test_burst_neurons_with_compensation_in_every_form():
    """--spikes burst:K: the sites' neurons fire up to K spikes a step; the compensation is unchanged."""
    model = _model("gelu_erf")
    x = np.random.default_rng(5).normal(size=(64, 3)).astype(np.float32)
    th = calibrate(model, [{"input": x}], CalibConfig(method="max"))
    base = runtime.session(to_snn(model, th, SNNConfig(timesteps=8, spikes="burst:3"))[0]).run(None, {"input": x[:6]})[0]
    for kw in (dict(portable=True), dict(form="loop", chunk=3)):
        got = runtime.session(to_snn(model, th, SNNConfig(timesteps=8, spikes="burst:3", **kw))[0]).run(
            None, {"input": x[:6]})[0]
        np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-5, err_msg=str(kw))
    binary = runtime.session(to_snn(model, th, SNNConfig(timesteps=8))[0]).run(None, {"input": x[:6]})[0]
    assert not np.allclose(binary, base)          # the bursts changed the spikes
