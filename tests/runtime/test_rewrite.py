"""The unrolled rewrite: neurons, MaxPool handling, drop-in I/O, bad graphs."""
import json

import numpy as np
import onnx
import pytest

from tools.fixtures import graphs
from onnx2snn.ops.neuron import DOMAIN
from onnx2snn import SNNConfig, Thresholds, UserError, runtime, to_snn
from onnx2snn.ops import reference
from onnx2snn.graph import onnx_io as M


def _thresholds(model, value=1.0, layerwise=False):
    from onnx2snn.graph.analyse import find_activations
    acts = find_activations(M.to_graph(M.load_proto(model)))
    return Thresholds({a.name: np.full(1 if layerwise else a.channels, value, np.float32) for a in acts},
                      "manual", {"source": "test"})


def _maxpool(x, k=2):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // k, k, w // k, k).max(axis=(3, 5))


def test_spiking_max_pool_rate_converges_to_max_of_input_rates():
    model = graphs.spiking_pool_model(3)
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.2, 1.2, size=(16, 3, 4, 4)).astype(np.float32)
    target = _maxpool(np.clip(x, 0, 1))          # the ANN with theta = 1 everywhere
    errors, naive_errors = [], []
    for t in (8, 32, 128, 512):
        snn, layers = to_snn(model, _thresholds(model, 1.0), SNNConfig(timesteps=t))
        assert [l.role for l in layers] == ["neuron", "after spiking max pool"]
        out = runtime.session(snn).run(None, {"input": x})[0]
        errors.append(np.abs(out - target).mean())
        # what the paper's plain move computes on spikes: max over each step's input spikes
        from onnx2snn import if_neuron
        spikes = if_neuron(np.tile(x, (t, 1, 1, 1)), np.ones(3, np.float32), t)
        naive = if_neuron(_maxpool(spikes), np.ones(3, np.float32), t)
        naive_errors.append(np.abs(naive.reshape(t, *x.shape[:2], 2, 2).mean(0) - target).mean())
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.01
    assert errors[-1] < naive_errors[-1] / 5, (errors, naive_errors)


def _conv(x, w, pad):
    """NCHW convolution in float64 NumPy (stride 1)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    h, wd = x.shape[2] - k + 1, x.shape[3] - k + 1
    cols = np.stack([x[:, :, i:i + h, j:j + wd] for i in range(k) for j in range(k)], axis=2)
    return np.einsum("nckhw,ock->nohw", cols, w.reshape(w.shape[0], w.shape[1], -1))


def test_time_invariant_max_pool_is_moved_in_front_and_exact():
    """The pool after the first activation sees constant currents: the SNN pools them and puts the
    neuron after the pool. Its outputs equal a NumPy simulation of that network written out here
    (conv -> max pool -> IF -> conv -> IF -> mean over steps -> GAP -> Gemm), which never touches
    the converter's graph, and converge to the clipped ANN as T grows."""
    model = graphs.stem_pool_model(integer=True)
    w = {i.name: onnx.numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    th = Thresholds({"relu1": np.full(4, 2.0, np.float32), "relu2": np.full(6, 4.0, np.float32)}, "manual")
    x = np.round(np.random.default_rng(1).normal(size=(8, 2, 6, 6)) * 4).astype(np.float32) / 4
    from onnx2snn import if_neuron
    c1 = _conv(x.astype(np.float64), w["w1"], 1).astype(np.float32)      # exact: quarters x integers
    errors = []
    for t in (8, 64):
        snn, layers = to_snn(model, th, SNNConfig(timesteps=t))
        assert [l.role.startswith("after pool (moved in front") for l in layers] == [True, False]
        s1 = if_neuron(np.tile(_maxpool(c1), (t, 1, 1, 1)), th.values["relu1"], t)
        c2 = _conv(s1.astype(np.float64), w["w2"], 0).astype(np.float32)
        s2 = if_neuron(c2, th.values["relu2"], t)
        rate = s2.reshape(t, 8, 6, 3, 3).mean(axis=0).mean(axis=(2, 3))
        want = rate.astype(np.float64) @ w["w3"].T
        got = runtime.session(snn).run(None, {"input": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # the clipped ANN with the same thresholds: the SNN's rates converge to it
        a1 = np.clip(_maxpool(c1), 0, 2.0)
        a2 = np.clip(_conv(a1.astype(np.float64), w["w2"], 0), 0, 4.0).mean(axis=(2, 3))
        errors.append(np.abs(got - a2 @ w["w3"].T).mean())
    assert errors[1] < errors[0] / 4, errors


def _cut(model, tensor):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend([onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)])
    return m


def test_snn_is_a_drop_in_replacement_with_metadata():
    model = graphs.stem_pool_model()
    snn, _ = to_snn(model, _thresholds(model), SNNConfig(timesteps=8, delay=2, v_init=0.25))
    assert [(i.name, i.type) for i in snn.graph.input] == [(i.name, i.type) for i in model.graph.input]
    assert [(o.name, o.type) for o in snn.graph.output] == [(o.name, o.type) for o in model.graph.output]
    meta = M.get_metadata(snn)
    assert meta["onnx2snn.timesteps"] == "8" and meta["onnx2snn.delay"] == "2"
    assert meta["onnx2snn.v_init"] == "0.25" and meta["onnx2snn.method"] == "manual"
    assert json.loads(meta["onnx2snn.thresholds"]) == {"source": "test"}
    assert "onnx2snn.version" in meta
    neurons = [n for n in snn.graph.node if n.op_type == "IFNeuron"]
    assert len(neurons) == 2 and all(n.domain == DOMAIN for n in neurons)
    out = runtime.session(snn).run(None, {"input": np.ones((3, 2, 6, 6), np.float32)})[0]
    assert out.shape == (3, 5) and out.dtype == np.float32


def test_delay_discards_the_first_steps():
    model = graphs.stem_pool_model(integer=True)
    x = np.ones((2, 2, 6, 6), np.float32)
    th = _thresholds(model, 2.0)
    snn, _ = to_snn(model, th, SNNConfig(timesteps=12, delay=4))
    got = runtime.session(snn).run(None, {"input": x})[0]
    assert np.array_equal(got, reference.run(snn, {"input": x})[0])


def test_nonlinear_op_between_spiking_layers_is_reported_by_name():
    model = graphs.hard_gate_model()
    with pytest.raises(UserError, match="Greater 'gate'"):
        to_snn(model, _thresholds(model), SNNConfig(timesteps=4))


def test_thresholds_for_the_wrong_model_are_rejected():
    model = graphs.stem_pool_model()
    bad = Thresholds({"relu1": np.ones(3, np.float32), "relu2": np.ones(6, np.float32)}, "manual")
    with pytest.raises(UserError, match="'relu1' has 4 channels"):
        to_snn(model, bad, SNNConfig(timesteps=4))


def test_fixed_batch_reshape_is_freed_for_time_folding():
    model = graphs.fixed_batch_mlp()
    th = _thresholds(model, 0.5)
    x = np.random.default_rng(0).normal(size=(1, 2, 2, 2)).astype(np.float32)
    for form in ("unrolled", "loop"):
        snn, _ = to_snn(model, th, SNNConfig(timesteps=8, form=form))
        got = runtime.session(snn).run(None, {"input": x})[0]
        assert got.shape == (1, 3)
        np.testing.assert_allclose(got, reference.run(to_snn(model, th, SNNConfig(timesteps=8))[0],
                                                      {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_conversion_is_deterministic():
    model = graphs.stem_pool_model()
    th = _thresholds(model)
    for form in ("unrolled", "loop"):
        a = to_snn(model, th, SNNConfig(timesteps=8, form=form))[0].SerializeToString()
        b = to_snn(model, th, SNNConfig(timesteps=8, form=form))[0].SerializeToString()
        assert a == b


def test_channel_axis_is_traced_through_transposes():
    from onnx2snn.graph.analyse import find_activations
    model = graphs.nhwc_model()
    acts = {a.name: a for a in find_activations(M.to_graph(M.load_proto(model)))}
    assert (acts["relu1"].axis, acts["relu1"].channels) == (3, 5)
    assert (acts["relu2"].axis, acts["relu2"].channels) == (1, 4)
    th = Thresholds({"relu1": np.linspace(0.5, 2, 5).astype(np.float32),
                     "relu2": np.linspace(0.5, 1, 4).astype(np.float32)}, "manual")
    snn, _ = to_snn(model, th, SNNConfig(timesteps=16))
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(runtime.session(snn).run(None, {"input": x})[0],
                               reference.run(snn, {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_pool_branch_gets_its_own_neuron_and_skip_keeps_the_original():
    model = graphs.unet_like_model()
    th = _thresholds(model, 1.0)
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    ann = runtime.session(model).run(None, {"input": x})[0]
    # the ANN with every activation clipped at theta = 1 (what the SNN's rates converge to)
    clipped = onnx.ModelProto()
    clipped.CopyFrom(model)
    for node in clipped.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Clip"
            node.input.extend(["zero", "one"])
    clipped.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(0, np.float32), "zero"),
                                      onnx.numpy_helper.from_array(np.array(1, np.float32), "one")])
    target = runtime.session(clipped).run(None, {"input": x})[0]
    errors = []
    for t in (16, 64, 256):
        snn, layers = to_snn(model, th, SNNConfig(timesteps=t))
        roles = {l.name: l.role for l in layers}
        assert roles["relu1"] == "neuron" and roles["relu1>down"] == "after spiking max pool"
        errors.append(np.abs(runtime.session(snn).run(None, {"input": x})[0] - target).mean())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02 * np.abs(target).mean() + 0.01
    assert not np.allclose(ann, target)   # the clip matters: the test is not trivial
