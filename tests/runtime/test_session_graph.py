"""What onnxruntime sessions run instead of the graph as written: the operators' blocked-layout and
fused-input modes against their plain form, EventConv against Conv, and whole sessions with the
rewrites (fusion.py, layout.py, events.py) against sessions without them."""
import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tools.fixtures import graphs
from onnx2snn import SNNConfig, if_neuron, runtime, to_snn
from onnx2snn.runtime import layout
from onnx2snn.runtime.fusion import fuse_inputs
from onnx2snn.ops.neuron import DOMAIN, OPSET_VERSION
from onnx2snn.calibration.thresholds import Thresholds

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, OPSET_VERSION)]


def _single(op, inputs, outputs, inits=(), **attrs):
    node = helper.make_node(op, [i if isinstance(i, str) else "" for i in inputs], outputs, domain=DOMAIN, **attrs)
    feeds = [n for n in inputs if isinstance(n, str) and n and n not in {i.name for i in inits}]
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in feeds],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], list(inits))
    return runtime.session(helper.make_model(graph, opset_imports=OPSETS), rewrite=False)


def _to_blocked(x, b):
    """[N, C, H, W] -> the blocked layout's memory as [N, Cpad, H, W] (Cpad = C rounded up to b)."""
    n, c, h, w = x.shape
    pad = -(-c // b) * b
    full = np.zeros((n, pad, h, w), x.dtype)
    full[:, :c] = x
    return np.ascontiguousarray(full.reshape(n, pad // b, b, h, w).transpose(0, 1, 3, 4, 2)).reshape(n, pad, h, w)


def _from_blocked(x, b, c):
    n, pad, h, w = x.shape
    return x.reshape(n, pad // b, h, w, b).transpose(0, 1, 4, 2, 3).reshape(n, pad, h, w)[:, :c]


@pytest.mark.parametrize("channels,block", [(16, 16), (20, 16), (5, 8), (3, 16)])
def test_neuron_in_the_blocked_layout_equals_the_plain_neuron(channels, block):
    rng = np.random.default_rng(channels)
    t, n = 6, 2
    x = rng.normal(size=(t * n, channels, 3, 5)).astype(np.float32)
    theta = rng.uniform(0.2, 1.5, channels).astype(np.float32)
    v0 = rng.uniform(-0.5, 0.5, channels * 15).astype(np.float32)
    plain = _single("IFNeuron", ["x", "theta", None, "v0"], ["s"], timesteps=t).run(
        None, {"x": x, "theta": theta, "v0": v0})[0]
    blocked_v0 = _to_blocked(v0.reshape(1, channels, 3, 5), block).reshape(-1)
    got = _single("IFNeuron", ["x", "theta", None, "v0"], ["s"], timesteps=t, channel_block=block, channels=channels).run(
        None, {"x": _to_blocked(x, block), "theta": theta, "v0": blocked_v0})[0]
    assert np.array_equal(_from_blocked(got, block, channels), plain)
    assert not got[_to_blocked(np.ones_like(x), block) == 0].any()      # padding channels never fire
    assert plain.any()


def test_neuron_fused_inputs_equal_the_graph_they_replace():
    rng = np.random.default_rng(3)
    t, n, c = 5, 3, 4
    x1 = rng.normal(size=(n, c, 6)).astype(np.float32)           # one step, repeated (repeat_input)
    theta = rng.uniform(0.3, 1.0, c).astype(np.float32)
    bias = rng.normal(size=c).astype(np.float32) * 0.1
    addend = rng.normal(size=(t * n, c, 6)).astype(np.float32)
    tiled = np.concatenate([x1] * t)
    want = if_neuron(((tiled + addend) + bias.reshape(c, 1)).astype(np.float32), theta, t, 1, 0.5)
    got = _single("IFNeuron", ["x", "theta", None, None, "a", "b"], ["s"], timesteps=t).run(
        None, {"x": tiled, "theta": theta, "a": addend, "b": bias})[0]
    assert np.array_equal(got, want)
    want = if_neuron((tiled + bias.reshape(c, 1)).astype(np.float32), theta, t, 1, 0.5)
    got = _single("IFNeuron", ["x", "theta", None, None, None, "b"], ["s"], timesteps=t, repeat_input=1).run(
        None, {"x": x1, "theta": theta, "b": bias})[0]
    assert got.shape == (t * n, c, 6) and np.array_equal(got, want)


def test_neuron_fused_inputs_refuse_wrong_shapes():
    sess = _single("IFNeuron", ["x", "theta", None, None, "a", "b"], ["s"], timesteps=2)
    x, theta = np.ones((4, 3), np.float32), np.ones(3, np.float32)
    with pytest.raises(Exception, match="addend has shape"):
        sess.run(None, {"x": x, "theta": theta, "a": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)})
    with pytest.raises(Exception, match="bias has 2 values"):
        sess.run(None, {"x": x, "theta": theta, "a": x, "b": np.ones(2, np.float32)})


@pytest.mark.parametrize("channels", [16, 21])
def test_probe_in_the_blocked_layout_equals_the_plain_probe(channels):
    rng = np.random.default_rng(channels)
    x = rng.normal(size=(7, channels, 4, 6)).astype(np.float32)
    theta = rng.uniform(0.1, 1.0, channels).astype(np.float32)
    feeds = {"theta": theta, "step": np.array(0.3, np.float32)}
    outs = ["y", "grad", "excess", "activity"]
    plain = _single("ReLUXProbe", ["x", "theta", "step"], outs).run(None, dict(feeds, x=x))
    got = _single("ReLUXProbe", ["x", "theta", "step"], outs, channel_block=16, channels=channels).run(
        None, dict(feeds, x=_to_blocked(x, 16)))
    assert np.array_equal(_from_blocked(got[0], 16, channels), plain[0])
    for a, b in zip(got[1:], plain[1:]):
        assert np.array_equal(a, b)                 # statistics over the real channels only


GEOMETRIES = [   # (C, F, k, stride, pad, dilation, group)
    (16, 16, 3, 1, 1, 1, 1), (3, 20, 3, 2, 1, 1, 1), (32, 64, 1, 1, 0, 1, 1), (16, 16, 3, 1, 2, 2, 1),
    (24, 24, 3, 1, 1, 1, 24), (16, 32, 5, 2, 2, 1, 2), (48, 48, 3, 1, 1, 1, 1), (16, 96, 3, 1, 1, 1, 1),
    (8, 80, 1, 1, 0, 1, 1), (16, 8, 3, 1, 0, 1, 1)]


@pytest.mark.parametrize("c,f,k,s,p,d,g", GEOMETRIES)
def test_event_conv_equals_conv_on_integer_data(c, f, k, s, p, d, g):
    rng = np.random.default_rng(c * f + k)
    x = ((rng.random((5, c, 11, 13)) < 0.2) * rng.integers(1, 4, (5, c, 11, 13))).astype(np.float32)
    w = numpy_helper.from_array(rng.integers(-3, 4, (f, c // g, k, k)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.integers(-2, 3, f).astype(np.float32), "b")
    attrs = dict(strides=[s, s], pads=[p, p, p, p], dilations=[d, d], group=g)
    conv = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], "conv",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
    want = runtime.session(helper.make_model(conv, opset_imports=OPSETS[:1])).run(None, {"x": x})[0]
    got = _single("EventConv", ["x", "w", "b"], ["y"], inits=[w, b], **attrs).run(None, {"x": x})[0]
    assert got.shape == want.shape and np.array_equal(got, want)


def test_event_conv_refuses_mismatched_shapes():
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    sess = _single("EventConv", ["x", "w"], ["y"], inits=[w], pads=[1, 1, 1, 1])
    with pytest.raises(Exception, match="expects 3"):
        sess.run(None, {"x": np.ones((1, 5, 4, 4), np.float32)})
    with pytest.raises(Exception, match=r"\[N, C, H, W\]"):
        sess.run(None, {"x": np.ones((5, 4, 4), np.float32)})


def _thresholds(model, seed=3):
    from onnx2snn.graph import onnx_io as M
    from onnx2snn.graph.analyse import find_activations
    acts = find_activations(M.to_graph(M.load_proto(model)))
    rng = np.random.default_rng(seed)
    return Thresholds({a.name: (2.0 ** rng.integers(0, 3, size=a.channels)).astype(np.float32) for a in acts},
                      "manual")


def _with_bias(snn):
    """Every IFNeuron behind an Add of a constant current per channel, as correction.py builds it."""
    snn = copy.deepcopy(snn)
    graph, nodes = snn.graph, []
    for node in graph.node:
        if node.op_type == "IFNeuron":
            theta = next(numpy_helper.to_array(i) for i in graph.initializer if i.name == node.input[1])
            bias = numpy_helper.from_array((0.25 * np.arange(theta.size) - 0.5).astype(np.float32).reshape(-1, 1, 1),
                                           node.name + ".test_bias")
            graph.initializer.append(bias)
            nodes.append(helper.make_node("Add", [node.input[0], bias.name], [node.name + "/biased"]))
            node.input[0] = node.name + "/biased"
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    onnx.checker.check_model(snn)
    return snn


@pytest.mark.parametrize("kw", [{}, {"form": "loop", "chunk": 4}, {"form": "loop"}])
@pytest.mark.parametrize("make", [graphs.residual_integer_model, lambda: graphs.residual_integer_model(channels=16),
                                  lambda: graphs.spiking_pool_model(channels=16)])
def test_sessions_run_the_rewritten_graph_with_bit_identical_outputs(make, kw):
    model = make()
    snn, _ = to_snn(model, _thresholds(model), SNNConfig(timesteps=12, delay=2, **kw))
    if not kw:
        snn = _with_bias(snn)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).normal(size=[5] + shape).astype(np.float32)
    want = runtime.session(snn, rewrite=False).run(None, {"input": x})
    got = runtime.session(snn).run(None, {"input": x})
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert np.any(want[0] != 0)
    fused = copy.deepcopy(snn)
    if not kw:     # the unrolled form's neurons take their Adds and their repeated input
        assert fuse_inputs(fused)
        ops = [n.op_type for n in fused.graph.node]
        assert "Expand" not in ops and ops.count("Add") < [n.op_type for n in snn.graph.node].count("Add")
        assert any(a.name == "repeat_input" for n in fused.graph.node for a in n.attribute)


def test_layout_drops_the_copies_around_neurons_where_onnxruntime_blocks_channels():
    if not layout.block_size():
        pytest.skip("onnxruntime uses no blocked channel layout on this CPU")
    model = graphs.residual_integer_model(channels=16)
    snn, _ = to_snn(model, _thresholds(model), SNNConfig(timesteps=8))
    fuse_inputs(snn)      # as sessions do first: the first neuron then reads the convolution's output
    plain = layout._optimize(snn.SerializeToString(), runtime.library_path())
    blocked = layout.blocked(snn, runtime.library_path())
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)   # noqa: E731
    assert count(blocked, "ReorderInput") + count(blocked, "ReorderOutput") < \
        count(plain, "ReorderInput") + count(plain, "ReorderOutput")
    assert any(a.name == "channel_block" for n in blocked.graph.node if n.op_type == "IFNeuron" for a in n.attribute)


def test_event_convs_are_opt_in_and_close_to_dense(resnet_path, digits_npz):
    import onnx2snn
    from onnx2snn.runtime import events
    ann = onnx2snn.graph.onnx_io.load(resnet_path)
    calib, test = digits_npz
    th = onnx2snn.calibrate(ann, onnx2snn.api.open_source(ann, str(calib)), onnx2snn.CalibConfig(iters=10))
    snn, _ = to_snn(ann, th, SNNConfig(timesteps=16))
    x = np.load(test)["input"][:40]
    dense = runtime.session(snn).run(None, {"input": x})[0]
    probe = copy.deepcopy(snn)
    assert events.event_convs(probe, min_filters=1)
    assert any(n.op_type == "EventConv" for n in probe.graph.node)
    sparse = runtime.session(probe).run(None, {"input": x})[0]
    assert np.abs(sparse - dense).mean() <= 1e-3 * np.abs(dense).max()
    assert np.mean(sparse.argmax(1) == dense.argmax(1)) >= 0.95


POOLS = [   # (kernel, stride, pads, dilation)
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1)), ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), ((3, 2), (2, 1), (1, 0, 0, 1), (1, 2))]


def _standard_pool_graph(steps, kernel, stride, pads, dilation, state):
    """timefold.spiking_pool's standard-op graph, built with that module: the operator's oracle."""
    import onnx_graphsurgeon as gs
    from onnx2snn.graph.builder import Builder
    from onnx2snn.snn.timefold import TimeFold
    graph = gs.Graph(opset=17)
    x = gs.Variable("x", np.float32)
    y = gs.Variable("y", np.float32)
    pool = gs.Node("MaxPool", "pool", {"kernel_shape": list(kernel), "strides": list(stride), "pads": list(pads),
                                       "dilations": list(dilation)}, [x], [y])
    graph.nodes.append(pool)
    graph.inputs = [x]
    b = Builder(graph, 17, "t")
    fold = TimeFold(b, gs.Constant("steps", np.array([steps], np.int64)))
    outs = [y]
    if state:
        sums, peak = gs.Variable("sums", np.float32), gs.Variable("peak", np.float32)
        graph.inputs += [sums, peak]
        outs += list(fold.spiking_pool(pool, (sums, peak)))
    else:
        fold.spiking_pool(pool)
    graph.outputs = outs
    for t in graph.outputs:
        t.dtype = np.float32
    return gs.export_onnx(graph.cleanup().toposort(), do_type_check=False)


@pytest.mark.parametrize("kernel,stride,pads,dilation", POOLS)
@pytest.mark.parametrize("state", [False, True])
def test_spiking_max_pool_operator_equals_the_standard_op_graph(kernel, stride, pads, dilation, state):
    rng = np.random.default_rng(len(kernel) + stride[0] + state)
    steps, n, c, h, w = 5, 2, 16, 7, 8
    x = rng.normal(size=(steps * n, c, h, w)).astype(np.float32)
    feeds = {"x": x}
    want_model = _standard_pool_graph(steps, kernel, stride, pads, dilation, state)
    if state:
        feeds["sums"] = rng.normal(size=(n, c, h, w)).astype(np.float32)
        oh = (h + pads[0] + pads[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        ow = (w + pads[1] + pads[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
        feeds["peak"] = rng.normal(size=(n, c, oh, ow)).astype(np.float32)
    want = runtime.session(want_model, rewrite=False).run(None, feeds)
    attrs = dict(timesteps=steps, kernel_shape=list(kernel), strides=list(stride), pads=list(pads),
                 dilations=list(dilation))
    ins = ["x"] + (["sums", "peak"] if state else [])
    outs = ["y"] + (["sums_out", "peak_out"] if state else [])
    got = _single("SpikingMaxPool", ins, outs, **attrs).run(None, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    from onnx2snn.ops import reference
    node = helper.make_node("SpikingMaxPool", ins, outs, domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "p", [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in ins],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])
    numpy_out = reference.run(helper.make_model(graph, opset_imports=OPSETS), feeds)
    assert all(np.array_equal(a, b) for a, b in zip(numpy_out, want))
    blocked = {k: _to_blocked(v, 16) for k, v in feeds.items()}
    got_blocked = _single("SpikingMaxPool", ins, outs, channel_block=16, **attrs).run(None, blocked)
    assert all(np.array_equal(_from_blocked(a, 16, c), b) for a, b in zip(got_blocked, want))


def test_spiking_max_pool_operator_refuses_bad_inputs():
    sess = _single("SpikingMaxPool", ["x", "sums", "peak"], ["y"], timesteps=3, kernel_shape=[2, 2], strides=[2, 2])
    with pytest.raises(Exception, match="not a multiple of timesteps"):
        sess.run(None, {"x": np.ones((4, 2, 4, 4), np.float32), "sums": np.ones((1, 2, 4, 4), np.float32),
                        "peak": np.ones((1, 2, 2, 2), np.float32)})
    with pytest.raises(Exception, match="states must be"):
        sess.run(None, {"x": np.ones((3, 2, 4, 4), np.float32), "sums": np.ones((1, 2, 4, 4), np.float32),
                        "peak": np.ones((1, 2, 4, 4), np.float32)})


def test_the_session_graph_saved_runs_in_plain_onnxruntime(tmp_path):
    import onnxruntime as ort
    model = graphs.residual_integer_model(channels=16)
    snn, _ = to_snn(model, _thresholds(model), SNNConfig(timesteps=8))
    graph, optimized = runtime.session_graph(snn)
    path = tmp_path / "fast.onnx"
    onnx.save(graph, path)
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(runtime.library_path())
    if optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(1).normal(size=(3, 2, 4, 4)).astype(np.float32)
    got = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.array_equal(got, runtime.session(snn, rewrite=False).run(None, {"input": x})[0])


@pytest.mark.parametrize("quantile,cap", [(0.97, None), (0.5, None), (0.97, 0.2), (0.0, None)])
def test_one_pass_probe_equals_the_plain_probe(quantile, cap):
    """Few entries above theta (recorded, re-clipped at theta'), most above (overflow: a second
    full pass), theta' below theta (a cap: a second full pass), theta = 0; repeated calls also take
    the two-pass path the kernel falls back to after overflows."""
    rng = np.random.default_rng(7)
    c = 32
    x = rng.normal(size=(9, c, 6, 7)).astype(np.float32)
    theta = np.quantile(np.maximum(x, 0), quantile, axis=(0, 2, 3)).astype(np.float32)
    feeds = {"theta": theta, "step": np.array(0.5, np.float32)}
    ins = ["x", "theta", "step"] + (["cap"] if cap is not None else [])
    if cap is not None:
        feeds["cap"] = np.array(cap, np.float32)
    outs = ["y", "grad", "excess", "activity"]
    plain = _single("ReLUXProbe", ins, outs).run(None, dict(feeds, x=x))
    blocked = _single("ReLUXProbe", ins, outs, channel_block=16, channels=c)
    for _ in range(3):
        got = blocked.run(None, dict(feeds, x=_to_blocked(x, 16)))
        assert np.array_equal(_from_blocked(got[0], 16, c), plain[0])
        assert all(np.array_equal(a, b) for a, b in zip(got[1:], plain[1:]))


def test_a_rewrite_onnxruntime_refuses_falls_back_to_the_graph_as_written(monkeypatch):
    model = graphs.residual_integer_model(channels=16)
    snn, _ = to_snn(model, _thresholds(model), SNNConfig(timesteps=8))
    broken = copy.deepcopy(snn)
    broken.graph.node[0].op_type = "NoSuchOperator"
    monkeypatch.setattr(runtime.sessions, "session_graph", lambda m, e=False: (broken, False))
    x = np.random.default_rng(2).normal(size=(2, 2, 4, 4)).astype(np.float32)
    want = runtime.session(snn, rewrite=False).run(None, {"input": x})[0]
    monkeypatch.setenv("ONNX2SNN_REWRITE", "1")
    assert np.array_equal(runtime.session(snn).run(None, {"input": x})[0], want)
    monkeypatch.setenv("ONNX2SNN_REWRITE", "strict")
    with pytest.raises(RuntimeError, match="the session rewrite broke"):
        runtime.session(snn)
