"""The C++ IFNeuron operator equals the NumPy reference neuron bit for bit."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx2snn.ops.neuron import DOMAIN, OPSET_VERSION
from onnx2snn import if_neuron, library_path, runtime


def _op_model(timesteps, axis, v_init, with_state):
    inputs = ["x", "theta"] + (["v"] if with_state else [])
    outputs = ["s"] + (["v_out"] if with_state else [])
    node = helper.make_node("IFNeuron", inputs, outputs, domain=DOMAIN, timesteps=timesteps,
                            axis=axis, v_init=v_init)
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs]
    vo = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    graph = helper.make_graph([node], "if", vi, vo)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)])


CASES = [
    # (shape per step incl. batch, axis, timesteps, layerwise)
    ((3, 5, 7, 7), 1, 16, False),
    ((2, 8), 1, 32, False),
    ((4, 6, 10), 2, 8, False),
    ((1, 3, 4, 5, 2), 1, 5, False),
    ((2, 64, 9, 9), 1, 64, False),   # large enough to be split across threads
    ((6, 7), 1, 12, True),
    ((5,), 0, 9, True),
]


@pytest.mark.parametrize("shape,axis,timesteps,layerwise", CASES)
def test_op_matches_reference_exactly(shape, axis, timesteps, layerwise):
    rng = np.random.default_rng(abs(hash((shape, axis, timesteps))) % 2**32)
    x = (rng.normal(size=(timesteps * shape[0],) + shape[1:]) * 0.7).astype(np.float32)
    channels = 1 if layerwise else shape[axis]
    theta = rng.uniform(0.05, 2.0, size=channels).astype(np.float32)
    if channels > 2:
        theta[1] = 0.0                 # a silent channel
    v_init = float(rng.choice([0.0, 0.5, 0.25]))
    sess = runtime.session(_op_model(timesteps, axis, v_init, False))
    got = sess.run(None, {"x": x, "theta": theta})[0]
    want = if_neuron(x, theta, timesteps, axis, v_init)
    assert got.dtype == np.float32
    assert np.array_equal(got, want)            # bit for bit
    assert got.any()                             # the case actually fires
    if channels > 2:
        sl = [slice(None)] * x.ndim
        sl[axis] = 1
        assert not got[tuple(sl)].any()          # theta = 0 emits nothing


def test_op_state_in_and_out_matches_reference_and_chains():
    rng = np.random.default_rng(1)
    n, c, t = 3, 4, 10
    x = rng.normal(size=(t * n, c, 5)).astype(np.float32)
    theta = rng.uniform(0.2, 1.0, size=c).astype(np.float32)
    whole = if_neuron(x, theta, t)
    sess = runtime.session(_op_model(4, 1, 0.5, True))
    sess6 = runtime.session(_op_model(6, 1, 0.5, True))
    v0 = (np.float32(0.5) * np.broadcast_to(theta[:, None], (n, c, 5))).astype(np.float32)
    s1, v1 = sess.run(None, {"x": x[:4 * n], "theta": theta, "v": v0})
    s2, v2 = sess6.run(None, {"x": x[4 * n:], "theta": theta, "v": v1})
    assert np.array_equal(np.concatenate([s1, s2]), whole)
    ref_s, ref_v = if_neuron(x, theta, t, return_state=True)
    assert np.array_equal(v2, ref_v)


def test_op_bad_inputs_raise_onnxruntime_errors_not_crashes():
    sess = runtime.session(_op_model(4, 1, 0.5, False))
    x = np.zeros((8, 3, 2), np.float32)
    with pytest.raises(Exception, match="theta has 2 values"):
        sess.run(None, {"x": x, "theta": np.ones(2, np.float32)})
    with pytest.raises(Exception, match="not a multiple of timesteps"):
        sess.run(None, {"x": x[:7], "theta": np.ones(3, np.float32)})
    state = runtime.session(_op_model(4, 1, 0.5, True))
    with pytest.raises(Exception, match="state input has shape"):
        state.run(None, {"x": x, "theta": np.ones(3, np.float32), "v": np.zeros((3, 3, 2), np.float32)})
    # the session still works afterwards
    assert sess.run(None, {"x": x, "theta": np.ones(3, np.float32)})[0].shape == x.shape


def test_library_path_is_inside_the_package():
    path = library_path()
    assert "onnx2snn" in path and path.endswith(".so")
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(path)


def _probe_model(axis, with_cap):
    inputs = ["x", "theta", "step"] + (["cap"] if with_cap else [])
    node = helper.make_node("ReLUXProbe", inputs, ["y", "grad", "excess", "activity"], domain=DOMAIN, axis=axis)
    graph = helper.make_graph([node], "probe",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in ("y", "grad", "excess", "activity")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)])


@pytest.mark.parametrize("shape,axis,layerwise,cap", [((8, 5, 6, 6), 1, False, None), ((40, 7), 1, False, 1.5),
                                                      ((4, 3, 9), 2, False, None), ((6, 4, 5, 5), 1, True, None),
                                                      ((64, 32, 16, 16), 1, False, None)])
def test_probe_op_matches_numpy(shape, axis, layerwise, cap):
    rng = np.random.default_rng(7)
    x = rng.normal(size=shape).astype(np.float32)
    c = 1 if layerwise else shape[axis]
    theta = rng.uniform(0, 1, size=c).astype(np.float32)
    step = np.array(2.0, np.float32)
    feeds = {"x": x, "theta": theta, "step": step}
    if cap is not None:
        feeds["cap"] = np.array(cap, np.float32)
    y, grad, excess, activity = runtime.session(_probe_model(axis, cap is not None)).run(None, feeds)
    th_b = theta.reshape((-1,) + (1,) * (x.ndim - 1 - axis)) if not layerwise else theta
    axes = tuple(range(x.ndim)) if layerwise else tuple(i for i in range(x.ndim) if i != axis)
    want_grad = np.maximum(x.astype(np.float64) - th_b, 0).mean(axis=axes)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    new = theta + step * grad                     # float32, as calibration.py updates
    if cap is not None:
        new = np.minimum(new, np.float32(cap))
    new_b = new.reshape((-1,) + (1,) * (x.ndim - 1 - axis)) if not layerwise else new
    assert np.array_equal(y, np.minimum(np.maximum(x, 0), new_b))
    np.testing.assert_allclose(excess, np.maximum(x.astype(np.float64) - th_b, 0).mean(), rtol=1e-5)
    np.testing.assert_allclose(activity, np.maximum(x.astype(np.float64), 0).mean(), rtol=1e-5)


def test_probe_op_rejects_wrong_theta_length():
    sess = runtime.session(_probe_model(1, False))
    with pytest.raises(Exception, match="theta has 2 values"):
        sess.run(None, {"x": np.zeros((2, 3, 4), np.float32), "theta": np.zeros(2, np.float32),
                        "step": np.array(1, np.float32)})
