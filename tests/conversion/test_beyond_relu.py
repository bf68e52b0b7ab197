"""Networks with no ReLU at all, trained here on the digits: a SiLU CNN with squeeze-and-excitation
gates and a tiny vision transformer (GELU, LayerNorm, softmax attention) convert with the defaults
(only T given) and hold their ANN; --keep-analog's per-step evaluation does not."""
import json

import numpy as np
import onnx

from onnx2snn import SNNConfig, convert, evaluate_file
from onnx2snn.cli import main
from onnx2snn.graph.analyse import analyse
from onnx2snn.snn.info import SNNInfo


def _accuracy(res, t):
    return next(r["accuracy"] for r in res.rows if r["T"] == t)


def test_silu_cnn_with_squeeze_and_excitation_holds_its_ann(silu_se_path, digits_npz, tmp_path):
    calib, test = digits_npz
    a = analyse(silu_se_path)
    assert not [x for x in a.activations if x.kind != "Relu" or not x.name.endswith(("/spikes+", "/spikes-"))]
    assert {n.op for n in a.compensated()} == {"Sigmoid", "Mul"} and a.blocking() == []
    out = tmp_path / "silu.snn.onnx"
    convert(silu_se_path, data=str(calib), output=out, snn=SNNConfig(timesteps=32))
    res = evaluate_file(out, str(test), timesteps=[16, 32], ann_path=silu_se_path)
    assert _accuracy(res, 32) >= res.ann_accuracy - 0.01, res.rows
    assert _accuracy(res, 16) >= res.ann_accuracy - 0.03, res.rows
    assert 0.5 < res.spiking_fraction < 1 and res.compensated_macs > 0
    # the same neurons, the gates evaluated on each step's spikes instead: far from the ANN
    analog = tmp_path / "analog.snn.onnx"
    convert(silu_se_path, data=str(calib), output=analog, snn=SNNConfig(timesteps=32, keep_analog=True))
    per_step = evaluate_file(analog, str(test), timesteps=[32], ann_path=silu_se_path)
    assert _accuracy(per_step, 32) < _accuracy(res, 32) - 0.2, per_step.rows


def test_tiny_vit_converts_with_the_defaults(vit_path, digits_npz, tmp_path, capsys):
    calib, test = digits_npz
    out = tmp_path / "vit.snn.onnx"
    assert main([str(vit_path), "--data", str(calib), "-o", str(out), "-T", "64", "-q"]) == 0
    capsys.readouterr()
    info = SNNInfo.from_metadata(onnx.load(out))
    ops = {n.name: n.op_type for n in onnx.load(vit_path).graph.node}
    assert {ops[n] for n in info.compensated if n in ops} >= {"Softmax", "MatMul", "LayerNormalization", "Erf"}
    assert main(["eval", str(out), "--data", str(test), "-T", "32,64", "--ann", str(vit_path),
                 "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    rows = {r["T"]: r for r in result["snn"]}
    printed = capsys.readouterr().out
    assert "spiking:" in printed and "MACs/img" in printed
    ann = result["ann"]["accuracy"]
    assert 0.5 < result["spiking_fraction"] < 1
    assert rows[64]["accuracy"] >= ann - 0.015 and rows[32]["accuracy"] >= ann - 0.03, (ann, rows)
    assert rows[64]["agreement"] >= 0.97
    assert rows[64]["analog_macs"] > rows[32]["analog_macs"] > 0       # compensated work grows with T


def test_the_files_run_in_plain_onnxruntime_in_every_form(vit_path, digits_npz):
    """torch writes the attention's reshapes with the batch size read from a tensor before the first
    neuron (Shape of the token embeddings): in the SNN those sizes are the steps' (S*N rows), so the
    file runs in onnxruntime as written, not only in onnx2snn's sessions."""
    import onnxruntime as ort

    from onnx2snn import library_path, runtime, to_snn
    x = np.load(digits_npz[1])["input"][:12]
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(library_path())
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    base = None
    for kw in (dict(), dict(form="loop", chunk=3), dict(portable=True)):
        snn, _ = to_snn(vit_path, None, SNNConfig(timesteps=6, **kw))
        plain = ort.InferenceSession(snn.SerializeToString(), opts).run(None, {"input": x})[0]
        ours = runtime.session(snn).run(None, {"input": x})[0]
        np.testing.assert_array_equal(plain, ours)
        base = plain if base is None else base
        np.testing.assert_allclose(plain, base, rtol=1e-5, atol=1e-5)


def test_tiny_vit_from_torchs_dynamo_exporter(digits_npz, tmp_path, capsys):
    """torch.onnx.export(dynamo=True) writes opset 20 with Gelu and LayerNormalization ops: they spike
    and are compensated like their decompositions."""
    import torch

    from tools.fixtures import digits
    net, x = digits.digits_vit()
    path = tmp_path / "vit_dynamo.onnx"
    torch.onnx.export(net, (torch.from_numpy(x[:2]),), dynamo=True, input_names=["input"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=4096)}}).save(str(path))
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"Gelu", "LayerNormalization"} <= ops
    calib, test = digits_npz
    out = tmp_path / "vit_dynamo.snn.onnx"
    assert main([str(path), "--data", str(calib), "-o", str(out), "-T", "32", "--iters", "200", "-q"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(test), "-T", "32", "--ann", str(path),
                 "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    row = result["snn"][0]
    assert row["agreement"] >= 0.97 and row["accuracy"] >= result["ann"]["accuracy"] - 0.03, result
