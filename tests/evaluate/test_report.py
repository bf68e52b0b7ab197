"""The report's numbers against hand-computed ones on a two-neuron model, and the plots."""
import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx2snn import SNNConfig, Thresholds, UserError, api

# input [N, 2] -> Gemm (identity) -> Relu (theta 1 and 2) -> Gemm (2 -> 3, ones) -> out
#
# x = (0.3, 1.0), v_init = 0.5: neuron 0 (theta 1) starts at 0.5 and fires at steps 2 and 6
# (v: 0.8, 1.1>1 fire, 0.4, 0.7, 1.0 not > 1, 1.3 fire, 0.6, 0.9); neuron 1 (theta 2) starts at 1.0
# and fires at every second step. Spikes: T=4 -> 1 + 2 = 3, T=8 -> 2 + 4 = 6.
# Each spike drives 3 synaptic operations (the next Gemm has 3 outputs): SOPs 9 and 18.
# MACs: 2x2 + 2x3 = 10 (the first Gemm, 4 MACs, runs once before the neurons).
# Clipped ANN activation (0.3, 1.0); SNN rate x theta at T=8: (2/8, 4*2/8) = (0.25, 1.0):
# rate error 0.05 / 1.3.


def _model():
    nodes = [helper.make_node("Gemm", ["input", "w1"], ["g1"], name="fc1"),
             helper.make_node("Relu", ["g1"], ["r1"], name="relu"),
             helper.make_node("Gemm", ["r1", "w2"], ["out"], name="fc2")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", 1, ["N", 2])],
                              [helper.make_tensor_value_info("out", 1, ["N", 3])],
                              [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w1"),
                               numpy_helper.from_array(np.ones((2, 3), np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def tiny(tmp_path):
    onnx.save(_model(), tmp_path / "tiny.onnx")
    Thresholds({"relu": np.array([1.0, 2.0], np.float32)}, "manual").save(tmp_path / "th.json")
    np.savez(tmp_path / "data.npz", input=np.array([[0.3, 1.0]], np.float32), y=np.array([0]))
    return tmp_path


@pytest.mark.parametrize("form", [dict(), dict(form="loop", chunk=4)])
def test_report_numbers_by_hand(tiny, form):
    api.convert(tiny / "tiny.onnx", thresholds=tiny / "th.json", output=tiny / "s.onnx",
                snn=SNNConfig(timesteps=8, **form))
    api.evaluate_file(tiny / "s.onnx", data=str(tiny / "data.npz"), ann_path=tiny / "tiny.onnx", timesteps=[4, 8],
                      report_path=tiny / "r.json", e_sop=0.077, e_mac=12.5)
    r = json.loads((tiny / "r.json").read_text())
    assert r["ann"]["macs"] == 10 and r["ann"]["energy_pj"] == pytest.approx(125.0)
    assert r["ann"]["frames_per_joule"] == pytest.approx(1e12 / 125.0)
    t4, t8 = r["timesteps"]
    assert (t4["T"], t4["sops"], t8["T"], t8["sops"]) == (4, 9.0, 8, 18.0)
    assert t4["energy_pj"] == pytest.approx(4 * 12.5 + 9 * 0.077)
    assert t8["energy_ratio"] == pytest.approx((4 * 12.5 + 18 * 0.077) / 125.0)
    assert t8["frames_per_joule"] == pytest.approx(1e12 / (4 * 12.5 + 18 * 0.077))
    assert r["sop90"] == {"T": 4, "sops": 9.0, "basis": "accuracy"} and r["sop95"]["T"] == 4
    (layer,) = r["layers"]
    assert r["layers_T"] == 8 and layer["neurons"] == 2
    assert layer["firing_rate"] == pytest.approx(6 / 16)
    assert layer["silent"] == 0 and layer["saturated"] == 0
    assert layer["rate_error"] == pytest.approx(0.05 / 1.3, rel=1e-5)
    assert layer["theta"]["values"] == [1.0, 2.0]
    # the layer that feeds it and the error it adds (no neuron upstream: all of its rate error)
    assert layer["kind"] == "dense" and layer["upstream"] == []
    assert layer["error_added"] == pytest.approx(layer["rate_error"])


def test_silent_and_saturated_neurons_are_counted(tiny):
    np.savez(tiny / "data.npz", input=np.array([[-1.0, 5.0]], np.float32), y=np.array([0]))
    api.convert(tiny / "tiny.onnx", thresholds=tiny / "th.json", output=tiny / "s.onnx", snn=SNNConfig(timesteps=8))
    res = api.evaluate_file(tiny / "s.onnx", data=str(tiny / "data.npz"), timesteps=[8], report_path=tiny / "r.json")
    (layer,) = res.report["layers"]
    # neuron 0 gets -1: never fires; neuron 1 gets 5 > theta 2: fires at every step
    assert (layer["silent"], layer["saturated"], layer["firing_rate"]) == (0.5, 0.5, 0.5)
    assert layer["rate_error"] is None              # no --ann: no clipped activation to compare with


def test_plots_are_written_and_not_empty(tiny):
    pytest.importorskip("matplotlib", reason="matplotlib is in the `plots` extra")
    api.convert(tiny / "tiny.onnx", thresholds=tiny / "th.json", output=tiny / "s.onnx", snn=SNNConfig(timesteps=8))
    (tiny / "plots").mkdir()
    api.evaluate_file(tiny / "s.onnx", data=str(tiny / "data.npz"), ann_path=tiny / "tiny.onnx", timesteps=[2, 4, 8],
                      plot_dir=tiny / "plots")
    for name in api.PLOTS:
        data = (tiny / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_plot_without_matplotlib_names_the_extra(tiny, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    from onnx2snn.evaluate.plots import plot_report
    with pytest.raises(UserError, match=r"onnx2snn\[plots\]"):
        plot_report({"timesteps": [], "ann": {"accuracy": None}, "layers": []}, tiny)


def test_report_counts_neurons_per_sample(tiny):
    np.savez(tiny / "data3.npz", input=np.array([[0.3, 1.0]] * 3, np.float32), y=np.array([0, 0, 0]))
    api.convert(tiny / "tiny.onnx", thresholds=tiny / "th.json", output=tiny / "s.onnx", snn=SNNConfig(timesteps=8))
    api.evaluate_file(tiny / "s.onnx", data=str(tiny / "data3.npz"), ann_path=tiny / "tiny.onnx", timesteps=[8],
                      report_path=tiny / "r.json")
    (layer,) = json.loads((tiny / "r.json").read_text())["layers"]
    assert layer["neurons"] == 2 and layer["firing_rate"] == pytest.approx(6 / 16)


def test_where_the_error_enters_by_layer_kind(mobilenet_path, digits_npz, tmp_path):
    """A MobileNetV2 (depthwise, pointwise, ReLU6, residual adds): each layer is named by the kind
    of layer feeding its neurons, with the error it adds over its upstream neurons', summed up by
    kind in the report's summary line."""
    from onnx2snn.evaluate import layers
    from onnx2snn.evaluate.report import report_lines
    calib, test = digits_npz
    api.convert(mobilenet_path, data=str(calib), output=tmp_path / "m.onnx", snn=SNNConfig(timesteps=16),
                calib=api.CalibConfig(iters=30), check_samples=0)
    res = api.evaluate_file(tmp_path / "m.onnx", data=str(test), ann_path=mobilenet_path, timesteps=[16],
                            limit=64, report_path=tmp_path / "r.json")
    rows = res.report["layers"]
    kinds = {r["kind"].split(" + ")[0].split(" capped")[0] for r in rows}
    assert {"depthwise", "pointwise 1x1"} <= kinds, kinds
    assert any("residual add" in r["kind"] for r in rows) and all("capped at 6" in r["kind"] for r in rows
                                                                   if "depthwise" in r["kind"])
    first, *rest = rows
    assert first["upstream"] == [] and all(r["upstream"] for r in rest)
    for r in rest:
        assert r["error_added"] == pytest.approx(r["rate_error"] - max(
            next(x["rate_error"] for x in rows if x["name"] == u) for u in r["upstream"]))
    summary = layers.by_kind(rows)
    assert {k for k, _, _, _ in summary} == {r["kind"].split(" capped")[0] for r in rows}
    assert "error added by layer kind: " in report_lines(res.report)
