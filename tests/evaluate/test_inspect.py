"""`onnx2snn inspect` on the test models, --keep-analog, and shapes that exporters declare wrongly."""
import json

import numpy as np
import onnx
import pytest
from onnx import helper

from tools.fixtures import graphs
from onnx2snn import CalibConfig, SNNConfig, Thresholds, runtime, to_snn
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
    (graphs.nonlinear_middle_model, ["relu0", "squash/spikes+", "relu1"], {}, []),
    (graphs.hard_gate_model, ["relu0", "apply_gate/spikes+", "apply_gate/spikes-", "relu1"], {},
     [("gate", "Greater", "not linear in the spikes and not a float function of float inputs (expectation "
                          "compensation cannot average it)")]),
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
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "Sigmoid 'squash': non-negative, one neuron" in out
    assert "1 non-linear node(s) between neurons run with expectation compensation" in out and "Sigmoid 'squash'" in out
    assert main(["inspect", str(tmp_path / "m.onnx"), "--keep-analog"]) == 0
    assert "kept analog (--keep-analog: on each step's input, not compensated): squash" in capsys.readouterr().out
    onnx.save(graphs.hard_gate_model(), tmp_path / "g.onnx")
    assert main(["inspect", str(tmp_path / "g.onnx")]) == 1
    assert "Greater 'gate': not linear in the spikes" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "none.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnx2snn: error:") and "none.onnx" in err and len(err.splitlines()) == 1


def test_keep_analog_runs_the_compensated_nodes_per_step_and_records_them():
    """By default the Sigmoid between neurons is compensated (recorded as such); --keep-analog runs it
    on each step's spikes instead (the per-step approach, for comparison), in every form."""
    model = graphs.nonlinear_middle_model()
    th = Thresholds({"relu0": np.full(2, 2.0, np.float32), "squash/spikes+": np.full(2, 1.0, np.float32),
                     "relu1": np.full(2, 4.0, np.float32)}, "manual")
    x = np.random.default_rng(0).normal(size=(3, 2, 3, 3)).astype(np.float32)
    info = SNNInfo.from_metadata(to_snn(model, th, SNNConfig(timesteps=4))[0])
    assert info.compensated == ["squash"] and info.analog == []
    for kw in (dict(), dict(form="loop", chunk=4), dict(portable=True)):
        snn, _ = to_snn(model, th, SNNConfig(timesteps=16, keep_analog=True, **kw))
        info = SNNInfo.from_metadata(snn)
        assert info.analog == ["squash"] and info.compensated == []
        got = runtime.session(snn).run(None, {"input": x})[0]
        if not kw:
            want = reference.run(snn, {"input": x})[0]       # Sigmoid evaluated on each step's spikes
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        else:
            base = runtime.session(to_snn(model, th, SNNConfig(timesteps=16, keep_analog=True))[0])
            np.testing.assert_allclose(got, base.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_silu_between_neurons_is_compensated_or_kept_analog():
    """x * sigmoid(x) (SiLU as exporters write it) multiplies two time-varying tensors: its output
    feeds a Gemm, so it spikes (a signed pair), and the Sigmoid and the Mul are compensated."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gemm", ["input", "w0"], ["g0"], name="fc0"), helper.make_node("Relu", ["g0"], ["r0"], name="relu0"),
             helper.make_node("Gemm", ["r0", "w1"], ["g1"], name="fc1"),
             helper.make_node("Sigmoid", ["g1"], ["s1"], name="sig"), helper.make_node("Mul", ["g1", "s1"], ["silu"], name="silu"),
             helper.make_node("Gemm", ["silu", "w2"], ["g2"], name="fc2"), helper.make_node("Relu", ["g2"], ["out"], name="relu2")]
    model = graphs.make(nodes, {"w0": rng.normal(size=(4, 6)), "w1": rng.normal(size=(6, 6)), "w2": rng.normal(size=(6, 3))},
                        ["N", 4], out_shape=["N", 3])
    a = analyse(model)
    assert a.blocking() == [] and [(s.node, s.signed) for s in a.sites] == [("silu", True)]
    assert [x.name for x in a.activations] == ["relu0", "silu/spikes+", "silu/spikes-", "relu2"]
    from onnx2snn.calibration.balancing import calibrate
    th = calibrate(model, [{"input": rng.normal(size=(32, 4)).astype(np.float32)}], CalibConfig(method="max"))
    assert sorted(SNNInfo.from_metadata(to_snn(model, th, SNNConfig(timesteps=8))[0]).compensated) == ["sig", "silu"]
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
