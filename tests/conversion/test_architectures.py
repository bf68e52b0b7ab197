"""Six architectures people hold, built as torchvision builds them (tools/fixtures/architectures.py,
random weights): each passes `inspect` as convertible, with the expected ops compensated, and its SNN
runs in every form; EfficientNet-B0's converts and evaluates end to end with few iterations."""
import json

import numpy as np
import pytest

from onnx2snn import SNNConfig, runtime, to_snn
from onnx2snn.cli import main
from onnx2snn.graph.analyse import analyse

torch = pytest.importorskip("torch", reason="the architectures are built and exported with torch (the test extra)")
from tools.fixtures import architectures  # noqa: E402

# the ops expectation compensation evaluates in each (at least), and those that spike
EXPECTED = {
    "mobilenet_v3_small": ({"HardSwish", "HardSigmoid", "Mul"}, {"HardSwish", "Mul"}),
    "efficientnet_b0": ({"Sigmoid", "Mul"}, {"Mul"}),
    "convnext_tiny": ({"LayerNormalization", "Erf", "Mul"}, {"LayerNormalization", "Mul"}),
    "regnety_400mf": ({"Sigmoid", "Mul"}, {"Mul"}),
    "vit_b_16": ({"LayerNormalization", "Softmax", "MatMul", "Erf", "Mul"}, {"LayerNormalization", "MatMul", "Mul"}),
    "swin_t": ({"LayerNormalization", "Softmax", "MatMul", "Erf", "Mul"}, {"LayerNormalization", "MatMul", "Mul"}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("architectures")
    paths = {}
    for name in architectures.ARCHITECTURES:
        paths[name] = folder / f"{name}.onnx"
        paths[name].write_bytes(architectures.export(name))
    return paths


@pytest.mark.parametrize("name", list(architectures.ARCHITECTURES))
def test_inspect_calls_it_convertible_and_its_snn_runs(name, models, tmp_path, capsys):
    path = models[name]
    assert main(["inspect", str(path), "--json", str(tmp_path / "i.json")]) == 0
    report = json.loads((tmp_path / "i.json").read_text())
    compensated, spiking = EXPECTED[name]
    assert report["convertible"] and not report["blocking"]
    assert compensated <= {c["op"] for c in report["compensated"]}, report["compensated"]
    assert spiking == {s["op"] for s in report["sites"]}, report["sites"]
    a = analyse(path)
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    outs = []
    for kw in (dict(), dict(form="loop", chunk=2), dict(portable=True, portable_steps="scan")):
        snn, _ = to_snn(a, None, SNNConfig(timesteps=4, **kw))
        outs.append(runtime.session(snn).run(None, {"input": x})[0])
        assert outs[-1].shape == (2, 10) and np.isfinite(outs[-1]).all()
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outs[2], outs[0], rtol=1e-4, atol=1e-4)


def test_efficientnet_b0_converts_and_evaluates(models, tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", input=rng.uniform(0, 1, (64, 3, 32, 32)).astype(np.float32))
    np.savez(tmp_path / "test.npz", input=rng.uniform(0, 1, (32, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "effnet.snn.onnx"
    assert main([str(models["efficientnet_b0"]), "--data", str(tmp_path / "calib.npz"), "-o", str(out), "-T", "16",
                 "--iters", "20", "--correct-samples", "16", "--delay-samples", "16", "--check", "0", "-q"]) == 0
    assert main(["eval", str(out), "--data", str(tmp_path / "test.npz"), "--ann", str(models["efficientnet_b0"]),
                 "-T", "16", "--json", str(tmp_path / "e.json")]) == 0
    assert "spiking:" in capsys.readouterr().out
    result = json.loads((tmp_path / "e.json").read_text())
    row = result["snn"][0]
    assert row["agreement"] is not None and row["sops"] > 0 and row["analog_macs"] > 0
    assert 0 < result["spiking_fraction"] < 1
