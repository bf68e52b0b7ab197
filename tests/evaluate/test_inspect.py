"""`onnx2snn inspect` on the test models, --keep-analog, and shapes that exporters declare wrongly."""
import json

import numpy as np
import onnx
import pytest
from onnx import helper

from tools.fixtures import graphs
from onnx2snn import CalibConfig, SNNConfig, Thresholds, UserError, runtime, to_snn
from onnx2snn.ops import reference
from onnx2snn.graph.analyse import analyse
from onnx2snn.cli import main
from onnx2snn.snn.info import SNNInfo


def _inspect(tmp_path, model, capsys, *flags):
    onnx.save(model, tmp_path / "m.onnx")
    code = main(["inspect", str(tmp_path / "m.onnx"), "--json", *flags])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("make,acts,pools,blocking", [
    (graphs.stem_pool_model, ["relu1", "relu2"], {"pool1": "moved in front"}, []),
    (graphs.spiking_pool_model, ["relu0", "relu1"], {"pool": "spiking max pool"}, []),
    (graphs.unet_like_model, ["relu0", "relu1", "relu2"], {"down": "spiking max pool"}, []),
    (graphs.nhwc_model, ["relu1", "relu2"], {}, []),
    (graphs.fixed_batch_mlp, ["relu1", "relu2"], {}, []),
    (graphs.nonlinear_middle_model, ["relu0", "relu1"], {}, [("squash", "Sigmoid", "not linear in the spikes")]),
])
def test_inspect_reports_activations_pools_and_refusals(make, acts, pools, blocking, tmp_path, capsys):
    model = make()
    code, report = _inspect(tmp_path, model, capsys)
    assert [a["name"] for a in report["activations"]] == acts
    assert len(report["maxpools"]) == len(pools)
    for name, how in pools.items():
        assert any(p["name"] == name and p["handling"].startswith(how) for p in report["maxpools"]), report["maxpools"]
    assert [(b["node"], b["op"], b["reason"]) for b in report["blocking"]] == blocking
    assert report["convertible"] == (not blocking) and code == (1 if blocking else 0)
    ann_inputs = [i.name for i in model.graph.input]
    assert [i["name"] for i in report["inputs"]] == ann_inputs and report["inputs"][0]["data"]
    axes = {a.name: (a.axis, a.channels) for a in analyse(model).activations}
    assert {a["name"]: (a["axis"], a["channels"]) for a in report["activations"]} == axes


def test_inspect_text_and_errors(tmp_path, capsys):
    onnx.save(graphs.nonlinear_middle_model(), tmp_path / "m.onnx")
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 1
    out = capsys.readouterr().out
    assert "Sigmoid 'squash': not linear in the spikes (--keep-analog would keep it analog)" in out
    assert main(["inspect", str(tmp_path / "m.onnx"), "--keep-analog"]) == 0
    assert "kept analog (--keep-analog, not spiking): squash" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "none.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnx2snn: error:") and "none.onnx" in err and len(err.splitlines()) == 1


def test_keep_analog_converts_hybrid_models_and_records_the_nodes():
    model = graphs.nonlinear_middle_model()
    with pytest.raises(UserError, match="keep_analog runs them on each step's input"):
        to_snn(model, None, SNNConfig(timesteps=4))
    th = Thresholds({"relu0": np.full(2, 2.0, np.float32), "relu1": np.full(2, 4.0, np.float32)}, "manual")
    x = np.random.default_rng(0).normal(size=(3, 2, 3, 3)).astype(np.float32)
    for kw in (dict(), dict(form="loop", chunk=4), dict(portable=True)):
        snn, _ = to_snn(model, th, SNNConfig(timesteps=16, keep_analog=True, **kw))
        assert SNNInfo.from_metadata(snn).analog == ["squash"]
        got = runtime.session(snn).run(None, {"input": x})[0]
        if not kw:
            want = reference.run(snn, {"input": x})[0]       # Sigmoid evaluated on each step's spikes
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        else:
            base = runtime.session(to_snn(model, th, SNNConfig(timesteps=16, keep_analog=True))[0])
            np.testing.assert_allclose(got, base.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_silu_between_neurons_with_keep_analog():
    """x * sigmoid(x) (SiLU as exporters write it) multiplies two time-varying tensors."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gemm", ["input", "w0"], ["g0"], name="fc0"), helper.make_node("Relu", ["g0"], ["r0"], name="relu0"),
             helper.make_node("Gemm", ["r0", "w1"], ["g1"], name="fc1"),
             helper.make_node("Sigmoid", ["g1"], ["s1"], name="sig"), helper.make_node("Mul", ["g1", "s1"], ["silu"], name="silu"),
             helper.make_node("Gemm", ["silu", "w2"], ["g2"], name="fc2"), helper.make_node("Relu", ["g2"], ["out"], name="relu2")]
    model = graphs.make(nodes, {"w0": rng.normal(size=(4, 6)), "w1": rng.normal(size=(6, 6)), "w2": rng.normal(size=(6, 3))},
                        ["N", 4], out_shape=["N", 3])
    assert {n.name for n, _ in analyse(model).blocking()} == {"sig", "silu"}
    assert analyse(model).blocking(keep_analog=True) == []
    from onnx2snn.calibration.balancing import calibrate
    th = calibrate(model, [{"input": rng.normal(size=(32, 4)).astype(np.float32)}], CalibConfig(method="max"))
    snn, _ = to_snn(model, th, SNNConfig(timesteps=8, keep_analog=True))
    assert sorted(SNNInfo.from_metadata(snn).analog) == ["sig", "silu"]


def test_stale_declared_shapes_do_not_mislead_the_converter(tmp_path):
    """jax2onnx-style stale value_info (NHWC-looking shape on an NCHW tensor, a scalar on a 4-D one):
    ONNX's inference wins, and onnxruntime confirms on a first batch."""
    model = graphs.stem_pool_model()
    model.graph.value_info.extend([
        helper.make_tensor_value_info("r1", onnx.TensorProto.FLOAT, ["N", 6, 6, 4]),
        helper.make_tensor_value_info("c2", onnx.TensorProto.FLOAT, [])])
    acts = {a.name: a.channels for a in analyse(model).activations}
    assert acts == {"relu1": 4, "relu2": 6}
    from onnx2snn import convert
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=(40, 2, 6, 6)).astype(np.float32))
    res = convert(tmp_path / "m.onnx", data=str(tmp_path / "d.npy"), output=tmp_path / "s.onnx",
                  calib=CalibConfig(iters=3, batch_size=20), snn=SNNConfig(timesteps=8))
    assert [len(l.theta) for l in res.layers] == [4, 6]
