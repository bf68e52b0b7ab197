"""Probes and in-graph statistics, checked against NumPy on the same activations."""
import numpy as np
import pytest

from onnx2snn.graph import onnx_io as M
from onnx2snn import runtime
from onnx2snn.calibration import probes
from onnx2snn.calibration.balancing import calibrate
from onnx2snn.config import CalibConfig


def _feeds(sess_inputs, x, theta_value, probe_list, step=2.0):
    feeds = {"input": x}
    for p in probe_list:
        if p.theta_input:
            feeds[p.theta_input] = np.full(p.theta_shape, theta_value, np.float32)
    if any(i.name == probes.LR_INPUT for i in sess_inputs):
        feeds[probes.LR_INPUT] = np.array(step, np.float32)
    return feeds


@pytest.mark.parametrize("fixture", ["cnn_path", "resnet_path", "mlp_path"])
def test_probed_graph_with_infinite_theta_reproduces_the_ann(request, fixture, digits_data):
    ann = M.load(request.getfixturevalue(fixture))
    probed, probe_list = probes.build(ann, "ltb", keep_outputs=True)
    sess = runtime.session(probed)
    x = digits_data[2][:50]
    out = sess.run(["logits"], _feeds(sess.get_inputs(), x, np.inf, probe_list))[0]
    want = runtime.session(ann).run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())  # fusion rounding


def test_in_graph_ltb_statistics_equal_numpy(cnn_path, digits_data):
    ann = M.load(cnn_path)
    probed, probe_list = probes.build(ann, "ltb", expose_inputs=True)
    sess = runtime.session(probed)
    x = digits_data[0][:64]
    theta = 0.3
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, _feeds(sess.get_inputs(), x, theta, probe_list))))
    acts = [n for n in names if n not in {p.stat for p in probe_list}
            and not n.endswith(("/clip_error", "/activity"))]
    assert len(acts) == len(probe_list) == 3
    for p, act_name in zip(probe_list, acts):
        a = out[act_name]
        axes = tuple(i for i in range(a.ndim) if i != p.axis)
        want = np.maximum(a - np.float32(theta), 0).mean(axis=axes)
        np.testing.assert_allclose(out[p.stat], want, rtol=2e-5, atol=1e-7)
        assert out[p.stat].shape == (p.channels,)      # one small vector per probe
        np.testing.assert_allclose(out[p.activity], np.maximum(a, 0).mean(), rtol=2e-5)


def test_in_graph_percentile_and_max_statistics_equal_numpy(cnn_path, digits_data):
    ann = M.load(cnn_path)
    x = digits_data[0][:50]
    for method in ("percentile", "max"):
        probed, probe_list = probes.build(ann, method, percentile=99.0, expose_inputs=True)
        sess = runtime.session(probed)
        names = [o.name for o in sess.get_outputs()]
        out = dict(zip(names, sess.run(names, {"input": x})))
        acts = [n for n in names if n not in {p.stat for p in probe_list}]
        for p, act_name in zip(probe_list, acts):
            a = out[act_name].ravel()
            if method == "max":
                want = a.max()
            else:
                pos = np.sort(a[a > 0])
                k = max(1, int(np.ceil(np.float32(len(pos)) * np.float32(0.01))))
                want = pos[-k]
            assert float(out[p.stat]) == pytest.approx(float(want), rel=1e-6)


def test_ltb_update_matches_numpy_and_layers_see_clipped_outputs(cnn_path, digits_data):
    """Two batches of LTB from theta = 0, replayed in NumPy on exposed activations."""
    ann = M.load(cnn_path)
    x = digits_data[0][:100]
    th = calibrate(ann, [{"input": x}, {"input": x}], CalibConfig(iters=2, batch_size=100, lr=0.5))
    probed, probe_list = probes.build(ann, "ltb", expose_inputs=True)
    sess = runtime.session(probed)
    names = [o.name for o in sess.get_outputs()]
    theta = {p.name: np.zeros(p.theta_shape, np.float32) for p in probe_list}
    for _ in range(2):
        feeds = {"input": x, probes.LR_INPUT: np.array(1.0, np.float32)}
        feeds.update({p.theta_input: theta[p.name] for p in probe_list})
        out = dict(zip(names, sess.run(names, feeds)))
        acts = [n for n in names if n not in {p.stat for p in probe_list}
                and not n.endswith(("/clip_error", "/activity"))]
        for p, act_name in zip(probe_list, acts):
            a = out[act_name]
            axes = tuple(i for i in range(a.ndim) if i != p.axis)
            th_b = theta[p.name].reshape((-1,) + (1,) * (a.ndim - 1 - p.axis))
            grad = np.maximum(a - th_b, 0).mean(axis=axes).reshape(p.theta_shape)
            theta[p.name] = (theta[p.name] + np.float32(1.0) * grad.astype(np.float32)).astype(np.float32)
    for p in probe_list:
        np.testing.assert_allclose(th.values[p.name], theta[p.name].ravel(), rtol=1e-4, atol=1e-6)
        assert th.values[p.name].max() > 0
