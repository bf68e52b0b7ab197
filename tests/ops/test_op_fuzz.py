"""Property-based fuzzing of both custom ops against their NumPy references.

Random ranks, zero-size dims, T not dividing the batch, NaN/Inf inputs and thresholds, wrong
lengths and wrong attribute types: every case gives the reference's output or an onnxruntime error,
never a crash. tools/sanitize_ops.sh runs this file against an AddressSanitizer +
UndefinedBehaviorSanitizer build of the library (ONNX2SNN_FUZZ_EXAMPLES sets the case count).
"""
import os

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from onnx2snn import if_neuron, library_path
from onnx2snn.ops.neuron import DOMAIN, OPSET_VERSION

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NaN/Inf arithmetic is the point
EXAMPLES = int(os.environ.get("ONNX2SNN_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, n) for n in
                   ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph", "NotImplemented"))
VALUES = [-3.0, -1.0, -0.25, 0.0, 0.125, 0.5, 1.0, 2.5, 7.0, np.nan, np.inf, -np.inf]


def _session(op, inputs, outputs, attrs):
    node = helper.make_node(op, inputs, outputs, domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "fuzz", [helper.make_tensor_value_info(n, 1, None) for n in inputs if n],
                              [helper.make_tensor_value_info(n, 1, None) for n in outputs if n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(library_path())
    opts.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@st.composite
def _array(draw, shape):
    n = int(np.prod(shape)) if shape else 1
    return np.asarray(draw(st.lists(st.sampled_from(VALUES), min_size=n, max_size=n)),
                      np.float32).reshape(shape)


@st.composite
def neuron_cases(draw):
    rank = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 3))
    rows = steps * draw(st.integers(0, 3)) + draw(st.sampled_from([0, 0, 0, 1]))
    shape = [rows] + [draw(st.integers(0, 3)) for _ in range(rank - 1)]
    axis = draw(st.integers(-rank - 1, rank))
    ax = axis % rank if -rank <= axis < rank else None
    channels = draw(st.sampled_from([1, shape[ax] if ax is not None else 2, draw(st.integers(0, 4))]))
    attrs = {"timesteps": draw(st.sampled_from([steps, steps, steps, 0])), "axis": axis}
    v_init = draw(st.sampled_from([0.5, 0.0, 1.0, "int", "missing"]))
    if v_init == "int":
        attrs["v_init"] = 1                    # wrong attribute type: must be refused, not ignored
    elif v_init != "missing":
        attrs["v_init"] = float(v_init)
    burst = draw(st.sampled_from(["missing", "missing", 1, 2, 3, 0]))   # 0: refused (spikes per step >= 1)
    if burst != "missing":
        attrs["max_spikes"] = burst
    signed = draw(st.sampled_from(["missing", "missing", 0, 1, 1, 2]))  # 2: refused (0 or 1)
    if signed != "missing":
        attrs["signed"] = signed
    state = draw(st.sampled_from([None, "right", "wrong"]))
    per_sample = int(np.prod(shape[1:])) if rank > 1 else 1
    v0_size = draw(st.sampled_from([None, None, 1, per_sample, per_sample + 1]))
    v0 = None if v0_size is None else draw(_array([v0_size]))
    # the net spike count: carried in (n_in, input 6) and/or out (n_out, output 2; v_out present or not)
    count = draw(st.sampled_from([None, None, "right", "wrong"]))
    count_out = draw(st.sampled_from([None, None, "with_v", "without_v"]))
    n = draw(_array([max(1, rows // steps) if count == "wrong" else rows // steps] + shape[1:])) if count else None
    return (draw(_array(shape)), draw(_array([channels])), attrs, state,
            draw(_array([max(1, rows // steps) if state == "wrong" else rows // steps] + shape[1:])), v0, n,
            count_out)


@FUZZ
@given(neuron_cases())
def test_if_neuron_matches_the_reference_or_fails_cleanly(case):
    x, theta, attrs, state, v, v0, n, count_out = case
    inputs = ["x", "theta", "v" if state else "", "v0" if v0 is not None else ""] + \
        (["", "", "n"] if n is not None else [])
    while inputs[-1] == "":
        inputs.pop()
    outputs = ["spikes"] + (["v_out"] if state or count_out == "with_v" else ([""] if count_out else [])) + \
        (["n_out"] if count_out else [])
    feeds = {"x": x, "theta": theta, **({"v": v} if state else {}), **({"v0": v0} if v0 is not None else {}),
             **({"n": n} if n is not None else {})}
    signed = attrs.get("signed", 0)
    try:
        want = if_neuron(x, theta, attrs["timesteps"], attrs["axis"], attrs.get("v_init", 0.5),
                         v=v if state else None, return_state=True, v0=v0, max_spikes=attrs.get("max_spikes", 1),
                         signed=signed, count=n, return_count=True)
        if count_out and signed != 1:
            want = None                                     # only a signed neuron has a count to give
        if n is not None and n.shape[0] * max(1, attrs["timesteps"]) != x.shape[0]:
            want = None
        if v0 is not None and state and v0.size not in (1, int(np.prod(x.shape[1:])) if x.ndim > 1 else 1):
            want = None                                     # the op checks v0 even when the state wins
        if state == "wrong" and v.shape[0] * max(1, attrs["timesteps"]) != x.shape[0]:
            want = None
        if isinstance(attrs.get("v_init"), int):
            want = None
    except (ValueError, ZeroDivisionError):
        want = None
    try:
        got = _session("IFNeuron", inputs, outputs, attrs).run(None, feeds)
    except ORT_ERRORS:
        assert want is None, (x.shape, theta.shape, attrs, state)
        return
    assert want is not None, ("accepted a case the reference refuses", x.shape, theta.shape, attrs, state)
    assert np.array_equal(got[0], want[0], equal_nan=True)
    named = dict(zip([o for o in outputs if o], got))
    if "v_out" in named:
        assert np.array_equal(named["v_out"], want[1], equal_nan=True)
    if "n_out" in named:
        assert np.array_equal(named["n_out"], want[2], equal_nan=True)


def _probe_reference(x, theta, step, cap, axis):
    """(grad, excess, activity) in float64 and the clip with the op's own updated theta."""
    rank = x.ndim
    ax = axis % rank
    c = x.shape[ax]
    xc = np.moveaxis(x, ax, 0).reshape(c, x.size // c if c else 0).astype(np.float64)
    th = np.broadcast_to(theta.astype(np.float64).reshape(-1, 1) if theta.size > 1 else theta.astype(np.float64), xc.shape)
    d = xc - th
    ex_c = np.where(d > 0, d, 0).sum(axis=1)
    act = np.where(xc > 0, xc, 0).sum()
    total = max(x.size, 1)
    grad = np.array([ex_c.sum() / total]) if theta.size == 1 else ex_c / max(xc.shape[1], 1)
    return grad, ex_c.sum() / total, act / total


@st.composite
def probe_cases(draw):
    rank = draw(st.integers(1, 4))
    shape = [draw(st.integers(0, 3)) for _ in range(rank)]
    axis = draw(st.integers(-rank - 1, rank))
    ax = axis % rank if -rank <= axis < rank else None
    channels = draw(st.sampled_from([1, shape[ax] if ax is not None else 2, draw(st.integers(0, 4))]))
    cap = draw(st.sampled_from([None, [6.0], [], [1.0, 2.0], [np.nan]]))
    step = draw(st.sampled_from([[2.0], [0.5], [], [1.0, 1.0]]))
    return draw(_array(shape)), draw(_array([channels])), np.asarray(step, np.float32), \
        None if cap is None else np.asarray(cap, np.float32), axis


@FUZZ
@given(probe_cases())
def test_relux_probe_matches_numpy_or_fails_cleanly(case):
    x, theta, step, cap, axis = case
    rank = x.ndim
    valid = (-rank <= axis < rank and theta.size >= 1 and theta.size in (1, x.shape[axis % rank])
             and step.size == 1 and (cap is None or cap.size == 1))
    inputs = ["x", "theta", "step"] + (["cap"] if cap is not None else [])
    feeds = {"x": x, "theta": theta, "step": step, **({"cap": cap} if cap is not None else {})}
    try:
        y, grad, excess, activity = _session("ReLUXProbe", inputs, ["y", "grad", "excess", "activity"],
                                             {"axis": axis}).run(None, feeds)
    except ORT_ERRORS:
        assert not valid, (x.shape, theta.shape, step.shape, None if cap is None else cap.shape, axis)
        return
    assert valid, ("accepted an invalid case", x.shape, theta.shape, step.shape, axis)
    want_grad, want_excess, want_activity = _probe_reference(x, theta, step, cap, axis)
    close = dict(rtol=1e-4, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(grad, want_grad.astype(np.float32), **close)
    np.testing.assert_allclose(excess, np.float32(want_excess), **close)
    np.testing.assert_allclose(activity, np.float32(want_activity), **close)
    # the clip uses theta' = min(theta + step * grad, cap), computed in float32 from the op's grad
    updated = (theta + step[0] * grad).astype(np.float32)
    if cap is not None:
        updated = np.where(updated > cap[0], cap[0], updated).astype(np.float32)   # std::min(t, cap)
    shape = [1] * rank
    if theta.size > 1:
        shape[axis % rank] = theta.size
    th = updated.reshape(shape) if theta.size > 1 else updated.reshape([1] * rank)
    v = np.where(x > 0, x, np.float32(0))
    assert np.array_equal(y, np.where(v < th, v, th).astype(np.float32), equal_nan=True)
