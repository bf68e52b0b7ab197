"""Channel-last networks (NHWC activations, as jax2onnx, tf2onnx without its transpose optimiser and
TFLite-converted graphs write them; features last after MatMul): the per-channel corrections follow
each activation's own channel axis in the C++ operator, in every graph form and in the sessions'
rewritten graph, and an operator refusing what a conversion step built is reported as onnx2snn's
inconsistency, by step and node."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tools.fixtures import graphs
from onnx2snn import SNNConfig, Thresholds, convert, runtime, to_snn
from onnx2snn.ops import reference
from onnx2snn.graph.analyse import analyse
from onnx2snn.cli import main
from onnx2snn.errors import InternalError, UserError
from onnx2snn.ops.neuron import DOMAIN, OPSET_VERSION, if_neuron

CHANNELS = 4
FORMS = (dict(), dict(portable=True), dict(form="loop"), dict(form="loop", portable=True),
         dict(form="loop", chunk=4), dict(form="loop", chunk=4, portable=True), dict(form="loop", chunk=16))


def _integer_model(seed=0, channels=CHANNELS):
    """The channel-last residual CNN with small integer weights: every sum exactly representable."""
    rng = np.random.default_rng(seed)
    ints = lambda *shape: rng.integers(-2, 3, size=shape).astype(np.float32)   # noqa: E731
    weights = {"c1.weight": ints(channels, 1, 3, 3), "c1.bias": ints(channels),
               "c2.weight": ints(channels, channels, 3, 3),
               "c2.bias": ints(channels), "fc1.weight": ints(8, channels * 16), "fc1.bias": ints(8),
               "fc2.weight": ints(10, 8), "fc2.bias": ints(10)}
    return graphs.channel_last_model(weights, channels)


def test_analysis_finds_the_channel_axes_of_a_channel_last_graph():
    acts = {a.name: (a.axis, a.channels) for a in analyse(_integer_model()).activations}
    assert acts == {"relu1": (3, CHANNELS), "relu2": (3, CHANNELS), "relu3": (1, 8)}


@pytest.mark.parametrize("axis", [3, -1])
def test_neuron_bias_and_addend_on_the_last_axis_match_the_reference(axis):
    t, n, c = 6, 2, 5
    rng = np.random.default_rng(7)
    x = rng.normal(size=(t * n, 3, 4, c)).astype(np.float32)
    addend = rng.normal(size=x.shape).astype(np.float32)
    theta = rng.uniform(0.2, 1.2, c).astype(np.float32)
    bias = rng.normal(size=c).astype(np.float32) * 0.3
    node = helper.make_node("IFNeuron", ["x", "theta", "", "", "a", "b"], ["s"], domain=DOMAIN, timesteps=t, axis=axis)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, None)
                                            for k in ("x", "theta", "a", "b")],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    got = runtime.session(model, rewrite=False).run(None, {"x": x, "theta": theta, "a": addend, "b": bias})[0]
    want = if_neuron(((x + addend) + bias).astype(np.float32), theta, t, axis=axis)
    assert np.array_equal(got, want) and want.any()


def _hand_corrections(kind, acts):
    rng = np.random.default_rng(5)
    per_sample = {"relu1": 8 * 8 * CHANNELS, "relu2": 8 * 8 * CHANNELS, "relu3": 8}
    bias = {a.name: (rng.integers(-4, 5, size=a.channels) / 4).astype(np.float32) for a in acts}
    potential = {k: (rng.integers(-4, 9, size=n) / 4).astype(np.float32) for k, n in per_sample.items()}
    return Thresholds({a.name: (2.0 ** rng.integers(0, 3, size=a.channels)).astype(np.float32) for a in acts}, "manual",
                      bias=bias if kind != "potential" else {}, potential=potential if kind != "bias" else {})


@pytest.mark.parametrize("kind", ["bias", "potential", "both"])
def test_every_form_applies_corrections_on_a_channel_last_model_exactly(kind):
    """Exactly representable weights, thresholds, currents and potentials: every form (the sessions'
    rewritten graph included) equals the NumPy reference bit for bit."""
    model = _integer_model()
    th = _hand_corrections(kind, analyse(model).activations)
    x = np.random.default_rng(0).integers(-2, 4, size=(3, 8, 8, 1)).astype(np.float32)
    base, _ = to_snn(model, th, SNNConfig(timesteps=16))
    want = reference.run(base, {"input": x})[0]
    plain = reference.run(to_snn(model, Thresholds(th.values, "manual"), SNNConfig(timesteps=16))[0], {"input": x})[0]
    assert not np.array_equal(want, plain)           # the corrections change the output
    for kw in FORMS:
        snn, _ = to_snn(model, th, SNNConfig(timesteps=16, **kw))
        for rewrite in (False, True):
            got = runtime.session(snn, rewrite=rewrite).run(None, {"input": x})[0]
            assert np.array_equal(got, want), (kw, rewrite)


@pytest.mark.parametrize("kind", ["bias", "potential", "both"])
def test_corrections_measured_on_a_channel_last_model_give_equal_outputs_in_every_form(kind, tmp_path):
    """The conversion measures the corrections on data (per channel on the last axis) and every
    form runs the result to the same outputs."""
    model = _integer_model(seed=1)
    path = tmp_path / "nhwc.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", input=rng.uniform(0, 1, size=(96, 8, 8, 1)).astype(np.float32))
    x = rng.uniform(0, 1, size=(8, 8, 8, 1)).astype(np.float32)
    done = convert(path, data=str(tmp_path / "calib.npz"), write=False,
                   calib=__import__("onnx2snn").CalibConfig(iters=20, batch_size=32),
                   snn=SNNConfig(timesteps=16, correct=kind), correct_samples=64)
    th = done.thresholds
    assert th.info["correction"]["kind"] == kind
    if kind != "potential":
        assert {k: v.shape for k, v in th.bias.items()} == {"relu1": (CHANNELS,), "relu2": (CHANNELS,), "relu3": (8,)}
    outs = {}
    for kw in FORMS:
        snn, _ = to_snn(analyse(model), th, SNNConfig(timesteps=16, **kw))
        outs[json.dumps(kw)] = runtime.session(snn).run(None, {"input": x})[0]
    first = next(iter(outs.values()))
    assert np.abs(first).max() > 0
    for key, out in outs.items():
        np.testing.assert_allclose(out, first, rtol=1e-5, atol=1e-5 * np.abs(first).max(), err_msg=key)


def _wrong_bias_graph():
    node = helper.make_node("IFNeuron", ["x", "theta", "", "", "", "b"], ["s"], name="relu7", domain=DOMAIN,
                            timesteps=2, axis=3)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 2, 3])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)],
                              [helper.make_tensor("theta", TensorProto.FLOAT, [3], [1.0] * 3),
                               helper.make_tensor("b", TensorProto.FLOAT, [2], [0.5, 0.5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, OPSET_VERSION)])


def test_an_operator_refusing_a_conversion_steps_inputs_is_reported_as_ours():
    sess = runtime.session(_wrong_bias_graph(), rewrite=False)
    x = {"x": np.ones((4, 2, 2, 3), np.float32)}
    with runtime.step("bias correction"), pytest.raises(InternalError) as err:
        runtime.run_checked(sess, ["s"], x, "correction")
    message = str(err.value)
    assert message.startswith("bias correction: onnx2snn's IFNeuron operator at node 'relu7' refused")
    assert "bias has 2 values" in message and "report it" in message and "rejected the data" not in message
    with pytest.raises(UserError) as err:                 # outside a conversion step (eval/run of a file)
        runtime.run_checked(sess, ["s"], x, "evaluation")
    assert "IFNeuron node 'relu7' refused its input" in str(err.value) and "rejected the data" not in str(err.value)


def test_cli_names_the_step_and_node_when_a_conversion_builds_inputs_an_operator_refuses(tmp_path, capsys,
                                                                                        monkeypatch):
    from onnx2snn.fit import steps as choices
    model = _integer_model()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", input=np.random.default_rng(0).uniform(size=(40, 8, 8, 1)).astype(np.float32))
    real = choices.correct

    def broken(analysis, th, snn, feeds, kind, **kw):   # a bias one value short, as the old bug made
        out = real(analysis, th, snn, feeds, kind, **kw)
        if kind == "bias":
            out.bias["relu2"] = out.bias["relu2"][:-1]
        return out
    monkeypatch.setattr(choices, "correct", broken)
    code = main([str(tmp_path / "m.onnx"), "--data", str(tmp_path / "c.npz"), "-o", str(tmp_path / "o.snn.onnx"),
                 "-T", "8", "--iters", "5", "--correct", "bias", "--delay", "0", "--check", "8", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "internal error in " in err and "relu2" in err, err
    assert "report it" in err and "rejected the data" not in err
