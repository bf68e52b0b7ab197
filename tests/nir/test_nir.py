"""NIR export (onnx2snn.nir): the graph to_nir writes, what it refuses, nir.write/nir.read, and the
NumPy NIR simulation against onnxruntime's run of the SNN (bit for bit on exactly representable
models, within float rounding otherwise)."""
import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx2snn
from onnx2snn import SNNConfig, Thresholds, runtime, to_snn
from onnx2snn.errors import UserError
from tools.fixtures import graphs
from tools.fixtures.nir_graphs import (D, T, activations, concat_model, conv_pool_linear, folded_constants_model,
                                       option_a_shortcut_model, power_of_two_thresholds, residual_block, sample_input)

nir = pytest.importorskip("nir", reason="the NIR export needs the optional `nir` package (pip install nir==1.0.8)")
from onnx2snn.nir import run_nir, to_nir  # noqa: E402


def _ort(snn, x, names):
    """onnxruntime's values of any tensors of the SNN (added as outputs of a copy)."""
    model = copy.deepcopy(snn)
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    return dict(zip(names, runtime.session(model).run(list(names), {"input": x})))


def _compare(snn, graph, info, x, timesteps=T, delay=D):
    """(NIR simulation, onnxruntime values, per-IF spike counts from onnxruntime's spikes)."""
    spikes = {n.name: n.output[0] for n in snn.graph.node if n.op_type == "IFNeuron"}
    names = [r["mean"] for r in info["readout"]] + list(spikes.values()) + [i["onnx_tensor"] for i in info["inputs"]]
    ref = _ort(snn, x, list(dict.fromkeys(names)))
    feeds = x if info["input_coding"] == "direct" else {i["node"]: ref[i["onnx_tensor"]] for i in info["inputs"]}
    sim = run_nir(graph, feeds, timesteps, delay)
    counts = {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.IF):
            s = ref[spikes[node.metadata["onnx_node"]]]
            counts[name] = (s != 0).reshape((timesteps, x.shape[0]) + s.shape[1:]).sum(0)
    return sim, ref, counts


def _types(graph):
    return {name: type(node).__name__ for name, node in graph.nodes.items()}


# ---- the exported graph ----------------------------------------------------------------------------

def test_conv_pool_linear_exports_conv_sumpool_flatten_affine_and_if_nodes():
    model = conv_pool_linear()
    th = power_of_two_thresholds(model, silent=[("relu1", 1), ("relu3", 4)])
    snn, _ = to_snn(model, th, SNNConfig(timesteps=T, delay=D))
    graph, info = to_nir(snn)
    types = _types(graph)
    assert types == {"input": "Input", "conv1": "Conv2d", "relu1": "IF", "avgpool": "SumPool2d", "conv2": "Conv2d",
                     "relu2": "IF", "flatten": "Flatten", "fc1": "Affine", "relu3": "IF", "relu3.scale": "Scale",
                     "readout.r3": "Output"}
    assert graph.edges == [("input", "conv1"), ("conv1", "relu1"), ("relu1", "avgpool"), ("avgpool", "conv2"),
                           ("conv2", "relu2"), ("relu2", "flatten"), ("flatten", "fc1"), ("fc1", "relu3"),
                           ("relu3", "relu3.scale"), ("relu3.scale", "readout.r3")]
    graph.infer_types()                                   # NIR's own type inference and check
    assert graph.check_types()
    n = graph.nodes
    assert list(n["input"].output_type["output"]) == [2, 8, 8]
    assert list(n["avgpool"].kernel_size) == [2, 2] and list(n["avgpool"].output_type["output"]) == [4, 4, 4]
    assert n["flatten"].start_dim == 0 and list(n["flatten"].output_type["output"]) == [96]
    assert n["fc1"].weight.shape == (10, 96) and list(n["readout.r3"].output_type["output"]) == [10]
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    th1, th2, th3 = (th.values[k] for k in ("relu1", "relu2", "relu3"))
    # θ folded: rows divided by the neuron's θ (zero for its silent channel), columns times the
    # incoming spikes' θ and the pool's 1/k²
    want1 = np.where(th1[:, None, None, None] > 0, init["w1"] / np.maximum(th1, 1)[:, None, None, None], 0)
    assert np.array_equal(n["conv1"].weight, want1)
    assert np.array_equal(n["conv1"].bias, np.where(th1 > 0, init["b1"] / np.maximum(th1, 1), 0))
    assert np.array_equal(n["conv2"].weight, init["w2"] * th1[None, :, None, None] / 4 / th2[:, None, None, None])
    for name, shape in (("relu1", (4, 8, 8)), ("relu2", (6, 4, 4)), ("relu3", (10,))):
        node = n[name]
        assert node.r.shape == node.v_threshold.shape == node.v_reset.shape == shape
        assert np.all(node.r == 1) and np.all(node.v_threshold == 1) and np.all(node.v_reset == 0)
        theta = th.values[name].reshape([-1] + [1] * (len(shape) - 1))
        assert node.metadata["reset"] == "subtract" and node.metadata["firing"] == "v > v_threshold"
        assert np.array_equal(node.metadata["v0"], np.broadcast_to(np.where(theta > 0, 0.5, 0), shape))
        assert np.array_equal(node.metadata["theta"], th.values[name])
    # the readout in the ONNX tensor's units (a silent channel's spikes are 0 whatever the factor)
    assert np.array_equal(n["relu3.scale"].scale, np.where(th3 > 0, th3, 1))
    meta = graph.metadata
    assert (meta["timesteps"], meta["delay"], meta["reset"], meta["firing"], meta["input_coding"]) == \
        (T, D, "subtract", "v > v_threshold", "direct")
    assert info["input_coding"] == "direct" and info["inputs"][0]["shape"] == [2, 8, 8]
    assert info["readout"] == [{"output": "readout.r3", "steps": "r3", "mean": info["readout"][0]["mean"],
                                "averaged_steps": [D + 1, T], "shape": [10]}]
    assert info["host"] == [{"node": "fc2", "op": "Gemm", "when": "after"}]


def test_residual_sum_becomes_converging_edges_with_corrections_folded():
    model = residual_block()
    th = power_of_two_thresholds(model, seed=5)
    rng = np.random.default_rng(1)
    th.bias["relu2"] = (rng.integers(-2, 3, size=4) * 0.25).astype(np.float32)          # input current
    th.potential["relu1"] = (rng.integers(0, 4, size=4 * 36) * 0.25).astype(np.float32)  # v0 per neuron
    snn, _ = to_snn(model, th, SNNConfig(timesteps=T, delay=D))
    graph, info = to_nir(snn)
    into = sorted(src for src, dst in graph.edges if dst == "relu2")
    assert into == ["conv2", "relu1.scale"]                # the skip edge converts relu1's θ to relu2's
    th1, th2 = th.values["relu1"], th.values["relu2"]
    assert np.array_equal(graph.nodes["relu1.scale"].scale, np.broadcast_to((th1 / th2)[:, None, None], (4, 6, 6)))
    assert np.array_equal(graph.nodes["conv2"].bias, th.bias["relu2"] / th2)   # the bias correction
    assert np.array_equal(graph.nodes["relu1"].metadata["v0"],
                          th.potential["relu1"].reshape(4, 6, 6) / th1[:, None, None])
    assert [h["node"] for h in info["host"]] == ["gap", "flatten", "fc"]
    assert info["neurons"]["relu2"]["inputs"] == 2


@pytest.mark.parametrize("make,silent", [(conv_pool_linear, [("relu1", 1), ("relu3", 4)]),
                                         (residual_block, [("relu2", 0)]), (folded_constants_model, []),
                                         (lambda: concat_model(integer=True), [("relu1", 2)]),
                                         (option_a_shortcut_model, [("relu1", 1)])])
def test_simulation_equals_onnxruntime_bit_for_bit(make, silent):
    """Integer weights and inputs, power-of-two θ (some 0): every sum and every folded weight is
    exact, so the NIR graph's spike trains and readout are the SNN's exactly."""
    model = make()
    th = power_of_two_thresholds(model, silent=silent)
    th.bias[activations(model)[-1].name] = np.full(activations(model)[-1].channels, 0.5, np.float32)
    snn, _ = to_snn(model, th, SNNConfig(timesteps=T, delay=D))
    graph, info = to_nir(snn)
    x = sample_input(model, 6)
    sim, ref, counts = _compare(snn, graph, info, x)
    (readout,) = info["readout"]
    got, want = sim["readout"][readout["output"]], ref[readout["mean"]]
    assert got.shape == want.shape and np.array_equal(got, want)
    assert 0.2 < np.mean(want != 0) < 1                    # neither silent nor saturated
    for name, count in counts.items():
        assert np.array_equal(sim["spike_counts"][name], count), name
    for name, channel in silent:                            # θ = 0: never fires in NIR either
        assert not sim["spike_counts"][name][:, channel].any()


@pytest.mark.parametrize("make", [conv_pool_linear, residual_block])
def test_simulation_matches_onnxruntime_within_rounding_on_float_models(make):
    """Float weights and θ: the folded weights round differently (export.py, "Rounding"), so a
    potential within a few ulps of the threshold may fire a step apart; such flips are rare."""
    model = make(seed=1, integer=False)
    rng = np.random.default_rng(1)
    th = Thresholds({a.name: rng.uniform(0.3, 1.5, size=a.channels).astype(np.float32) for a in activations(model)},
                    "manual")
    snn, _ = to_snn(model, th, SNNConfig(timesteps=32, delay=3))
    graph, info = to_nir(snn)
    x = sample_input(model, 64, integer=False)
    sim, ref, counts = _compare(snn, graph, info, x, 32, 3)
    (readout,) = info["readout"]
    got, want = sim["readout"][readout["output"]], ref[readout["mean"]]
    assert np.mean(want != 0) > 0.2
    assert np.abs(got - want).mean() <= 1e-4 * np.abs(want).max()
    for name, count in counts.items():
        assert np.mean(sim["spike_counts"][name] == count) >= 0.999, name


def test_batch_norm_constant_factors_and_a_subtracted_skip_fold_into_weights():
    model = folded_constants_model()
    snn, _ = to_snn(model, power_of_two_thresholds(model), SNNConfig(timesteps=T, delay=D))
    graph, info = to_nir(snn)
    assert _types(graph) == {"input": "Input", "conv1": "Conv2d", "relu1": "IF", "conv2": "Conv2d",
                             "relu1.scale": "Scale", "relu2": "IF", "relu2.scale": "Scale",
                             "readout.out_steps": "Output"}
    assert sorted(src for src, dst in graph.edges if dst == "relu2") == ["conv2", "relu1.scale"]
    assert np.all(graph.nodes["relu1.scale"].scale < 0)    # the subtracted skip: a negative factor
    assert info["host"] == []


def test_stem_with_a_max_pool_stays_on_the_host_and_the_graph_input_is_the_current():
    model = graphs.stem_pool_model(integer=True)       # Conv-Relu-MaxPool: the pool moves before the neuron
    th = power_of_two_thresholds(model)
    snn, _ = to_snn(model, th, SNNConfig(timesteps=T, delay=D))
    graph, info = to_nir(snn)
    assert info["input_coding"] == "current" and graph.metadata["input_coding"] == "current"
    assert "MaxPool 'pool1'" in info["host_inputs_reason"]
    assert info["inputs"] == [{"node": "pool1_pooled_current", "onnx_tensor": "pool1/pooled_current",
                               "shape": [4, 3, 3]}]
    assert [(h["node"], h["when"]) for h in info["host"]] == [("conv1", "before"), ("pool1", "before"),
                                                               ("gap", "after"), ("flatten", "after"), ("fc", "after")]
    x = sample_input(model, 6)
    sim, ref, counts = _compare(snn, graph, info, x)
    (readout,) = info["readout"]
    assert np.array_equal(sim["readout"][readout["output"]], ref[readout["mean"]])
    assert all(np.array_equal(sim["spike_counts"][k], v) for k, v in counts.items())


# ---- refusals --------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,config,words", [
    (graphs.spiking_pool_model, {}, ["SpikingMaxPool 'pool'", "average pooling"]),
    (graphs.nhwc_model, {}, ["Transpose 'to_nchw2'", "NCHW"]),      # the first one stays on the host
    (graphs.nonlinear_middle_model, {"keep_analog": True}, ["Sigmoid 'squash'", "--keep-analog"]),
    (graphs.nonlinear_middle_model, {}, ["expectation compensation", "'squash'", "ReLU-like"]),
    (graphs.residual_integer_model, {"form": "loop"}, ["loop form", "form unrolled"]),
    (residual_block, {"portable": True}, ["portable", "without portable"]),
])
def test_what_nir_cannot_express_is_refused_with_node_reason_and_way_forward(make, config, words):
    model = make()
    snn, _ = to_snn(model, power_of_two_thresholds(model), SNNConfig(timesteps=8, **config))
    with pytest.raises(UserError) as err:
        to_nir(snn)
    message = str(err.value)
    assert message.startswith("to_nir: ") and "\n" not in message
    for word in words:
        assert word in message, message


def test_an_ann_is_refused():
    with pytest.raises(UserError, match="not a model converted by onnx2snn"):
        to_nir(residual_block())


# ---- files -----------------------------------------------------------------------------------------

def test_nir_write_read_round_trip_keeps_the_graph_and_its_behaviour(tmp_path):
    """The file-based flow: convert writes the SNN, to_nir exports it, nir.write/nir.read (which
    type-checks on reading) keep nodes, edges, parameters and metadata."""
    model = residual_block()
    onnx.save(model, tmp_path / "ann.onnx")
    th = power_of_two_thresholds(model, seed=5)
    th.potential["relu1"] = (np.arange(4 * 36) % 4 * 0.25).astype(np.float32)
    result = onnx2snn.convert(tmp_path / "ann.onnx", thresholds=th, output=tmp_path / "snn.onnx",
                              snn=SNNConfig(timesteps=T, delay=D))
    graph, _ = to_nir(onnx.load(result.output))
    nir.write(tmp_path / "snn.nir", graph)
    back = nir.read(tmp_path / "snn.nir")
    back.infer_types()
    assert back.check_types()
    assert _types(back) == _types(graph)
    assert sorted(back.edges) == sorted(graph.edges)
    for name, node in graph.nodes.items():
        for field in ("weight", "bias", "r", "v_threshold", "v_reset", "scale", "kernel_size", "stride", "padding"):
            if hasattr(node, field):
                assert np.array_equal(np.asarray(getattr(back.nodes[name], field)), np.asarray(getattr(node, field))), \
                    (name, field)
        assert list(back.nodes[name].output_type["output"]) == list(node.output_type["output"])
        for key, value in node.metadata.items():
            assert np.array_equal(np.asarray(back.nodes[name].metadata[key]), np.asarray(value)), (name, key)
    for key, value in graph.metadata.items():
        assert back.metadata[key] == value, key
    x = sample_input(model, 4, seed=2)
    a, b = run_nir(graph, x), run_nir(back, x)               # T and D from the metadata
    assert a["timesteps"] == T and a["delay"] == D
    assert all(np.array_equal(a["readout"][k], b["readout"][k]) for k in a["readout"])
    want = runtime.session(result.output).run(None, {"input": x})[0]
    fc = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w3"))
    host = a["readout"]["readout.r2"].mean(axis=(2, 3)) @ fc.T       # the host's GAP, Flatten, Gemm
    np.testing.assert_allclose(host, want, rtol=1e-6, atol=1e-6)


def test_slices_and_concatenation_become_fixed_one_by_one_convolutions():
    """The option-A shortcut: the two strided Slices are 1x1 Conv2d with strides (2, 1) and (1, 2),
    the zero channels leave no node, and the Concat places the subsampled channels at offset 2 of
    8 (a 1x1 Conv2d); relu1's θ goes into the first, relu2's into the last; it meets conv2 at relu2."""
    model = option_a_shortcut_model()
    th = power_of_two_thresholds(model)
    snn, _ = to_snn(model, th, SNNConfig(timesteps=T, delay=D))
    graph, _ = to_nir(snn)
    n = graph.nodes
    assert sorted(src for src, dst in graph.edges if dst == "relu2") == ["conv2", "pad_channels"]
    assert [tuple(n[k].stride) for k in ("rows", "columns")] == [(2, 1), (1, 2)]
    assert not any(k.startswith(("zeros", "some_channels")) for k in n)
    th1, th2 = th.values["relu1"], th.values["relu2"]
    assert np.array_equal(n["rows"].weight[:, :, 0, 0], np.diag(th1))     # the spikes' θ, absorbed first
    assert np.array_equal(n["columns"].weight[:, :, 0, 0], np.eye(4))
    want = np.zeros((8, 4))
    want[2:6] = np.eye(4)
    assert np.array_equal(n["pad_channels"].weight[:, :, 0, 0], want / th2[:, None])   # into relu2's units
