"""Graph patterns exporters write, each in a hand-built model: converted, then the SNN at large T is
compared with its ANN (thresholds by max-norm, so the clipped ANN equals the ANN and the SNN's
error falls as 1/T). Fast: no training."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2snn import CalibConfig, SNNConfig, runtime, to_snn
from onnx2snn.graph.analyse import analyse
from onnx2snn.calibration.balancing import calibrate

RNG = np.random.default_rng(0)
T = 512


def _w(*shape, scale=0.5):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def _model(nodes, inits, inputs, outputs, opset=17):
    """inputs/outputs: {name: (elem_type, shape)}."""
    graph = helper.make_graph(
        nodes, "pattern", [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


F = TensorProto.FLOAT
IMG = {"input": (F, ["N", 4, 6, 6])}


def _feeds(model, n=32):
    out = {}
    for vi in model.graph.input:
        dims = [d.dim_value or n for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = RNG.normal(size=dims).astype(np.float32)
    return out


def _compare(model, tol=0.03, forms=({},), int_outputs_agree=0.9):
    """SNN vs ANN on fresh data: relative L2 error of float outputs below `tol`, integer outputs
    (ArgMax, TopK indices) equal on most samples."""
    calib = [_feeds(model) for _ in range(4)]
    th = calibrate(model, calib, CalibConfig(method="max", iters=4))
    feeds = _feeds(model)
    want = runtime.session(model).run(None, feeds)
    assert analyse(model).activations
    for kw in forms:
        snn, _ = to_snn(model, th, SNNConfig(timesteps=T, **kw))
        got = runtime.session(snn).run(None, feeds)
        assert [o.name for o in snn.graph.output] == [o.name for o in model.graph.output]
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            if w.dtype.kind == "f":
                err = np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-6)
                assert err < tol, (kw, err)
            else:
                assert np.mean(g == w) >= int_outputs_agree, kw


def _conv(name, x, w, out, **kw):
    return helper.make_node("Conv", [x, w], [out], name=name, **kw)


# ---- activations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["relu", "clip-attrs", "clip-inputs", "max0", "max0-swapped", "leaky0",
                                  "relu-after-bn"])
def test_activation_forms(kind):
    opset = 10 if kind == "clip-attrs" else 17
    inits = {"w1": _w(6, 4, 3, 3), "w2": _w(5, 6, 1, 1)}
    act = {
        "relu": helper.make_node("Relu", ["c1"], ["a1"], name="act"),
        "clip-attrs": helper.make_node("Clip", ["c1"], ["a1"], name="act", min=0.0, max=6.0),
        "clip-inputs": helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="act"),
        "max0": helper.make_node("Max", ["c1", "zero"], ["a1"], name="act"),
        "max0-swapped": helper.make_node("Max", ["zero", "c1"], ["a1"], name="act"),
        "leaky0": helper.make_node("LeakyRelu", ["c1"], ["a1"], name="act", alpha=0.0),
        "relu-after-bn": helper.make_node("Relu", ["b1"], ["a1"], name="act"),
    }[kind]
    nodes = [_conv("conv1", "input", "w1", "c1", pads=[1, 1, 1, 1])]
    if kind == "relu-after-bn":
        nodes.append(helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["b1"], name="bn"))
        inits.update(s=np.abs(_w(6)) + 0.5, b=_w(6), m=_w(6), v=np.abs(_w(6)) + 0.5)
    inits.update(lo=np.array(0, np.float32), hi=np.array(6, np.float32), zero=np.array(0, np.float32))
    nodes += [act, _conv("conv2", "a1", "w2", "c2"), helper.make_node("Relu", ["c2"], ["out"], name="relu2")]
    used = {i for n in nodes for i in n.input}
    model = _model(nodes, {k: v for k, v in inits.items() if k in used}, IMG, {"out": (F, ["N", 5, 6, 6])}, opset)
    a = analyse(model)
    assert [x.name for x in a.activations] == ["act", "relu2"]
    if kind.startswith("clip"):
        assert a.activations[0].cap == 6.0
    _compare(model)


# ---- weighted layers ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["depthwise", "grouped", "convtranspose"])
def test_convolutions(kind):
    if kind == "depthwise":
        mid = _conv("dw", "r0", "w", "c1", group=6, pads=[1, 1, 1, 1])
        inits, shape = {"w": _w(6, 1, 3, 3)}, ["N", 6, 6, 6]
    elif kind == "grouped":
        mid = _conv("gc", "r0", "w", "c1", group=2, pads=[1, 1, 1, 1])
        inits, shape = {"w": _w(6, 3, 3, 3)}, ["N", 6, 6, 6]
    else:
        mid = helper.make_node("ConvTranspose", ["r0", "w"], ["c1"], name="up", strides=[2, 2])
        inits, shape = {"w": _w(6, 3, 2, 2)}, ["N", 3, 12, 12]
    inits["w0"] = _w(6, 4, 1, 1)
    nodes = [_conv("c0", "input", "w0", "x0"), helper.make_node("Relu", ["x0"], ["r0"], name="relu0"), mid,
             helper.make_node("Relu", ["c1"], ["out"], name="relu1")]
    _compare(_model(nodes, inits, IMG, {"out": (F, shape)}))


@pytest.mark.parametrize("kind", ["gemm-transB", "gemm-transA", "matmul-add"])
def test_dense_layers(kind):
    inputs = {"input": (F, ["N", 8])}
    if kind == "gemm-transB":
        dense = helper.make_node("Gemm", ["r0", "w", "b"], ["d"], name="fc", transB=1)
        inits = {"w": _w(7, 8), "b": _w(7)}
    elif kind == "gemm-transA":
        # A is given transposed: [8, N] -> the layer sees [N, 8]
        dense = helper.make_node("Gemm", ["r0t", "w", "b"], ["d"], name="fc", transA=1)
        inits = {"w": _w(8, 7), "b": _w(7)}
    else:
        dense = None
        inits = {"w": _w(8, 7), "b": _w(7)}
    nodes = [helper.make_node("Gemm", ["input", "w0"], ["x0"], name="fc0"),
             helper.make_node("Relu", ["x0"], ["r0"], name="relu0")]
    if kind == "gemm-transA":
        nodes.append(helper.make_node("Transpose", ["r0"], ["r0t"], name="t", perm=[1, 0]))
    if dense is None:
        nodes += [helper.make_node("MatMul", ["r0", "w"], ["m"], name="mm"),
                  helper.make_node("Add", ["m", "b"], ["d"], name="bias")]
    else:
        nodes.append(dense)
    nodes += [helper.make_node("Relu", ["d"], ["r1"], name="relu1"),
              helper.make_node("MatMul", ["r1", "w2"], ["out"], name="head")]
    inits.update(w0=_w(8, 8), w2=_w(7, 3))
    model = _model(nodes, inits, inputs, {"out": (F, ["N", 3])})
    assert {a.name: a.axis for a in analyse(model).activations} == {"relu0": 1, "relu1": 1}
    _compare(model)


# ---- structure ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["residual-add", "concat", "averagepool", "gap-head", "reducemean",
                                  "resize", "pad-slice-split"])
def test_structures(kind):
    inits = {"w0": _w(4, 4, 3, 3), "w1": _w(4, 4, 3, 3)}
    nodes = [_conv("c0", "input", "w0", "x0", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["x0"], ["r0"], name="relu0"),
             _conv("c1", "r0", "w1", "x1", pads=[1, 1, 1, 1])]
    out_shape = ["N", 4, 6, 6]
    if kind == "residual-add":
        nodes += [helper.make_node("Add", ["x1", "r0"], ["s"], name="skip"), helper.make_node("Relu", ["s"], ["out"], name="relu1")]
    elif kind == "concat":
        nodes += [helper.make_node("Relu", ["x1"], ["r1"], name="relu1"),
                  helper.make_node("Concat", ["r0", "r1"], ["cat"], name="dense", axis=1),
                  _conv("c2", "cat", "w2", "x2"), helper.make_node("Relu", ["x2"], ["out"], name="relu2")]
        inits["w2"] = _w(4, 8, 1, 1)
    elif kind == "averagepool":
        nodes += [helper.make_node("Relu", ["x1"], ["r1"], name="relu1"),
                  helper.make_node("AveragePool", ["r1"], ["p"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
                  _conv("c2", "p", "w2", "x2"), helper.make_node("Relu", ["x2"], ["out"], name="relu2")]
        inits["w2"] = _w(4, 4, 1, 1)
        out_shape = ["N", 4, 3, 3]
    elif kind == "gap-head":
        nodes += [helper.make_node("Relu", ["x1"], ["r1"], name="relu1"),
                  helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["f"], name="flat"),
                  helper.make_node("Gemm", ["f", "wf"], ["out"], name="fc", transB=1)]
        inits["wf"] = _w(3, 4)
        out_shape = ["N", 3]
    elif kind == "reducemean":
        nodes += [helper.make_node("Relu", ["x1"], ["r1"], name="relu1"),
                  helper.make_node("ReduceMean", ["r1"], ["m"], name="mean", axes=[2, 3], keepdims=0),
                  helper.make_node("Gemm", ["m", "wf"], ["g"], name="fc", transB=1),
                  helper.make_node("Relu", ["g"], ["out"], name="relu2")]
        inits["wf"] = _w(3, 4)
        out_shape = ["N", 3]
    elif kind == "resize":
        nodes += [helper.make_node("Relu", ["x1"], ["r1"], name="relu1"),
                  helper.make_node("Resize", ["r1", "", "scales"], ["u"], name="up", mode="nearest"),
                  _conv("c2", "u", "w2", "x2"), helper.make_node("Relu", ["x2"], ["out"], name="relu2")]
        inits.update(scales=np.array([1, 1, 2, 2], np.float32), w2=_w(4, 4, 1, 1))
        out_shape = ["N", 4, 12, 12]
    else:
        nodes += [helper.make_node("Relu", ["x1"], ["r1"], name="relu1"),
                  helper.make_node("Pad", ["r1", "pads"], ["pd"], name="pad"),
                  helper.make_node("Slice", ["pd", "st", "en", "ax"], ["sl"], name="slice"),
                  helper.make_node("Split", ["sl", "sp"], ["a", "b"], name="split", axis=1),
                  _conv("c2", "a", "w2", "x2"), _conv("c3", "b", "w3", "x3"),
                  helper.make_node("Add", ["x2", "x3"], ["s"], name="merge"),
                  helper.make_node("Relu", ["s"], ["out"], name="relu2")]
        inits.update(pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), st=np.array([1, 1], np.int64),
                     en=np.array([7, 7], np.int64), ax=np.array([2, 3], np.int64), sp=np.array([2, 2], np.int64),
                     w2=_w(4, 2, 1, 1), w3=_w(4, 2, 1, 1))
    _compare(_model(nodes, inits, IMG, {"out": (F, out_shape)}))


def test_upsample_at_opset_9_is_upgraded():
    nodes = [_conv("c0", "input", "w0", "x0", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["x0"], ["r0"], name="relu0"),
             helper.make_node("Upsample", ["r0", "scales"], ["u"], name="up", mode="nearest"),
             _conv("c1", "u", "w1", "x1"), helper.make_node("Relu", ["x1"], ["out"], name="relu1")]
    model = _model(nodes, {"w0": _w(4, 4, 3, 3), "w1": _w(4, 4, 1, 1), "scales": np.array([1, 1, 2, 2], np.float32)},
                   IMG, {"out": (F, ["N", 4, 12, 12])}, opset=9)
    _compare(model)


def test_several_inputs_and_outputs():
    nodes = [_conv("ca", "img", "wa", "xa", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["xa"], ["ra"], name="relua"),
             helper.make_node("GlobalAveragePool", ["ra"], ["ga"], name="gap"),
             helper.make_node("Flatten", ["ga"], ["fa"], name="flat"),
             helper.make_node("Gemm", ["meta", "wm"], ["xm"], name="fcm"), helper.make_node("Relu", ["xm"], ["rm"], name="relum"),
             helper.make_node("Concat", ["fa", "rm"], ["cat"], name="join", axis=1),
             helper.make_node("Gemm", ["cat", "wj"], ["xj"], name="fcj"), helper.make_node("Relu", ["xj"], ["rj"], name="reluj"),
             helper.make_node("Gemm", ["rj", "wc"], ["cls"], name="classes"),
             helper.make_node("Gemm", ["rj", "wr"], ["reg"], name="regression")]
    inits = {"wa": _w(4, 3, 3, 3), "wm": _w(5, 6), "wj": _w(10, 8), "wc": _w(8, 4), "wr": _w(8, 2)}
    model = _model(nodes, inits, {"img": (F, ["N", 3, 6, 6]), "meta": (F, ["N", 5])},
                   {"cls": (F, ["N", 4]), "reg": (F, ["N", 2])})
    _compare(model, forms=({}, {"form": "loop", "chunk": 8}, {"portable": True}))


@pytest.mark.parametrize("batch", ["N", 4])
def test_static_and_dynamic_batch(batch):
    nodes = [_conv("c0", "input", "w0", "x0", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["x0"], ["r0"], name="relu0"),
             helper.make_node("Reshape", ["r0", "shape"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w1"], ["g"], name="fc", transB=1),
             helper.make_node("Relu", ["g"], ["out"], name="relu1")]
    shape = np.array([batch if batch != "N" else -1, 144], np.int64)
    model = _model(nodes, {"w0": _w(4, 4, 3, 3), "shape": shape, "w1": _w(5, 144, scale=0.1)},
                   {"input": (F, [batch, 4, 6, 6])}, {"out": (F, [batch, 5])})
    _compare(model, forms=({}, {"form": "loop", "chunk": 4}))


def test_model_stored_with_external_data(tmp_path):
    from onnx2snn import convert
    nodes = [_conv("c0", "input", "w0", "x0", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["x0"], ["out"], name="relu0")]
    model = _model(nodes, {"w0": _w(4, 4, 3, 3)}, IMG, {"out": (F, ["N", 4, 6, 6])})
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").exists()
    np.save(tmp_path / "d.npy", RNG.normal(size=(40, 4, 6, 6)).astype(np.float32))
    res = convert(tmp_path / "ext.onnx", data=str(tmp_path / "d.npy"), output=tmp_path / "ext.snn.onnx",
                  calib=CalibConfig(iters=3, batch_size=20), snn=SNNConfig(timesteps=8))
    assert res.output.exists() and onnx.load(res.output).graph.node


@pytest.mark.parametrize("head", ["Softmax", "Sigmoid", "ArgMax", "TopK"])
def test_heads_after_the_readout(head):
    nodes = [helper.make_node("Gemm", ["input", "w0"], ["x0"], name="fc0"), helper.make_node("Relu", ["x0"], ["r0"], name="relu0"),
             helper.make_node("Gemm", ["r0", "w1"], ["logits"], name="fc1")]
    inits = {"w0": _w(8, 16), "w1": _w(16, 6)}
    if head == "Softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["out"], name="softmax", axis=1))
        outputs = {"out": (F, ["N", 6])}
    elif head == "Sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["out"], name="sigmoid"))
        outputs = {"out": (F, ["N", 6])}
    elif head == "ArgMax":
        nodes.append(helper.make_node("ArgMax", ["logits"], ["out"], name="argmax", axis=1, keepdims=0))
        outputs = {"out": (TensorProto.INT64, ["N"])}
    else:
        nodes.append(helper.make_node("TopK", ["logits", "k"], ["vals", "idx"], name="topk", axis=1))
        inits["k"] = np.array([2], np.int64)
        outputs = {"vals": (F, ["N", 2]), "idx": (TensorProto.INT64, ["N", 2])}
    _compare(_model(nodes, inits, {"input": (F, ["N", 8])}, outputs))
