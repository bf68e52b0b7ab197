"""`--target speck` (onnx2snn.nir.speck): Speck layers cut from the NIR export, 8-bit quantisation with
one scale per layer, the layer rules and the memory (sinabs's validator, loaded without sinabs's
package or samna), and a per-layer reason for whatever does not fit."""
import json
import sys

from tools.fixtures import graphs
import numpy as np
import pytest
from onnx import helper

from onnx2snn import SNNConfig, Thresholds, to_snn
from onnx2snn.errors import UserError

nir = pytest.importorskip("nir", reason="the Speck check reads NIR graphs (pip install nir==1.0.8)")
from tools.fixtures.nir_graphs import (
    activations,
    sample_input,
    power_of_two_thresholds,
    conv_pool_linear,
    residual_block,
)

from onnx2snn.nir import run_nir, speck, to_nir
from onnx2snn.nir.speck import check_speck, quantise_speck

needs_sinabs = pytest.mark.skipif(speck.load_validator() is None,
                                  reason="the memory check needs sinabs (its validate_memory_speck.py)")


def _export(model, timesteps=8, delay=0, thresholds=None):
    snn, _ = to_snn(model, thresholds or power_of_two_thresholds(model), SNNConfig(timesteps=timesteps, delay=delay))
    return to_nir(snn)


def _float_export(make, seed):
    """Float weights, θ uniform in [0.3, 1.5] (the realistic case: nothing is exact)."""
    model = make(seed=seed, integer=False)
    rng = np.random.default_rng(seed)
    th = Thresholds({a.name: rng.uniform(0.3, 1.5, size=a.channels).astype(np.float32) for a in activations(model)},
                    "manual")
    return model, _export(model, 32, 3, th)


def _layer(report, weight):
    return next(L for L in report.layers if L.weight == weight)


def _one_line(problems):
    assert problems and all(isinstance(p, str) and "\n" not in p for p in problems)


# ---- a model that fits ----------------------------------------------------------------------------

@needs_sinabs
@pytest.mark.parametrize("make,seed", [(conv_pool_linear, 1), (residual_block, 1)])
def test_a_model_that_fits_passes_with_8_bit_integers_and_simulates_close_to_the_float_export(make, seed, tmp_path):
    model, (graph, info) = _float_export(make, seed)
    report = check_speck(graph, info)
    assert report.fits is True, report.text()
    assert report.all_problems == [] and report.memory_checked
    report.raise_if_unfit()                                   # no error
    q = quantise_speck(graph, report)
    for layer in report.layers:
        w, neuron = q.nodes[layer.weight], q.nodes[layer.neuron]
        assert np.array_equal(w.weight, np.round(w.weight)) and -128 <= w.weight.min() and w.weight.max() <= 127
        assert np.array_equal(w.bias, np.round(w.bias)) and -128 <= w.bias.min() and w.bias.max() <= 127
        assert layer.scale == int(layer.scale) >= 1             # an integer scale: the threshold is exact
        assert np.all(neuron.v_threshold == layer.threshold) and layer.threshold == layer.scale
        assert 1 <= layer.threshold <= 2 ** 15 - 1               # 16-bit state (sinabs discretize.py)
        v0 = neuron.metadata["v0"]
        assert np.array_equal(v0, np.round(v0)) and np.abs(v0).max() <= 2 ** 15 - 1
        levels = layer.error["weight_levels_used"]
        assert 64 <= levels <= 128                              # -128 is in range (sinabs too)
        assert layer.error["weight_max_rel"] <= 0.5 / (levels - 0.5)
        assert layer.memory["kernel_ki"] > 0 and layer.core is not None
        assert layer.chip["threshold_high"] == layer.threshold and layer.chip["threshold_low"] == -2 ** 15
    assert len({L.core for L in report.layers}) == len(report.layers)
    # the integer network simulates close to the float export: measured over seeds 1-5 of both models
    # (32 steps, 32 inputs): mean |Δ spike count| <= 0.011 per neuron and step, max |Δ| <= 4 spikes,
    # readout max |Δ| <= 0.095 (ONNX units); bounds below about 2x those for the seed used here
    x = sample_input(model, 32, seed=seed, integer=False)
    a, b = run_nir(graph, x), run_nir(q, x)
    for name, count in a["spike_counts"].items():
        diff = np.abs(count - b["spike_counts"][name])
        assert diff.mean() / 32 <= 0.01 and diff.max() <= 4, name
        assert count.mean() / 32 > 0.03, name                   # not silent
    (out,) = a["readout"]
    assert np.abs(a["readout"][out] - b["readout"][out]).max() <= 0.15
    # readable output: table, JSON, NIR file
    text = report.text()
    assert "fits" in text and all(L.weight in text for L in report.layers)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["fits"] is True and d["layers"][0]["problems"] == [] and "sinabs" in d["limits"]["cores"]["source"]
    nir.write(tmp_path / "speck.nir", q)
    back = nir.read(tmp_path / "speck.nir")
    assert sorted(back.edges) == sorted(q.edges)
    assert "samna" not in sys.modules                          # nothing imported samna


def test_layers_group_weight_neuron_and_pool_and_fold_the_residual_skip():
    graph, info = _export(conv_pool_linear())
    report = check_speck(graph, info)
    assert [L.nodes for L in report.layers] == [["conv1", "relu1", "avgpool"], ["conv2", "relu2"], ["fc1", "relu3"]]
    first, _, fc = report.layers
    assert first.kernel == (3, 3) and first.in_shape == (2, 8, 8) and first.out_shape == (4, 4, 4)
    assert first.destinations == [{"layer": "conv2", "pools": ["avgpool"], "pooling": (2, 2)}]
    assert first.sources == ["input"] and report.input["first_layers"] == ["conv1"]
    assert "events" in report.input["presentation"]
    assert fc.kind == "linear" and fc.kernel == (4, 4) and fc.in_shape == (6, 4, 4)   # Affine -> 4x4 conv
    assert any("relu3.scale" in h and "host" in h for h in report.host)               # the readout's θ
    # the identity skip of a residual block: same source as conv2, so it joins conv2's centre tap
    graph, info = _export(residual_block())
    report = check_speck(graph, info)
    assert [L.nodes for L in report.layers] == [["conv1", "relu1"], ["conv2", "relu1.scale", "relu2"]]
    q = quantise_speck(graph, report)
    assert "relu1.scale" not in q.nodes and sorted(s for s, d in q.edges if d == "relu2") == ["conv2"]
    assert report.all_problems == []


# ---- what does not fit: a reason per layer, naming the node and the rule -------------------------

def _non_square_kernel():
    """A NIR graph with a 3x5 convolution, built by hand: to_nir cannot write one with nir 1.0.8, whose
    Conv2d infers both output sizes from the kernel's height (ir/conv.py: weight.shape[2]), so its
    type check refuses the true shape; the graph is built with the type check off."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    nodes = {
        "input": nir.Input(input_type={"input": np.array([2, 6, 6])}),
        "conv1": nir.Conv2d(input_shape=(6, 6), weight=rng.normal(size=(4, 2, 3, 5)).astype(f32), stride=(1, 1),
                            padding=(1, 2), dilation=(1, 1), groups=1, bias=np.zeros(4, f32)),
        "relu1": nir.IF(r=np.ones((4, 6, 6), f32), v_threshold=np.ones((4, 6, 6), f32),
                        v_reset=np.zeros((4, 6, 6), f32), metadata={"v0": np.full((4, 6, 6), 0.5, f32)}),
        "flatten": nir.Flatten(input_type={"input": np.array([4, 6, 6])}, start_dim=0, end_dim=-1),
        "fc1": nir.Linear(weight=(rng.normal(size=(5, 144)) * 0.1).astype(f32)),
        "relu2": nir.IF(r=np.ones(5, f32), v_threshold=np.ones(5, f32), v_reset=np.zeros(5, f32),
                        metadata={"v0": np.full(5, 0.5, f32)}),
        "output": nir.Output(output_type={"output": np.array([5])}),
    }
    names = list(nodes)
    graph = nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), type_check=False,
                         metadata={"timesteps": 8, "delay": 0, "reset": "subtract", "firing": "v > v_threshold",
                                   "input_coding": "direct"})
    return graph, {"input_coding": "direct"}


def _non_square_map():
    """A 3x4x6 map flattened into a Gemm: sinabs makes the Affine a 4x6 convolution."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Flatten", ["r1"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2"], ["g2"], name="fc1", transB=1),
             helper.make_node("Relu", ["g2"], ["out"], name="relu2")]
    return graphs.make(nodes, {"w1": rng.normal(size=(3, 2, 1, 1)), "w2": rng.normal(size=(5, 72))},
                       ["N", 2, 4, 6], out_shape=["N", 5])


def _pool3():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("AveragePool", ["r1"], ["p1"], name="pool3", kernel_shape=[3, 3], strides=[3, 3]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["out"], name="relu2")]
    return graphs.make(nodes, {"w1": rng.normal(size=(4, 2, 3, 3)), "w2": rng.normal(size=(3, 4, 1, 1))},
                       ["N", 2, 6, 6], out_shape=["N", 3, 2, 2])


def _wide():
    """conv2 has 64 channels in and 256 out, 3x3: 64 * 2^(4+8) = 256Ki of kernel memory (cores: 64Ki at most)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["out"], name="relu2")]
    return graphs.make(nodes, {"w1": rng.normal(size=(64, 2, 3, 3)), "w2": rng.normal(size=(256, 64, 3, 3)) * 0.05},
                       ["N", 2, 4, 4], out_shape=["N", 256, 4, 4])


def _skip_past_a_layer():
    """relu0 skips conv2 (which reads relu1) into relu2: two sources, two kernels, one core."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0")]
    for i, src in ((1, "r0"), (2, "r1")):
        nodes += [helper.make_node("Conv", [src, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1])]
        if i == 1:
            nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    nodes += [helper.make_node("Add", ["c2", "r0"], ["a2"], name="skip"),
              helper.make_node("Relu", ["a2"], ["out"], name="relu2")]
    return graphs.make(nodes, {f"w{i}": rng.normal(size=(4, 2 if i == 0 else 4, 3, 3)) * 0.3 for i in range(3)},
                       ["N", 2, 5, 5], out_shape=["N", 4, 5, 5])


@pytest.mark.parametrize("make,layer,words", [
    (_non_square_kernel, "conv1", ["Conv2d 'conv1'", "kernel 3x5", "not square"]),
    (_non_square_map, "fc1", ["Linear 'fc1'", "3x4x6 map", "4x6 kernel", "not square"]),
    (_pool3, "conv1", ["SumPool2d 'pool3'", "pooling 3x3", "1, 2 or 4"]),
])
def test_layer_rules_give_a_per_layer_reason_naming_the_node(make, layer, words):
    graph, info = make() if make is _non_square_kernel else _export(make())
    report = check_speck(graph, info)
    assert report.fits is False
    problems = _layer(report, layer).problems
    _one_line(problems)
    assert any(all(w in p for w in words) for p in problems), problems
    others = [p for L in report.layers if L.weight != layer for p in L.problems]
    assert others == [] and report.problems == []              # only the offending layer
    assert layer in report.text() and "PROBLEM" in report.text()
    with pytest.raises(UserError) as err:
        report.raise_if_unfit()
    assert str(err.value).startswith("target speck: ") and "\n" not in str(err.value)
    assert json.loads(json.dumps(report.to_dict()))["fits"] is False


def test_more_layers_than_cores_names_each_layer_past_the_ninth():
    graph, info = _export(graphs.deep_chain_model(depth=12))
    report = check_speck(graph, info)
    assert len(report.layers) == 12 and report.fits is False
    for layer in report.layers[:9]:
        assert not any("cores" in p for p in layer.problems), layer.problems
    for i, layer in enumerate(report.layers[9:], start=10):
        assert layer.weight == f"gemm{i - 1}"
        assert any(f"layer {i} ('gemm{i - 1}'" in p and "Speck has 9 cores" in p for p in layer.problems), \
            layer.problems


@needs_sinabs
def test_a_wide_layer_does_not_fit_the_memory_and_says_which_and_why():
    graph, info = _export(_wide())
    report = check_speck(graph, info)
    assert report.fits is False
    wide = _layer(report, "conv2")
    assert wide.memory["kernel_ki"] == 256 and wide.memory["neuron_ki"] == 4 and wide.cores == []
    _one_line(wide.problems)
    assert any("conv2" in p and "256Ki" in p and "64Ki" in p and "validate_memory_speck" in p for p in wide.problems)
    assert _layer(report, "conv1").problems == [] and _layer(report, "conv1").memory["kernel_ki"] == 2   # 2*2^(4+6)
    assert "samna" not in sys.modules


def test_a_skip_that_bypasses_a_layer_is_refused_naming_the_scale_node():
    graph, info = _export(_skip_past_a_layer())
    assert "relu0.scale" in graph.nodes
    report = check_speck(graph, info)
    assert report.fits is False and report.problems == []
    problems = _layer(report, "conv2").problems
    _one_line(problems)
    assert any("Scale 'relu0.scale'" in p and "bypasses" in p and "'conv2' reads 'relu1'" in p
               for p in problems), problems
    assert [L.problems for L in report.layers[:2]] == [[], []]
    # the quantised graph keeps the refused skip, scaled by relu2's factor: it still computes the same thing
    q = quantise_speck(graph, report)
    assert np.allclose(q.nodes["relu0.scale"].scale, graph.nodes["relu0.scale"].scale * _layer(report, "conv2").scale)
    assert "not mappable" in q.nodes["relu0.scale"].metadata["speck_note"]


def test_current_coding_puts_the_first_neurons_on_the_host():
    model = graphs.stem_pool_model(integer=True)        # a MaxPool before the first neuron: host current
    graph, info = _export(model)
    assert info["input_coding"] == "current"
    report = check_speck(graph, info)
    assert report.fits is False
    assert any(p.startswith("IF 'relu1_pool1'") and "'pool1_pooled_current'" in p and "host" in p and "events" in p
               for p in report.problems), report.problems
    assert len(report.all_problems) == 1                     # conv2 reads the host's spikes: that part fits
    assert [L.nodes for L in report.layers] == [["conv2", "relu2"]] and report.layers[0].sources == ["host:relu1_pool1"]
    assert report.input["coding"] == "current" and report.input["first_layers"] == []
    assert report.input["host_neurons"] == ["relu1_pool1"]


def test_without_sinabs_the_rules_still_run_and_the_memory_is_not_checked(monkeypatch):
    monkeypatch.setattr(speck.limits, "load_validator", lambda: None)
    graph, info = _export(conv_pool_linear())
    report = check_speck(graph, info)
    assert report.fits is None and not report.memory_checked            # nothing broken, memory unknown
    assert report.memory_note == "not checked: sinabs not installed"
    assert all(L.memory is None and "memory not checked: sinabs not installed" in L.notes for L in report.layers)
    assert "not checked: sinabs not installed" in report.text()
    with pytest.raises(UserError, match="not checked: sinabs not installed"):
        report.raise_if_unfit()
    bad = check_speck(*_non_square_kernel())
    assert bad.fits is False and any("not square" in p for p in _layer(bad, "conv1").problems)
