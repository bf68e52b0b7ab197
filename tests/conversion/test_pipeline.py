"""Models trained here on real data (scikit-learn digits) convert, and the SNN approaches the ANN."""
import numpy as np
import pytest

import onnx2snn
from onnx2snn import CalibConfig, SNNConfig, Thresholds, evaluate_file, runtime
from onnx2snn.ops import reference
from onnx2snn.graph import onnx_io as M

TS = (8, 16, 32, 64, 128)


@pytest.mark.parametrize("fixture,max_gap", [("cnn_path", 0.02), ("resnet_path", 0.02), ("mlp_path", 0.02)])
def test_snn_accuracy_approaches_the_ann_as_t_grows(request, fixture, max_gap, digits_npz, tmp_path):
    calib, test = digits_npz
    path = request.getfixturevalue(fixture)
    out = tmp_path / "model.snn.onnx"
    result = onnx2snn.convert(path, data=str(calib), output=out, calib=CalibConfig(iters=300, batch_size=100),
                              snn=SNNConfig(timesteps=32))
    assert out.exists() and result.output == out
    ev = evaluate_file(out, data=str(test), ann_path=path, timesteps=TS, batch_size=100)
    acc = {r["T"]: r["accuracy"] for r in ev.rows}
    err = {r["T"]: r["rel_error"] for r in ev.rows}
    assert ev.samples == 497 and ev.ann_accuracy > 0.88
    assert acc[128] >= ev.ann_accuracy - max_gap, (acc, ev.ann_accuracy)
    assert err[128] < err[32] < err[8], err          # error falls as T grows
    assert err[128] < 0.25
    assert {r["T"]: r["agreement"] for r in ev.rows}[128] >= 0.97


def test_eval_at_t_equals_the_converted_model_run_directly(cnn_path, digits_npz, tmp_path):
    """eval's single simulation to T_max gives, at T, what the T-step model itself outputs."""
    calib, test = digits_npz
    result = onnx2snn.convert(cnn_path, data=str(calib), output=tmp_path / "a.snn.onnx",
                              calib=CalibConfig(iters=20), snn=SNNConfig(timesteps=24, delay=3))
    x = np.load(test)["input"][:40]
    y = np.load(test)["y"][:40]
    direct = runtime.session(result.output).run(None, {"input": x})[0]
    from onnx2snn.evaluate.evaluation import evaluate
    ev = evaluate(result.snn, [({"input": x}, y)], [10, 24, 40], ann=M.load(cnn_path))
    row = {r["T"]: r for r in ev.rows}[24]
    assert row["accuracy"] == np.mean(direct.argmax(1) == y)


def test_onnxruntime_matches_the_numpy_simulation(resnet_path, digits_npz, tmp_path):
    calib, test = digits_npz
    result = onnx2snn.convert(resnet_path, data=str(calib), output=tmp_path / "r.snn.onnx",
                              calib=CalibConfig(iters=20), snn=SNNConfig(timesteps=16))
    x = np.load(test)["input"][:20]
    got = runtime.session(result.output).run(None, {"input": x})[0]
    want = reference.run(result.snn, {"input": x})[0]
    scale = np.abs(want).max()
    assert np.abs(got - want).mean() <= 1e-4 * scale     # conv rounding may flip a rare spike
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.95


def test_thresholds_saved_and_reused_give_the_same_snn(cnn_path, digits_npz, tmp_path):
    calib, _ = digits_npz
    for suffix in (".json", ".npz"):
        saved = tmp_path / f"th{suffix}"
        first = onnx2snn.convert(cnn_path, data=str(calib), output=tmp_path / "1.onnx",
                                 calib=CalibConfig(iters=15), save_thresholds=saved)
        again = onnx2snn.convert(cnn_path, output=tmp_path / "2.onnx", thresholds=saved)
        loaded = Thresholds.load(saved)
        for name, value in first.thresholds.values.items():
            assert np.array_equal(loaded.values[name], value)
        thetas = lambda m: {i.name: i.raw_data for i in m.graph.initializer if i.name.endswith(".theta")}
        assert thetas(first.snn) == thetas(again.snn) and thetas(first.snn)


@pytest.mark.parametrize("method", ["ltb-layer", "max", "percentile"])
def test_baseline_methods_convert(method, cnn_path, digits_npz, tmp_path):
    calib, test = digits_npz
    result = onnx2snn.convert(cnn_path, data=str(calib), output=tmp_path / f"{method}.onnx",
                              calib=CalibConfig(method=method, iters=10))
    assert all(np.asarray(l.theta).size == 1 and l.theta[0] > 0 for l in result.layers)
    ev = evaluate_file(result.output, data=str(test), ann_path=cnn_path, timesteps=[128], limit=200,
                       batch_size=100)
    assert ev.rows[0]["agreement"] > 0.85


def test_relu6_threshold_is_capped_by_the_clip(mlp_path, digits_npz, tmp_path):
    calib, _ = digits_npz
    result = onnx2snn.convert(mlp_path, data=str(calib), output=tmp_path / "m.onnx",
                              calib=CalibConfig(iters=200, lr=5.0))
    capped = [l for l in result.layers if "Clip" in l.source]
    assert capped and all(np.max(l.theta) <= 6.0 for l in capped)
    # the softmax head runs once on averaged values: outputs are probabilities
    out = runtime.session(result.output).run(None, {"input": np.load(calib)["input"][:5]})[0]
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)


def test_looped_model_eval_from_one_simulation_equals_runs_per_t(cnn_path, digits_npz, tmp_path):
    from onnx2snn.evaluate.evaluation import evaluate, window_scores
    from onnx2snn.snn.info import SNNInfo
    calib, test = digits_npz
    result = onnx2snn.convert(cnn_path, data=str(calib), output=tmp_path / "l.onnx", calib=CalibConfig(iters=30),
                              snn=SNNConfig(timesteps=32, form="loop", chunk=4, delay=4))
    data = np.load(test)
    batches = [({"input": data["input"][:120]}, data["y"][:120])]
    ann = M.load(cnn_path)
    once = evaluate(result.snn, batches, [8, 16, 64], ann, delay=4)      # the model's own D at every T
    # T = 9, 17, 63 are off the chunk grid: each is simulated on its own
    each, _, _, _ = window_scores(result.snn, SNNInfo.from_metadata(result.snn), [(8, 4), (16, 4), (64, 4), (9, 4)],
                               batches, ann)
    for a in once.rows:
        key = (a["T"], 4)
        assert a["accuracy"] == each.accuracy(key) and a["agreement"] == each.agreement(key)
        assert a["rel_error"] == pytest.approx(each.rel_error(key), rel=1e-6)


def test_mobilenet_relu6_depthwise_within_a_point_of_its_ann_at_t128(mobilenet_path, digits_npz, tmp_path):
    """A MobileNetV2-style model (ReLU6, 3x3 depthwise convolutions, linear bottlenecks with identity
    shortcuts, BatchNorm) converted with the defaults at T=128: within 1 point of its ANN on held-out
    digits, with every threshold capped by the ReLU6."""
    from onnx2snn import api
    calib, test = digits_npz
    ann = M.load(mobilenet_path)
    depthwise = [n for n in ann.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) == 4 and sum(n.op_type == "Clip" for n in ann.graph.node) == 10
    out = tmp_path / "mobilenet.snn.onnx"
    res = onnx2snn.convert(mobilenet_path, data=str(calib), output=out, calib=CalibConfig(iters=300),
                           snn=SNNConfig(timesteps=128, **api.data_defaults(True)))
    assert res.thresholds.info["correction"]["kind"] == "both"
    assert max(float(v.max()) for v in res.thresholds.values.values()) <= 6.0
    ev = evaluate_file(out, data=str(test), ann_path=mobilenet_path, timesteps=(128,), batch_size=100)
    row = {r["T"]: r for r in ev.rows}
    assert ev.ann_accuracy > 0.95
    assert row[128]["accuracy"] >= ev.ann_accuracy - 0.01, (row, ev.ann_accuracy)
    assert row[128]["agreement"] >= 0.99
